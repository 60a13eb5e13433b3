//! End-to-end tests: real network namespaces, real eBPF programs in the running kernel, real agents,
//! real curl and python3 clients. Each test builds its own lab under a unique name and removes it.
//!
//! They need root. Without it they fail and say so: a skipped run must not look like a pass.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use strait::flows::{DecidedBy, Direction, Verdict};
use support::*;

#[test]
fn service_reaches_backend_on_same_and_other_node_and_flows_show_it() {
    let lab = TestLab::up("service_same_other_node", ONE_CLUSTER);
    lab.apply_ok("c1", APP);
    let vip = lab.service_ip("demo", "backend");
    let backend_ip = lab.pod_ip("c1", "demo", "backend");

    for (client, node) in [("client-local", "node-1"), ("client-remote", "node-2")] {
        let out = lab.curl(&format!("c1/demo/{client}"), "http://backend/");
        assert!(out.status.success(), "curl from {client}: {}", text(&out));
        let (body, code) = curl_result(&out);
        assert_eq!(code, "200", "{}", text(&out));
        assert_eq!(
            body["pod"], "backend",
            "answered by the backend pod: {body}"
        );
        assert_eq!(body["cluster"], "c1");

        let flow = lab.wait_flow(&format!("from {client} to the service"), |f| {
            f.source.pod == client && f.service.as_ref().is_some_and(|s| s.name == "backend")
        });
        assert_eq!(flow.node, node, "recorded on the source node");
        assert_eq!(flow.direction, Direction::Egress);
        assert_eq!(flow.verdict, Verdict::Forwarded);
        assert_eq!(flow.original_destination, format!("{vip}:80"));
        assert_eq!(flow.source.namespace, "demo");
        assert_eq!(flow.destination.namespace, "demo");
        assert_eq!(flow.destination.pod, "backend");
        assert_eq!(flow.destination.ip.unwrap().to_string(), backend_ip);
        assert_eq!(flow.destination.port, 8080);
        assert!(flow.bytes_sent > 0 && flow.bytes_received > 0, "{flow:?}");
        assert_eq!(flow.source.identity >> 16, 1, "cluster ID in the identity");
        // Allowed at L4 with no L7 rule: balanced and forwarded by the kernel, no tunnel.
        assert_eq!(flow.decided_by, Some(DecidedBy::Kernel));
        assert_eq!(flow.tunnel_peer, None);
        // The destination node reports the same connection, with the true source identity.
        let ingress = lab.wait_flow("ingress on node-1", |f| {
            f.direction == Direction::Ingress && f.source.pod == client
        });
        assert_eq!(ingress.node, "node-1");
        assert_eq!(ingress.source.identity, flow.source.identity);
        assert_eq!(ingress.destination.pod, "backend");
        assert_eq!(ingress.destination.port, 8080);
        // Both sides count data bytes from the source's point of view, each from its own
        // socket's counters.
        assert_eq!(
            (ingress.bytes_sent, ingress.bytes_received),
            (flow.bytes_sent, flow.bytes_received),
            "egress {flow:?}\ningress {ingress:?}"
        );
    }

    // Service names resolve in every form Kubernetes offers.
    for name in ["backend.demo", "backend.demo.svc.cluster.local"] {
        let out = lab.curl("c1/demo/client-remote", &format!("http://{name}/"));
        let (body, code) = curl_result(&out);
        assert_eq!(code, "200", "{name}: {}", text(&out));
        assert_eq!(body["pod"], "backend");
    }
}

