//! Today's data path against the same commands run "direct": a lab of one cluster, two nodes, a
//! server pod (nginx, iperf3, echo) on node-1 and a client pod on each node. Every measure runs
//! three ways in the same run: direct (the client's network namespace, outside its cgroup, so
//! `connect4` does not redirect it; tc is still on the path), through Strait (inside the pod's
//! cgroup, as `strait lab exec` runs it), and through HAProxy (Debian's 2.6, run like a sidecar in
//! the client's namespace outside the cgroup, L4 or L7 with a path ACL). Ratios are against the
//! direct figure of the same run. Agent RSS is read fresh, after the load and with 2,000 idle
//! proxied connections. The last line printed is a JSON summary.
//!
//! `cargo bench -p strait --bench datapath` (root; `scripts/setup.sh` installs iperf3, wrk,
//! haproxy and nginx). Traffic stays inside the lab's namespaces.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const STRAIT: &str = env!("CARGO_BIN_EXE_strait");
/// Seconds of each run; every measure takes ROUNDS runs per mode, interleaved.
const SECS: &str = "1";
const ROUNDS: usize = 3;
/// Idle proxied connections held open for the memory measure.
const IDLE_CONNS: usize = 2000;
const NGINX: u16 = 8080;
const IPERF: u16 = 5201;
const ECHO: u16 = 9000;
/// HAProxy listens on these in each client's namespace (loopback), forwarding to the server.
const HA_NGINX: u16 = 18080;
const HA_IPERF: u16 = 15201;
const HA_L7: u16 = 18081;
const HA_ECHO: u16 = 19000;
/// Not a port: nginx, which HAProxy mode reaches through its L7 listener (the path ACL).
const L7: u16 = 0;

const TOPOLOGY: &str = "clusters:
  - name: c1
    id: 1
    podCIDR: 198.18.16.0/20
    serviceCIDR: 198.19.1.0/24
    nodes: 2
";

/// The L7 rule of the "HTTP with an L7 path rule" row: clients may `GET /public/.*` only (and
/// reach the echo port, which the idle connections use, at L4).
const L7_POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-l7, namespace: bench}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/public/.*"}]
    - ports: [{port: "9000", protocol: TCP}]
"#;

/// Opens N connections to HOST:PORT, sends 4 bytes on each and reads the echo (so every
/// connection is fully established through any proxy), prints `ready`, then holds them until
/// stdin closes.
const IDLE_SCRIPT: &str = "import resource, socket, sys
n, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
socks = []
for _ in range(n):
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(b'idle')
    got = b''
    while len(got) < 4:
        got += s.recv(4 - len(got))
    socks.append(s)
print('ready', len(socks), flush=True)
sys.stdin.read()
";

/// Where a measure's client runs and which address it targets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Direct,
    Strait,
    Haproxy,
}

const MODES: [Mode; 3] = [Mode::Direct, Mode::Strait, Mode::Haproxy];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Strait => "strait",
            Mode::Haproxy => "haproxy",
        }
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

// === impl Lab ===

/// The bench's own lab; `lab down` on drop, also when a measure panics.
struct Lab {
    name: String,
    dir: PathBuf,
}

