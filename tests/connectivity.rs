//! `strait connectivity test` against a real lab of two meshed clusters: it passes on a healthy
//! lab and names the failing check when a deny policy blocks one of its paths. Needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::*;

/// Denies the test's client every ingress to the echo pods of c1.
const DENY_CLIENT: &str = "apiVersion: v1
kind: Namespace
metadata: {name: strait-test}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-client, namespace: strait-test}
spec:
  endpointSelector: {matchLabels: {conntest: echo}}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {conntest: client}}]
";

#[test]
fn connectivity_test_passes_on_a_healthy_lab_and_names_a_blocked_path() {
    let lab = TestLab::up("connectivity", strait::lab::topology::DEFAULT_TOPOLOGY);
    lab.mesh_connect("c1", "c2");

    let out = lab.strait(&["connectivity", "test"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", text(&out));
    for check in [
        "✅ [c1] pod to pod (same node)",
        "✅ [c2] pod to pod (across nodes)",
        "✅ [c1] pod to service",
        "✅ [c1] across clusters (global service)",
        "✅ [c2] across clusters (global service)",
        "✅ [c1] policy allow (L4)",
        "✅ [c1] policy deny",
        "✅ [c2] L7 rule",
        "✅ flow visibility",
    ] {
        assert!(stdout.contains(check), "no {check:?} in {}", text(&out));
    }
    assert!(stdout.contains("checks passed"), "{}", text(&out));
    assert!(!stdout.contains('❌'), "{}", text(&out));
    assert_removed(&lab);

    // A deny policy on c1's echo pods: the run fails and says which path.
    lab.apply_ok("c1", DENY_CLIENT);
    let out = lab.strait(&["connectivity", "test", "--cluster", "c1"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        stdout.contains("❌ pod to pod (same node): "),
        "{}",
        text(&out)
    );
    assert!(
        stdout.contains("failed: pod to pod (same node)"),
        "{}",
        text(&out)
    );
    assert!(stdout.contains("✅ policy deny"), "{}", text(&out));
    assert!(!text(&out).contains("could not remove"), "{}", text(&out));
    assert_removed(&lab);
}

/// No pod of the test's namespace is left in the lab.
fn assert_removed(lab: &TestLab) {
    let pods = lab.status()["pods"].as_array().unwrap().clone();
    assert!(
        pods.iter().all(|p| p["namespace"] != "strait-test"),
        "left behind: {pods:?}"
    );
}
