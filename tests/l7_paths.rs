//! The attack of issue 10 on L7 rules: a pod allowed only `GET /public/.*` asks for
//! `/public/../private` and its encoded variants. The proxy normalises each path before judging
//! it and forwards the normalised path, so the rule and the backend (a real nginx, which
//! normalises too) see the same resource; what cannot be normalised unambiguously gets `400`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use strait::flows::{DropReason, FlowRecord, Verdict};
use support::*;

/// Body of nginx's `/private`: must never reach the client.
const SECRET: &str = "private-file-do-not-serve";
/// Body of nginx's `/public/x`.
const PUBLIC_X: &str = "public-file-x";

/// An nginx on node-1 (HTTP/1.1 on 8080, h2c on 8081) and an echo backend on node-1, each
/// allowing the frontend (node-2) `GET /public/.*` only.
fn app(conf: &Path) -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: demo}}
---
apiVersion: v1
kind: Pod
metadata: {{name: nginx, namespace: demo, labels: {{app: nginx}}}}
spec:
  nodeName: node-1
  containers:
  - name: nginx
    command: [/usr/sbin/nginx, -e, {err}, -c, {conf}]
    ports: [{{containerPort: 8080}}, {{containerPort: 8081}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: echo, namespace: demo, labels: {{app: echo}}}}
spec:
  nodeName: node-1
  containers:
  - name: echo
    ports: [{{containerPort: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: frontend, namespace: demo, labels: {{app: frontend}}}}
spec:
  nodeName: node-2
  containers: [{{name: echo}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: public-only, namespace: demo}}
spec:
  endpointSelector:
    matchExpressions: [{{key: app, operator: In, values: [nginx, echo]}}]
  ingress:
  - fromEndpoints: [{{matchLabels: {{app: frontend}}}}]
    toPorts:
    - ports: [{{port: "8080", protocol: TCP}}, {{port: "8081", protocol: TCP}}]
      rules:
        http: [{{method: GET, path: "/public/.*"}}]
"#,
        err = conf.with_file_name("early-error.log").display(),
        conf = conf.display(),
    )
}

/// Writes nginx's document root and configuration under `dir`; returns the config path.
fn nginx_files(dir: &Path) -> std::path::PathBuf {
    let dir = dir.join("nginx");
    let www = dir.join("www");
    std::fs::create_dir_all(www.join("public")).unwrap();
    std::fs::write(www.join("public/x"), PUBLIC_X).unwrap();
    std::fs::write(www.join("public/index.html"), "public-index").unwrap();
    std::fs::write(www.join("private"), SECRET).unwrap();
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n\
         \x20 access_log {d}/access.log;\n\
         \x20 default_type text/plain;\n\
         \x20 client_body_temp_path {d}/tmp-body;\n\
         \x20 proxy_temp_path {d}/tmp-proxy;\n\
         \x20 fastcgi_temp_path {d}/tmp-fastcgi;\n\
         \x20 uwsgi_temp_path {d}/tmp-uwsgi;\n\
         \x20 scgi_temp_path {d}/tmp-scgi;\n\
         \x20 server {{\n\
         \x20   listen 8080;\n\
         \x20   listen 8081 http2;\n\
         \x20   root {d}/www;\n\
         \x20 }}\n\
         }}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    path
}

/// curl (`--path-as-is`: sent as written) of each target, returning (status, body) each. One
/// process for all HTTP/1.1 targets; one each over h2c, which curl 7.88 cannot reuse.
fn curl_all(
    lab: &TestLab,
    pod: &str,
    base: &str,
    http2: bool,
    targets: &[&str],
) -> Vec<(String, String)> {
    if http2 {
        return targets
            .iter()
            .flat_map(|t| curl_some(lab, pod, base, true, &[t]))
            .collect();
    }
    curl_some(lab, pod, base, false, targets)
}

