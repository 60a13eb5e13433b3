//! `strait policy trace` across clusters in a real lab (default topology): refused while the
//! clusters are not connected; once connected, a policy of c2 admitting only c1's frontends
//! judges c1's frontend ALLOWED and c2's own DENIED (as the data path does), and a selector of
//! c1 without a cluster label does not select c2's pods unless the default is switched off.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{TestLab, text};

fn app(cluster: &str) -> String {
    format!(
        "apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: backend, namespace: shop}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: backend}}}}
  template:
    metadata: {{labels: {{app: backend}}}}
    spec:
      nodeName: node-1
      containers: [{{name: echo, ports: [{{name: http, containerPort: 8080}}]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: frontend-{cluster}, namespace: shop, labels: {{app: frontend}}}}
spec:
  nodeName: node-2
  containers: [{{name: echo}}]
"
    )
}

/// c2's backends admit only c1's frontends.
const ONLY_C1_FRONTENDS: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: only-c1-frontends, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: frontend, io.cilium.k8s.policy.cluster: c1}
";

/// c1's frontends may reach backends: no cluster named.
const FRONTEND_EGRESS: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: frontend-out, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
  - toEndpoints: [{matchLabels: {app: backend}}]
";

fn trace(lab: &TestLab, src: &str, dst: &str, more: &[&str]) -> (bool, String) {
    let mut args = vec![
        "policy", "trace", "--src", src, "--dst", dst, "--dport", "8080",
    ];
    args.extend_from_slice(more);
    let out = lab.strait(&args);
    (out.status.success(), text(&out))
}