#[test]
fn direct_pod_ip_is_intercepted_and_getpeername_shows_the_dialed_address() {
    let lab = TestLab::up("direct_pod_ip", ONE_CLUSTER);
    lab.apply_ok("c1", APP);
    let backend_ip = lab.pod_ip("c1", "demo", "backend");
    let script = format!(
        "import socket\n\
         s = socket.create_connection(('{backend_ip}', 8080), timeout=5)\n\
         print('peer', '%s:%d' % s.getpeername())\n\
         s.sendall(b'GET /direct HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n')\n\
         data = b''\n\
         while True:\n\
         \x20   chunk = s.recv(65536)\n\
         \x20   if not chunk: break\n\
         \x20   data += chunk\n\
         print(data.decode())\n"
    );
    let out = lab.exec("c1/demo/client-remote", &["python3", "-c", &script]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("peer {backend_ip}:8080")),
        "getpeername must return the dialed address: {stdout}"
    );
    assert!(stdout.contains("\"pod\":\"backend\""), "{stdout}");
    let flow = lab.wait_flow("direct to the backend pod", |f| {
        f.source.pod == "client-remote"
            && f.original_destination == format!("{backend_ip}:8080")
            && f.direction == Direction::Egress
    });
    assert_eq!(flow.service, None);
    assert_eq!(flow.destination.pod, "backend");
    assert_eq!(flow.verdict, Verdict::Forwarded);
    assert_eq!(flow.node, "node-2");
}

