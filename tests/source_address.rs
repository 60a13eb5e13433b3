//! Source-address verification end to end: a pod is root in its network namespace and can send
//! raw IPv4 with any source address. With UDP to the backends allowed only from the frontend, an
//! intruder pod writes the frontend's address on a datagram to a backend on its own node and to
//! one on another node: tc on the intruder's veth drops both before any policy lookup, and the
//! flows name the intruder. The same datagram sent by the frontend itself is answered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use strait::flows::{DecidedBy, DropReason, Verdict};
use support::*;

/// A second backend, on node-2 with the frontend and the intruder (`other`).
const LOCAL_BACKEND: &str = "
apiVersion: v1
kind: Pod
metadata: {name: backend-local, namespace: demo, labels: {app: backend}}
spec:
  nodeName: node-2
  containers:
  - name: echo
    ports: [{name: dns, containerPort: 5353, protocol: UDP}]
";

const UDP_FROM_FRONTEND: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: udp-from-frontend
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts: [{ports: [{port: "5353", protocol: UDP}]}]
"#;

/// `send(src, sport, dst, dport, payload)`: one UDP datagram written whole, IP header included
/// (IPPROTO_RAW implies IP_HDRINCL), so its source is whatever `src` says.
const RAW_SEND: &str = r#"
import socket, struct
def send(src, sport, dst, dport, payload):
    udp = struct.pack('!HHHH', sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), 4242, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.sendto(ip + udp, (dst, 0))
"#;

/// The UDP port the frontend's listener binds: where a backend's echo of a datagram "from the
/// frontend" lands.
const REPLY_PORT: u16 = 40404;

/// Binds `REPLY_PORT` in the frontend, says READY, and prints the first datagram it gets within
/// 3 s (`reply <payload>`) or `timeout`.
const LISTEN: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('0.0.0.0', int(sys.argv[1])))
s.settimeout(3)
print('READY', flush=True)
try:
    print('reply', s.recvfrom(100)[0].decode(), flush=True)
except socket.timeout:
    print('timeout', flush=True)
"#;

/// Starts the frontend's listener; returns once it is bound.
fn listen_in_frontend(lab: &TestLab) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(STRAIT)
        .args([
            "lab",
            "exec",
            "c1/demo/frontend",
            "--",
            "python3",
            "-c",
            LISTEN,
        ])
        .arg(REPLY_PORT.to_string())
        .env("STRAIT_LAB", &lab.name)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "READY");
    (child, out)
}

fn listener_result(mut child: Child, mut out: BufReader<std::process::ChildStdout>) -> String {
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    child.wait().unwrap();
    line.trim().to_string()
}

/// Sends, from `pod`, a raw datagram with source `src:REPLY_PORT` to `dst:5353`.
fn raw_send(lab: &TestLab, pod: &str, src: &str, dst: &str, payload: &str) {
    let script = format!("{RAW_SEND}\nsend('{src}', {REPLY_PORT}, '{dst}', 5353, b'{payload}')\n");
    let out = lab.exec(&format!("c1/demo/{pod}"), &["python3", "-c", &script]);
    assert!(out.status.success(), "raw send from {pod}: {}", text(&out));
}

/// Whether the backend at `dst` echoes a datagram that `sender` sends as the frontend.
fn echoed_as_frontend(lab: &TestLab, sender: &str, frontend: &str, dst: &str) -> String {
    let (child, out) = listen_in_frontend(lab);
    raw_send(lab, sender, frontend, dst, &format!("from-{sender}"));
    listener_result(child, out)
}

#[test]
fn a_pod_cannot_send_as_another_pod() {
    let lab = TestLab::up("srcaddr", ONE_CLUSTER);
    lab.apply_ok("c1", POLICY_APP);
    lab.apply_ok("c1", LOCAL_BACKEND);
    apply_in(&lab, "demo", UDP_FROM_FRONTEND);
    let frontend = lab.pod_ip("c1", "demo", "frontend");
    let other = lab.pod_ip("c1", "demo", "other");
    let remote = lab.pod_ip("c1", "demo", "backend");
    let local = lab.pod_ip("c1", "demo", "backend-local");

    for (where_, backend, name) in [
        ("another node", &remote, "backend"),
        ("the same node", &local, "backend-local"),
    ] {
        // Legitimate traffic: the frontend's own datagrams (plain and raw) are answered, the
        // intruder's own are denied by policy.
        assert_eq!(
            py_udp(&lab, "frontend", backend, 5353),
            "reply ping",
            "{where_}"
        );
        assert_eq!(
            echoed_as_frontend(&lab, "frontend", &frontend, backend),
            "reply from-frontend",
            "the frontend's raw datagram to {where_}"
        );
        assert_eq!(py_udp(&lab, "other", backend, 5353), "timeout", "{where_}");

        // The intruder writes the frontend's address: the backend never sees it (its echo
        // would go to the frontend's listener).
        assert_eq!(
            echoed_as_frontend(&lab, "other", &frontend, backend),
            "timeout",
            "a forged datagram to the backend on {where_}"
        );
        let drop = lab.wait_flow(&format!("SOURCE_IP_INVALID to {name}"), |f| {
            f.drop_reason == Some(DropReason::SourceIpInvalid) && f.destination.pod == name
        });
        assert_eq!(drop.verdict, Verdict::Dropped);
        assert_eq!(drop.decided_by, Some(DecidedBy::Kernel));
        assert_eq!(drop.protocol, "UDP");
        assert_eq!(
            (
                drop.source.pod.as_str(),
                drop.source.ip.map(|ip| ip.to_string())
            ),
            ("other", Some(other.clone())),
            "the flow names the sender, not the address it forged"
        );
        assert_eq!(drop.destination.port, 5353);
        assert!(
            drop.error.as_deref().is_some_and(|e| e.contains(&frontend)),
            "{:?}",
            drop.error
        );
    }

    // `strait observe` filters on the new reason like any other.
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
    let forged: Vec<&str> = lines
        .lines()
        .filter(|l| l.contains("\"SOURCE_IP_INVALID\""))
        .collect();
    assert_eq!(forged.len(), 2, "{lines}");
    assert!(forged.iter().all(|l| l.contains("\"other\"")), "{lines}");
}
