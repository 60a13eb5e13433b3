//! End-to-end test of `strait ui`: a lab where policy allows one client to the backend and denies
//! another, the UI's JSON API over both agents, and the page as headless Chromium renders it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use regex::Regex;
use serde_json::Value;
use strait::flows::{Direction, Verdict};
use support::*;

const ALLOWED_CURLS: u64 = 3;
const DENIED_CONNECTS: u64 = 2;

/// `strait ui` running against the lab; killed on drop.
struct UiServer {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl UiServer {
    fn start(lab: &TestLab) -> Self {
        // A port nobody uses now; the UI binds it a moment later.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = lab.dir.join("ui.log");
        let child = Command::new(STRAIT)
            .args(["ui", "--listen", &format!("127.0.0.1:{port}")])
            .env("STRAIT_LAB", &lab.name)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut ui = UiServer { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok((200, _)) = http_get(port, "/api/info") {
                return ui;
            }
            if let Ok(Some(status)) = ui.child.try_wait() {
                panic!("strait ui exited with {status}: {}", ui.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "strait ui did not answer on port {port}: {}",
                ui.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn get_json(&self, path: &str) -> Value {
        let (status, body) = http_get(self.port, path).unwrap();
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for UiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET: status code and body.
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

/// Runs headless Chromium on `url` with a fresh profile, as the README's test setup installs it.
fn chromium(dir: &Path, extra: &[&str], url: &str) -> Output {
    let profile = dir.join(format!("chromium-{}", rand_suffix()));
    std::fs::create_dir_all(&profile).unwrap();
    let mut args = vec![
        "--headless".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-quic".into(),
        "--no-first-run".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        format!("--user-data-dir={}", profile.display()),
        "--virtual-time-budget=8000".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(url.into());
    let mut child = Command::new("chromium")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium (scripts/setup.sh installs it)");
    // Read stdout on a thread so a large DOM cannot fill the pipe while we wait.
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let mut stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 90 s: {args:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = Output {
        status,
        stdout: reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    };
    let _ = std::fs::remove_dir_all(&profile);
    out
}

/// The rendered DOM of `url`, after the page said it is ready.
fn dump_dom(lab: &TestLab, url: &str) -> String {
    let out = chromium(&lab.dir, &["--dump-dom"], url);
    assert!(out.status.success(), "chromium --dump-dom: {}", text(&out));
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        dom.contains(r#"<body data-ready="1">"#),
        "page never rendered: {dom}"
    );
    dom
}

/// One element of the dumped DOM: its attributes and its text (tags stripped).
#[derive(Debug)]
struct Element {
    attrs: HashMap<String, String>,
    text: String,
}

impl Element {
    fn attr(&self, name: &str) -> &str {
        self.attrs.get(name).map_or("", String::as_str)
    }

    fn classes(&self) -> Vec<&str> {
        self.attr("class").split_whitespace().collect()
    }
}

/// Every `<tag …>` whose class list contains `class`, with its text up to the next `</tag>`.
fn elements(dom: &str, tag: &str, class: &str) -> Vec<Element> {
    let start = Regex::new(&format!(r"<{tag}\s([^>]*)>")).unwrap();
    let attr = Regex::new(r#"([\w:-]+)="([^"]*)""#).unwrap();
    let tags = Regex::new(r"<[^>]*>").unwrap();
    let close = format!("</{tag}>");
    start
        .captures_iter(dom)
        .map(|c| {
            let rest = &dom[c.get(0).unwrap().end()..];
            let inner = &rest[..rest.find(&close).unwrap_or(rest.len())];
            Element {
                attrs: attr
                    .captures_iter(&c[1])
                    .map(|a| (a[1].to_string(), a[2].to_string()))
                    .collect(),
                text: tags.replace_all(inner, "").into_owned(),
            }
        })
        .filter(|e| e.classes().contains(&class))
        .collect()
}

fn edge<'a>(edges: &'a [Element], from: &str, to: &str) -> &'a Element {
    edges
        .iter()
        .find(|e| e.attr("data-from") == from && e.attr("data-to") == to)
        .unwrap_or_else(|| panic!("no edge {from} -> {to} on the map: {edges:#?}"))
}

fn api_edge(map: &Value, from: &str, to: &str) -> Value {
    map["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["from"] == from && e["to"] == to)
        .unwrap_or_else(|| panic!("no edge {from} -> {to} in {map:#}"))
        .clone()
}

/// Waits until the agents hold `n` flows passing `pred` (flows are recorded when connections end).
fn wait_flows(
    lab: &TestLab,
    what: &str,
    n: usize,
    pred: impl Fn(&strait::flows::FlowRecord) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let flows = lab.flows();
        let got = flows.iter().filter(|f| pred(f)).count();
        if got >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{got} of {n} flows {what} among {flows:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ui_shows_the_service_map_and_the_flows_of_a_lab() {
    let lab = TestLab::up("ui", ONE_CLUSTER);
    lab.apply_ok("c1", POLICY_APP);
    lab.apply_ok("c1", ALLOW_FRONTEND_TO_BACKEND);
    for _ in 0..ALLOWED_CURLS {
        let out = lab.curl("c1/demo/frontend", "http://backend/");
        assert_eq!(curl_result(&out).1, "200", "{}", text(&out));
    }
    for _ in 0..DENIED_CONNECTS {
        assert_eq!(
            py_connect(&lab, "other", "backend", 80),
            "PermissionError 1"
        );
    }
    wait_flows(&lab, "FORWARDED from frontend", 3, |f| {
        f.verdict == Verdict::Forwarded
            && f.direction == Direction::Egress
            && f.source.pod == "frontend"
    });
    wait_flows(&lab, "DROPPED from other", 2, |f| {
        f.verdict == Verdict::Dropped && f.source.pod == "other"
    });

    let ui = UiServer::start(&lab);

    // The JSON API: both agents answered; each connection counts once on the map.
    let map = ui.get_json("/api/map");
    assert_eq!(map["agents"], 2, "{map:#}");
    assert_eq!(map["unreachable"], Value::Array(Vec::new()), "{map:#}");
    let allowed = api_edge(&map, "c1/demo/frontend", "c1/demo/backend");
    assert_eq!(allowed["forwarded"], ALLOWED_CURLS, "{map:#}");
    assert_eq!(allowed["dropped"], 0, "{map:#}");
    let denied = api_edge(&map, "c1/demo/other", "c1/demo/backend");
    assert_eq!(denied["forwarded"], 0, "{map:#}");
    assert_eq!(denied["dropped"], DENIED_CONNECTS, "{map:#}");
    assert_eq!(denied["drop_reasons"][0], "POLICY_DENIED", "{map:#}");
    let ids: Vec<&str> = map["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    for id in ["c1/demo/backend", "c1/demo/frontend", "c1/demo/other"] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }

    let drops = ui.get_json("/api/flows?verdict=DROPPED&namespace=demo");
    let drops = drops["flows"].as_array().unwrap();
    assert!(drops.len() as u64 >= DENIED_CONNECTS, "{drops:#?}");
    assert!(
        drops.iter().all(|f| f["verdict"] == "DROPPED"
            && f["drop_reason"] == "POLICY_DENIED"
            && f["source"]["pod"] == "other"),
        "{drops:#?}"
    );
    let flows = ui.get_json("/api/flows?last=1");
    assert_eq!(
        flows["flows"].as_array().map(Vec::len),
        Some(1),
        "{flows:#}"
    );
    let (status, body) = http_get(ui.port, "/api/flows?colour=red").unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("unknown flow filter `colour`"), "{body}");

    // The page: the map's edges with their counts, the allowed one green, the denied one red.
    let dom = dump_dom(&lab, &ui.url("/"));
    let edges = elements(&dom, "g", "edge");
    let allowed = edge(&edges, "c1/demo/frontend", "c1/demo/backend");
    assert!(
        allowed.classes().contains(&"allowed") && !allowed.classes().contains(&"denied"),
        "{allowed:?}"
    );
    assert_eq!(allowed.attr("data-forwarded"), ALLOWED_CURLS.to_string());
    assert_eq!(allowed.attr("data-dropped"), "0");
    assert!(
        allowed.text.contains(&format!("{ALLOWED_CURLS} forwarded")),
        "{allowed:?}"
    );
    let denied = edge(&edges, "c1/demo/other", "c1/demo/backend");
    assert!(
        denied.classes().contains(&"denied") && !denied.classes().contains(&"allowed"),
        "{denied:?}"
    );
    assert_eq!(denied.attr("data-dropped"), DENIED_CONNECTS.to_string());
    assert_eq!(denied.attr("data-forwarded"), "0");
    assert!(
        denied.text.contains(&format!("{DENIED_CONNECTS} dropped")),
        "{denied:?}"
    );
    let nodes = elements(&dom, "g", "node");
    for id in ["c1/demo/backend", "c1/demo/frontend", "c1/demo/other"] {
        assert!(
            nodes.iter().any(|n| n.attr("data-id") == id),
            "no node {id}: {nodes:#?}"
        );
    }
    // The flow table lists the dropped flow, source, destination, verdict and reason.
    let rows = elements(&dom, "tr", "flow");
    assert!(
        rows.iter().any(|r| r.attr("data-verdict") == "DROPPED"
            && r.text.contains("demo/other")
            && r.text.contains("demo/backend:8080")
            && r.text.contains("DROPPED")
            && r.text.contains("POLICY_DENIED")),
        "no DROPPED row: {rows:#?}"
    );
    assert!(
        rows.iter().any(|r| r.attr("data-verdict") == "FORWARDED"
            && r.text.contains("demo/frontend:")
            && r.text.contains("demo/backend:8080")),
        "no FORWARDED row: {rows:#?}"
    );

    // Filters in the page's address go to the API: only drops, on the map and in the table.
    let dom = dump_dom(&lab, &ui.url("/?verdict=DROPPED"));
    let edges = elements(&dom, "g", "edge");
    assert_eq!(edges.len(), 1, "{edges:#?}");
    assert_eq!(edges[0].attr("data-from"), "c1/demo/other");
    let rows = elements(&dom, "tr", "flow");
    assert!(
        !rows.is_empty() && rows.iter().all(|r| r.attr("data-verdict") == "DROPPED"),
        "{rows:#?}"
    );

    // A screenshot renders.
    let png = lab.dir.join("ui.png");
    let out = chromium(
        &lab.dir,
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,900",
        ],
        &ui.url("/"),
    );
    assert!(
        out.status.success(),
        "chromium --screenshot: {}",
        text(&out)
    );
    let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        bytes.len() > 20_000,
        "screenshot is only {} bytes",
        bytes.len()
    );
}
