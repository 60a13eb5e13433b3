#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::flows::Verdict;
use crate::pki::ClusterCa;
use crate::proxy::conn::tests::{FRONTEND, ONLY_FRONTEND, ONLY_OTHER, OTHER, proxy, tables};
use crate::proxy::tls::{NodeIssuer, TrustedCa};

fn source(identity: u32, ip: [u8; 4]) -> TunnelSource {
    TunnelSource {
        identity,
        addr: SocketAddr::from((ip, 40000)),
        cluster: "c1".into(),
        original_dst: String::new(),
    }
}

fn node(name: &str) -> NodeIdentity {
    NodeIdentity {
        cluster: "c1".into(),
        node: name.into(),
    }
}

/// A node's TLS with a certificate of `ca` naming `name` of `c1`, trusting `trust` for `c1`.
fn node_tls(ca: &ClusterCa, trust: &ClusterCa, name: &str) -> Arc<NodeTls> {
    issuer(ca, name, Duration::from_secs(3600))
        .node_tls(&[trusted(trust)])
        .unwrap()
}

fn trusted(ca: &ClusterCa) -> TrustedCa {
    TrustedCa {
        cluster: "c1".into(),
        cert_pem: ca.cert_pem.clone(),
    }
}

fn issuer(ca: &ClusterCa, name: &str, validity: Duration) -> NodeIssuer {
    let ca = ClusterCa::load_pem(&ca.cert_pem, &ca.key_pem()).unwrap();
    let file = std::env::temp_dir().join(format!(
        "strait-tunnel-test-{}-{name}-{}.crt",
        std::process::id(),
        rand::random::<u32>()
    ));
    NodeIssuer::new(
        node(name),
        ca,
        crate::pki::generate_key().unwrap(),
        file,
        validity,
    )
}

/// An echo server on loopback (node-1 owns 127.0.0.0/8 in the test tables), counting
/// connections.
async fn echo() -> (SocketAddrV4, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
        panic!("v4")
    };
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// Node-1's proxy with `server` TLS serving tunnels; returns it and node-1's tunnel address.
async fn node1(allowed: &str, rejudge: bool, server: Arc<NodeTls>) -> (Arc<Proxy>, TunnelPeer) {
    let base = proxy(allowed, rejudge);
    let proxy = Arc::new(
        Proxy::new(
            (*base.tables()).clone(),
            base.flows().clone(),
            base.original_dst.clone(),
        )
        .rejudge_on_update(rejudge)
        .tunnel_transport(Transport::Mtls(server)),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, proxy.clone()));
    (
        proxy,
        TunnelPeer {
            node: node("node-1"),
            addr,
        },
    )
}

