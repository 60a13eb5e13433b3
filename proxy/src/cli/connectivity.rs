//! `strait connectivity test`: like `cilium connectivity test`, deploys a client and echo pods
//! in a namespace of its own in every given lab cluster, checks the paths a mesh must serve
//! (pod, service, node, cluster, policy, L7, flows), prints one line per check and removes what it
//! deployed.

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::cli::lab::LabName;
use crate::lab::Lab;

/// `strait connectivity` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConnectivityCommand {
    /// Deploy test workloads, check every path, print a summary and remove the workloads.
    Test(TestArgs),
}

/// Arguments of `strait connectivity test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    #[command(flatten)]
    lab: LabName,
    /// Cluster to test (repeatable; default: every cluster of the lab).
    #[arg(long = "cluster")]
    clusters: Vec<String>,
    /// Namespace the test deploys into (created and removed by the test).
    #[arg(long, default_value = "strait-test")]
    namespace: String,
}

/// Port the echo pods serve on (the Service `echo` maps 80 to it).
const ECHO_PORT: u16 = 8080;
/// Requests tried before the global service is declared not to reach another cluster.
const CROSS_CLUSTER_TRIES: usize = 20;

/// Runs a `strait connectivity` subcommand.
pub fn run(cmd: ConnectivityCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ConnectivityCommand::Test(args) => test(&args),
    }
}

/// One check's name and outcome (`Err` carries the reason shown to the user).
struct Check {
    name: String,
    outcome: Result<(), String>,
}

