//! The cluster mesh in a real lab (default topology: c1 ID 1, c2 ID 2, two nodes each), driven
//! by the CLI as a user would: refusals before enable and for bad names, enable, connect,
//! `status --wait`, remote state in the agents' models, a peer CA that does not match refused
//! with the reason in `status`, and disconnect withdrawing the remote state.
//!
//! A lab whose clusters share an ID or overlap in pod CIDRs comes up with them as islands, and
//! `clustermesh connect` refuses to join them, naming both, changing nothing. Two clusters of
//! one name cannot exist in one lab (names key its namespaces and files; the topology refuses
//! them); that check on the mesh side is unit-tested in `mesh::cluster` and `lab::mesh`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{TestLab, text};

const DEFAULT_TOPOLOGY: &str = include_str!("../proxy/src/lab/default-topology.yaml");

/// c2: two backends (one identity) behind a global service, and a database (another identity).
const C2_APP: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: backend, namespace: demo}
spec:
  replicas: 2
  selector: {matchLabels: {app: backend}}
  template:
    metadata: {labels: {app: backend}}
    spec:
      containers:
      - name: echo
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: demo, labels: {app: db}}
spec:
  nodeName: node-2
  containers: [{name: echo}]
---
apiVersion: v1
kind: Service
metadata:
  name: backend
  namespace: demo
  annotations: {service.cilium.io/global: \"true\"}
spec:
  selector: {app: backend}
  ports: [{port: 80, targetPort: http}]
";

fn mesh_status(lab: &TestLab, cluster: &str, wait: bool) -> (bool, Value) {
    let mut args = vec!["clustermesh", "status", "--cluster", cluster, "-o", "json"];
    if wait {
        args.extend(["--wait", "--wait-duration", "60s"]);
    }
    let out = lab.strait(&args);
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status is not JSON ({e}): {}", text(&out)));
    (out.status.success(), v)
}

fn remote<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["remotes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["cluster"] == name)
        .unwrap_or_else(|| panic!("no remote {name} in {status:#}"))
}

/// Polls `f` until it returns `Some`, for up to 20 s.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The agent's Prometheus exposition, through its admin socket.
fn scrape(lab: &TestLab, cluster: &str, node: &str) -> String {
    let sock = format!(
        "/run/strait/labs/{}/nodes/{cluster}-{node}/admin.sock",
        lab.name
    );
    let out = std::process::Command::new("curl")
        .args(["-sS", "--unix-socket", &sock, "http://agent/metrics"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// The value of the sample `series` (name and labels as exposed).
fn metric(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{exposition}"))
}

fn fails_with(lab: &TestLab, args: &[&str], message: &str) {
    let out = lab.strait(args);
    assert!(
        !out.status.success(),
        "{args:?} should fail: {}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(message),
        "{args:?} should say {message:?}: {}",
        text(&out)
    );
}

#[test]
fn clusters_connect_sync_and_disconnect_through_the_cli() {
    let lab = TestLab::up("clustermesh", DEFAULT_TOPOLOGY);
    lab.apply_ok("c1", support::APP);
    lab.apply_ok("c2", C2_APP);

    // Refusals: before enable, and names Cilium would not accept.
    fails_with(
        &lab,
        &[
            "clustermesh",
            "connect",
            "--cluster",
            "c1",
            "--destination-cluster",
            "c2",
        ],
        "cluster c1 has no mesh endpoint: run `strait clustermesh enable --cluster c1` first",
    );
    fails_with(
        &lab,
        &["clustermesh", "enable", "--cluster", "C_1"],
        "cluster name \"C_1\": only lowercase letters, digits and '-' are allowed",
    );
    fails_with(
        &lab,
        &[
            "clustermesh",
            "connect",
            "--context",
            "c1",
            "--destination-context",
            "c2-",
        ],
        "cluster name \"c2-\": must start and end with a lowercase letter or digit",
    );
    let (ok, st) = mesh_status(&lab, "c1", false);
    assert!(!ok && st["ready"] == false, "{st:#}");

    let out = lab.strait(&["clustermesh", "enable", "--cluster", "c1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("listening on 198.18.0.10:32379"),
        "{}",
        text(&out)
    );
    fails_with(
        &lab,
        &[
            "clustermesh",
            "connect",
            "--cluster",
            "c1",
            "--destination-cluster",
            "c2",
        ],
        "cluster c2 has no mesh endpoint: run `strait clustermesh enable --cluster c2` first",
    );
    let out = lab.strait(&["clustermesh", "enable", "--context", "c2"]);
    assert!(out.status.success(), "{}", text(&out));
    let again = lab.strait(&["clustermesh", "enable", "--cluster", "c2"]);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("already running"),
        "enable is idempotent: {}",
        text(&again)
    );

    let out = lab.strait(&[
        "clustermesh",
        "connect",
        "--context",
        "c1",
        "--destination-context",
        "c2",
    ]);
    assert!(out.status.success(), "{}", text(&out));

    // Ready both ways, with the counts the other cluster has: c2 has 2 nodes, 3 pods of 2
    // identities and 1 global service; c1 has 3 pods of 2 identities and no global service.
    let (ok, st) = mesh_status(&lab, "c1", true);
    assert!(ok, "c1 not ready: {st:#}");
    let r = remote(&st, "c2");
    assert_eq!(
        (&r["configured"], &r["connected"], &r["ready"]),
        (&2.into(), &2.into(), &2.into()),
        "{st:#}"
    );
    assert_eq!(
        (
            &r["nodes"],
            &r["endpoints"],
            &r["identities"],
            &r["services"]
        ),
        (&2.into(), &3.into(), &2.into(), &1.into()),
        "{st:#}"
    );
    // The endpoints trusted each other before any agent dialled: no refused first attempt.
    assert_eq!(r["failures"], 0, "{st:#}");
    let (ok, st) = mesh_status(&lab, "c2", true);
    assert!(ok, "c2 not ready: {st:#}");
    let r = remote(&st, "c1");
    assert_eq!(
        (
            &r["nodes"],
            &r["endpoints"],
            &r["identities"],
            &r["services"]
        ),
        (&2.into(), &3.into(), &2.into(), &0.into()),
        "{st:#}"
    );
    let out = lab.strait(&["clustermesh", "status", "--cluster", "c1"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    for line in [
        "✅ Cluster access information is available:",
        "  - 198.18.0.10:32379",
        "🔌 Cluster Connections:",
        "  - c2: 2/2 configured, 2/2 connected, 2/2 ready",
    ] {
        assert!(shown.contains(line), "missing {line:?} in\n{shown}");
    }
    let out = lab.strait(&["status"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("Cluster mesh: endpoint 198.18.0.10:32379; c2 2/2 ready"),
        "{}",
        text(&out)
    );

    // Every agent of c1 holds c2's pods in its model, by address.
    let c2_backend: Vec<String> = lab.status()["pods"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["cluster"] == "c2")
        .map(|p| p["ip"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(c2_backend.len(), 3);
    for a in lab.status()["agents"].as_array().unwrap() {
        let model = &a["status"]["mesh"]["model"];
        if a["cluster"] == "c1" {
            assert_eq!(model["c2"]["endpoints"], 3, "{a:#}");
            assert_eq!(model["c2"]["id"], 2, "{a:#}");
        } else {
            assert_eq!(model["c1"]["endpoints"], 3, "{a:#}");
        }
    }

    // Every agent of c1 exports c2 as ready, with c2's 3 pods.
    for node in ["node-1", "node-2"] {
        let m = scrape(&lab, "c1", node);
        for line in [
            r#"strait_clustermesh_remote_ready{remote_cluster="c2"} 1"#,
            r#"strait_clustermesh_remote_connected{remote_cluster="c2"} 1"#,
            r#"strait_clustermesh_remote_endpoints{remote_cluster="c2"} 3"#,
            r#"strait_clustermesh_remote_nodes{remote_cluster="c2"} 2"#,
            r#"strait_clustermesh_remote_services{remote_cluster="c2"} 1"#,
            r#"strait_clustermesh_remote_withdrawals_total{remote_cluster="c2"} 0"#,
        ] {
            assert!(
                m.lines().any(|l| l == line),
                "{node}: missing {line:?} in\n{m}"
            );
        }
        let bytes = metric(
            &m,
            r#"strait_clustermesh_remote_received_bytes_total{remote_cluster="c2"}"#,
        );
        assert!(bytes > 0.0, "{node}: {m}");
        let synced = metric(
            &m,
            r#"strait_clustermesh_remote_last_sync_timestamp_seconds{remote_cluster="c2"}"#,
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            (now - 120.0..=now + 1.0).contains(&synced),
            "{synced} vs {now}"
        );
    }

    // c1's agents are told another CA for c2: c2's endpoint certificate is refused, the
    // state goes at once (the sync restarted with the new trust), and status says why.
    let c1_file = format!("/run/strait/labs/{}/clusters/c1.json", lab.name);
    let good = std::fs::read_to_string(&c1_file).unwrap();
    let mut doc: Value = serde_json::from_str(&good).unwrap();
    let impostor = strait::pki::ClusterCa::create("c2").unwrap();
    doc["mesh"]["peers"][0]["caPEM"] = impostor.cert_pem.clone().into();
    let tmp = format!("{c1_file}.test");
    std::fs::write(&tmp, serde_json::to_vec(&doc).unwrap()).unwrap();
    std::fs::rename(&tmp, &c1_file).unwrap();
    let st = eventually("the refused certificate in status", || {
        let (ok, st) = mesh_status(&lab, "c1", false);
        let r = remote(&st, "c2");
        let refused = r["errors"].as_array().is_some_and(|e| {
            e.iter()
                .any(|e| e.as_str().unwrap().contains("certificate"))
        });
        (!ok && refused && r["ready"] == 0 && r["endpoints"] == 0).then_some(st)
    });
    assert!(
        st["problems"][0]
            .as_str()
            .unwrap()
            .starts_with("c2: 2/2 configured, 0/2 connected, 0/2 ready; last error: TLS:"),
        "{st:#}"
    );
    let out = lab.strait(&["status", "--cluster", "c1"]);
    assert!(!out.status.success(), "unhealthy mesh: {}", text(&out));
    let m = scrape(&lab, "c1", "node-1");
    assert!(
        m.lines()
            .any(|l| l == r#"strait_clustermesh_remote_ready{remote_cluster="c2"} 0"#),
        "{m}"
    );
    assert!(
        metric(
            &m,
            r#"strait_clustermesh_remote_sync_failures_total{remote_cluster="c2"}"#
        ) >= 1.0
    );

    // Disconnect: the remote state leaves every agent of both clusters.
    let out = lab.strait(&[
        "clustermesh",
        "disconnect",
        "--cluster",
        "c1",
        "--destination-cluster",
        "c2",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    // The agents have loaded the new state file when disconnect returns; their mesh source
    // follows within milliseconds.
    let started = Instant::now();
    eventually("the remote state withdrawn from every agent", || {
        lab.status()["agents"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| {
                a["status"]["mesh"]["model"] == serde_json::json!({})
                    && a["status"]["mesh"]["remotes"] == serde_json::json!([])
            })
            .then_some(())
    });
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    for c in ["c1", "c2"] {
        let (ok, st) = mesh_status(&lab, c, false);
        assert!(ok, "{st:#}");
        assert_eq!(st["remotes"], serde_json::json!([]), "{st:#}");
    }
    // The series of a disconnected cluster stay, at 0 (counters keep their counts).
    let m = scrape(&lab, "c1", "node-1");
    for line in [
        r#"strait_clustermesh_remote_ready{remote_cluster="c2"} 0"#,
        r#"strait_clustermesh_remote_connected{remote_cluster="c2"} 0"#,
        r#"strait_clustermesh_remote_endpoints{remote_cluster="c2"} 0"#,
    ] {
        assert!(m.lines().any(|l| l == line), "missing {line:?} in\n{m}");
    }
    assert!(
        metric(
            &m,
            r#"strait_clustermesh_remote_sync_failures_total{remote_cluster="c2"}"#
        ) >= 1.0
    );
    fails_with(
        &lab,
        &[
            "clustermesh",
            "disconnect",
            "--cluster",
            "c1",
            "--destination-cluster",
            "c2",
        ],
        "clusters c1 and c2 are not connected",
    );
}

/// c2 shares c1's cluster ID, c3's pod CIDR overlaps c1's: each could run alone, none can join c1.
const ISLANDS: &str = "
underlay: 198.18.0.0/24
clusters:
  - {name: c1, id: 1, podCIDR: 198.18.16.0/20, serviceCIDR: 198.19.1.0/24, nodes: 1}
  - {name: c2, id: 1, podCIDR: 198.18.32.0/20, serviceCIDR: 198.19.2.0/24, nodes: 1}
  - {name: c3, id: 3, podCIDR: 198.18.16.0/21, serviceCIDR: 198.19.3.0/24, nodes: 1}
";

const POD: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: v1
kind: Pod
metadata: {name: echo, namespace: demo, labels: {app: echo}}
spec:
  nodeName: node-1
  containers:
  - name: echo
    ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: demo, labels: {app: client}}
spec:
  nodeName: node-1
  containers: [{name: echo}]
";

/// What a refused connect must leave as it was: every cluster's state file and mesh status.
fn mesh_snapshot(lab: &TestLab) -> Vec<(String, Value)> {
    ["c1", "c2", "c3"]
        .iter()
        .map(|c| {
            let file = format!("/run/strait/labs/{}/clusters/{c}.json", lab.name);
            let (_, st) = mesh_status(lab, c, false);
            (std::fs::read_to_string(&file).unwrap(), st)
        })
        .collect()
}

#[test]
fn clusters_sharing_an_id_or_pod_addresses_run_as_islands_and_are_never_connected() {
    let lab = TestLab::up("clustermesh_islands", ISLANDS);
    for c in ["c1", "c2", "c3"] {
        lab.apply_ok(c, POD);
    }
    // Each island works on its own: c1 and c3 even hand out the same pod addresses.
    let ip1 = lab.pod_ip("c1", "demo", "echo");
    assert_eq!(
        ip1,
        lab.pod_ip("c3", "demo", "echo"),
        "same node CIDR, same first address"
    );
    for c in ["c1", "c3"] {
        let out = lab.curl(&format!("{c}/demo/client"), &format!("http://{ip1}:8080/"));
        assert_eq!(support::curl_result(&out).1, "200", "{c}: {}", text(&out));
    }

    let connect = |a: &str, b: &str| {
        [
            "clustermesh",
            "connect",
            "--cluster",
            a,
            "--destination-cluster",
            b,
        ]
        .map(String::from)
    };
    let refused = |args: &[String], message: &str| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_with(&lab, &args, message);
    };
    // Before any enable: to itself, to a cluster not in the lab, a bad name.
    refused(&connect("c1", "c1"), "cannot connect cluster c1 to itself");
    refused(
        &connect("c1", "c9"),
        &format!("cluster \"c9\" is not in lab {}", lab.name),
    );
    refused(
        &connect("c1", "C1"),
        "cluster name \"C1\": only lowercase letters",
    );
    refused(
        &connect("c1", "c2"),
        "cannot connect cluster c1 (ID 1) to cluster c2 (ID 1): both have cluster ID 1",
    );

    for c in ["c1", "c2", "c3"] {
        lab.clustermesh_ok(&["enable", "--cluster", c]);
    }
    let before = mesh_snapshot(&lab);
    refused(
        &connect("c1", "c2"),
        "cannot connect cluster c1 (ID 1) to cluster c2 (ID 1): both have cluster ID 1",
    );
    refused(
        &connect("c3", "c1"),
        "pod CIDR 198.18.16.0/21 of c3 (ID 3) overlaps pod CIDR 198.18.16.0/20 of c1 (ID 1)",
    );
    refused(&connect("c2", "c2"), "cannot connect cluster c2 to itself");
    let after = mesh_snapshot(&lab);
    for ((file_a, st_a), (file_b, st_b)) in before.iter().zip(&after) {
        assert_eq!(file_a, file_b, "a refused connect rewrote a state file");
        assert_eq!(st_a["remotes"], serde_json::json!([]), "{st_a:#}");
        for key in ["ready", "remotes", "problems"] {
            assert_eq!(
                st_a[key], st_b[key],
                "a refused connect changed {key}: {st_b:#}"
            );
        }
    }
}
