//! L7 rules across clusters: a policy in c2 with HTTP rules for c1's clients. c1 knows only its
//! own policies, so such connections leave c1 through its node proxy and the mutually
//! authenticated tunnel to the c2 node of the pod (another cluster's CA, trusted for that cluster
//! only), and c2's node judges every request; ports without L7 rules keep the kernel path.
//! Real lab, needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use strait::flows::{DecidedBy, Direction, Verdict};
use support::*;

/// A `catalog` pod on node-2 of `cluster` (c1 has nodes of the same names) behind a global
/// Service, and a `buyer` client on node-1. `with_catalog: false` keeps the Service only.
fn shop(cluster: &str, with_catalog: bool) -> String {
    let catalog = if with_catalog {
        format!(
            "---
apiVersion: v1
kind: Pod
metadata: {{name: catalog-{cluster}, namespace: market, labels: {{app: catalog}}}}
spec:
  nodeName: node-2
  containers: [{{name: echo, ports: [{{name: web, containerPort: 8080}}, {{name: raw, containerPort: 9090}}]}}]
"
        )
    } else {
        String::new()
    };
    format!(
        "apiVersion: v1
kind: Namespace
metadata: {{name: market}}
---
apiVersion: v1
kind: Service
metadata:
  name: catalog
  namespace: market
  annotations: {{service.cilium.io/global: \"true\"}}
spec:
  selector: {{app: catalog}}
  ports: [{{name: web, port: 80, targetPort: web}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: buyer-{cluster}, namespace: market, labels: {{app: buyer}}}}
spec:
  nodeName: node-1
  containers: [{{name: echo}}]
{catalog}"
    )
}

const C2_POLICY: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: c1-buyers-read-items, namespace: market}
spec:
  endpointSelector: {matchLabels: {app: catalog}}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: buyer, io.cilium.k8s.policy.cluster: c1}
    toPorts:
    - ports: [{port: \"8080\", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: \"/items(/.*)?\"}
  - fromEndpoints:
    - matchLabels: {app: buyer, io.cilium.k8s.policy.cluster: c1}
    toPorts:
    - ports: [{port: \"9090\", protocol: TCP}]
";

/// The HTTP status `target` gets for `url`, or the curl error.
fn status(lab: &TestLab, target: &str, url: &str) -> String {
    let out = lab.curl(target, url);
    let body = String::from_utf8_lossy(&out.stdout);
    match body.lines().last() {
        Some(code) if out.status.success() => code.to_string(),
        _ => format!("curl failed: {}", text(&out)),
    }
}

/// Polls until `target` gets `want` for `url` (the mesh and policy reach c1 within a sync).
fn wait_status(lab: &TestLab, target: &str, url: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = status(lab, target, url);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{target} {url}: got {got}, want {want}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn c2s_http_rules_judge_c1s_requests_through_the_authenticated_tunnel() {
    let lab = TestLab::up("mesh_l7", strait::lab::topology::DEFAULT_TOPOLOGY);
    lab.apply_ok("c1", &shop("c1", false));
    lab.apply_ok("c2", &shop("c2", true));
    lab.apply_ok("c2", C2_POLICY);
    lab.mesh_connect("c1", "c2");
    let catalog = lab.pod_ip("c2", "market", "catalog-c2");

    // Through the global Service (its only backend is in c2) and to the pod directly: c2's
    // node answers what its rule allows and refuses the rest, request by request.
    wait_status(
        &lab,
        "c1/market/buyer-c1",
        "http://catalog.market.svc.cluster.local/items/42",
        "200",
    );
    assert_eq!(
        status(
            &lab,
            "c1/market/buyer-c1",
            &format!("http://{catalog}:8080/items")
        ),
        "200"
    );
    assert_eq!(
        status(
            &lab,
            "c1/market/buyer-c1",
            &format!("http://{catalog}:8080/admin")
        ),
        "403"
    );
    let out = lab.exec(
        "c1/market/buyer-c1",
        &[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "-X",
            "POST",
            &format!("http://{catalog}:8080/items"),
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Access denied"),
        "POST must be refused by c2's rule: {}",
        text(&out)
    );

    // c2's node recorded each request, naming the source's cluster and the rule.
    let allowed = lab.wait_flow("GET /items/42 judged in c2", |f| {
        f.cluster == "c2"
            && f.http.as_ref().is_some_and(|h| h.path == "/items/42")
            && f.verdict == Verdict::Forwarded
    });
    assert_eq!(allowed.direction, Direction::Ingress);
    assert_eq!(
        (allowed.source.pod.as_str(), allowed.source.cluster.as_str()),
        ("buyer-c1", "c1")
    );
    assert_eq!(allowed.destination.pod, "catalog-c2");
    assert_eq!(allowed.decided_by, Some(DecidedBy::Proxy));
    assert_eq!(
        allowed.tunnel_peer.as_deref(),
        Some("node-1"),
        "c1's node-1 sent it"
    );
    let refused = lab.wait_flow("GET /admin refused in c2", |f| {
        f.cluster == "c2" && f.http.as_ref().is_some_and(|h| h.path == "/admin")
    });
    assert_eq!(refused.verdict, Verdict::Dropped);
    assert_eq!(refused.source.cluster, "c1");
    assert_eq!(refused.http.as_ref().unwrap().status, Some(403));
    // c1's node sent the connection through c2's node-2 (not c1's node of the same name).
    let sent = lab.wait_flow("c1's side of the tunnelled connection", |f| {
        f.cluster == "c1"
            && f.source.pod == "buyer-c1"
            && f.destination.pod == "catalog-c2"
            && f.tunnel_peer.is_some()
    });
    assert_eq!(sent.destination.cluster, "c2");
    assert_eq!(sent.tunnel_peer.as_deref(), Some("node-2"));

    // The port without L7 rules keeps the kernel path: no proxy on either side.
    let out = lab.exec(
        "c1/market/buyer-c1",
        &[
            "curl",
            "-sS",
            "--max-time",
            "5",
            &format!("http://{catalog}:9090/anything"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let kernel = lab.wait_flow("the L4 port on the kernel path", |f| {
        f.source.pod == "buyer-c1" && f.destination.port == 9090 && f.cluster == "c2"
    });
    assert_eq!(kernel.decided_by, Some(DecidedBy::Kernel));

    // c2's own buyer is not admitted (the rule names c1): refused at connect() in c2.
    let got = status(
        &lab,
        "c2/market/buyer-c2",
        &format!("http://{catalog}:8080/items"),
    );
    assert!(got.starts_with("curl failed"), "{got}");
    let refused_c2 = lab.wait_flow("c2's buyer refused", |f| {
        f.source.pod == "buyer-c2" && f.destination.pod == "catalog-c2"
    });
    assert_eq!(refused_c2.verdict, Verdict::Dropped);
    assert_eq!(refused_c2.decided_by, Some(DecidedBy::Kernel));

    // The policy goes: c2 no longer asks for c1's requests, and c1 goes straight to the pod.
    lab.delete_ok("c2", C2_POLICY);
    wait_status(
        &lab,
        "c1/market/buyer-c1",
        &format!("http://{catalog}:8080/admin"),
        "200",
    );
    let direct = lab.wait_flow("port 8080 back on the kernel path", |f| {
        f.cluster == "c2"
            && f.source.pod == "buyer-c1"
            && f.destination.port == 8080
            && f.decided_by == Some(DecidedBy::Kernel)
    });
    assert_eq!(direct.verdict, Verdict::Forwarded);
}