fn test(args: &TestArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let lab = Lab::new(args.lab.name())?;
    let all = lab.cluster_names()?;
    let clusters = if args.clusters.is_empty() {
        all.clone()
    } else {
        args.clusters.clone()
    };
    if let Some(c) = clusters.iter().find(|c| !all.contains(c)) {
        anyhow::bail!(
            "cluster {c:?} is not in lab {} (it has {all:?})",
            args.lab.name()
        );
    }
    let dir = std::env::temp_dir().join(format!(
        "strait-conntest-{}-{}",
        args.lab.name(),
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let t = Tester {
        lab: &lab,
        lab_name: args.lab.name().to_string(),
        ns: args.namespace.clone(),
        dir: dir.clone(),
        exe: std::env::current_exe().context("locate the strait binary")?,
    };

    let workloads = t.write("workloads.yaml", &workloads(&args.namespace))?;
    let mut deployed = Vec::new();
    let mut checks = Vec::new();
    let mut setup = Ok(());
    for c in &clusters {
        println!("deploying test workloads into {c}/{}", args.namespace);
        match lab.apply(c, std::slice::from_ref(&workloads), false) {
            Ok(_) => deployed.push(c.clone()),
            Err(e) => {
                setup = Err(anyhow::anyhow!("deploy into cluster {c}: {e}"));
                break;
            }
        }
    }
    if setup.is_ok() {
        for c in &clusters {
            t.cluster_checks(c, &clusters, &mut checks);
        }
        let since = started.elapsed().as_secs() + 5;
        checks.push(Check {
            name: "flow visibility".into(),
            outcome: t.flows_seen(since),
        });
    }

    // Remove what we deployed whatever happened; a policy of ours left behind would change
    // the cluster for everyone.
    for c in &deployed {
        for p in Policy::ALL {
            if let Ok(f) = t.write(&format!("{}.yaml", p.name()), &p.manifest(&t.ns)) {
                let _ = lab.apply(c, &[f], true);
            }
        }
        if let Err(e) = lab.apply(c, std::slice::from_ref(&workloads), true) {
            eprintln!("warning: could not remove the test workloads from {c}: {e}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    setup?;

    let passed = checks.iter().filter(|c| c.outcome.is_ok()).count();
    println!();
    println!(
        "{passed}/{} checks passed ({:.1}s)",
        checks.len(),
        started.elapsed().as_secs_f64()
    );
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| c.outcome.is_err())
        .map(|c| c.name.as_str())
        .collect();
    if !failed.is_empty() {
        println!("failed: {}", failed.join(", "));
    }
    Ok(if passed == checks.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The policies the test applies one at a time.
#[derive(Clone, Copy)]
enum Policy {
    Allow,
    Deny,
    L7,
}

// === impl Policy ===

impl Policy {
    const ALL: [Policy; 3] = [Policy::Allow, Policy::Deny, Policy::L7];

    /// The check's name as printed.
    fn check(self) -> &'static str {
        match self {
            Policy::Allow => "policy allow (L4)",
            Policy::Deny => "policy deny",
            Policy::L7 => "L7 rule (GET /public allowed, /private 403)",
        }
    }

    /// The requests from the client to `echo-same` under the policy, and what each must see.
    fn expects(self) -> &'static [(&'static str, Expect)] {
        match self {
            Policy::Allow => &[("/", Expect::Status(200))],
            Policy::Deny => &[("/", Expect::Refused)],
            Policy::L7 => &[
                ("/public", Expect::Status(200)),
                ("/private", Expect::Status(403)),
            ],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Policy::Allow => "conntest-allow-client",
            Policy::Deny => "conntest-allow-nobody",
            Policy::L7 => "conntest-l7-public",
        }
    }

    /// A CNP over the echo pods: the client at L4, someone else only, or the client for
    /// `GET /public` only.
    fn manifest(self, ns: &str) -> String {
        let (from, rules) = match self {
            Policy::Allow => ("conntest: client", ""),
            Policy::Deny => ("conntest: nobody", ""),
            Policy::L7 => (
                "conntest: client",
                "\n      rules:\n        http: [{method: GET, path: \"/public.*\"}]",
            ),
        };
        format!(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: {name}, namespace: {ns}}}
spec:
  endpointSelector: {{matchLabels: {{conntest: echo}}}}
  ingress:
  - fromEndpoints: [{{matchLabels: {{{from}}}}}]
    toPorts:
    - ports: [{{port: \"{ECHO_PORT}\", protocol: TCP}}]{rules}
",
            name = self.name()
        )
    }
}

/// The echo pair pinned to node-1 and node-2, the client on node-1 and the global Service.
fn workloads(ns: &str) -> String {
    let echo = |name: &str, node: &str| {
        format!(
            "---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {{conntest: echo}}}}
spec:
  nodeName: {node}
  containers: [{{name: echo, ports: [{{name: http, containerPort: {ECHO_PORT}}}]}}]
"
        )
    };
    format!(
        "apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
{same}{other}---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {ns}, labels: {{conntest: client}}}}
spec:
  nodeName: node-1
  containers: [{{name: echo}}]
---
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: {ns}
  annotations: {{service.cilium.io/global: \"true\"}}
spec:
  selector: {{conntest: echo}}
  ports: [{{name: http, port: 80, targetPort: http}}]
",
        same = echo("echo-same", "node-1"),
        other = echo("echo-other", "node-2"),
    )
}

/// Issues HTTP requests from a pod: one JSON line per request, the status and the answering
/// echo's cluster, or the connect error's class.
const PROBE: &str = r#"
import json, socket, sys
host, port, path, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
for _ in range(n):
    try:
        s = socket.create_connection((host, port), timeout=3)
        s.sendall(('GET %s HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n' % path).encode())
        data = b''
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b'\r\n\r\n')
        status = int(head.split(b' ')[1]) if head else 0
        try:
            cluster = json.loads(body).get('cluster')
        except Exception:
            cluster = None
        print(json.dumps({'status': status, 'cluster': cluster}))
    except OSError as e:
        print(json.dumps({'error': type(e).__name__}))
"#;

/// Drives the checks of one run.
struct Tester<'a> {
    lab: &'a Lab,
    lab_name: String,
    ns: String,
    dir: PathBuf,
    exe: PathBuf,
}

// === impl Tester ===

impl Tester<'_> {
    fn write(&self, file: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(file);
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
        Ok(path)
    }

    /// Every check whose client is in `cluster`; `all` are the clusters under test.
    fn cluster_checks(&self, cluster: &str, all: &[String], checks: &mut Vec<Check>) {
        let label = |what: &str| {
            if all.len() > 1 {
                format!("[{cluster}] {what}")
            } else {
                what.to_string()
            }
        };
        let record = |checks: &mut Vec<Check>, name: String, outcome: Result<(), String>| {
            match &outcome {
                Ok(()) => println!("✅ {name}"),
                Err(why) => println!("❌ {name}: {why}"),
            }
            checks.push(Check { name, outcome });
        };
        let ip = |pod: &str| self.pod_ip(cluster, pod);

        let same = ip("echo-same");
        let other = ip("echo-other");
        let service = format!("echo.{}.svc.cluster.local", self.ns);
        for (what, host) in [
            ("pod to pod (same node)", same.clone()),
            ("pod to pod (across nodes)", other),
        ] {
            let outcome = host.and_then(|h| self.expect_status(cluster, &h, ECHO_PORT, "/", 200));
            record(checks, label(what), outcome);
        }
        let outcome = self.expect_status(cluster, &service, 80, "/", 200);
        record(checks, label("pod to service"), outcome);

        let peers = self.connected_peers(cluster, all);
        if !peers.is_empty() {
            let outcome = self.cross_cluster(cluster, &service, &peers);
            record(checks, label("across clusters (global service)"), outcome);
        }

        for policy in Policy::ALL {
            let (what, expects) = (policy.check(), policy.expects());

            let outcome = same.clone().and_then(|h| {
                let file = self
                    .write(
                        &format!("{}.yaml", policy.name()),
                        &policy.manifest(&self.ns),
                    )
                    .map_err(|e| format!("{e:#}"))?;
                self.lab
                    .apply(cluster, std::slice::from_ref(&file), false)
                    .map_err(|e| format!("apply {}: {e}", policy.name()))?;
                let result = expects.iter().try_for_each(|(path, want)| match want {
                    Expect::Status(code) => self.expect_status(cluster, &h, ECHO_PORT, path, *code),
                    Expect::Refused => self.expect_refused(cluster, &h, path),
                });
                self.lab
                    .apply(cluster, &[file], true)
                    .map_err(|e| format!("remove {}: {e}", policy.name()))?;
                result
            });
            record(checks, label(what), outcome);
        }
    }

    fn pod_ip(&self, cluster: &str, pod: &str) -> Result<String, String> {
        self.lab
            .find_pod(&format!("{cluster}/{}/{pod}", self.ns))
            .map(|(_, p)| p.ip.to_string())
            .map_err(|e| e.to_string())
    }

    /// The clusters among `all` that `cluster` is connected to in the mesh.
    fn connected_peers(&self, cluster: &str, all: &[String]) -> Vec<String> {
        let Ok(Some(st)) = self.lab.load() else {
            return Vec::new();
        };
        st.mesh
            .get(cluster)
            .map(|m| {
                m.peers
                    .iter()
                    .filter(|p| all.contains(p))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `n` requests from `cluster`'s client: one parsed JSON line per request.
    fn probe(
        &self,
        cluster: &str,
        host: &str,
        port: u16,
        path: &str,
        n: usize,
    ) -> Result<Vec<Value>, String> {
        let out = Command::new(&self.exe)
            .args(["lab", "exec", "--name", &self.lab_name])
            .arg(format!("{cluster}/{}/client", self.ns))
            .args(["--", "python3", "-c", PROBE, host])
            .args([port.to_string(), path.to_string(), n.to_string()])
            .output()
            .map_err(|e| format!("run lab exec: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "lab exec failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| format!("probe output {l:?}: {e}")))
            .collect()
    }

    fn expect_status(
        &self,
        cluster: &str,
        host: &str,
        port: u16,
        path: &str,
        want: u64,
    ) -> Result<(), String> {
        let got = self.probe(cluster, host, port, path, 1)?;
        let first = got.first().ok_or("no answer from the probe")?;
        match (
            first.get("status").and_then(Value::as_u64),
            first.get("error"),
        ) {
            (Some(s), _) if s == want => Ok(()),
            (Some(s), _) => Err(format!(
                "GET http://{host}:{port}{path}: HTTP {s}, expected {want}"
            )),
            (None, Some(e)) => Err(format!(
                "GET http://{host}:{port}{path}: {}",
                e.as_str().unwrap_or("error")
            )),
            (None, None) => Err(format!(
                "GET http://{host}:{port}{path}: unexpected answer {first}"
            )),
        }
    }

    fn expect_refused(&self, cluster: &str, host: &str, path: &str) -> Result<(), String> {
        let got = self.probe(cluster, host, ECHO_PORT, path, 1)?;
        let first = got.first().ok_or("no answer from the probe")?;
        match first.get("error").and_then(Value::as_str) {
            // The kernel refuses a denied connect itself (EPERM); a refusal by the peer counts too.
            Some("PermissionError" | "ConnectionRefusedError") => Ok(()),
            Some(e) => Err(format!(
                "connect to {host}:{ECHO_PORT}: {e}, expected a refusal"
            )),
            None => Err(format!(
                "connect to {host}:{ECHO_PORT} was not refused: {first}"
            )),
        }
    }

    /// Requests to the global service until one is answered by a cluster other than `cluster`.
    fn cross_cluster(&self, cluster: &str, service: &str, peers: &[String]) -> Result<(), String> {
        let answers = self.probe(cluster, service, 80, "/", CROSS_CLUSTER_TRIES)?;
        let seen: Vec<&str> = answers
            .iter()
            .filter_map(|a| a.get("cluster").and_then(Value::as_str))
            .collect();
        if seen.iter().any(|c| peers.iter().any(|p| p == c)) {
            Ok(())
        } else {
            Err(format!(
                "{CROSS_CLUSTER_TRIES} requests answered only by {seen:?}, none by {peers:?}"
            ))
        }
    }

    /// Whether `strait observe` shows flows of the test's client recorded in the last
    /// `since_secs` seconds; flows are recorded when a connection closes, so this polls briefly.
    fn flows_seen(&self, since_secs: u64) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = Command::new(&self.exe)
                .args([
                    "observe",
                    "--name",
                    &self.lab_name,
                    "-o",
                    "json",
                    "-n",
                    &self.ns,
                ])
                .args(["--since", &format!("{since_secs}s")])
                .output()
                .map_err(|e| format!("run strait observe: {e}"))?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            let ours = stdout
                .lines()
                .filter_map(|l| serde_json::from_str::<crate::flows::FlowRecord>(l).ok())
                .filter(|f| f.source.namespace == self.ns && f.source.pod == "client")
                .count();
            if out.status.success() && ours > 0 {
                println!("✅ flow visibility");
                return Ok(());
            }
            if Instant::now() > deadline {
                let why = if out.status.success() {
                    format!("strait observe shows no flow of {}/client", self.ns)
                } else {
                    format!(
                        "strait observe failed: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    )
                };
                println!("❌ flow visibility: {why}");
                return Err(why);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// What a request under a policy must see.
enum Expect {
    Status(u64),
    Refused,
}
