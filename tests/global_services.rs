//! Cilium's multi-cluster tutorial, the global service part, in the lab: two clusters meshed, a
//! client in c1 reaching a Service that spans both, then affinity, failover and `shared: "false"`.
//! Real lab, real kernel (socket LB to the other cluster's pods); needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;

use support::*;

/// One `store` Deployment of `replicas` pods behind a Service with the given annotations, and a
/// `shopper` client (c1 only).
fn app(replicas: u32, annotations: &str, with_client: bool) -> String {
    let client = if with_client {
        "---
apiVersion: v1
kind: Pod
metadata: {name: shopper, namespace: shop, labels: {app: shopper}}
spec:
  containers: [{name: echo}]
"
    } else {
        ""
    };
    format!(
        "apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: store, namespace: shop}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: store}}}}
  template:
    metadata: {{labels: {{app: store}}}}
    spec:
      containers: [{{name: echo, ports: [{{name: api, containerPort: 7070}}]}}]
---
apiVersion: v1
kind: Service
metadata:
  name: store
  namespace: shop
  annotations: {{{annotations}}}
spec:
  selector: {{app: store}}
  ports: [{{name: api, port: 80, targetPort: api}}]
{client}"
    )
}

/// Which clusters answered `n` requests from c1's shopper to the `store` Service, and how often.
fn answers(lab: &TestLab, n: usize) -> BTreeMap<String, usize> {
    let script = format!(
        "import socket, json\n\
         for _ in range({n}):\n\
         \x20   try:\n\
         \x20       s = socket.create_connection(('store.shop.svc.cluster.local', 80), timeout=3)\n\
         \x20       s.sendall(b'GET / HTTP/1.1\\r\\nHost: store\\r\\nConnection: close\\r\\n\\r\\n')\n\
         \x20       data = b''\n\
         \x20       while True:\n\
         \x20           chunk = s.recv(65536)\n\
         \x20           if not chunk: break\n\
         \x20           data += chunk\n\
         \x20       print(json.loads(data.split(b'\\r\\n\\r\\n', 1)[1])['cluster'])\n\
         \x20   except Exception as e:\n\
         \x20       print('error', type(e).__name__)\n"
    );
    let out = lab.exec("c1/shop/shopper", &["python3", "-c", &script]);
    assert!(out.status.success(), "{}", text(&out));
    let mut seen = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        *seen.entry(line.to_string()).or_insert(0) += 1;
    }
    seen
}

