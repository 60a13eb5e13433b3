//! The data path against the same commands run "direct", in one run: a lab of one cluster, two
//! nodes, a server pod (nginx, iperf3) on node-1 and a client pod on each node. Columns:
//!
//! - direct: the client's network namespace outside its cgroup, so `connect4` does not redirect
//!   it (tc is still on the path);
//! - kernel path: inside the pod's cgroup (as `strait lab exec` runs it) to a port the policy
//!   allows at L4 only, which the kernel fast path keeps out of the proxy (until it lands, this
//!   goes through the proxy like everything else);
//! - L7: the same, to a port with an HTTP path rule, which the node proxy serves;
//! - HAProxy 2.6 L4 and L7 (a path ACL), run like a sidecar in the client's namespace outside
//!   the cgroup.
//!
//! Every measure takes ROUNDS runs per column, the columns interleaved; figures are medians and
//! ratios are against direct in the same run, each printed next to its target. Agent RSS
//! (node-1): fresh, after the load with node-1's flow ring full, per idle proxied connection
//! with 2,000 idle connections to the L7 port, and after they closed. The last line printed is a
//! JSON summary.
//!
//! `cargo bench -p strait --bench datapath` (root; `scripts/setup.sh` installs iperf3, wrk,
//! haproxy and nginx). Traffic stays inside the lab's namespaces.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[path = "support/lab.rs"]
mod lab;
#[path = "datapath/table.rs"]
mod table;
use lab::{BenchLab, STRAIT, text};
use table::{Row, Table, Target};

/// Seconds of each run; every measure takes ROUNDS runs per column, interleaved.
const SECS: &str = "1";
const ROUNDS: usize = 3;
/// Idle proxied connections held open for the memory measure.
const IDLE_CONNS: usize = 2000;
/// The agent's flow ring (config `flow_ring_capacity`, the lab's default).
const FLOW_RING: usize = strait::config::DEFAULT_FLOW_RING;
/// nginx on a port allowed at L4 only, and on a port with an HTTP path rule.
const NGINX: u16 = 8080;
const NGINX_L7: u16 = 8081;
const IPERF: u16 = 5201;
/// HAProxy listens on these in each client's namespace (loopback), forwarding to the server.
const HA_NGINX: u16 = 18080;
const HA_IPERF: u16 = 15201;
const HA_L7: u16 = 18081;

const TOPOLOGY: &str = "clusters:
  - name: c1
    id: 1
    podCIDR: 198.18.16.0/20
    serviceCIDR: 198.19.1.0/24
    nodes: 2
";

