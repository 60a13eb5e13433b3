//! End-to-end policy tests: Cilium and Kubernetes policies applied to a lab, enforced by the real
//! eBPF programs (connect() and tc) and the real proxy (L7), observed through `strait observe`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use strait::flows::{DecidedBy, DropReason, Verdict};
use support::*;

fn lab_with_app(test: &str) -> TestLab {
    let lab = TestLab::up(test, ONE_CLUSTER);
    lab.apply_ok("c1", POLICY_APP);
    lab
}

fn code(lab: &TestLab, pod: &str, url: &str) -> String {
    curl_result(&lab.curl(&format!("c1/demo/{pod}"), url)).1
}

#[test]
fn allow_frontend_to_backend_as_in_the_cilium_tutorial() {
    let lab = lab_with_app("cnp_tutorial");
    lab.apply_ok("c1", ALLOW_FRONTEND_TO_BACKEND);
    let backend = lab.pod_ip("c1", "demo", "backend");
    let frontend = lab.pod_ip("c1", "demo", "frontend");

    assert_eq!(code(&lab, "frontend", "http://backend/"), "200");
    // The kernel refuses the connect itself: EPERM, no SYN ever leaves the pod.
    assert_eq!(
        py_connect(&lab, "other", "backend", 80),
        "PermissionError 1"
    );
    assert_eq!(
        py_connect(&lab, "other", &backend, 8080),
        "PermissionError 1"
    );
    let out = lab.curl("c1/demo/other", "http://backend/");
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    // The frontend is not selected by any policy: the backend still reaches it.
    assert_eq!(code(&lab, "backend", &format!("http://{frontend}/")), "200");

    let drop = lab.wait_flow("DROPPED from other", |f| {
        f.verdict == Verdict::Dropped && f.source.pod == "other"
    });
    assert_eq!(drop.drop_reason, Some(DropReason::PolicyDenied));
    assert_eq!(drop.decided_by, Some(DecidedBy::Kernel));
    assert_eq!(drop.destination.pod, "backend");
    assert_eq!(drop.source.namespace, "demo");
    let out = lab.strait(&[
        "observe",
        "--namespace",
        "demo",
        "--verdict",
        "DROPPED",
        "-o",
        "json",
    ]);
    let lines = String::from_utf8_lossy(&out.stdout);
    assert!(lines.lines().count() >= 3, "{lines}");
    assert!(
        lines.lines().all(|l| l.contains("\"POLICY_DENIED\"")),
        "{lines}"
    );

    // `policy trace` names the deciding rule, as `cilium policy trace` does.
    let trace = |src: &str| {
        let out = lab.strait(&[
            "policy",
            "trace",
            "--src",
            src,
            "--dst",
            "c1/demo/backend",
            "--dport",
            "8080",
        ]);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let allowed = trace("c1/demo/frontend");
    assert!(
        allowed.contains(
            "ALLOWED by CiliumNetworkPolicy demo/allow-frontend-to-backend: spec.ingress[0]"
        ) && allowed.ends_with("Final verdict: ALLOWED\n"),
        "{allowed}"
    );
    let denied = trace("c1/demo/other");
    assert!(
        denied.contains(
            "default deny, selected by CiliumNetworkPolicy demo/allow-frontend-to-backend"
        ) && denied.ends_with("Final verdict: DENIED\n"),
        "{denied}"
    );
    // `policy get` shows the backend in default deny at ingress only.
    let out = lab.strait(&["policy", "get", "-o", "json"]);
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let row = |ep: &str| {
        rows.iter()
            .find(|r| r["endpoint"] == ep)
            .unwrap_or_else(|| panic!("{ep} missing: {rows:?}"))
            .clone()
    };
    assert_eq!(row("c1/demo/backend")["ingress"]["default_deny"], true);
    assert_eq!(row("c1/demo/backend")["egress"]["enforced"], false);
    assert_eq!(row("c1/demo/frontend")["ingress"]["enforced"], false);
}

#[test]
fn l7_rule_allows_get_public_and_answers_403_on_the_same_connection() {
    let lab = lab_with_app("cnp_l7");
    apply_in(
        &lab,
        "demo",
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: l7-public
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http:
        - method: GET
          path: "/public.*"
"#,
    );
    let out = lab.exec(
        "c1/demo/frontend",
        &[
            "curl",
            "-sS",
            "-w",
            "\n[%{url_effective} %{http_code} %{num_connects}]\n",
            "http://backend/public/x",
            "http://backend/private",
            "http://backend/public/y",
        ],
    );
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("[http://backend/public/x 200 1]"),
        "{}",
        text(&out)
    );
    assert!(
        s.contains("Access denied\r\n\n[http://backend/private 403 0]"),
        "{}",
        text(&out)
    );
    assert!(
        s.contains("[http://backend/public/y 200 0]"),
        "one connection: {}",
        text(&out)
    );
    for (path, want) in [("/public/h2", "200"), ("/private", "403")] {
        let out = lab.exec(
            "c1/demo/frontend",
            &[
                "curl",
                "-sS",
                "--http2-prior-knowledge",
                "-w",
                "\n%{http_version} %{http_code}",
                &format!("http://backend{path}"),
            ],
        );
        let s = String::from_utf8_lossy(&out.stdout);
        assert!(s.ends_with(&format!("2 {want}")), "{path}: {}", text(&out));
    }
    // Other pods are not allowed at L3 at all.
    assert_eq!(
        py_connect(&lab, "other", "backend", 80),
        "PermissionError 1"
    );
    let f = lab.wait_flow("HTTP 403", |f| {
        f.http
            .as_ref()
            .is_some_and(|h| h.path == "/private" && h.status == Some(403))
    });
    assert_eq!(f.verdict, Verdict::Dropped);
    assert_eq!(f.decided_by, Some(DecidedBy::Proxy));
    assert!(!f.policies.is_empty());
}

