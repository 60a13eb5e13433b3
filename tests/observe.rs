//! End-to-end observability: known traffic through a lab, then `strait observe` must return
//! exactly the flows it produced, with every field a Hubble user relies on filled in.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;

use strait::config::{ADMIN_PORT, ADMIN_TLS_PORT};
use strait::flows::{DecidedBy, Direction, DropReason, FlowRecord, Verdict};
use support::*;

fn observe_json(lab: &TestLab, args: &[&str]) -> Vec<FlowRecord> {
    let mut all = vec!["observe", "-o", "json", "--last", "1000"];
    all.extend_from_slice(args);
    let out = lab.strait(&all);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn observe_returns_exactly_the_drops_with_every_field() {
    let lab = TestLab::up("observe_drops", ONE_CLUSTER);
    lab.apply_ok("c1", L7_APP);
    const ALLOWED: usize = 6;
    const DENIED_L7: usize = 3;
    const DENIED_CONNECT: usize = 2;
    // Two allowed requests on connections of their own (each ends right after its answer), the
    // rest and the denied ones on one keep-alive connection.
    const ALONE: usize = 2;
    for i in 0..ALONE {
        let out = lab.curl(
            "c1/demo/deploy/frontend",
            &format!("http://backend/public/alone-{i}"),
        );
        assert_eq!(curl_result(&out).1, "200", "{}", text(&out));
    }
    let mut urls: Vec<String> = (ALONE..ALLOWED)
        .map(|i| format!("http://backend/public/{i}"))
        .collect();
    urls.extend((0..DENIED_L7).map(|i| format!("http://backend/private/{i}")));
    let mut args = vec!["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}\n"];
    args.extend(urls.iter().map(String::as_str));
    let out = lab.exec("c1/demo/deploy/frontend", &args);
    let codes = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        codes.lines().filter(|c| *c == "200").count(),
        ALLOWED - ALONE,
        "{codes}"
    );
    assert_eq!(
        codes.lines().filter(|c| *c == "403").count(),
        DENIED_L7,
        "{codes}"
    );
    for _ in 0..DENIED_CONNECT {
        let out = lab.curl("c1/demo/other", "http://backend/");
        assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    }
    // Kernel events reach the agent asynchronously: wait for the last one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while lab
        .flows()
        .iter()
        .filter(|f| f.decided_by == Some(DecidedBy::Kernel))
        .count()
        < DENIED_CONNECT
    {
        assert!(std::time::Instant::now() < deadline, "kernel drops missing");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    let drops = observe_json(&lab, &["--namespace", "demo", "--verdict", "DROPPED"]);
    assert_eq!(
        drops.len(),
        DENIED_L7 + DENIED_CONNECT,
        "exactly the denied requests and connects: {drops:#?}"
    );
    // Merged from both nodes in time order.
    assert!(drops.windows(2).all(|w| w[0].time <= w[1].time));
    let by_layer: BTreeMap<&str, Vec<&FlowRecord>> =
        drops.iter().fold(BTreeMap::new(), |mut m, f| {
            m.entry(f.decided_by.map_or("?", |d| d.as_str()))
                .or_default()
                .push(f);
            m
        });
    assert_eq!(by_layer.get("proxy").map(Vec::len), Some(DENIED_L7));
    assert_eq!(by_layer.get("kernel").map(Vec::len), Some(DENIED_CONNECT));
    for f in &drops {
        assert_eq!(f.verdict, Verdict::Dropped);
        assert_eq!(f.drop_reason, Some(DropReason::PolicyDenied));
        assert_eq!(f.cluster, "c1");
        assert_eq!(f.node, "node-2", "recorded on the source node");
        assert_eq!(f.direction, Direction::Egress);
        assert!(
            f.policies
                .iter()
                .any(|p| p.contains("CiliumNetworkPolicy demo/backend-l7")),
            "{f:?}"
        );
        assert_eq!(f.destination.namespace, "demo");
        assert_eq!(f.destination.workload.as_deref(), Some("backend"));
        assert_eq!(
            f.destination.labels.get("app").map(String::as_str),
            Some("backend")
        );
        assert_eq!(f.destination.port, 8080);
        assert_ne!(f.destination.identity, 0);
        assert_ne!(f.source.identity, 0);
        assert!(f.source.ip.is_some() && f.destination.ip.is_some());
        assert_eq!(f.service.as_ref().map(|s| s.name.as_str()), Some("backend"));
        assert!(!f.encrypted);
    }
    for f in &by_layer["proxy"] {
        assert_eq!(f.source.workload.as_deref(), Some("frontend"));
        assert_eq!(f.protocol, "HTTP/1.1");
        let http = f.http.as_ref().expect("L7 details");
        assert_eq!(http.method, "GET");
        assert!(http.path.starts_with("/private/"), "{http:?}");
        assert_eq!(http.status, Some(403));
        assert!(http.host.is_some());
    }
    for f in &by_layer["kernel"] {
        assert_eq!(f.source.pod, "other");
        assert_eq!(f.protocol, "TCP");
        assert_eq!(f.original_destination.split(':').nth(1), Some("80"));
    }

    // The cross-node L7 connection ended cleanly on the receiving node too: no ERROR flows, and
    // its tunnel stream (INGRESS on node-1) carried the bytes.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let errors = observe_json(&lab, &["--namespace", "demo", "--verdict", "ERROR"]);
    assert!(errors.is_empty(), "{errors:#?}");
    let ingress = observe_json(&lab, &["--namespace", "demo", "--cluster", "c1"]);
    let tunnelled: Vec<&FlowRecord> = ingress
        .iter()
        .filter(|f| f.direction == Direction::Ingress && f.source.pod.starts_with("frontend"))
        .collect();
    assert!(!tunnelled.is_empty(), "{ingress:#?}");
    assert!(
        tunnelled
            .iter()
            .all(|f| f.bytes_sent > 0 && f.bytes_received > 0),
        "{tunnelled:#?}"
    );

    // The allowed requests are there too, one L7 flow each, with status and latency.
    let ok = observe_json(&lab, &["--namespace", "demo", "--verdict", "FORWARDED"]);
    let requests: Vec<&FlowRecord> = ok.iter().filter(|f| f.http.is_some()).collect();
    assert_eq!(requests.len(), ALLOWED, "{ok:#?}");
    for f in requests {
        let http = f.http.as_ref().unwrap();
        assert_eq!(http.status, Some(200));
        assert!(http.path.starts_with("/public/"));
        assert!(http.latency_us > 0);
        assert_eq!(f.decided_by, Some(DecidedBy::Proxy));
    }
}

#[test]
fn pods_get_health_and_metrics_but_no_flows_or_status_from_the_admin_port() {
    let lab = TestLab::up("observe_admin_tcp", ONE_CLUSTER);
    lab.apply_ok("c1", L7_APP);
    // A flow worth stealing: the frontend's request, with pod names and path.
    let out = lab.curl(
        "c1/demo/deploy/frontend",
        "http://backend/public/secret-token",
    );
    assert_eq!(curl_result(&out).1, "200", "{}", text(&out));
    let st = lab.status();
    let nodes = st["topology"]["clusters"][0]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    let dir = lab.dir.join("admin-client");
    let out = lab.strait(&[
        "lab",
        "client-cert",
        "--cluster",
        "c1",
        "--client",
        "tester",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    for node in nodes {
        let ip = node["underlay_ip"].as_str().unwrap();
        for path in [
            "/flows",
            "/flows?follow=true",
            "/status",
            "/",
            "/anything-added-later",
        ] {
            let out = lab.curl("c1/demo/other", &format!("http://{ip}:{ADMIN_PORT}{path}"));
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                stdout.trim_end().ends_with("\n403"),
                "{ip}{path}: {}",
                text(&out)
            );
            for leak in ["secret-token", "frontend", "\"node\""] {
                assert!(!stdout.contains(leak), "{ip}{path} leaks {leak}: {stdout}");
            }
        }
        let out = lab.curl(
            "c1/demo/other",
            &format!("http://{ip}:{ADMIN_PORT}/metrics"),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.trim_end().ends_with("\n200"),
            "{ip}/metrics: {}",
            text(&out)
        );
        assert!(stdout.contains("strait_"), "{stdout}");
        let out = lab.curl(
            "c1/demo/other",
            &format!("http://{ip}:{ADMIN_PORT}/healthz"),
        );
        assert_eq!(curl_result(&out).1, "200", "{}", text(&out));

        // TLS: the pod reaches the port, but without a client certificate of the cluster CA
        // gets no handshake; with one (`lab client-cert`) it gets every route.
        let name = node["name"].as_str().unwrap();
        let host = format!("{name}.c1.strait");
        let resolve = format!("{host}:{ADMIN_TLS_PORT}:{ip}");
        let url = format!("https://{host}:{ADMIN_TLS_PORT}/status");
        let (ca, crt, key) = (
            dir.join("ca.crt"),
            dir.join("client.crt"),
            dir.join("client.key"),
        );
        let tls_curl = |extra: &[&str]| {
            let mut cmd = vec!["curl", "-sS", "--max-time", "5", "-w", "\n%{http_code}"];
            cmd.extend_from_slice(&["--cacert", ca.to_str().unwrap(), "--resolve", &resolve]);
            cmd.extend_from_slice(extra);
            cmd.push(&url);
            lab.exec("c1/demo/other", &cmd)
        };
        let out = tls_curl(&[]);
        assert!(
            !out.status.success(),
            "{url} without a certificate: {}",
            text(&out)
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("\"node\""),
            "{}",
            text(&out)
        );
        let out = tls_curl(&[
            "--cert",
            crt.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.trim_end().ends_with("\n200"),
            "{url}: {}",
            text(&out)
        );
        assert!(stdout.contains(&format!("\"node\":\"{name}\"")), "{stdout}");
    }
    // The Unix socket still serves everything: `strait observe` and `lab status`.
    let flows = observe_json(&lab, &["--namespace", "demo", "--verdict", "FORWARDED"]);
    assert!(
        flows.iter().any(|f| f
            .http
            .as_ref()
            .is_some_and(|h| h.path == "/public/secret-token")),
        "{flows:#?}"
    );
    let agents = lab.status()["agents"].as_array().unwrap().clone();
    assert_eq!(agents.len(), 2);
}