fn trace_json(lab: &TestLab, src: &str, dst: &str, more: &[&str]) -> Value {
    let mut args = vec!["-o", "json"];
    args.extend_from_slice(more);
    let (ok, out) = trace(lab, src, dst, &args);
    assert!(ok, "{out}");
    let line = out.lines().find(|l| l.starts_with('{')).unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// `ok`, or the error class and errno of a connect from `target` to `ip:8080`.
fn connect(lab: &TestLab, target: &str, ip: &str) -> String {
    let script = format!(
        "import socket\n\
         try:\n\
         \x20   s = socket.create_connection(('{ip}', 8080), timeout=2)\n\
         \x20   print('ok')\n\
         except OSError as e:\n\
         \x20   print(type(e).__name__, e.errno)\n"
    );
    let out = lab.exec(target, &["python3", "-c", &script]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The identity of endpoint `name` as `policy get` lists it.
fn identity(lab: &TestLab, name: &str) -> u64 {
    let out = lab.strait(&["policy", "get", "-o", "json"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["endpoint"].as_str().is_some_and(|e| e.starts_with(name)))
        .unwrap_or_else(|| panic!("no endpoint {name}: {}", text(&out)))["identity"]
        .as_u64()
        .unwrap()
}

#[test]
fn trace_judges_egress_in_the_source_cluster_and_ingress_in_the_destination_cluster() {
    let lab = TestLab::up("mesh_policy", strait::lab::topology::DEFAULT_TOPOLOGY);
    lab.apply_ok("c1", &app("c1"));
    lab.apply_ok("c2", &app("c2"));
    lab.apply_ok("c2", ONLY_C1_FRONTENDS);
    let policy_file = std::env::temp_dir().join(format!(
        "strait-frontend-out-{}.yaml",
        support::rand_suffix()
    ));
    std::fs::write(&policy_file, FRONTEND_EGRESS).unwrap();
    let policy_file = policy_file.to_str().unwrap().to_string();

    // Islands: a cross-cluster trace says so and fails.
    let (ok, out) = trace(&lab, "c1/shop/frontend-c1", "c2/shop/deploy/backend", &[]);
    assert!(
        !ok && out.contains("clusters c1 and c2 are not connected"),
        "{out}"
    );

    lab.mesh_connect("c1", "c2");
    let frontend_c1 = identity(&lab, "c1/shop/frontend-c1");
    let backend_c2 = identity(&lab, "c2/shop/backend");
    assert_eq!((frontend_c1 >> 16, backend_c2 >> 16), (1, 2));

    let (ok, out) = trace(&lab, "c1/shop/frontend-c1", "c2/shop/deploy/backend", &[]);
    assert!(ok, "{out}");
    for line in [
        format!("Tracing c1/shop/frontend-c1 (identity {frontend_c1}) -> c2/shop/backend-"),
        format!("(identity {backend_c2}) TCP/8080"),
        "  egress of c1/shop/frontend-c1 (judged by cluster c1): not enforced".into(),
        "(judged by cluster c2): ALLOWED by CiliumNetworkPolicy shop/only-c1-frontends: spec.ingress[0]".into(),
        "Final verdict: ALLOWED".into(),
    ] {
        assert!(out.contains(&line), "missing {line:?} in\n{out}");
    }
    let j = trace_json(&lab, "c1/shop/frontend-c1", "c2/shop/deploy/backend", &[]);
    assert_eq!(j["source"]["cluster"], "c1", "{j:#}");
    assert_eq!(j["source"]["identity"], frontend_c1, "{j:#}");
    assert_eq!(j["destination"]["cluster"], "c2", "{j:#}");
    assert_eq!(j["destination"]["identity"], backend_c2, "{j:#}");
    assert_eq!(
        (
            &j["egress_judged_by"],
            &j["ingress_judged_by"],
            &j["across_clusters"]
        ),
        (&"c1".into(), &"c2".into(), &true.into()),
        "{j:#}"
    );
    assert_eq!(j["verdict"], "ALLOWED", "{j:#}");

    // c2's own frontend carries the same app label but not c1's cluster label.
    let j = trace_json(&lab, "c2/shop/frontend-c2", "c2/shop/deploy/backend", &[]);
    assert_eq!(j["verdict"], "DENIED", "{j:#}");
    assert_eq!(j["across_clusters"], false, "{j:#}");
    assert!(
        j["ingress"]
            .as_str()
            .unwrap()
            .contains("default deny, selected by CiliumNetworkPolicy shop/only-c1-frontends"),
        "{j:#}"
    );

    // By address: c2's backend IP is c2's pod, judged in c2.
    let backend_ip = lab.status()["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["cluster"] == "c2" && p["name"].as_str().unwrap().starts_with("backend-"))
        .map(|p| p["ip"].as_str().unwrap().to_string())
        .unwrap();
    let j = trace_json(&lab, "c1/shop/frontend-c1", &backend_ip, &[]);
    assert_eq!(
        (
            &j["destination"]["cluster"],
            &j["destination"]["identity"],
            &j["verdict"]
        ),
        (&"c2".into(), &backend_c2.into(), &"ALLOWED".into()),
        "{j:#}"
    );

    // The data path agrees with both traces.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = connect(&lab, "c1/shop/frontend-c1", &backend_ip);
        if got == "ok" {
            break;
        }
        assert!(Instant::now() < deadline, "c1's frontend: {got}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        connect(&lab, "c2/shop/frontend-c2", &backend_ip),
        "PermissionError 1"
    );

    // A selector of c1 naming no cluster selects c1's backends only (policy-default-local-cluster).
    let j = trace_json(
        &lab,
        "c1/shop/frontend-c1",
        "c2/shop/deploy/backend",
        &["-f", &policy_file],
    );
    assert_eq!(j["verdict"], "DENIED", "{j:#}");
    assert!(
        j["egress"]
            .as_str()
            .unwrap()
            .contains("default deny, selected by CiliumNetworkPolicy shop/frontend-out"),
        "{j:#}"
    );
    let j = trace_json(
        &lab,
        "c1/shop/frontend-c1",
        "c1/shop/deploy/backend",
        &["-f", &policy_file],
    );
    assert_eq!(j["verdict"], "ALLOWED", "{j:#}");
    let j = trace_json(
        &lab,
        "c1/shop/frontend-c1",
        "c2/shop/deploy/backend",
        &[
            "-f",
            &policy_file,
            "--policy-default-local-cluster",
            "false",
        ],
    );
    assert_eq!(j["verdict"], "ALLOWED", "{j:#}");
    let _ = std::fs::remove_file(&policy_file);

    // Disconnected: islands again.
    lab.clustermesh_ok(&[
        "disconnect",
        "--cluster",
        "c1",
        "--destination-cluster",
        "c2",
    ]);
    let (ok, out) = trace(&lab, "c1/shop/frontend-c1", &backend_ip, &[]);
    assert!(
        !ok && out.contains("clusters c1 and c2 are not connected"),
        "{out}"
    );
}