#[test]
fn deny_rule_overrides_allow() {
    let lab = lab_with_app("cnp_deny");
    let policy = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: allow-all-deny-frontend
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEntities: [cluster]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
"#;
    apply_in(&lab, "demo", policy);
    assert_eq!(
        py_connect(&lab, "frontend", "backend", 80),
        "PermissionError 1"
    );
    assert_eq!(code(&lab, "other", "http://backend/"), "200");
    // `lab delete` removes the policy: the frontend gets through again.
    let policy = policy.replace(
        "metadata:\n  name:",
        "metadata:\n  namespace: demo\n  name:",
    );
    lab.delete_ok("c1", &policy);
    assert_eq!(code(&lab, "frontend", "http://backend/"), "200");
}

#[test]
fn network_policy_and_ip_block() {
    let lab = lab_with_app("netpol");
    let other = lab.pod_ip("c1", "demo", "other");
    lab.apply_ok(
        "c1",
        "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: backend-from-frontend, namespace: demo}
spec:
  podSelector: {matchLabels: {app: backend}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: frontend}}}]
    ports: [{port: http}]
",
    );
    assert_eq!(code(&lab, "frontend", "http://backend/"), "200");
    assert_eq!(
        py_connect(&lab, "other", "backend", 80),
        "PermissionError 1"
    );
    // ipBlock matches pod addresses too, as the Kubernetes NetworkPolicy e2e suite expects.
    lab.apply_ok(
        "c1",
        &format!(
            "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: backend-from-frontend, namespace: demo}}
spec:
  podSelector: {{matchLabels: {{app: backend}}}}
  policyTypes: [Ingress]
  ingress:
  - from: [{{ipBlock: {{cidr: 198.18.16.0/20, except: [{other}/32]}}}}]
"
        ),
    );
    assert_eq!(code(&lab, "frontend", "http://backend/"), "200");
    assert_eq!(
        py_connect(&lab, "other", "backend", 80),
        "PermissionError 1"
    );
}

#[test]
fn udp_is_enforced_by_tc() {
    let lab = lab_with_app("udp_tc");
    let backend = lab.pod_ip("c1", "demo", "backend");
    assert_eq!(
        py_udp(&lab, "other", &backend, 5353),
        "reply ping",
        "no policy yet"
    );
    apply_in(
        &lab,
        "demo",
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: udp-from-frontend
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: "5353", protocol: UDP}]}]
"#,
    );
    assert_eq!(py_udp(&lab, "frontend", &backend, 5353), "reply ping");
    assert_eq!(py_udp(&lab, "other", &backend, 5353), "timeout");
    let drop = lab.wait_flow("UDP drop", |f| {
        f.verdict == Verdict::Dropped && f.protocol == "UDP" && f.source.pod == "other"
    });
    assert_eq!(drop.decided_by, Some(DecidedBy::Kernel));
    assert_eq!(drop.destination.port, 5353);
}

