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

const ALLOWED: usize = 17;
const DENIED: usize = 5;

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
    lab.apply_ok("c1", L7_APP);
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
    // L7 connections count their bytes too (the requests' flows carry none).
    let sent = body
        .lines()
        .find_map(|l| l.strip_prefix("strait_proxy_bytes_total{direction=\"sent\"} "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(sent > 100 * ALLOWED as u64, "bytes sent {sent}\n{body}");
    assert!(
        body.lines()
            .any(|l| l == "strait_drops_total{reason=\"POLICY_DENIED\",decided_by=\"kernel\"} 1"),
        "{body}"
    );
}

/// A Prometheus server on the loopback of the lab's underlay namespace, from where it scrapes
/// every agent's admin port over the underlay as a monitoring system outside the nodes would;
/// killed on drop.
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
        let netns = format!("st-{}-ul", lab.name);
        let dir = lab.dir.join("prometheus");
        std::fs::create_dir_all(&dir).unwrap();
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}:9876'")).collect();
        let config = format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n\
             - job_name: strait\n\
             \x20 metrics_path: /metrics\n\
             \x20 static_configs: [{{targets: [{}]}}]\n",
            targets.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        // The namespace's loopback is the lab's own, so a fixed port cannot collide.
        let port = 19090;
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
    fn query(&self, q: &str) -> Option<Vec<Value>> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.netns, "curl", "-sS", "-m", "2", "-G"])
            .arg(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .args(["--data-urlencode", &format!("query={q}")])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["status"] == "success").then(|| v["data"]["result"].as_array().cloned())?
    }

    /// Polls `q` until `ok` accepts its result (30 s at most).
    fn wait_until(&self, q: &str, what: &str, ok: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = None;
        while Instant::now() < deadline {
            last = self.query(q);
            if last.as_deref().is_some_and(&ok) {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let log = std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        panic!("{q}: wanted {what}, last result {last:?}\nprometheus log:\n{log}");
    }

    /// Polls a single-valued query until it equals `want`.
    fn wait_for(&self, q: &str, want: f64) {
        self.wait_until(q, &want.to_string(), |r| {
            r.len() == 1 && sample(&r[0]) == Some(want)
        });
    }
}

/// The value of one instant-vector sample.
fn sample(v: &Value) -> Option<f64> {
    v["value"][1].as_str()?.parse().ok()
}

#[test]
fn prometheus_counts_exactly_the_requests_sent() {
    let lab = TestLab::up("metrics_prometheus", ONE_CLUSTER);
    lab.apply_ok("c1", L7_APP);
    let agents = underlay_ips(&lab);
    let prom = Prometheus::start(&lab, &agents);
    // Every agent is a target and scraped successfully before traffic starts.
    prom.wait_until(
        "up{job=\"strait\"}",
        &format!("up == 1 for all {} agents", agents.len()),
        |r| {
            r.len() == agents.len()
                && r.iter().all(|s| sample(s) == Some(1.0))
                && agents.iter().all(|ip| {
                    r.iter()
                        .any(|s| s["metric"]["instance"] == format!("{ip}:9876").as_str())
                })
        },
    );
    traffic(&lab);
    // Summed over every agent: each request is counted once, on the node that proxied it.
    prom.wait_for(
        "sum(strait_http_requests_total{status_class=\"2xx\"})",
        ALLOWED as f64,
    );
    prom.wait_for(
        "sum(strait_http_requests_total{status_class=\"4xx\"})",
        DENIED as f64,
    );
    // With the labels a dashboard groups by.
    prom.wait_for(
        "sum(strait_http_requests_total{method=\"GET\",status_class=\"2xx\",\
         source_namespace=\"demo\",source_workload=\"frontend\",\
         destination_namespace=\"demo\",destination_workload=\"backend\"})",
        ALLOWED as f64,
    );
    prom.wait_for(
        "sum(strait_http_request_duration_seconds_count{destination_workload=\"backend\"})",
        (ALLOWED + DENIED) as f64,
    );
    prom.wait_for(
        "sum(strait_http_request_duration_seconds_bucket{le=\"+Inf\"})",
        (ALLOWED + DENIED) as f64,
    );
    prom.wait_for(
        "sum(strait_flows_total{protocol=\"HTTP/1.1\",verdict=\"FORWARDED\"})",
        ALLOWED as f64,
    );
    prom.wait_for(
        "sum(strait_flows_total{protocol=\"HTTP/1.1\",verdict=\"DROPPED\"})",
        DENIED as f64,
    );
    // The connect the kernel refused, as a flow and in the programs' own counter; the requests
    // the proxy answered 403, as drops decided there.
    prom.wait_for(
        "sum(strait_drops_total{reason=\"POLICY_DENIED\",decided_by=\"kernel\"})",
        1.0,
    );
    prom.wait_for(
        "sum(strait_kernel_drops_total{reason=\"POLICY_DENIED\"})",
        1.0,
    );
    prom.wait_for(
        "sum(strait_drops_total{reason=\"POLICY_DENIED\",decided_by=\"proxy\"})",
        DENIED as f64,
    );
    prom.wait_for("count(strait_build_info)", agents.len() as f64);
    prom.wait_for("min(strait_ebpf_program_attached)", 1.0);
    prom.wait_until(
        "strait_policy_revision",
        "a revision in force on every agent",
        |r| r.len() == agents.len() && r.iter().all(|s| sample(s).is_some_and(|v| v > 0.0)),
    );
}

/// Panels of a dashboard, including those inside collapsed rows.
fn panels(v: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in v["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(panels(p));
    }
    out
}

/// The Grafana dashboard queries only metrics Strait exports (and every one of them), through
/// the data source variable, in PromQL that Prometheus parses.
#[test]
fn dashboard_uses_only_exported_metrics() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/strait-dashboard.json"
    );
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 36);
    assert_eq!(dash["__inputs"][0]["name"], "DS_PROMETHEUS");
    let vars = dash["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource"),
        "a data source variable"
    );
    let known = strait::metrics::names::ALL;
    let mut exprs = Vec::new();
    for panel in panels(&dash) {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap();
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        for t in panel["targets"].as_array().into_iter().flatten() {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() >= 10, "{} queries", exprs.len());
    let re = regex::Regex::new(r"strait_[a-z0-9_]+").unwrap();
    let mut used = std::collections::BTreeSet::new();
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
            used.insert(base);
        }
    }
    let unused: Vec<_> = known.iter().filter(|n| !used.contains(*n)).collect();
    assert!(unused.is_empty(), "metrics without a panel: {unused:?}");

    // Every query parses: as recording rules for `promtool check rules`, with Grafana's
    // variables replaced by what Grafana would put there.
    let vars = regex::Regex::new(r"\$\{?(\w+)\}?").unwrap();
    let mut rules = String::from("groups:\n- name: dashboard\n  rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = vars.replace_all(e, |c: &regex::Captures<'_>| match &c[1] {
            "__rate_interval" | "__interval" | "__range" => "1m".to_string(),
            _ => ".*".to_string(),
        });
        rules.push_str(&format!(
            "  - record: dashboard:query_{i}\n    expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    let file = std::env::temp_dir().join(format!("strait-dashboard-rules-{}.yml", rand_suffix()));
    std::fs::write(&file, &rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool (Debian's prometheus package; scripts/setup.sh installs it)");
    let _ = std::fs::remove_file(&file);
    assert!(out.status.success(), "{}\n{rules}", text(&out));
}
