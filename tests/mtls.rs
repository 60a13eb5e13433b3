//! Tunnels between node proxies are mutually authenticated: a pod that dials another node's
//! tunnel port with forged identity headers gets no tunnel, and `lab down` leaves no keys.
//! (Other CAs, identity mismatch and renewal are tested with certificates made in the test, in
//! `proxy/src/proxy/tunnel/tests.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use strait::flows::{Direction, Verdict};
use support::*;

const APP_WITH_INTRUDER: &str = "
apiVersion: v1
kind: Pod
metadata: {name: intruder, namespace: demo, labels: {app: intruder}}
spec:
  nodeName: node-2
  containers: [{name: echo}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow-frontend-to-backend, namespace: demo}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts:
    - ports: [{port: '8080', protocol: TCP}]
      # An L7 rule: the connection goes through the proxies and their mTLS tunnel (allowed at
      # L4 only, it would take the kernel fast path, pod to pod).
      rules: {http: [{method: GET}]}
";

/// HTTP/2 with prior knowledge over plain TCP: the preface, SETTINGS, and one CONNECT whose
/// headers claim `identity` and `addr`. Prints what came back: `h2` (an HTTP/2 server
/// answered), `tls-alert`, `closed`, `reset` or `error ...`.
fn attack_script(tunnel: &str, target: &str, identity: u32, addr: &str) -> String {
    format!(
        r#"
import socket, struct
def lit(n, v):
    n, v = n.encode(), v.encode()
    return b'\x00' + bytes([len(n)]) + n + bytes([len(v)]) + v
block = (lit(':method', 'CONNECT') + lit(':authority', '{target}')
    + lit('strait-source-identity', '{identity}') + lit('strait-source-addr', '{addr}')
    + lit('strait-source-cluster', 'c1'))
def frame(t, f, sid, p):
    return struct.pack('>I', len(p))[1:] + bytes([t, f]) + struct.pack('>I', sid) + p
host, port = '{tunnel}'.split(':')
try:
    s = socket.create_connection((host, int(port)), timeout=3)
    s.sendall(b'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n' + frame(4, 0, 0, b'') + frame(1, 4, 1, block))
    got = b''
    while len(got) < 9:
        d = s.recv(4096)
        if not d:
            break
        got += d
    if len(got) >= 9 and got[3] == 4:
        print('h2')
    elif got[:1] == b'\x15':
        print('tls-alert')
    elif not got:
        print('closed')
    else:
        print('other', got[:16].hex())
except ConnectionResetError:
    print('reset')
except OSError as e:
    print('error', type(e).__name__, e)
"#
    )
}

fn node_ip(lab: &TestLab, node: &str) -> String {
    let st = lab.status();
    st["topology"]["clusters"][0]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node)
        .unwrap_or_else(|| panic!("no {node} in {st}"))["underlay_ip"]
        .as_str()
        .unwrap()
        .to_string()
}

fn state_dir(lab: &TestLab) -> PathBuf {
    PathBuf::from("/run/strait/labs").join(&lab.name)
}

fn metrics(lab: &TestLab, node: &str) -> String {
    let sock = state_dir(lab).join(format!("nodes/c1-{node}/admin.sock"));
    let out = Command::new("curl")
        .args([
            "-sS",
            "--unix-socket",
            sock.to_str().unwrap(),
            "http://agent/metrics",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "scrape: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_pod_cannot_forge_a_tunnel_and_lab_down_leaves_no_keys() {
    let lab = TestLab::up("mtls_forged_tunnel", ONE_CLUSTER);
    lab.apply_ok("c1", APP);
    lab.apply_ok("c1", APP_WITH_INTRUDER);
    let backend = lab.pod_ip("c1", "demo", "backend");
    let frontend = lab.pod_ip("c1", "demo", "client-remote");

    // The legitimate cross-node request works, through the mTLS tunnel (the port has L7 rules).
    let out = lab.curl("c1/demo/client-remote", &format!("http://{backend}:8080/"));
    let (body, code) = curl_result(&out);
    assert_eq!(code, "200", "{}", text(&out));
    assert_eq!(body["pod"], "backend");
    let legit = lab.wait_flow("legitimate ingress on node-1", |f| {
        f.node == "node-1" && f.direction == Direction::Ingress && f.source.pod == "client-remote"
    });
    assert_eq!(legit.verdict, Verdict::Forwarded);
    assert_eq!(
        legit.tunnel_peer.as_deref(),
        Some("node-2"),
        "the authenticated peer"
    );
    let frontend_identity = legit.source.identity;

    // The intruder speaks plain HTTP/2 to node-1's tunnel port claiming to be the frontend.
    let tunnel = format!("{}:15008", node_ip(&lab, "node-1"));
    let script = attack_script(
        &tunnel,
        &format!("{backend}:8080"),
        frontend_identity,
        &format!("{frontend}:40000"),
    );
    for _ in 0..3 {
        let out = lab.exec("c1/demo/intruder", &["python3", "-c", &script]);
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            ["tls-alert", "closed", "reset"].contains(&answer.as_str()),
            "the tunnel port must demand TLS, got {answer:?}: {}",
            text(&out)
        );
    }

    // Nothing reached the backend: node-1 saw exactly the one legitimate stream.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let ingress: Vec<_> = lab
        .flows()
        .into_iter()
        .filter(|f| f.node == "node-1" && f.direction == Direction::Ingress)
        .collect();
    assert_eq!(ingress.len(), 1, "{ingress:#?}");
    // Counted per attempt, logged once for the intruder's address.
    let scraped = metrics(&lab, "node-1");
    let failures: f64 = scraped
        .lines()
        .filter(|l| {
            l.starts_with("strait_tunnel_handshake_failures_total{")
                && l.contains("role=\"server\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(failures >= 3.0, "handshake failures counted: {scraped}");
    let log = std::fs::read_to_string(state_dir(&lab).join("nodes/c1-node-1/agent.log")).unwrap();
    assert_eq!(
        log.matches("tunnel handshake refused").count(),
        1,
        "logged once per peer: {log}"
    );

    // The legitimate path still works after the attack.
    let out = lab.curl("c1/demo/client-remote", &format!("http://{backend}:8080/"));
    assert_eq!(curl_result(&out).1, "200", "{}", text(&out));

    // Keys are private and never logged; `lab down` removes them all.
    let dir = state_dir(&lab);
    let keys = [
        dir.join("pki/c1/ca.key"),
        dir.join("nodes/c1-node-1/node.key"),
        dir.join("nodes/c1-node-2/node.key"),
    ];
    for key in &keys {
        let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key.display());
    }
    for node in ["node-1", "node-2"] {
        let log = std::fs::read_to_string(dir.join(format!("nodes/c1-{node}/agent.log"))).unwrap();
        assert!(
            !log.contains("PRIVATE KEY"),
            "no key material in {node}'s log"
        );
    }
    let out = lab.strait(&["lab", "down"]);
    assert!(out.status.success(), "lab down: {}", text(&out));
    for key in &keys {
        assert!(!key.exists(), "{} removed", key.display());
    }
    assert!(!dir.exists(), "state directory removed");
}