/// Polls until `n` requests are answered only by `want` (the kernel maps follow the mesh within
/// a sync), or fails with what answered last.
fn wait_answers(lab: &TestLab, want: &[&str], n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let seen = answers(lab, n);
        let clusters: Vec<&str> = seen.keys().map(String::as_str).collect();
        if clusters == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected answers from {want:?}, got {seen:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

#[test]
fn a_global_service_spans_clusters_with_affinity_failover_and_sharing() {
    let lab = TestLab::up("global_services", strait::lab::topology::DEFAULT_TOPOLOGY);
    let global = "service.cilium.io/global: \"true\"";
    lab.apply_ok("c1", &app(1, global, true));
    lab.apply_ok("c2", &app(1, global, false));
    // Cilium's flag names are accepted too.
    lab.clustermesh_ok(&["enable", "--context", "c1"]);
    lab.mesh_connect("c1", "c2");

    // Both clusters answer the global service.
    wait_answers(&lab, &["c1", "c2"], 24);

    // Affinity local: c1 while it has a ready endpoint, c2 once it has none, c1 again after.
    let local = format!("{global}, service.cilium.io/affinity: local");
    lab.apply_ok("c1", &app(1, &local, true));
    wait_answers(&lab, &["c1"], 12);
    lab.apply_ok("c1", &app(0, &local, true));
    wait_answers(&lab, &["c2"], 12);
    lab.apply_ok("c1", &app(1, &local, true));
    wait_answers(&lab, &["c1"], 12);

    // c2 stops sharing its endpoints: c1 keeps to its own even without affinity.
    lab.apply_ok("c1", &app(1, global, true));
    wait_answers(&lab, &["c1", "c2"], 24);
    lab.apply_ok(
        "c2",
        &app(
            1,
            &format!("{global}, service.cilium.io/shared: \"false\""),
            false,
        ),
    );
    wait_answers(&lab, &["c1"], 12);

    lab.clustermesh_ok(&[
        "disconnect",
        "--context",
        "c1",
        "--destination-context",
        "c2",
    ]);
}

/// `store` and `shopper` pods in `cluster`, plus an `intruder` pod.
fn pods(cluster: &str) -> String {
    format!(
        "apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: v1
kind: Pod
metadata: {{name: store-{cluster}, namespace: shop, labels: {{app: store}}}}
spec:
  nodeName: node-1
  containers: [{{name: echo, ports: [{{name: api, containerPort: 7070}}]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: shopper-{cluster}, namespace: shop, labels: {{app: shopper}}}}
spec:
  nodeName: node-2
  containers: [{{name: echo}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: intruder-{cluster}, namespace: shop, labels: {{app: intruder}}}}
spec:
  nodeName: node-2
  containers: [{{name: echo}}]
"
    )
}

/// `ok`, or the error class and errno of a connect from `target` to `ip:port`.
fn connect_from(lab: &TestLab, target: &str, ip: &str, port: u16) -> String {
    let script = format!(
        "import socket\n\
         try:\n\
         \x20   s = socket.create_connection(('{ip}', {port}), timeout=2)\n\
         \x20   s.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n')\n\
         \x20   print('ok' if s.recv(100) else 'closed')\n\
         except OSError as e:\n\
         \x20   print(type(e).__name__, e.errno)\n"
    );
    let out = lab.exec(target, &["python3", "-c", &script]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_policy_in_c2_admits_only_c1s_shoppers() {
    let lab = TestLab::up(
        "cross_cluster_policy",
        strait::lab::topology::DEFAULT_TOPOLOGY,
    );
    lab.apply_ok("c1", &pods("c1"));
    lab.apply_ok("c2", &pods("c2"));
    lab.apply_ok(
        "c2",
        "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: c1-shoppers-only, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: store}}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: shopper, io.cilium.k8s.policy.cluster: c1}
",
    );
    lab.mesh_connect("c2", "c1");
    let store = lab.pod_ip("c2", "shop", "store-c2");

    // c1's shopper is admitted by c2's policy (c2 knows its identity through the mesh).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let got = connect_from(&lab, "c1/shop/shopper-c1", &store, 7070);
        if got == "ok" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "c1's shopper: {got}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    // c2's own shopper is not (the selector names c1): refused at connect() in c2.
    assert_eq!(
        connect_from(&lab, "c2/shop/shopper-c2", &store, 7070),
        "PermissionError 1"
    );
    let refused = lab.wait_flow("c2's shopper refused", |f| {
        f.source.pod == "shopper-c2" && f.verdict == strait::flows::Verdict::Dropped
    });
    assert_eq!(refused.source.cluster, "c2");
    assert_eq!(refused.destination.pod, "store-c2");
    // c1's intruder: c1 lets it leave (no policy there), c2's node drops it and says from where.
    let got = connect_from(&lab, "c1/shop/intruder-c1", &store, 7070);
    assert!(
        got.starts_with("TimeoutError") || got.starts_with("timeout"),
        "{got}"
    );
    let dropped = lab.wait_flow("c1's intruder dropped in c2", |f| {
        f.source.pod == "intruder-c1" && f.verdict == strait::flows::Verdict::Dropped
    });
    assert_eq!(dropped.source.cluster, "c1");
    assert_eq!(dropped.cluster, "c2", "recorded by c2's node");
    assert!(
        dropped
            .policies
            .iter()
            .any(|p| p.contains("c1-shoppers-only")),
        "{:?}",
        dropped.policies
    );
}