async fn ping(s: &mut TokioIo<Upgraded>) {
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

async fn last_flow(proxy: &Proxy) -> crate::flows::FlowRecord {
    for _ in 0..200 {
        if let Some(f) = proxy.flows().recent(None).last() {
            return (**f).clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no flow recorded")
}

#[tokio::test]
async fn ingress_policy_is_judged_with_the_identity_the_tunnel_carries() {
    let ca = ClusterCa::create("c1").unwrap();
    let (target, _) = echo().await;
    let (proxy, peer) = node1(ONLY_FRONTEND, false, node_tls(&ca, &ca, "node-1")).await;
    let pool = TunnelPool::new(Transport::Mtls(node_tls(&ca, &ca, "node-2")));

    let err = pool
        .open(&peer, target, &source(OTHER, [10, 0, 0, 6]))
        .await
        .expect_err("other is denied");
    assert!(
        matches!(err, TunnelError::Refused { status, .. } if status == StatusCode::FORBIDDEN),
        "{err:?}"
    );
    let mut ok = pool
        .open(&peer, target, &source(FRONTEND, [10, 0, 0, 5]))
        .await
        .expect("frontend is allowed");
    ping(&mut ok).await;

    let flows = proxy.flows().recent(None);
    let denied = flows
        .iter()
        .find(|f| f.verdict == Verdict::Dropped)
        .expect("a drop flow");
    assert_eq!(denied.source.identity, OTHER);
    assert_eq!(denied.drop_reason, Some(DropReason::PolicyDenied));
    assert_eq!(denied.decided_by, Some(crate::flows::DecidedBy::Proxy));
    assert_eq!(denied.tunnel_peer.as_deref(), Some("node-2"));
    assert!(
        denied.policies[0].contains("default deny (ingress)"),
        "{denied:?}"
    );
}

#[tokio::test]
async fn a_node_speaks_only_for_its_own_pods() {
    let ca = ClusterCa::create("c1").unwrap();
    let (target, accepted) = echo().await;
    let (proxy, peer) = node1(ONLY_FRONTEND, false, node_tls(&ca, &ca, "node-1")).await;

    // node-3 holds a valid certificate of the cluster CA but does not own frontend's address.
    let node3 = TunnelPool::new(Transport::Mtls(node_tls(&ca, &ca, "node-3")));
    let err = node3
        .open(&peer, target, &source(FRONTEND, [10, 0, 0, 5]))
        .await
        .expect_err("node-3 cannot speak for frontend");
    assert!(
        matches!(err, TunnelError::Refused { status, .. } if status == StatusCode::FORBIDDEN),
        "{err:?}"
    );
    let flow = last_flow(&proxy).await;
    assert_eq!(flow.verdict, Verdict::Dropped);
    assert_eq!(flow.drop_reason, Some(DropReason::IdentityMismatch));
    assert_eq!(flow.tunnel_peer.as_deref(), Some("node-3"));
    assert_eq!(flow.source.identity, FRONTEND, "the claim is shown");

    // node-2 owns `other` and `frontend`, but may not lend one's identity to the other.
    let node2 = TunnelPool::new(Transport::Mtls(node_tls(&ca, &ca, "node-2")));
    let err = node2
        .open(&peer, target, &source(FRONTEND, [10, 0, 0, 6]))
        .await
        .expect_err("other's address with frontend's identity");
    assert!(matches!(err, TunnelError::Refused { .. }), "{err:?}");
    assert_eq!(
        last_flow(&proxy).await.drop_reason,
        Some(DropReason::IdentityMismatch)
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "nothing reached the pod"
    );

    // The same node, telling the truth, gets through.
    let mut ok = node2
        .open(&peer, target, &source(FRONTEND, [10, 0, 0, 5]))
        .await
        .expect("node-2 speaks for its own frontend");
    ping(&mut ok).await;
}

#[tokio::test]
async fn a_peer_without_a_certificate_of_the_cluster_ca_gets_no_tunnel() {
    let ca = ClusterCa::create("c1").unwrap();
    let rogue = ClusterCa::create("c1").unwrap();
    let (target, accepted) = echo().await;
    let (proxy, peer) = node1(ONLY_FRONTEND, false, node_tls(&ca, &ca, "node-1")).await;

    // A certificate naming node-2 of c1, from another CA (the client trusts the real one, so
    // it is the server that refuses).
    let forged = TunnelPool::new(Transport::Mtls(node_tls(&rogue, &ca, "node-2")));
    let err = forged
        .open(&peer, target, &source(FRONTEND, [10, 0, 0, 5]))
        .await
        .expect_err("another CA's certificate is refused");
    assert!(
        matches!(
            err,
            TunnelError::Handshake { .. } | TunnelError::Http { .. } | TunnelError::Connect { .. }
        ),
        "{err:?}"
    );

    // Plain HTTP/2 with forged headers (the attack of the issue): no TLS, no tunnel.
    let plain = TunnelPool::new(Transport::InsecurePlaintext);
    let plain_peer = TunnelPeer {
        node: node("node-1"),
        addr: peer.addr,
    };
    let err = plain
        .open(&plain_peer, target, &source(FRONTEND, [10, 0, 0, 5]))
        .await
        .expect_err("plaintext is refused");
    assert!(matches!(err, TunnelError::Http { .. }), "{err:?}");

    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "nothing reached the pod"
    );
    assert!(proxy.flows().recent(None).is_empty(), "no stream was seen");

    // A client that does not trust the server's CA refuses the server.
    let wary = TunnelPool::new(Transport::Mtls(node_tls(&ca, &rogue, "node-2")));
    let err = wary
        .open(&peer, target, &source(FRONTEND, [10, 0, 0, 5]))
        .await
        .expect_err("server of an untrusted CA");
    assert!(
        matches!(
            err,
            TunnelError::Handshake {
                reason: HandshakeFailure::UnknownCa,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_stream_survives_certificate_renewal_and_new_handshakes_use_the_new_certificate() {
    let ca = ClusterCa::create("c1").unwrap();
    let (target, _) = echo().await;
    let validity = Duration::from_secs(3);
    let server_issuer = issuer(&ca, "node-1", validity);
    let server = server_issuer.node_tls(&[trusted(&ca)]).unwrap();
    let first = server.current_certificate().unwrap();
    tokio::spawn(server_issuer.renew(server.clone()));
    let client_issuer = issuer(&ca, "node-2", validity);
    let client = client_issuer.node_tls(&[trusted(&ca)]).unwrap();
    tokio::spawn(client_issuer.renew(client.clone()));
    let (_proxy, peer) = node1(ONLY_FRONTEND, false, server.clone()).await;

    let pool = TunnelPool::new(Transport::Mtls(client.clone()));
    let mut stream = pool
        .open(&peer, target, &source(FRONTEND, [10, 0, 0, 5]))
        .await
        .unwrap();
    ping(&mut stream).await;
    // Past the first certificates' expiry: both sides renewed at two thirds.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    ping(&mut stream).await;
    let renewed = server.current_certificate().unwrap();
    assert_ne!(first, renewed, "the server certificate was renewed");

    // A new handshake (new pool) succeeds, which the expired first certificates could not.
    let fresh = TunnelPool::new(Transport::Mtls(client));
    let mut again = fresh
        .open(&peer, target, &source(FRONTEND, [10, 0, 0, 5]))
        .await
        .expect("handshake with the renewed certificates");
    ping(&mut again).await;
}

#[tokio::test]
async fn a_stream_policy_revokes_is_closed_when_rejudging_is_on() {
    let ca = ClusterCa::create("c1").unwrap();
    let (target, _) = echo().await;
    let (proxy, peer) = node1(ONLY_FRONTEND, true, node_tls(&ca, &ca, "node-1")).await;
    let pool = TunnelPool::new(Transport::Mtls(node_tls(&ca, &ca, "node-2")));
    let mut frontend = pool
        .open(&peer, target, &source(FRONTEND, [10, 0, 0, 5]))
        .await
        .expect("frontend is allowed");
    ping(&mut frontend).await;

    // `other` becomes the only allowed client: the live frontend stream must end.
    proxy.swap_tables(Arc::new(tables(ONLY_OTHER)));
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), frontend.read_to_end(&mut rest))
        .await
        .expect("the revoked stream is closed");
    assert!(
        read.map_or(true, |n| n == 0),
        "no more data after the close"
    );
    let flow = last_flow(&proxy).await;
    assert_eq!(flow.source.identity, FRONTEND);
    assert_eq!(flow.verdict, Verdict::Dropped);
    assert_eq!(flow.drop_reason, Some(DropReason::PolicyDenied));
    assert!(!flow.policies.is_empty(), "{flow:?}");
    assert_eq!(proxy.live_connections(), 0);
}

#[tokio::test]
async fn a_disconnected_clusters_tunnels_are_closed_and_not_reused() {
    let c1 = ClusterCa::create("c1").unwrap();
    let c2 = ClusterCa::create("c2").unwrap();
    let server = node_tls(&c1, &c1, "node-1");
    let c2_trust = TrustedCa {
        cluster: "c2".into(),
        cert_pem: c2.cert_pem.clone(),
    };
    assert!(
        server
            .set_peer_trust(std::slice::from_ref(&c2_trust))
            .is_empty()
    );
    let (_proxy, peer) = node1(ONLY_FRONTEND, false, server.clone()).await;
    // node-9 of c2, trusting its own CA and, through the mesh, c1's.
    let client = NodeIssuer::new(
        NodeIdentity {
            cluster: "c2".into(),
            node: "node-9".into(),
        },
        ClusterCa::load_pem(&c2.cert_pem, &c2.key_pem()).unwrap(),
        crate::pki::generate_key().unwrap(),
        std::env::temp_dir().join(format!(
            "strait-tunnel-test-c2-{}.crt",
            rand::random::<u32>()
        )),
        Duration::from_secs(3600),
    )
    .node_tls(&[c2_trust])
    .unwrap();
    assert!(client.set_peer_trust(&[trusted(&c1)]).is_empty());
    let pool = TunnelPool::new(Transport::Mtls(client.clone()));
    let sender = pool.sender(&peer).await.unwrap();
    assert!(!sender.is_closed());

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!sender.is_closed(), "the tunnel closed by itself");
    // c1 disconnects c2: its open tunnel from c2 ends.
    assert!(server.set_peer_trust(&[]).is_empty());
    for _ in 0..200 {
        if sender.is_closed() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        sender.is_closed(),
        "the tunnel from c2 outlived the disconnect"
    );
    // And c2, once it drops c1 too, does not reuse or re-open one.
    assert!(client.set_peer_trust(&[]).is_empty());
    assert!(pool.sender(&peer).await.is_err());
}