#[test]
fn stopped_agent_fails_closed_and_restart_recovers() {
    let lab = TestLab::up("agent_stopped", ONE_CLUSTER);
    lab.apply_ok("c1", APP);
    // The backend's port has an L7 rule (the proxy's); the other pods are not policed (the
    // kernel's fast path).
    lab.apply_ok(
        "c1",
        "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: backend-l7, namespace: demo}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts:
    - ports: [{port: \"8080\", protocol: TCP}]
      rules: {http: [{method: GET}]}
",
    );
    let backend_ip = lab.pod_ip("c1", "demo", "backend");
    let url = format!("http://{backend_ip}:8080/");
    let l4_url = format!("http://{}/", lab.pod_ip("c1", "demo", "client-remote"));
    let out = lab.curl("c1/demo/client-local", &url);
    assert_eq!(curl_result(&out).1, "200", "{}", text(&out));
    let out = lab.curl("c1/demo/client-local", &l4_url);
    assert_eq!(curl_result(&out).1, "200", "{}", text(&out));

    let pid = lab.agent_pid("c1", "node-1");
    let killed = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    std::thread::sleep(Duration::from_millis(200));

    // The kernel's maps stay pinned and in force without the agent (as Cilium's datapath
    // outlives its agent): L4 connections keep flowing...
    let out = lab.curl("c1/demo/client-local", &l4_url);
    assert_eq!(curl_result(&out).1, "200", "{}", text(&out));
    // ... while the redirect of the L7 port stays in force with nothing listening: the connect
    // fails, nothing bypasses the stopped proxy.
    let out = lab.curl("c1/demo/client-local", &url);
    assert!(
        !out.status.success(),
        "must fail with the agent down: {}",
        text(&out)
    );
    assert_eq!(
        out.status.code(),
        Some(7),
        "connection refused expected: {}",
        text(&out)
    );
    // Node-2's proxy still serves its own pods (a backend behind node-1 is unreachable: its
    // tunnel end is the stopped proxy).
    let remote_ip = lab.pod_ip("c1", "demo", "client-remote");
    let out = lab.curl("c1/demo/client-remote", &format!("http://{remote_ip}/"));
    assert_eq!(curl_result(&out).1, "200", "{}", text(&out));

    // Kill the backend's workload too: `lab up` restarts dead pods as a kubelet would.
    let backend_pids: Vec<i32> = {
        let out = Command::new("ip")
            .args(["netns", "pids", &format!("st-{}-c1-demo-backend", lab.name)])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    assert!(!backend_pids.is_empty());
    for p in &backend_pids {
        Command::new("kill")
            .args(["-9", &p.to_string()])
            .status()
            .unwrap();
    }

    // `lab up` is idempotent and restarts the agent and the pod.
    let out = lab.strait(&[
        "lab",
        "up",
        "-f",
        lab.dir.join("topology.yaml").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_ne!(lab.agent_pid("c1", "node-1"), pid);
    let out = lab.curl("c1/demo/client-local", "http://backend/");
    let (body, code) = curl_result(&out);
    assert_eq!(code, "200", "{}", text(&out));
    assert_eq!(body["pod"], "backend");
}

#[test]
fn invalid_manifest_is_rejected_with_its_location_and_changes_nothing() {
    let lab = TestLab::up("invalid_manifest", ONE_CLUSTER);
    lab.apply_ok("c1", APP);
    let before = lab.status();
    let bad = "apiVersion: v1\nkind: Pod\nmetadata: {name: other, namespace: demo}\nspec:\n  containers:\n  - name: c\n    ports: [{containerPort: 99999}]\n";
    let out = lab.apply("c1", bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("document 1 (Pod other): spec.containers[0].ports[0].containerPort: 99999 is not a port number"),
        "{err}"
    );
    let after = lab.status();
    assert_eq!(before["pods"], after["pods"]);
    let out = lab.curl("c1/demo/client-remote", "http://backend/");
    assert_eq!(curl_result(&out).1, "200", "{}", text(&out));
}

#[test]
fn demo_manifest_runs_in_both_default_clusters() {
    let lab = TestLab::up("demo_default", strait::lab::topology::DEFAULT_TOPOLOGY);
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/lab/demo.yaml");
    for cluster in ["c1", "c2"] {
        let out = lab.strait(&["lab", "apply", "--cluster", cluster, "-f", demo]);
        assert!(out.status.success(), "{}", text(&out));
    }
    for (cluster, id) in [("c1", 1), ("c2", 2)] {
        let mut seen = BTreeSet::new();
        // Socket LB picks a backend at random per connection: both answer within a few tries.
        for _ in 0..24 {
            if seen.len() == 2 {
                break;
            }
            let out = lab.curl(
                &format!("{cluster}/demo/deploy/frontend"),
                "http://backend/",
            );
            let (body, code) = curl_result(&out);
            assert_eq!(code, "200", "{}", text(&out));
            assert_eq!(body["cluster"], cluster);
            seen.insert(body["pod"].as_str().unwrap().to_string());
        }
        assert_eq!(
            seen.len(),
            2,
            "round robin over both backends of {cluster}: {seen:?}"
        );
        let flow = lab.wait_flow("in the cluster", |f| {
            f.cluster == cluster && f.service.is_some()
        });
        assert_eq!(flow.source.identity >> 16, id);
    }
}

#[test]
fn lab_down_removes_everything_even_after_agents_were_killed() {
    let lab = TestLab::up("lab_down", ONE_CLUSTER);
    lab.apply_ok("c1", APP);
    let st = lab.status();
    let mut pids: Vec<i32> = st["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["pid"].as_i64().unwrap() as i32)
        .collect();
    let prefix = format!("st-{}-", lab.name);
    let netns_before: Vec<String> = list_netns(&prefix);
    assert!(
        netns_before.len() >= 5,
        "underlay, 2 nodes, 3 pods: {netns_before:?}"
    );
    for ns in &netns_before {
        let out = Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .unwrap();
        pids.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.trim().parse::<i32>().ok()),
        );
    }
    for pid in &pids[..2] {
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
    }
    let out = lab.strait(&["lab", "down"]);
    assert!(out.status.success(), "{}", text(&out));

    assert_eq!(list_netns(&prefix), Vec::<String>::new());
    let cg = cgroup2_root().join("strait").join(&lab.name);
    assert!(!cg.exists(), "{} remains", cg.display());
    let pins = std::path::Path::new("/sys/fs/bpf/strait").join(&lab.name);
    assert!(!pins.exists(), "{} remains", pins.display());
    let state = std::path::Path::new("/run/strait/labs").join(&lab.name);
    assert!(!state.exists(), "{} remains", state.display());
    std::thread::sleep(Duration::from_millis(200));
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z")),
            "process {pid} survived lab down"
        );
    }
    let etc: Vec<_> = std::fs::read_dir("/etc/netns")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    assert!(etc.is_empty(), "/etc/netns entries remain: {etc:?}");
    let status = lab.strait(&["lab", "status"]);
    assert!(
        !status.status.success(),
        "status after down must say the lab is not up"
    );
}

fn list_netns(prefix: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

fn cgroup2_root() -> std::path::PathBuf {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[2] == "cgroup2").then(|| std::path::PathBuf::from(f[1]))
        })
        .unwrap()
}