fn curl_some(
    lab: &TestLab,
    pod: &str,
    base: &str,
    http2: bool,
    targets: &[&str],
) -> Vec<(String, String)> {
    let mut args = vec![
        "curl",
        "-sS",
        "--path-as-is",
        "--max-time",
        "5",
        "-w",
        "\n@@%{http_code}@@\n",
    ];
    if http2 {
        args.push("--http2-prior-knowledge");
    }
    let urls: Vec<String> = targets.iter().map(|t| format!("{base}{t}")).collect();
    args.extend(urls.iter().map(String::as_str));
    let out = lab.exec(pod, &args);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let mut results = Vec::new();
    let mut rest = stdout.as_str();
    while let Some(i) = rest.find("\n@@") {
        let body = rest[..i].to_string();
        let after = &rest[i + 3..];
        let j = after.find("@@\n").unwrap();
        results.push((after[..j].to_string(), body));
        rest = &after[j + 3..];
    }
    assert_eq!(results.len(), targets.len(), "{stdout}");
    results
}

fn http_flows(lab: &TestLab, port: u16, protocol: &str) -> Vec<FlowRecord> {
    lab.flows()
        .into_iter()
        .filter(|f| f.destination.port == port && f.protocol == protocol && f.http.is_some())
        .collect()
}

