//! The kernel fast path end to end (issue 11): Services balanced in `connect4` with the VIP kept
//! for `getpeername`, flows reported by both nodes without the proxy, and live connections ended
//! when a policy or a Service change no longer allows them. Real lab, real kernel; needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use strait::flows::{DecidedBy, Direction, DropReason, Verdict};
use support::*;

/// Two `store` backends on different nodes behind one Service, a `shopper` client on node-2.
const SHOP: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: store-a, namespace: shop, labels: {app: store}}
spec:
  nodeName: node-1
  containers: [{name: echo, ports: [{name: api, containerPort: 7070}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: store-b, namespace: shop, labels: {app: store}}
spec:
  nodeName: node-2
  containers: [{name: echo, ports: [{name: api, containerPort: 7070}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: shopper, namespace: shop, labels: {app: shopper}}
spec:
  nodeName: node-2
  containers: [{name: echo}]
---
apiVersion: v1
kind: Service
metadata: {name: store, namespace: shop}
spec:
  selector: {app: store}
  ports:
  - {name: api, port: 9443, targetPort: api}
  - {name: api-udp, port: 9443, targetPort: 7070, protocol: UDP}
";

/// One of SHOP's store pods, for `lab delete`.
fn store_pod(name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: shop, labels: {{app: store}}}}
spec:
  nodeName: {node}
  containers: [{{name: echo, ports: [{{name: api, containerPort: 7070}}]}}]
"
    )
}

/// Opens `n` connections to host:port, one after the other; prints the peer address each reports
/// and which pod answered.
fn dial_script(host: &str, port: u16, n: usize) -> String {
    format!(
        "import socket, json\n\
         for _ in range({n}):\n\
         \x20   s = socket.create_connection(('{host}', {port}), timeout=5)\n\
         \x20   peer = '%s:%d' % s.getpeername()\n\
         \x20   s.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n')\n\
         \x20   data = b''\n\
         \x20   while True:\n\
         \x20       chunk = s.recv(65536)\n\
         \x20       if not chunk: break\n\
         \x20       data += chunk\n\
         \x20   body = json.loads(data.split(b'\\r\\n\\r\\n', 1)[1])\n\
         \x20   print(peer, body['pod'])\n"
    )
}

/// Holds one raw TCP connection to host:port open for `secs`, echoing 64 bytes every 50 ms.
/// Creates the file `marker` once connected. Prints `survived <rounds>` or
/// `ended <unix time> <error> <rounds>`.
fn stream_script(host: &str, port: u16, secs: u64, marker: &Path) -> String {
    let marker = marker.display();
    format!(
        "import socket, time\n\
         s = socket.create_connection(('{host}', {port}), timeout=5)\n\
         open('{marker}', 'w').close()\n\
         start = time.time(); n = 0\n\
         try:\n\
         \x20   while time.time() - start < {secs}:\n\
         \x20       s.sendall(b'z' * 64)\n\
         \x20       got = 0\n\
         \x20       while got < 64:\n\
         \x20           d = s.recv(4096)\n\
         \x20           if not d: raise EOFError('closed by peer')\n\
         \x20           got += len(d)\n\
         \x20       n += 1\n\
         \x20       time.sleep(0.05)\n\
         \x20   print('survived', n, flush=True)\n\
         except Exception as e:\n\
         \x20   print('ended', repr(time.time()), type(e).__name__, n, flush=True)\n"
    )
}

/// Runs `script` in `pod` on its own thread; the handle yields its stdout.
fn spawn_script(lab: &TestLab, pod: &str, script: String) -> std::thread::JoinHandle<String> {
    let target = format!("c1/shop/{pod}");
    let name = lab.name.clone();
    std::thread::spawn(move || {
        let out = std::process::Command::new(STRAIT)
            .args(["lab", "exec", &target, "--", "python3", "-c"])
            .arg(&script)
            .env("STRAIT_LAB", &name)
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A fresh marker path for [`stream_script`].
fn marker(lab: &TestLab, what: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{}-{what}-{}", lab.name, rand_suffix()));
    let _ = std::fs::remove_file(&path);
    path
}

/// Waits until the stream of [`stream_script`] is connected (a loaded machine may take more
/// than a second to start the script), so what the test changes next meets a live stream.
fn wait_connected(marker: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the stream never connected");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_file(marker);
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The unix time at which a `stream_script` reported its end.
fn ended_at(out: &str) -> f64 {
    let line = out
        .lines()
        .find(|l| l.starts_with("ended "))
        .unwrap_or_else(|| panic!("the stream was not ended: {out}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn services_are_balanced_in_the_kernel_and_both_nodes_report_the_flows() {
    let lab = TestLab::up("fastpath_lb", ONE_CLUSTER);
    lab.apply_ok("c1", SHOP);
    let vip = lab.service_ip("shop", "store");
    let out = lab.exec(
        "c1/shop/shopper",
        &["python3", "-c", &dial_script(&vip, 9443, 24)],
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut answered = BTreeSet::new();
    for line in stdout.lines() {
        let (peer, pod) = line.split_once(' ').unwrap();
        assert_eq!(peer, format!("{vip}:9443"), "getpeername shows the VIP");
        answered.insert(pod.to_string());
    }
    assert_eq!(
        answered,
        BTreeSet::from(["store-a".to_string(), "store-b".to_string()]),
        "spread over both backends: {stdout}"
    );

    // The source node reports each connection, Service named, decided by the kernel.
    let egress = lab.wait_flow("kernel egress to the service", |f| {
        f.source.pod == "shopper"
            && f.direction == Direction::Egress
            && f.destination.pod == "store-a"
    });
    assert_eq!(egress.node, "node-2");
    assert_eq!(egress.decided_by, Some(DecidedBy::Kernel));
    assert_eq!(egress.verdict, Verdict::Forwarded);
    assert_eq!(
        egress.service.as_ref().map(|s| s.name.as_str()),
        Some("store")
    );
    assert_eq!(egress.original_destination, format!("{vip}:9443"));
    assert_eq!(egress.destination.port, 7070);
    assert!(egress.bytes_sent > 0 && egress.bytes_received > egress.bytes_sent);
    assert_eq!(egress.tunnel_peer, None);
    // The destination node reports it too: node-1 for store-a, node-2 for store-b.
    for (pod, node) in [("store-a", "node-1"), ("store-b", "node-2")] {
        let ingress = lab.wait_flow(&format!("kernel ingress into {pod}"), |f| {
            f.direction == Direction::Ingress
                && f.destination.pod == pod
                && f.source.pod == "shopper"
        });
        assert_eq!(ingress.node, node);
        assert_eq!(ingress.decided_by, Some(DecidedBy::Kernel));
        assert_eq!(ingress.source.identity, egress.source.identity);
        assert!(ingress.bytes_received > 0, "{ingress:?}");
    }
    // `strait observe` reads them like any flow.
    let out = lab.strait(&[
        "observe",
        "-o",
        "json",
        "--last",
        "1000",
        "--namespace",
        "shop",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(json.contains("\"decided_by\":\"kernel\""), "{json}");
}

#[test]
fn a_policy_change_ends_denied_streams_within_a_second_and_spares_allowed_ones() {
    let lab = TestLab::up("fastpath_rejudge", ONE_CLUSTER);
    lab.apply_ok("c1", SHOP);
    let store_a = lab.pod_ip("c1", "shop", "store-a");

    // A policy about someone else changes nothing for a live stream.
    let m = marker(&lab, "unrelated");
    let stream = spawn_script(&lab, "shopper", stream_script(&store_a, 7070, 3, &m));
    wait_connected(&m);
    lab.apply_ok(
        "c1",
        "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: unrelated, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: shopper}}
  ingress: [{fromEndpoints: [{matchLabels: {app: store}}]}]
",
    );
    let out = stream.join().unwrap();
    assert!(out.starts_with("survived"), "{out}");

    // A policy that no longer lets the shopper in ends its stream within a second.
    let m = marker(&lab, "denied");
    let stream = spawn_script(&lab, "shopper", stream_script(&store_a, 7070, 8, &m));
    wait_connected(&m);
    let applied = Instant::now();
    let applied_unix = unix_now();
    lab.apply_ok(
        "c1",
        "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: store-admins-only, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: store}}
  ingress: [{fromEndpoints: [{matchLabels: {app: admin}}]}]
",
    );
    let apply_took = applied.elapsed();
    let out = stream.join().unwrap();
    let cut_after = ended_at(&out) - applied_unix;
    assert!(
        cut_after <= apply_took.as_secs_f64() + 1.0,
        "cut {cut_after:.2} s after the apply started (apply took {apply_took:?}): {out}"
    );
    let dropped = lab.wait_flow("the stream's end, named", |f| {
        f.source.pod == "shopper"
            && f.destination.pod == "store-a"
            && f.verdict == Verdict::Dropped
            && f.decided_by == Some(DecidedBy::Kernel)
    });
    assert_eq!(dropped.drop_reason, Some(DropReason::PolicyDenied));
    assert!(
        dropped
            .policies
            .iter()
            .any(|p| p.contains("store-admins-only")),
        "{:?}",
        dropped.policies
    );
    // A new connection is refused at connect().
    let connect = format!(
        "import socket\n\
         try:\n\
         \x20   socket.create_connection(('{store_a}', 7070), timeout=3)\n\
         \x20   print('ok')\n\
         except OSError as e:\n\
         \x20   print(type(e).__name__, e.errno)\n"
    );
    let out = lab.exec("c1/shop/shopper", &["python3", "-c", &connect]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "PermissionError 1"
    );
}

#[test]
fn deleting_the_backend_of_a_balanced_connection_ends_it() {
    let lab = TestLab::up("fastpath_backend_gone", ONE_CLUSTER);
    lab.apply_ok("c1", SHOP);
    // Only store-a (node-1, across the underlay from the shopper) stays behind the Service.
    lab.delete_ok("c1", &store_pod("store-b", "node-2"));
    let vip = lab.service_ip("shop", "store");
    let m = marker(&lab, "backend");
    let stream = spawn_script(&lab, "shopper", stream_script(&vip, 9443, 8, &m));
    wait_connected(&m);
    let deleted_unix = unix_now();
    let started = Instant::now();
    lab.delete_ok("c1", &store_pod("store-a", "node-1"));
    let delete_took = started.elapsed();
    let out = stream.join().unwrap();
    let cut_after = ended_at(&out) - deleted_unix;
    assert!(
        cut_after <= delete_took.as_secs_f64() + 1.0,
        "ended {cut_after:.2} s after the delete started (it took {delete_took:?}): {out}"
    );
}

#[test]
fn udp_to_a_service_is_balanced_in_the_kernel_and_answers_from_the_vip() {
    let lab = TestLab::up("fastpath_udp", ONE_CLUSTER);
    lab.apply_ok("c1", SHOP);
    let vip = lab.service_ip("shop", "store");
    // Unconnected sockets (sendmsg4/recvmsg4), one per datagram, then a connected one.
    let script = format!(
        "import socket\n\
         for i in range(16):\n\
         \x20   s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         \x20   s.settimeout(2)\n\
         \x20   s.sendto(b'ping%d' % i, ('{vip}', 9443))\n\
         \x20   data, src = s.recvfrom(100)\n\
         \x20   print('from', '%s:%d' % src, data.decode())\n\
         c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         c.settimeout(2)\n\
         c.connect(('{vip}', 9443))\n\
         c.send(b'connected')\n\
         print('peer', '%s:%d' % c.getpeername(), c.recv(100).decode())\n"
    );
    let out = lab.exec("c1/shop/shopper", &["python3", "-c", &script]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let from = format!("from {vip}:9443 ping");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with(&from)).count(),
        16,
        "every reply reads as the VIP's: {stdout}"
    );
    assert!(
        stdout.contains(&format!("peer {vip}:9443 connected")),
        "{stdout}"
    );
    // Each socket was sent to a backend by the kernel; tc reports each flow's first packet.
    let mut reached = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while reached.len() < 2 && Instant::now() < deadline {
        for f in lab.flows() {
            if f.protocol == "UDP"
                && f.source.pod == "shopper"
                && f.direction == Direction::Egress
                && f.destination.port == 7070
            {
                assert_eq!(f.decided_by, Some(DecidedBy::Kernel));
                reached.insert(f.destination.pod.clone());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        reached,
        BTreeSet::from(["store-a".to_string(), "store-b".to_string()]),
        "spread over both backends"
    );
    // Policy denies every backend: the send itself fails, nothing leaves the pod.
    lab.apply_ok(
        "c1",
        "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: store-admins-only, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: store}}
  ingress: [{fromEndpoints: [{matchLabels: {app: admin}}]}]
",
    );
    let send = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         try:\n\
         \x20   s.sendto(b'ping', ('{vip}', 9443))\n\
         \x20   print('sent')\n\
         except OSError as e:\n\
         \x20   print(type(e).__name__, e.errno)\n"
    );
    let out = lab.exec("c1/shop/shopper", &["python3", "-c", &send]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "PermissionError 1"
    );
}
