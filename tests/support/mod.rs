//! The lab test harness: each test builds its own lab under a unique name and removes it on drop.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use strait::flows::FlowRecord;

pub const STRAIT: &str = env!("CARGO_BIN_EXE_strait");

/// One cluster, two nodes: enough for same-node and cross-node paths, quick to build.
pub const ONE_CLUSTER: &str = "clusters:
  - name: c1
    id: 1
    podCIDR: 198.18.16.0/20
    serviceCIDR: 198.19.1.0/24
    nodes: 2
";

/// A backend pinned to node-1, a client on each node, and a service in front of the backend.
pub const APP: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: v1
kind: Pod
metadata: {name: backend, namespace: demo, labels: {app: backend}}
spec:
  nodeName: node-1
  containers:
  - name: echo
    ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client-local, namespace: demo, labels: {app: frontend}}
spec:
  nodeName: node-1
  containers: [{name: echo}]
---
apiVersion: v1
kind: Pod
metadata: {name: client-remote, namespace: demo, labels: {app: frontend}}
spec:
  nodeName: node-2
  containers: [{name: echo}]
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: demo}
spec:
  selector: {app: backend}
  ports: [{port: 80, targetPort: http}]
";

pub struct TestLab {
    pub name: String,
    pub dir: std::path::PathBuf,
}

pub fn require_root() {
    let uid = effective_uid();
    assert_eq!(
        uid, 0,
        "these tests build network namespaces, cgroups and eBPF programs: run them as root \
         (the README's test command does)"
    );
}

pub fn effective_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|u| u.parse().ok())
        .unwrap()
}

pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl TestLab {
    pub fn up(test: &str, topology: &str) -> Self {
        require_root();
        let mut h: u32 = 0x811c_9dc5;
        for b in format!("{test}/{}", std::process::id()).bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        let name = format!("t{h:08x}");
        let dir = std::env::temp_dir().join(format!("strait-test-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("topology.yaml"), topology).unwrap();
        let lab = TestLab { name, dir };
        let out = lab.strait(&[
            "lab",
            "up",
            "-f",
            lab.dir.join("topology.yaml").to_str().unwrap(),
        ]);
        assert!(out.status.success(), "lab up failed: {}", text(&out));
        lab
    }

    pub fn strait(&self, args: &[&str]) -> Output {
        Command::new(STRAIT)
            .args(args)
            .env("STRAIT_LAB", &self.name)
            .output()
            .unwrap()
    }

    pub fn apply(&self, cluster: &str, yaml: &str) -> Output {
        let f = self.dir.join(format!("apply-{}.yaml", rand_suffix()));
        std::fs::write(&f, yaml).unwrap();
        self.strait(&[
            "lab",
            "apply",
            "--cluster",
            cluster,
            "-f",
            f.to_str().unwrap(),
        ])
    }

    /// `lab delete` of `yaml`, which must succeed.
    pub fn delete_ok(&self, cluster: &str, yaml: &str) {
        let f = self.dir.join(format!("delete-{}.yaml", rand_suffix()));
        std::fs::write(&f, yaml).unwrap();
        let out = self.strait(&[
            "lab",
            "delete",
            "--cluster",
            cluster,
            "-f",
            f.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "delete failed: {}", text(&out));
    }

    /// `strait clustermesh ARGS`, which must succeed.
    pub fn clustermesh_ok(&self, args: &[&str]) {
        let mut all = vec!["clustermesh"];
        all.extend_from_slice(args);
        let out = self.strait(&all);
        assert!(out.status.success(), "clustermesh {args:?}: {}", text(&out));
    }

    /// Enables the mesh in clusters `a` and `b`, connects them and waits until both are ready.
    pub fn mesh_connect(&self, a: &str, b: &str) {
        self.clustermesh_ok(&["enable", "--cluster", a]);
        self.clustermesh_ok(&["enable", "--cluster", b]);
        self.clustermesh_ok(&["connect", "--cluster", a, "--destination-cluster", b]);
        for c in [a, b] {
            self.clustermesh_ok(&["status", "--cluster", c, "--wait", "--wait-duration", "30s"]);
        }
    }

    pub fn apply_ok(&self, cluster: &str, yaml: &str) {
        let out = self.apply(cluster, yaml);
        assert!(out.status.success(), "apply failed: {}", text(&out));
    }

    pub fn exec(&self, target: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["lab", "exec", target, "--"];
        args.extend_from_slice(cmd);
        self.strait(&args)
    }

    pub fn status(&self) -> Value {
        let out = self.strait(&["lab", "status", "-o", "json"]);
        assert!(out.status.success(), "status failed: {}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn pod_ip(&self, cluster: &str, ns: &str, pod: &str) -> String {
        let st = self.status();
        st["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["cluster"] == cluster && p["namespace"] == ns && p["name"] == pod)
            .unwrap_or_else(|| panic!("no pod {cluster}/{ns}/{pod} in {st}"))["ip"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn service_ip(&self, ns: &str, name: &str) -> String {
        let st = self.status();
        st["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["namespace"] == ns && s["name"] == name)
            .unwrap()["cluster_ip"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn agent_pid(&self, cluster: &str, node: &str) -> i32 {
        let st = self.status();
        st["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["cluster"] == cluster && a["node"] == node)
            .unwrap()["pid"]
            .as_i64()
            .unwrap() as i32
    }

    /// All flows the lab's agents hold, via `strait observe -o json`.
    pub fn flows(&self) -> Vec<FlowRecord> {
        let out = self.strait(&["observe", "-o", "json", "--last", "10000"]);
        assert!(out.status.success(), "observe failed: {}", text(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// Waits (flows are recorded when a connection closes) for a flow matching `pred`.
    pub fn wait_flow(&self, what: &str, pred: impl Fn(&FlowRecord) -> bool) -> FlowRecord {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let flows = self.flows();
            if let Some(f) = flows.iter().find(|f| pred(f)) {
                return f.clone();
            }
            if Instant::now() > deadline {
                panic!("no flow {what} among {} flows: {flows:#?}", flows.len());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn curl(&self, target: &str, url: &str) -> Output {
        self.exec(
            target,
            &[
                "curl",
                "-sS",
                "--max-time",
                "5",
                "-w",
                "\n%{http_code}",
                url,
            ],
        )
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        let out = self.strait(&["lab", "down"]);
        if !out.status.success() {
            eprintln!("lab down failed: {}", text(&out));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Splits curl's output (body, then the status code on the last line).
pub fn curl_result(out: &Output) -> (Value, String) {
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = s.trim_end().rsplit_once('\n').unwrap_or(("", s.trim()));
    let json = serde_json::from_str(body.trim()).unwrap_or(Value::Null);
    (json, code.to_string())
}

/// A backend (TCP 8080 named http, UDP 5353) on node-1; a frontend and an unrelated pod on node-2.
pub const POLICY_APP: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: v1
kind: Pod
metadata: {name: backend, namespace: demo, labels: {app: backend}}
spec:
  nodeName: node-1
  containers:
  - name: echo
    ports: [{name: http, containerPort: 8080}, {name: dns, containerPort: 5353, protocol: UDP}]
---
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: demo, labels: {app: frontend}}
spec:
  nodeName: node-2
  containers: [{name: echo, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: demo, labels: {app: other}}
spec:
  nodeName: node-2
  containers: [{name: echo, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: demo}
spec:
  selector: {app: backend}
  ports: [{port: 80, targetPort: http}]
";

/// The policy of Cilium's tutorial, in namespace `demo`: the file the README and the demo apply.
pub const ALLOW_FRONTEND_TO_BACKEND: &str =
    include_str!("../../deploy/lab/allow-frontend-to-backend.yaml");

/// Applies `yaml`, whose `metadata:` starts with `name:`, in namespace `ns` of cluster `c1`.
pub fn apply_in(lab: &TestLab, ns: &str, yaml: &str) {
    let yaml = yaml.replace(
        "metadata:\n  name:",
        &format!("metadata:\n  namespace: {ns}\n  name:"),
    );
    lab.apply_ok("c1", &yaml);
}

/// Connects from a pod with python3 and reports `ok`, or the error class and errno.
pub fn py_connect(lab: &TestLab, pod: &str, host: &str, port: u16) -> String {
    let script = format!(
        "import socket\n\
         try:\n\
         \x20   s = socket.create_connection(('{host}', {port}), timeout=3)\n\
         \x20   print('ok')\n\
         except OSError as e:\n\
         \x20   print(type(e).__name__, e.errno)\n"
    );
    let out = lab.exec(&format!("c1/demo/{pod}"), &["python3", "-c", &script]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Sends one UDP datagram from a pod and reports whether the echo came back.
pub fn py_udp(lab: &TestLab, pod: &str, host: &str, port: u16) -> String {
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.settimeout(1.5)\n\
         s.sendto(b'ping', ('{host}', {port}))\n\
         try:\n\
         \x20   print('reply', s.recvfrom(100)[0].decode())\n\
         except socket.timeout:\n\
         \x20   print('timeout')\n"
    );
    let out = lab.exec(&format!("c1/demo/{pod}"), &["python3", "-c", &script]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Deployments (so flows carry workloads) for backend (node-1) and frontend (node-2), a stray
/// pod on node-2, a service, and an L7 policy: the frontend may `GET /public.*` only.
pub const L7_APP: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {team: shop}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: backend, namespace: demo}
spec:
  replicas: 1
  selector: {matchLabels: {app: backend}}
  template:
    metadata: {labels: {app: backend}}
    spec:
      nodeName: node-1
      containers: [{name: echo, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: frontend, namespace: demo}
spec:
  replicas: 1
  selector: {matchLabels: {app: frontend}}
  template:
    metadata: {labels: {app: frontend}}
    spec:
      nodeName: node-2
      containers: [{name: echo}]
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: demo, labels: {app: other}}
spec:
  nodeName: node-2
  containers: [{name: echo}]
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: demo}
spec:
  selector: {app: backend}
  ports: [{port: 80, targetPort: http}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: backend-l7, namespace: demo}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts:
    - ports: [{port: http, protocol: TCP}]
      rules:
        http: [{method: GET, path: /public.*}]
";
