//! Metrics end to end: the agents' exposition passes `promtool check metrics`, and a real
//! Prometheus server scraping the lab's agents counts exactly the requests the test sent.
//! Also checks the Grafana dashboard only uses metrics Strait exports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// Backend on node-1 with an L7 policy, frontend and a stray pod on node-2.
const APP: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: demo}
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

const ALLOWED: usize = 17;
const DENIED: usize = 5;

fn netns(lab: &TestLab, node: &str) -> String {
    format!("st-{}-c1-{node}", lab.name)
}

fn underlay_ips(lab: &TestLab) -> Vec<String> {
    let st = lab.status();
    st["topology"]["clusters"][0]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["underlay_ip"].as_str().unwrap().to_string())
        .collect()
}

/// Sends the known traffic: ALLOWED GETs of /public, DENIED of /private, one refused connect.
fn traffic(lab: &TestLab) {
    let mut urls: Vec<String> = (0..ALLOWED)
        .map(|i| format!("http://backend/public/{i}"))
        .collect();
    urls.extend((0..DENIED).map(|i| format!("http://backend/private/{i}")));
    let mut args = vec!["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}\n"];
    args.extend(urls.iter().map(String::as_str));
    let out = lab.exec("c1/demo/deploy/frontend", &args);
    let codes = String::from_utf8_lossy(&out.stdout);
    assert_eq!(codes.lines().filter(|c| *c == "200").count(), ALLOWED);
    assert_eq!(codes.lines().filter(|c| *c == "403").count(), DENIED);
    let out = lab.curl("c1/demo/other", "http://backend/");
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
}

fn scrape(lab: &TestLab, node: &str) -> String {
    let sock = format!("/run/strait/labs/{}/nodes/c1-{node}/admin.sock", lab.name);
    let out = Command::new("curl")
        .args(["-sS", "--unix-socket", &sock, "http://agent/metrics"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn promtool_accepts_the_exposition() {
    let lab = TestLab::up("metrics_promtool", ONE_CLUSTER);
    lab.apply_ok("c1", APP);
    traffic(&lab);
    for node in ["node-1", "node-2"] {
        let body = scrape(&lab, node);
        for name in [
            "strait_build_info",
            "strait_flows_total",
            "strait_connections_total",
            "strait_ebpf_map_entries",
            "strait_ebpf_program_attached",
            "strait_policy_revision",
        ] {
            assert!(
                body.contains(&format!("\n{name}")),
                "{node}: {name} missing"
            );
        }
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool on {node}: {}\n{body}",
            text(&out)
        );
    }
    // The source node counted the requests with bounded labels, no pod names.
    let body = scrape(&lab, "node-2");
    let line = body
        .lines()
        .find(|l| {
            l.starts_with("strait_http_requests_total{") && l.contains("status_class=\"4xx\"")
        })
        .unwrap_or_else(|| panic!("no 4xx requests in\n{body}"));
    assert!(line.contains("source_workload=\"frontend\""), "{line}");
    assert!(line.contains("destination_workload=\"backend\""), "{line}");
    assert!(line.ends_with(&format!(" {DENIED}")), "{line}");
    assert!(!body.contains("frontend-"), "no pod names by default");
    assert!(
        body.lines()
            .any(|l| l == "strait_drops_total{reason=\"POLICY_DENIED\",decided_by=\"kernel\"} 1"),
        "{body}"
    );
}

/// A Prometheus server in node-1's network namespace (it reaches every agent's admin port on
/// the underlay), listening on that namespace's loopback; killed on drop.
struct Prometheus {
    child: Child,
    netns: String,
    port: u16,
    dir: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Prometheus {
    fn start(lab: &TestLab, targets: &[String]) -> Self {
        let dir = lab.dir.join("prometheus");
        std::fs::create_dir_all(&dir).unwrap();
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}:9876'")).collect();
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n\
             - job_name: strait\n\
             \x20 metrics_path: /metrics\n\
             \x20 static_configs: [{{targets: [{}]}}]\n",
            targets.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = 19090;
        let netns = netns(lab, "node-1");
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &netns, "prometheus"])
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Self {
            child,
            netns,
            port,
            dir,
        }
    }

    /// Runs an instant query through the HTTP API; `None` until Prometheus answers.
    fn query(&self, q: &str) -> Option<Value> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.netns, "curl", "-sS", "-m", "2", "-G"])
            .arg(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .args(["--data-urlencode", &format!("query={q}")])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["status"] == "success").then(|| v["data"]["result"].clone())
    }

    /// The single value of a scalar-like query, once Prometheus has one.
    fn value(&self, q: &str) -> Option<f64> {
        let r = self.query(q)?;
        r.get(0)?["value"][1].as_str()?.parse().ok()
    }

    fn wait_for(&self, q: &str, want: f64) {
        let deadline = Instant::now() + Duration::from_secs(40);
        let mut last = None;
        while Instant::now() < deadline {
            last = self.value(q);
            if last == Some(want) {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let log = std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        panic!("{q}: wanted {want}, last {last:?}\nprometheus log:\n{log}");
    }
}

#[test]
fn prometheus_counts_exactly_the_requests_sent() {
    let lab = TestLab::up("metrics_prometheus", ONE_CLUSTER);
    lab.apply_ok("c1", APP);
    let prom = Prometheus::start(&lab, &underlay_ips(&lab));
    // Every agent is a healthy target before traffic starts.
    prom.wait_for("sum(up{job=\"strait\"})", 2.0);
    traffic(&lab);
    prom.wait_for(
        "sum(strait_http_requests_total{status_class=\"2xx\",destination_workload=\"backend\"})",
        ALLOWED as f64,
    );
    prom.wait_for(
        "sum(strait_http_requests_total{status_class=\"4xx\",destination_workload=\"backend\"})",
        DENIED as f64,
    );
    prom.wait_for(
        "sum(strait_drops_total{reason=\"POLICY_DENIED\",decided_by=\"kernel\"})",
        1.0,
    );
    prom.wait_for(
        "sum(strait_http_request_duration_seconds_count{destination_workload=\"backend\"})",
        (ALLOWED + DENIED) as f64,
    );
    prom.wait_for("count(strait_build_info)", 2.0);
}

/// Every `strait_*` metric the Grafana dashboard queries exists.
#[test]
fn dashboard_uses_only_exported_metrics() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/strait-dashboard.json"
    );
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let known = strait::metrics::names::ALL;
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() >= 10, "{} queries", exprs.len());
    let re = regex::Regex::new(r"strait_[a-z0-9_]+").unwrap();
    let mut used = 0;
    for e in &exprs {
        for m in re.find_iter(e) {
            let name = m.as_str();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|b| known.contains(b))
                .unwrap_or(name);
            assert!(
                known.contains(&base),
                "{name} in {e:?} is not a Strait metric"
            );
            used += 1;
        }
    }
    assert!(used >= 15, "dashboard uses {used} metrics");
}