/// Clients reach nginx and iperf3 at L4, and nginx's second port with `GET /public/.*` only.
const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: bench}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}, {port: "5201", protocol: TCP}]
    - ports: [{port: "8081", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/public/.*"}]
"#;

/// Opens N connections to HOST:PORT, sends one HTTP request on each and reads the answer (so
/// every connection is fully established through any proxy and has carried a request), prints
/// `ready`, then holds them (kept alive) until stdin closes.
const IDLE_SCRIPT: &str = "import resource, socket, sys
n, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
socks = []
for _ in range(n):
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(b'GET /public/idle HTTP/1.1\\r\\nHost: server\\r\\n\\r\\n')
    got = b''
    while not got.endswith(b'ok\\n'):
        chunk = s.recv(4096)
        if not chunk:
            sys.exit('closed after %r' % got)
        got += chunk
    socks.append(s)
print('ready', len(socks), flush=True)
sys.stdin.read()
";

/// A column: where a measure's client runs and which address it targets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Direct,
    Kernel,
    L7,
    HaL4,
    HaL7,
}

const MODES: [Mode; 5] = [Mode::Direct, Mode::Kernel, Mode::L7, Mode::HaL4, Mode::HaL7];
/// The columns of a raw TCP measure (no HTTP, so no L7 column).
const L4_MODES: [Mode; 3] = [Mode::Direct, Mode::Kernel, Mode::HaL4];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Kernel => "kernel path",
            Mode::L7 => "L7",
            Mode::HaL4 => "HAProxy L4",
            Mode::HaL7 => "HAProxy L7",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Kernel => "kernel",
            Mode::L7 => "l7",
            Mode::HaL4 => "haproxy_l4",
            Mode::HaL7 => "haproxy_l7",
        }
    }

    /// Whether the client runs in the pod's cgroup, where the socket programs see it.
    fn in_cgroup(self) -> bool {
        matches!(self, Mode::Kernel | Mode::L7)
    }

    fn index(self) -> usize {
        MODES.iter().position(|m| *m == self).unwrap()
    }

    /// `host:port` this column dials for nginx.
    fn http_target(self, server: &str) -> String {
        match self {
            Mode::Direct | Mode::Kernel => format!("{server}:{NGINX}"),
            Mode::L7 => format!("{server}:{NGINX_L7}"),
            Mode::HaL4 => format!("127.0.0.1:{HA_NGINX}"),
            Mode::HaL7 => format!("127.0.0.1:{HA_L7}"),
        }
    }

    /// `(host, port)` this column dials for iperf3.
    fn iperf_target(self, server: &str) -> (String, u16) {
        match self {
            Mode::HaL4 => ("127.0.0.1".into(), HA_IPERF),
            _ => (server.into(), IPERF),
        }
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

// === impl Lab ===

/// The bench's lab (one cluster of two nodes).
type Lab = BenchLab;

impl BenchLab {
    fn netns(&self, pod: &str) -> String {
        format!("st-{}-c1-bench-{pod}", self.name)
    }

    /// `argv` in `pod`'s network namespace: through its cgroup (Strait) or outside it (direct).
    fn command(&self, mode: Mode, pod: &str, argv: &[&str]) -> Command {
        let mut cmd;
        if mode.in_cgroup() {
            cmd = Command::new(STRAIT);
            cmd.env("STRAIT_LAB", &self.name).args([
                "lab",
                "exec",
                &format!("c1/bench/{pod}"),
                "--",
            ]);
        } else {
            // `lab exec` writes itself into the pod's cgroup before entering the namespace;
            // this enters the namespace only, so the socket programs never see the client.
            cmd = Command::new("ip");
            cmd.args(["netns", "exec", &self.netns(pod)]);
        }
        cmd.args(argv);
        cmd
    }

    fn run(&self, mode: Mode, pod: &str, argv: &[&str]) -> Result<String, String> {
        let out = self
            .command(mode, pod, argv)
            .output()
            .map_err(|e| format!("{argv:?}: {e}"))?;
        if !out.status.success() {
            return Err(format!("{argv:?}: {}", text(&out)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn pod_ip(&self, pod: &str) -> String {
        let st = self.status();
        st["pods"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == pod))
            .and_then(|p| p["ip"].as_str())
            .unwrap_or_else(|| panic!("no pod {pod} in {st}"))
            .to_string()
    }

    /// How many flows each node's agent holds.
    fn flows_by_node(&self) -> std::collections::BTreeMap<String, usize> {
        let out = self.strait_ok(&["observe", "-o", "json", "--last", "100000"]);
        let mut by_node = std::collections::BTreeMap::new();
        for line in out.stdout.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let flow: Value = serde_json::from_slice(line).unwrap_or_default();
            let node = flow["node"].as_str().unwrap_or_default().to_string();
            *by_node.entry(node).or_default() += 1;
        }
        by_node
    }

    /// How many flows the client side recorded (`EGRESS`): the server's node also reports
    /// connections that reach its pod (`INGRESS`), whoever made them.
    fn egress_flow_count(&self) -> usize {
        let out = self.strait_ok(&["observe", "-o", "json", "--last", "100000"]);
        out.stdout
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
            .filter(|f| f["direction"] == "EGRESS")
            .count()
    }

    /// The premise of every row: the direct client bypasses Strait on its side (no `EGRESS`
    /// flow is recorded), the Strait client does not (one is).
    fn check_direct_bypasses(&self, server: &str) {
        let url = format!("http://{server}:{NGINX}/");
        let curl = [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "--max-time",
            "5",
            url.as_str(),
        ];
        let before = self.egress_flow_count();
        self.run(Mode::Direct, "client-local", &curl)
            .expect("direct curl");
        std::thread::sleep(Duration::from_millis(500));
        let direct = self.egress_flow_count();
        assert_eq!(direct, before, "the direct client went through Strait");
        self.run(Mode::Kernel, "client-local", &curl)
            .expect("curl through Strait");
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.egress_flow_count() == direct {
            assert!(Instant::now() < deadline, "the Strait client left no flow");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn agent_pid(&self, node: &str) -> i32 {
        let st = self.status();
        st["agents"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["node"] == node))
            .and_then(|a| a["pid"].as_i64())
            .unwrap_or_else(|| panic!("no agent on {node} in {st}")) as i32
    }
}

// === impl Haproxy ===

/// One HAProxy in a client's namespace, outside its cgroup; killed on drop (before the lab goes).
struct Haproxy(Child);

impl Haproxy {
    fn start(lab: &Lab, pod: &str, server: &str) -> Self {
        let conf = format!(
            "global\n  maxconn 8000\n\
             defaults\n  timeout connect 5s\n  timeout client 1m\n  timeout server 1m\n\
             listen nginx\n  mode tcp\n  bind 127.0.0.1:{HA_NGINX}\n  server s {server}:{NGINX}\n\
             listen iperf\n  mode tcp\n  bind 127.0.0.1:{HA_IPERF}\n  server s {server}:{IPERF}\n\
             listen l7\n  mode http\n  bind 127.0.0.1:{HA_L7}\n  option http-keep-alive\n\
             \x20 http-request deny unless {{ path_reg ^/public/.* }}\n  server s {server}:{NGINX}\n"
        );
        let path = lab.dir.join(format!("haproxy-{pod}.cfg"));
        std::fs::write(&path, conf).unwrap();
        let log = std::fs::File::create(lab.dir.join(format!("haproxy-{pod}.log"))).unwrap();
        let child = lab
            .command(
                Mode::HaL4,
                pod,
                &["haproxy", "-db", "-f", path.to_str().unwrap()],
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting haproxy");
        Haproxy(child)
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// === measures ===

/// iperf3 single stream, Gbit/s received.
fn iperf(lab: &Lab, mode: Mode, pod: &str, server: &str) -> Result<f64, String> {
    let (host, port) = mode.iperf_target(server);
    let port = port.to_string();
    let argv = ["iperf3", "-J", "-c", &host, "-p", &port, "-t", SECS];
    let out = lab.run(mode, pod, &argv)?;
    let v: Value = serde_json::from_str(&out).map_err(|e| format!("iperf3 JSON: {e}: {out}"))?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .ok_or_else(|| format!("iperf3: no end.sum_received: {out}"))
}

/// wrk's output, with any non-2xx responses or socket errors turned into an error.
fn wrk(lab: &Lab, mode: Mode, pod: &str, url: &str, args: &[&str]) -> Result<String, String> {
    let mut argv = vec!["wrk", "-d", SECS];
    argv.extend_from_slice(args);
    argv.push(url);
    let out = lab.run(mode, pod, &argv)?;
    if out.contains("Non-2xx") {
        return Err(format!("wrk {url}: non-2xx responses:\n{out}"));
    }
    Ok(out)
}

/// wrk keep-alive (or with `Connection: close`) throughput, requests/s.
fn wrk_rps(lab: &Lab, mode: Mode, pod: &str, url: &str, close: bool) -> Result<f64, String> {
    let mut args = vec!["-t", "2", "-c", "10"];
    if close {
        args.extend(["-H", "Connection: close"]);
    }
    let out = wrk(lab, mode, pod, url, &args)?;
    out.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("wrk: no Requests/sec in:\n{out}"))
}

/// One connection, one request at a time: [p50, p99] in µs from wrk's latency distribution.
fn wrk_latency(lab: &Lab, mode: Mode, pod: &str, url: &str) -> Result<[f64; 2], String> {
    let out = wrk(lab, mode, pod, url, &["-t", "1", "-c", "1", "--latency"])?;
    let pct = |p: &str| {
        out.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(p))
            .and_then(|v| micros(v.trim()))
            .ok_or_else(|| format!("wrk: no {p} latency in:\n{out}"))
    };
    Ok([pct("50%")?, pct("99%")?])
}

/// wrk's duration format (`52.00us`, `1.20ms`, `1.00s`) in µs.
fn micros(v: &str) -> Option<f64> {
    for (unit, scale) in [("us", 1.0), ("ms", 1e3), ("m", 60e6), ("s", 1e6)] {
        if let Some(n) = v.strip_suffix(unit) {
            return n.parse::<f64>().ok().map(|n| n * scale);
        }
    }
    None
}

/// VmRSS of a process, KiB.
fn rss_kib(pid: i32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Holds IDLE_CONNS connections open from `pod` to nginx (one request each, then kept alive)
/// and returns the RSS growth of `pid` per connection, KiB.
fn idle_cost(lab: &Lab, mode: Mode, pod: &str, server: &str, pid: i32) -> Result<f64, String> {
    let t = mode.http_target(server);
    let (host, port) = t.rsplit_once(':').unwrap();
    let n = IDLE_CONNS.to_string();
    let before = rss_kib(pid);
    let mut child = lab
        .command(mode, pod, &["python3", "-c", IDLE_SCRIPT, &n, host, port])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("idle client: {e}"))?;
    let mut line = String::new();
    let stdout = child.stdout.take().unwrap();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| format!("idle client: {e}"))?;
    let result = if line.starts_with("ready") {
        std::thread::sleep(Duration::from_secs(1));
        Ok((rss_kib(pid) - before) / IDLE_CONNS as f64)
    } else {
        Err(format!("idle client did not get {n} connections: {line:?}"))
    };
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.flush();
    drop(stdin);
    let _ = child.wait();
    result
}

/// Waits until each of `ports` listens in `pod`'s namespace; `log` explains why not.
fn wait_listening(lab: &Lab, pod: &str, ports: &[u16], log: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = lab
            .run(Mode::Direct, pod, &["ss", "-Hltn"])
            .unwrap_or_default();
        if ports.iter().all(|p| out.contains(&format!(":{p} "))) {
            return;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(lab.dir.join(log)).unwrap_or_default();
            panic!("{pod} never listened on {ports:?}:\n{out}\n{log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn app(lab: &Lab) -> String {
    let nginx_dir = lab.dir.join("nginx");
    std::fs::create_dir_all(&nginx_dir).unwrap();
    let d = nginx_dir.display();
    // One worker and no access log: the backend should cost the same on every path.
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         worker_rlimit_nofile 20000;\nevents {{ worker_connections 10000; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 10000000;\n\
         \x20 client_body_temp_path {d}/tmp-body;\n  proxy_temp_path {d}/tmp-proxy;\n\
         \x20 fastcgi_temp_path {d}/tmp-fastcgi;\n  uwsgi_temp_path {d}/tmp-uwsgi;\n\
         \x20 scgi_temp_path {d}/tmp-scgi;\n\
         \x20 server {{\n    listen {NGINX};\n    listen {NGINX_L7};\n\
         \x20   location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n"
    );
    let conf_path = nginx_dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: bench}}
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: bench, labels: {{app: server}}}}
spec:
  nodeName: node-1
  containers:
  - name: nginx
    command: [/usr/sbin/nginx, -e, {d}/early-error.log, -c, {conf}]
    ports: [{{containerPort: {NGINX}}}, {{containerPort: {NGINX_L7}}}]
  - name: iperf3
    command: [iperf3, -s, -p, "{IPERF}"]
    ports: [{{containerPort: {IPERF}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client-local, namespace: bench, labels: {{app: client}}}}
spec:
  nodeName: node-1
  containers: [{{name: echo}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client-remote, namespace: bench, labels: {{app: client}}}}
spec:
  nodeName: node-2
  containers: [{{name: echo}}]
"#,
        conf = conf_path.display(),
    )
}

/// The premise of the L7 column: the rule is in force on its port (a path outside it gets 403),
/// and not on the kernel path's port.
fn check_l7_rule(lab: &Lab, server: &str, t: &mut Table) {
    for (mode, want) in [(Mode::L7, "403"), (Mode::Kernel, "200")] {
        let url = format!("http://{}/private", mode.http_target(server));
        let code = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", &url];
        let got = lab.run(mode, "client-remote", &code);
        if got.as_deref() != Ok(want) {
            t.errors.push(format!(
                "{}: /private gave {got:?}, not {want}",
                mode.name()
            ));
        }
    }
}

fn main() {
    let started = Instant::now();
    let lab = BenchLab::up("bd", TOPOLOGY);
    lab.apply("c1", "app.yaml", &app(&lab));
    lab.apply("c1", "policy.yaml", POLICY);
    wait_listening(&lab, "server", &[NGINX, NGINX_L7, IPERF], "nginx/error.log");
    let server = lab.pod_ip("server");
    let agent = lab.agent_pid("node-1");
    // Declared after the lab: dropped (killed) before it goes down.
    let ha_local = Haproxy::start(&lab, "client-local", &server);
    let ha_remote = Haproxy::start(&lab, "client-remote", &server);
    for pod in ["client-local", "client-remote"] {
        let log = format!("haproxy-{pod}.log");
        wait_listening(&lab, pod, &[HA_NGINX, HA_IPERF, HA_L7], &log);
    }
    std::thread::sleep(Duration::from_secs(1));
    let rss_fresh = rss_kib(agent);
    lab.check_direct_bypasses(&server);

    let mut t = Table::default();
    check_l7_rule(&lab, &server, &mut t);
    let url = |mode: Mode| format!("http://{}/public/x", mode.http_target(&server));
    let (local, remote) = ("client-local", "client-remote");
    let places = [(local, "same node"), (remote, "across nodes")];
    for (pod, place) in places {
        let measure = format!("iperf3 single stream, {place}");
        t.throughput(&measure, "Gbit/s", &L4_MODES, [Some(0.95), None], |m| {
            iperf(&lab, m, pod, &server)
        });
    }
    // Node-1's L7 requests (same node) fill its flow ring: one flow per request.
    for (pod, place) in places {
        let measure = format!("HTTP/1.1 keep-alive, wrk 10 conns, {place}");
        t.throughput(&measure, "req/s", &MODES, [Some(0.95), Some(0.6)], |m| {
            wrk_rps(&lab, m, pod, &url(m), false)
        });
    }
    for (pod, place) in places {
        let measure = format!("one connection, request latency, {place},");
        t.latency(&measure, |m| wrk_latency(&lab, m, pod, &url(m)));
    }
    let measure = "new connections/s (Connection: close), across nodes";
    t.throughput(measure, "conn/s", &MODES, [Some(0.95), None], |m| {
        wrk_rps(&lab, m, remote, &url(m), true)
    });

    // Memory, node-1's agent: after the load with its ring full, then 2,000 idle connections
    // to the L7 port (only those are proxied once the kernel path lands), then after they close.
    std::thread::sleep(Duration::from_secs(1));
    let ring = lab.flows_by_node().get("node-1").copied().unwrap_or(0);
    if ring < FLOW_RING {
        t.errors.push(format!(
            "node-1's flow ring holds {ring} flows, not {FLOW_RING}"
        ));
    }
    let rss_after = rss_kib(agent);
    let idle = idle_cost(&lab, Mode::L7, local, &server, agent);
    let idle = t.keep("idle connections (L7)", idle);
    std::thread::sleep(Duration::from_secs(3));
    let rss_closed = rss_kib(agent);
    let idle_ha = idle_cost(&lab, Mode::HaL7, local, &server, ha_local.pid());
    let idle_ha = t.keep("idle connections (HAProxy L7)", idle_ha);
    let mib = |m: f64| m * 1024.0;
    let agent_row = |measure: &str, v: f64, max: Option<f64>| {
        let mut figs = [None; 5];
        figs[Mode::L7.index()] = Some(v);
        let row = Row::new(measure, "KiB", false, figs);
        match max {
            Some(m) => row.target(Mode::L7, Target::Max(m)),
            None => row,
        }
    };
    t.push(agent_row(
        "agent RSS fresh (node-1)",
        rss_fresh,
        Some(mib(16.0)),
    ));
    let full = format!("agent RSS after the load, flow ring full ({ring} flows)");
    t.push(agent_row(&full, rss_after, Some(mib(24.0))));
    let per_idle = format!("RSS per idle proxied connection ({IDLE_CONNS} open)");
    let mut figs = [None; 5];
    figs[Mode::L7.index()] = idle;
    figs[Mode::HaL7.index()] = idle_ha;
    t.push(Row::new(&per_idle, "KiB", false, figs).target(Mode::L7, Target::Max(8.0)));
    let closed = "agent RSS 3 s after the idle connections closed";
    t.push(agent_row(closed, rss_closed, None));
    drop((ha_local, ha_remote));
    drop(lab);

    t.print();
    let rows: Vec<Value> = t.rows.iter().map(Row::json).collect();
    let missed: Vec<String> = t
        .rows
        .iter()
        .flat_map(|r| {
            MODES
                .iter()
                .filter(|m| r.met(**m) == Some(false))
                .map(move |m| format!("{}: {}", r.measure, m.name()))
        })
        .collect();
    println!(
        "{}",
        json!({
            "bench": "datapath",
            "seconds_per_run": SECS.parse::<u32>().unwrap_or(0),
            "rounds": ROUNDS,
            "idle_connections": IDLE_CONNS,
            "elapsed_s": started.elapsed().as_secs(),
            "rows": rows,
            "targets_missed": missed,
            "errors": t.errors,
        })
    );
    if !t.errors.is_empty() {
        std::process::exit(1);
    }
}