impl Lab {
    fn up() -> Self {
        let name = format!("bd{:x}", std::process::id());
        let dir = std::env::temp_dir().join(format!("strait-bench-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("topology.yaml"), TOPOLOGY).unwrap();
        let lab = Lab { name, dir };
        let topo = lab.dir.join("topology.yaml");
        lab.strait_ok(&["lab", "up", "-f", topo.to_str().unwrap()]);
        lab
    }

    fn strait(&self, args: &[&str]) -> Output {
        Command::new(STRAIT)
            .args(args)
            .env("STRAIT_LAB", &self.name)
            .output()
            .expect("running strait")
    }

    fn strait_ok(&self, args: &[&str]) -> Output {
        let out = self.strait(args);
        assert!(out.status.success(), "strait {args:?}: {}", text(&out));
        out
    }

    fn apply(&self, file: &str, yaml: &str) {
        let f = self.dir.join(file);
        std::fs::write(&f, yaml).unwrap();
        self.strait_ok(&["lab", "apply", "--cluster", "c1", "-f", f.to_str().unwrap()]);
    }

    fn netns(&self, pod: &str) -> String {
        format!("st-{}-c1-bench-{pod}", self.name)
    }

    /// `argv` in `pod`'s network namespace: through its cgroup (Strait) or outside it (direct).
    fn command(&self, mode: Mode, pod: &str, argv: &[&str]) -> Command {
        let mut cmd;
        if mode == Mode::Strait {
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

    fn status(&self) -> Value {
        let out = self.strait_ok(&["lab", "status", "-o", "json"]);
        serde_json::from_slice(&out.stdout).expect("lab status JSON")
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

    /// How many flows the lab's agents hold.
    fn flow_count(&self) -> usize {
        let out = self.strait_ok(&["observe", "-o", "json", "--last", "100000"]);
        out.stdout
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count()
    }

    /// The premise of every row: the direct client bypasses the proxy (no flow is recorded),
    /// the Strait client does not (a flow is).
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
        let before = self.flow_count();
        self.run(Mode::Direct, "client-local", &curl)
            .expect("direct curl");
        std::thread::sleep(Duration::from_millis(500));
        let direct = self.flow_count();
        assert_eq!(direct, before, "the direct client went through the proxy");
        self.run(Mode::Strait, "client-local", &curl)
            .expect("curl through Strait");
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.flow_count() == direct {
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

impl Drop for Lab {
    fn drop(&mut self) {
        let out = self.strait(&["lab", "down"]);
        if !out.status.success() {
            eprintln!("lab down failed: {}", text(&out));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
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
             listen echo\n  mode tcp\n  bind 127.0.0.1:{HA_ECHO}\n  server s {server}:{ECHO}\n\
             listen l7\n  mode http\n  bind 127.0.0.1:{HA_L7}\n\
             \x20 http-request deny unless {{ path_reg ^/public/.* }}\n  server s {server}:{NGINX}\n"
        );
        let path = lab.dir.join(format!("haproxy-{pod}.cfg"));
        std::fs::write(&path, conf).unwrap();
        let log = std::fs::File::create(lab.dir.join(format!("haproxy-{pod}.log"))).unwrap();
        let child = lab
            .command(
                Mode::Haproxy,
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

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Host and port a client in `mode` dials for `port` of the server; `L7` is nginx, through
/// HAProxy's L7 listener in HAProxy mode.
fn target(mode: Mode, server: &str, port: u16) -> String {
    let ha = match port {
        NGINX => HA_NGINX,
        IPERF => HA_IPERF,
        ECHO => HA_ECHO,
        _ => HA_L7,
    };
    match mode {
        Mode::Haproxy => format!("127.0.0.1:{ha}"),
        _ if port == L7 => format!("{server}:{NGINX}"),
        _ => format!("{server}:{port}"),
    }
}

/// iperf3 single stream, Gbit/s received.
fn iperf(lab: &Lab, mode: Mode, pod: &str, server: &str) -> Result<f64, String> {
    let t = target(mode, server, IPERF);
    let (host, port) = t.rsplit_once(':').unwrap();
    let out = lab.run(
        mode,
        pod,
        &["iperf3", "-J", "-c", host, "-p", port, "-t", SECS],
    )?;
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

/// Holds IDLE_CONNS connections open from `pod` and returns the RSS growth of `pid` per
/// connection, KiB.
fn idle_cost(lab: &Lab, mode: Mode, pod: &str, server: &str, pid: i32) -> Result<f64, String> {
    let t = target(mode, server, ECHO);
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

// === the table ===

/// One table row: a figure per column (None where it does not apply or failed).
struct Row {
    measure: String,
    unit: &'static str,
    /// Higher is better (throughput) rather than lower (latency, memory).
    higher: bool,
    direct: Option<f64>,
    strait: Option<f64>,
    haproxy: Option<f64>,
}

impl Row {
    fn new(measure: &str, unit: &'static str, higher: bool, figs: [Option<f64>; 3]) -> Self {
        let [direct, strait, haproxy] = figs;
        Row {
            measure: measure.into(),
            unit,
            higher,
            direct,
            strait,
            haproxy,
        }
    }

    /// Against direct: a factor for throughput, the added time for latency.
    fn ratio(&self, v: Option<f64>) -> Option<String> {
        let (d, v) = (self.direct?, v?);
        Some(if self.higher {
            format!("{:.2}×", v / d)
        } else {
            format!("{:+.0} µs", v - d)
        })
    }

    fn json(&self) -> Value {
        json!({
            "measure": self.measure, "unit": self.unit,
            "direct": self.direct, "strait": self.strait, "haproxy": self.haproxy,
            "strait_ratio": self.ratio(self.strait), "haproxy_ratio": self.ratio(self.haproxy),
        })
    }
}

/// Collects rows, printing each as it is measured and reporting failures once.
#[derive(Default)]
struct Table {
    rows: Vec<Row>,
    errors: Vec<String>,
}

impl Table {
    fn keep<T>(&mut self, what: &str, r: Result<T, String>) -> Option<T> {
        r.map_err(|e| {
            eprintln!("datapath: {what}: {e}");
            self.errors.push(format!("{what}: {e}"));
        })
        .ok()
    }

    /// Runs `f` ROUNDS times for each of `modes`, the modes interleaved within each round so
    /// that the machine's other load drifts over all of them alike; returns, per mode, the
    /// median of each figure `f` yields (throughput: one; latency: p50 and p99).
    fn sample<const N: usize>(
        &mut self,
        what: &str,
        modes: &[Mode],
        mut f: impl FnMut(Mode) -> Result<[f64; N], String>,
    ) -> Vec<[Option<f64>; N]> {
        let mut got: Vec<Vec<[f64; N]>> = vec![Vec::new(); modes.len()];
        for _ in 0..ROUNDS {
            for (i, &m) in modes.iter().enumerate() {
                if let Some(v) = self.keep(&format!("{what} ({})", m.name()), f(m)) {
                    got[i].push(v);
                }
            }
        }
        got.into_iter()
            .map(|runs| std::array::from_fn(|k| median(runs.iter().map(|r| r[k]).collect())))
            .collect()
    }

    /// One row of throughput, each mode sampled by `f`.
    fn throughput(
        &mut self,
        measure: &str,
        unit: &'static str,
        f: impl FnMut(Mode) -> Result<f64, String>,
    ) {
        let mut f = f;
        let v = self.sample(measure, &MODES, |m| f(m).map(|x| [x]));
        self.push(Row::new(measure, unit, true, [v[0][0], v[1][0], v[2][0]]));
    }

    /// A p50 row and a p99 row, each mode sampled by `f`.
    fn latency(&mut self, measure: &str, f: impl FnMut(Mode) -> Result<[f64; 2], String>) {
        let v = self.sample(measure, &MODES, f);
        for (k, p) in ["p50", "p99"].into_iter().enumerate() {
            let figs = [v[0][k], v[1][k], v[2][k]];
            self.push(Row::new(&format!("{measure} {p}"), "µs", false, figs));
        }
    }

    fn push(&mut self, row: Row) {
        eprintln!(
            "datapath: {}: direct {:?} strait {:?} haproxy {:?} {}",
            row.measure, row.direct, row.strait, row.haproxy, row.unit
        );
        self.rows.push(row);
    }

    fn print(&self) {
        let fig = |v: Option<f64>, unit: &str| match v {
            Some(v) if unit == "Gbit/s" => format!("{v:.2} {unit}"),
            Some(v) => format!("{v:.0} {unit}"),
            None => String::new(),
        };
        println!("| measure | direct | strait | ratio | haproxy | ratio |");
        println!("|---|---|---|---|---|---|");
        for r in &self.rows {
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                r.measure,
                fig(r.direct, r.unit),
                fig(r.strait, r.unit),
                r.ratio(r.strait).unwrap_or_default(),
                fig(r.haproxy, r.unit),
                r.ratio(r.haproxy).unwrap_or_default(),
            );
        }
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
         \x20 server {{\n    listen {NGINX};\n    location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n"
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
    ports: [{{containerPort: {NGINX}}}]
  - name: iperf3
    command: [iperf3, -s, -p, "{IPERF}"]
    ports: [{{containerPort: {IPERF}}}]
  - name: echo
    ports: [{{containerPort: {ECHO}}}]
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

fn main() {
    let started = Instant::now();
    let lab = Lab::up();
    lab.apply("app.yaml", &app(&lab));
    wait_listening(&lab, "server", &[NGINX, IPERF, ECHO], "nginx/error.log");
    let server = lab.pod_ip("server");
    let agent = lab.agent_pid("node-1");
    // Declared after the lab: dropped (killed) before it goes down.
    let ha_local = Haproxy::start(&lab, "client-local", &server);
    let ha_remote = Haproxy::start(&lab, "client-remote", &server);
    for pod in ["client-local", "client-remote"] {
        let log = format!("haproxy-{pod}.log");
        wait_listening(&lab, pod, &[HA_NGINX, HA_IPERF, HA_L7, HA_ECHO], &log);
    }
    std::thread::sleep(Duration::from_secs(1));
    let rss_fresh = rss_kib(agent);
    lab.check_direct_bypasses(&server);

    let mut t = Table::default();
    let url = |mode: Mode| format!("http://{}/", target(mode, &server, NGINX));
    let l7_url = |mode: Mode| format!("http://{}/public/x", target(mode, &server, L7));
    let (local, remote) = ("client-local", "client-remote");
    for (pod, place) in [(local, "same node"), (remote, "across nodes")] {
        t.throughput(&format!("iperf3 single stream, {place}"), "Gbit/s", |m| {
            iperf(&lab, m, pod, &server)
        });
    }
    for (pod, place) in [(local, "same node"), (remote, "across nodes")] {
        let measure = format!("HTTP/1.1 keep-alive, wrk 10 conns, L4, {place}");
        t.throughput(&measure, "req/s", |m| wrk_rps(&lab, m, pod, &url(m), false));
    }
    for (pod, place) in [(local, "same node"), (remote, "across nodes")] {
        let measure = format!("one connection, request latency, L4, {place},");
        t.latency(&measure, |m| wrk_latency(&lab, m, pod, &url(m)));
    }
    let measure = "new connections/s (Connection: close), across nodes";
    t.throughput(measure, "conn/s", |m| {
        wrk_rps(&lab, m, remote, &url(m), true)
    });

    // L7: direct and HAProxy (its path ACL) before the rule, Strait after: with the rule in
    // force, tc would judge direct traffic to that port.
    let l7 = "HTTP with an L7 path rule, wrk 10 conns, across nodes";
    let l7_lat = "one connection, request latency, L7 path rule, across nodes,";
    let pre = [Mode::Direct, Mode::Haproxy];
    let rps = |m| wrk_rps(&lab, m, remote, &l7_url(m), false).map(|x| [x]);
    let lat = |m| wrk_latency(&lab, m, remote, &l7_url(m));
    let pre_rps = t.sample(l7, &pre, rps);
    let pre_lat = t.sample(l7_lat, &pre, lat);
    lab.apply("l7.yaml", L7_POLICY);
    std::thread::sleep(Duration::from_secs(1));
    // The rule must be in force, or the row would measure L4.
    let private = format!("http://{server}:{NGINX}/private");
    let code = [
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &private,
    ];
    let denied = lab.run(Mode::Strait, remote, &code);
    if denied.as_deref() != Ok("403") {
        t.errors
            .push(format!("L7 rule not in force: /private gave {denied:?}"));
    }
    let post_rps = t.sample(l7, &[Mode::Strait], rps);
    let post_lat = t.sample(l7_lat, &[Mode::Strait], lat);
    let figs = [pre_rps[0][0], post_rps[0][0], pre_rps[1][0]];
    t.push(Row::new(l7, "req/s", true, figs));
    for (k, p) in ["p50", "p99"].into_iter().enumerate() {
        let figs = [pre_lat[0][k], post_lat[0][k], pre_lat[1][k]];
        t.push(Row::new(&format!("{l7_lat} {p}"), "µs", false, figs));
    }

    // Memory: the load above has filled the flow ring; the idle connections go to the echo
    // port, which the policy allows at L4.
    std::thread::sleep(Duration::from_secs(1));
    let rss_after = rss_kib(agent);
    let idle_strait = idle_cost(&lab, Mode::Strait, local, &server, agent);
    let idle_strait = t.keep("idle connections (strait)", idle_strait);
    // The idle connections are gone: what the agent keeps of them.
    std::thread::sleep(Duration::from_secs(3));
    let rss_closed = rss_kib(agent);
    let idle_ha = idle_cost(&lab, Mode::Haproxy, local, &server, ha_local.pid());
    let idle_ha = t.keep("idle connections (haproxy)", idle_ha);
    let rss = |measure, s, h| Row::new(measure, "KiB", false, [None, s, h]);
    t.push(rss("agent RSS fresh (node-1)", Some(rss_fresh), None));
    t.push(rss(
        "agent RSS after the load (node-1)",
        Some(rss_after),
        None,
    ));
    let per_idle = format!("RSS per idle proxied connection ({IDLE_CONNS} open)");
    t.push(rss(&per_idle, idle_strait, idle_ha));
    t.push(rss(
        "agent RSS 3 s after the idle connections closed (node-1)",
        Some(rss_closed),
        None,
    ));
    drop((ha_local, ha_remote));
    drop(lab);

    t.print();
    let rows: Vec<Value> = t.rows.iter().map(Row::json).collect();
    println!(
        "{}",
        json!({
            "bench": "datapath",
            "seconds_per_run": SECS.parse::<u32>().unwrap_or(0),
            "rounds": ROUNDS,
            "idle_connections": IDLE_CONNS,
            "elapsed_s": started.elapsed().as_secs(),
            "rows": rows,
            "errors": t.errors,
        })
    );
    if !t.errors.is_empty() {
        std::process::exit(1);
    }
}