#[test]
fn policy_update_ends_the_streams_it_denies_and_applies_to_new_connections() {
    let lab = lab_with_app("update_stream");
    lab.apply_ok("c1", ALLOW_FRONTEND_TO_BACKEND);
    let stream = Command::new(STRAIT)
        .args([
            "lab",
            "exec",
            "c1/demo/frontend",
            "--",
            "curl",
            "-sS",
            "-N",
            "http://backend/stream?seconds=3&interval_ms=50",
        ])
        .env("STRAIT_LAB", &lab.name)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // Now nothing may reach the backend any more.
    let started = Instant::now();
    apply_in(
        &lab,
        "demo",
        r#"
apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: allow-frontend-to-backend
spec:
  endpointSelector:
    matchLabels:
      app: backend
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: nobody
"#,
    );
    let applied = started.elapsed();
    assert!(applied < Duration::from_secs(2), "apply took {applied:?}");
    // The established stream is judged again and ended (3 s of stream would be 60 lines)...
    let out = stream.wait_with_output().unwrap();
    let ended = started.elapsed();
    assert!(!out.status.success(), "the stream went on: {out:?}");
    let lines = String::from_utf8_lossy(&out.stdout).lines().count();
    assert!(lines < 55, "the stream was not cut: {lines} lines");
    assert!(
        ended < applied + Duration::from_secs(1),
        "ended {ended:?} after the apply started, which took {applied:?}"
    );
    // ... and new connections are refused at connect().
    assert_eq!(
        py_connect(&lab, "frontend", "backend", 80),
        "PermissionError 1"
    );
    let cut = lab.wait_flow("the stream's end", |f| {
        f.source.pod == "frontend" && f.verdict == Verdict::Dropped && f.bytes_received > 0
    });
    assert_eq!(cut.drop_reason, Some(DropReason::PolicyDenied));
    assert!(
        cut.policies
            .iter()
            .any(|p| p.contains("allow-frontend-to-backend")),
        "{:?}",
        cut.policies
    );
}

#[test]
fn invalid_policy_is_rejected_precisely_and_the_previous_one_stays() {
    let lab = lab_with_app("invalid_policy");
    lab.apply_ok("c1", ALLOW_FRONTEND_TO_BACKEND);
    let bad = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: allow-frontend-to-backend
  namespace: demo
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - toPorts:
    - ports: [{port: "8080", endPort: 70, protocol: TCP}]
"#;
    let out = lab.apply("c1", bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.ingress[0].toPorts[0].ports[0].endPort: 70 is below port 8080"),
        "{err}"
    );
    assert_eq!(code(&lab, "frontend", "http://backend/"), "200");
    assert_eq!(
        py_connect(&lab, "other", "backend", 80),
        "PermissionError 1"
    );
    // `policy validate` gives the same answer without touching the lab, naming the file.
    let file = std::env::temp_dir().join(format!("{}-bad-policy.yaml", lab.name));
    std::fs::write(&file, bad).unwrap();
    let out = lab.strait(&["policy", "validate", file.to_str().unwrap()]);
    std::fs::remove_file(&file).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}: document 1 (CiliumNetworkPolicy allow-frontend-to-backend): \
             spec.ingress[0].toPorts[0].ports[0].endPort: 70 is below port 8080",
            file.display()
        )),
        "{err}"
    );
    let fqdn = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn, namespace: demo}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
  - toFQDNs: [{matchName: example.com}]
"#;
    let out = lab.apply("c1", fqdn);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.egress[0].toFQDNs") && err.contains("not supported"),
        "{err}"
    );
}

#[test]
fn cidr_egress_rule_with_except() {
    let lab = lab_with_app("cnp_cidr");
    apply_in(
        &lab,
        "demo",
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: frontend-egress-cidr
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
  - toCIDRSet:
    - cidr: 192.0.2.0/24
      except: [192.0.2.128/25]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"#,
    );
    // Allowed by the CIDR rule: the connect reaches the node proxy, which then finds no server
    // and resets the connection (sometimes before the client's connect() has returned).
    let allowed = |r: String| r == "ok" || r == "ConnectionResetError 104";
    let r = py_connect(&lab, "frontend", "192.0.2.5", 80);
    assert!(allowed(r.clone()), "{r}");
    // The except, another port, the rest of the world and pods are denied at connect().
    for (host, port) in [
        ("192.0.2.200", 80),
        ("192.0.2.5", 443),
        ("203.0.113.7", 80),
        ("backend", 80),
    ] {
        assert_eq!(
            py_connect(&lab, "frontend", host, port),
            "PermissionError 1",
            "{host}:{port}"
        );
    }
    // Pods without the policy are not restricted.
    let r = py_connect(&lab, "other", "192.0.2.200", 80);
    assert!(allowed(r.clone()), "{r}");
    // The allowed connect went through the proxy, which tried the address.
    let f = lab.wait_flow("proxied CIDR flow", |f| {
        f.source.pod == "frontend" && f.destination.ip == Some("192.0.2.5".parse().unwrap())
    });
    assert_ne!(f.drop_reason, Some(DropReason::PolicyDenied));
    let drop = lab.wait_flow("CIDR drop", |f| {
        f.verdict == Verdict::Dropped && f.destination.ip == Some("192.0.2.200".parse().unwrap())
    });
    assert_eq!(drop.source.pod, "frontend");
    assert_eq!(drop.decided_by, Some(DecidedBy::Kernel));
}