/// Waits for a flow of `protocol` to `port` whose judged path is `path` with status `status`.
fn wait_http_flow(lab: &TestLab, port: u16, protocol: &str, path: &str, status: u16) -> FlowRecord {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let flows = http_flows(lab, port, protocol);
        if let Some(f) = flows.iter().find(|f| {
            let h = f.http.as_ref().unwrap();
            h.path == path && h.status == Some(status)
        }) {
            return f.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {protocol} flow to port {port} for {path} with {status}: {:#?}",
            flows.iter().map(|f| f.http.clone()).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The attacks: dot segments, encoded dots, an encoded slash. nginx serves `/private` for each
/// when asked directly, so these targets do exercise the hole.
const ATTACKS: &[(&str, &str, &str)] = &[
    // (target as sent, status through Strait, path as judged in the flow)
    ("/public/../private", "403", "/private"),
    ("/public/%2e%2e/private", "403", "/private"),
    ("/public/%2E%2e/private", "403", "/private"),
    ("/public/.%2e/private", "403", "/private"),
    ("/public/x/../../private", "403", "/private"),
    ("/public/..%2fprivate", "400", "/public/..%2fprivate"),
    ("/public/..%5Cprivate", "400", "/public/..%5Cprivate"),
];

#[test]
fn dot_segments_and_encodings_do_not_reach_private_paths_on_nginx() {
    let lab = TestLab::up("l7_paths_nginx", ONE_CLUSTER);
    let conf = nginx_files(&lab.dir);
    lab.apply_ok("c1", &app(&conf));
    let nginx = lab.pod_ip("c1", "demo", "nginx");

    // The hole exists at the backend: nginx itself resolves these targets to /private.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = lab.curl("c1/demo/nginx", "http://127.0.0.1:8080/public/x");
        if curl_result(&out).1 == "200" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nginx did not start: {}\n{}",
            text(&out),
            std::fs::read_to_string(conf.with_file_name("error.log")).unwrap_or_default(),
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let direct: Vec<&str> = ATTACKS
        .iter()
        .filter(|a| a.1 == "403")
        .map(|a| a.0)
        .collect();
    for (http2, port) in [(false, 8080), (true, 8081)] {
        let base = format!("http://127.0.0.1:{port}");
        for (code, body) in curl_all(&lab, "c1/demo/nginx", &base, http2, &direct) {
            assert_eq!(
                (code.as_str(), body.as_str()),
                ("200", SECRET),
                "nginx asked directly"
            );
        }
    }

    let mut targets: Vec<&str> = ATTACKS.iter().map(|a| a.0).collect();
    targets.push("/public/x");
    targets.push("/public/./y/../x");
    for (http2, port, protocol) in [(false, 8080, "HTTP/1.1"), (true, 8081, "HTTP/2")] {
        let base = format!("http://{nginx}:{port}");
        let got = curl_all(&lab, "c1/demo/frontend", &base, http2, &targets);
        for ((target, status, _), (code, body)) in ATTACKS.iter().zip(&got) {
            assert_eq!(code, status, "{protocol} {target}: {body}");
            assert!(!body.contains(SECRET), "{protocol} {target} leaked: {body}");
        }
        for (code, body) in &got[ATTACKS.len()..] {
            assert_eq!(
                (code.as_str(), body.as_str()),
                ("200", PUBLIC_X),
                "{protocol}"
            );
        }
        // Flows show the path as judged: denied ones name /private, invalid ones as sent.
        for (target, status, judged) in ATTACKS {
            let f = wait_http_flow(&lab, port, protocol, judged, status.parse().unwrap());
            let reason = if *status == "400" {
                DropReason::HttpPathInvalid
            } else {
                DropReason::PolicyDenied
            };
            assert_eq!(
                (f.verdict, f.drop_reason),
                (Verdict::Dropped, Some(reason)),
                "{protocol} {target}"
            );
        }
        let ok = wait_http_flow(&lab, port, protocol, "/public/x", 200);
        assert_eq!(ok.verdict, Verdict::Forwarded);
        assert!(
            http_flows(&lab, port, protocol)
                .iter()
                .all(|f| f.verdict == Verdict::Dropped
                    || f.http.as_ref().unwrap().path == "/public/x"),
            "only /public/x was forwarded over {protocol}"
        );
    }
}

/// Target as sent → status and the path the echo backend received (the path as judged).
const ECHO_CASES: &[(&str, &str, &str)] = &[
    ("/public/x", "200", "/public/x"),
    ("/public/./x", "200", "/public/x"),
    ("/public//x", "200", "/public/x"),
    ("//public/x/", "200", "/public/x/"),
    ("/private/../public/x", "200", "/public/x"),
    ("/../../public/x", "200", "/public/x"),
    ("/public/%41%7e", "200", "/public/A~"),
    ("/public/a%3fb", "200", "/public/a%3Fb"),
    (
        "/public/x?q=/../private&r=%2f",
        "200",
        "/public/x?q=/../private&r=%2f",
    ),
    ("/public/../private", "403", ""),
    ("/public/%2e%2e/private", "403", ""),
    ("/public/..%2fprivate", "400", ""),
    ("/public/%5c", "400", ""),
    ("/public/a%zz", "400", ""),
    ("/public/a%4", "400", ""),
    ("/public/a%00", "400", ""),
];

#[test]
fn the_echo_backend_receives_the_path_as_judged_over_http1_and_http2() {
    let lab = TestLab::up("l7_paths_echo", ONE_CLUSTER);
    let conf = nginx_files(&lab.dir);
    lab.apply_ok("c1", &app(&conf));
    let echo = lab.pod_ip("c1", "demo", "echo");
    let base = format!("http://{echo}:8080");
    let targets: Vec<&str> = ECHO_CASES.iter().map(|c| c.0).collect();
    for (http2, version) in [(false, "HTTP/1.1"), (true, "HTTP/2.0")] {
        let got = curl_all(&lab, "c1/demo/frontend", &base, http2, &targets);
        for ((target, status, path), (code, body)) in ECHO_CASES.iter().zip(&got) {
            assert_eq!(code, status, "{version} {target}: {body}");
            if *status == "200" {
                let v: serde_json::Value = serde_json::from_str(body).unwrap();
                assert_eq!(
                    (
                        v["request"]["path"].as_str(),
                        v["request"]["version"].as_str()
                    ),
                    (Some(*path), Some(version)),
                    "{version} {target}"
                );
            }
        }
    }
}
