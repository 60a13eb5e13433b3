//! The cluster-mesh channel over real loopback QUIC with mutual TLS from two cluster CAs made by
//! the pki helpers in a temp dir: snapshot, ordered deltas, resync after a server restart, and
//! refusal of a peer whose certificate comes from another CA.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use strait::mesh::state::IpEntry;
use strait::mesh::{
    ClusterId, MeshClient, MeshServer, MeshState, MeshTls, MeshTrust, Publisher, RemoteConfig,
};
use strait::pki::{ClusterCa, generate_key};

struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let p = std::env::temp_dir().join(format!("strait-mesh-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A cluster CA saved in `dir` and loaded back, as the lab keeps it.
fn ca(dir: &TempDir, cluster: &str) -> ClusterCa {
    let (crt, key) = (
        dir.0.join(format!("{cluster}-ca.crt")),
        dir.0.join(format!("{cluster}-ca.key")),
    );
    ClusterCa::create(cluster)
        .unwrap()
        .save(&crt, &key)
        .unwrap();
    ClusterCa::load(&crt, &key).unwrap()
}

/// Mesh TLS of `cluster` with a certificate from `issuer`, trusting `trust`.
fn mesh_tls(cluster: &str, issuer: &ClusterCa, trust: &[(&str, &ClusterCa)]) -> Arc<MeshTls> {
    let key = generate_key().unwrap();
    let cert = issuer
        .issue_mesh(cluster, &key, Duration::from_secs(3600))
        .unwrap();
    let trust: Vec<_> = trust
        .iter()
        .map(|(c, ca)| MeshTrust {
            cluster: c.to_string(),
            ca_pem: ca.cert_pem.clone(),
        })
        .collect();
    Arc::new(MeshTls::new(cluster, &cert, &key.serialize_pem(), &trust).unwrap())
}

fn c2_state(pods: u8) -> MeshState {
    let mut s = MeshState::empty(ClusterId::new("c2", 2).unwrap());
    for i in 0..pods {
        s.ipcache.insert(
            [10, 2, 0, i].into(),
            IpEntry {
                identity: 0x2_0100,
                node: "c2-node-1".into(),
                namespace: "demo".into(),
                pod: format!("backend-{i}"),
            },
        );
    }
    s
}

fn fast() -> RemoteConfig {
    RemoteConfig {
        ttl: Duration::from_secs(30),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(2),
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Binds a server at `addr`, retrying while the previous socket on that port goes away.
async fn bind_again(addr: SocketAddr, tls: Arc<MeshTls>, p: Arc<Publisher>) -> MeshServer {
    for _ in 0..100 {
        if let Ok(s) = MeshServer::bind(addr, tls.clone(), p.clone()) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("could not rebind {addr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_ordered_deltas_then_resync_after_a_server_restart() {
    let dir = TempDir::new("sync");
    let (ca1, ca2) = (ca(&dir, "c1"), ca(&dir, "c2"));
    let trust = [("c1", &ca1), ("c2", &ca2)];
    let (tls1, tls2) = (mesh_tls("c1", &ca1, &trust), mesh_tls("c2", &ca2, &trust));

    let publisher = Arc::new(Publisher::new(ClusterId::new("c2", 2).unwrap()));
    publisher.publish(c2_state(3));
    let server = MeshServer::bind(loopback(), tls2.clone(), publisher.clone()).unwrap();
    let addr = server.local_addr().unwrap();
    let client =
        MeshClient::spawn(tls1, ClusterId::new("c1", 1).unwrap(), "c2", addr, fast()).unwrap();

    // Snapshot.
    let mut rx = client.state();
    wait_for("the snapshot", || client.status().ready).await;
    let got = rx.borrow_and_update().clone().expect("state after sync");
    assert_eq!(got.ipcache.len(), 3);
    assert_eq!(got.revision, 1);

    // Deltas, in order: every observed revision is newer than the one before, and the last is
    // exactly what the server publishes.
    let watcher = tokio::spawn({
        let mut rx = rx.clone();
        async move {
            let mut seen = vec![];
            while rx.changed().await.is_ok() {
                let Some(s) = rx.borrow_and_update().clone() else {
                    return (seen, true);
                };
                seen.push(s.revision);
                if s.revision == 21 {
                    break;
                }
            }
            (seen, false)
        }
    });
    for pods in 4..24 {
        publisher.publish(c2_state(pods));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (seen, withdrawn) = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .expect("deltas arrive")
        .unwrap();
    assert!(!withdrawn);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order: {seen:?}");
    assert_eq!(seen.last(), Some(&21));
    assert!(
        rx.borrow()
            .as_ref()
            .unwrap()
            .same_content(&publisher.current())
    );

    // Restart: the server goes away; the client keeps serving what it had, then the new
    // incarnation (new epoch, changed content) resyncs it with no gap and no withdrawal.
    let mut gaps = client.state();
    let gap_watch = tokio::spawn(async move {
        while gaps.changed().await.is_ok() {
            if gaps.borrow_and_update().is_none() {
                return true;
            }
        }
        false
    });
    drop(server);
    wait_for("the disconnect", || !client.status().connected).await;
    assert_eq!(client.state().borrow().as_ref().unwrap().revision, 21);
    let restarted = Arc::new(Publisher::new(ClusterId::new("c2", 2).unwrap()));
    restarted.publish(c2_state(2));
    let _server = bind_again(addr, tls2, restarted.clone()).await;
    wait_for("the resync", || {
        client
            .state()
            .borrow()
            .as_ref()
            .is_some_and(|s| s.epoch == restarted.current().epoch)
    })
    .await;
    assert!(
        client
            .state()
            .borrow()
            .as_ref()
            .unwrap()
            .same_content(&restarted.current())
    );
    let st = client.status();
    assert!(st.ready && st.connected && !st.withdrawn, "{st:?}");
    assert!(st.failures >= 1);
    gap_watch.abort();
    assert!(
        !gap_watch.await.unwrap_or(false),
        "state withdrawn during the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_with_another_cas_certificate_are_refused_with_a_reason() {
    let dir = TempDir::new("wrong-ca");
    let (ca1, ca2, rogue) = (ca(&dir, "c1"), ca(&dir, "c2"), ca(&dir, "rogue"));
    let trust = [("c1", &ca1), ("c2", &ca2)];
    let publisher = Arc::new(Publisher::new(ClusterId::new("c2", 2).unwrap()));
    publisher.publish(c2_state(3));

    // A server claiming to be c2 with a certificate of another CA: the client refuses it.
    let impostor = MeshServer::bind(
        loopback(),
        mesh_tls("c2", &rogue, &trust),
        publisher.clone(),
    )
    .unwrap();
    let client = MeshClient::spawn(
        mesh_tls("c1", &ca1, &trust),
        ClusterId::new("c1", 1).unwrap(),
        "c2",
        impostor.local_addr().unwrap(),
        fast(),
    )
    .unwrap();
    wait_for("a failure", || client.status().failures > 0).await;
    let st = client.status();
    let why = st.last_error.unwrap();
    assert!(
        why.contains("certificate of the mesh endpoint") && why.contains("UnknownIssuer"),
        "{why}"
    );
    assert!(!st.ready && !st.serving);
    assert!(client.state().borrow().is_none());

    // A client of c1 whose certificate comes from another CA: the real c2 refuses it.
    let server = MeshServer::bind(loopback(), mesh_tls("c2", &ca2, &trust), publisher).unwrap();
    let client = MeshClient::spawn(
        mesh_tls("c1", &rogue, &trust),
        ClusterId::new("c1", 1).unwrap(),
        "c2",
        server.local_addr().unwrap(),
        fast(),
    )
    .unwrap();
    wait_for("a failure", || client.status().failures > 0).await;
    let st = client.status();
    let why = st.last_error.unwrap();
    assert!(why.contains("refused this cluster's certificate"), "{why}");
    assert!(!st.ready && client.state().borrow().is_none());

    // c2's CA issuing a certificate that claims to be c1: c2's endpoint refuses it too.
    let client = MeshClient::spawn(
        mesh_tls("c1", &ca2, &trust),
        ClusterId::new("c1", 1).unwrap(),
        "c2",
        server.local_addr().unwrap(),
        fast(),
    )
    .unwrap();
    wait_for("a failure", || client.status().failures > 0).await;
    let why = client.status().last_error.unwrap();
    assert!(
        why.contains("refused by cluster c2") && why.contains("not issued by that cluster's CA"),
        "{why}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_remote_is_withdrawn_after_the_ttl_and_not_before() {
    let dir = TempDir::new("ttl");
    let (ca1, ca2) = (ca(&dir, "c1"), ca(&dir, "c2"));
    let trust = [("c1", &ca1), ("c2", &ca2)];
    let publisher = Arc::new(Publisher::new(ClusterId::new("c2", 2).unwrap()));
    publisher.publish(c2_state(3));
    let server = MeshServer::bind(loopback(), mesh_tls("c2", &ca2, &trust), publisher).unwrap();
    let ttl = Duration::from_millis(1500);
    let client = MeshClient::spawn(
        mesh_tls("c1", &ca1, &trust),
        ClusterId::new("c1", 1).unwrap(),
        "c2",
        server.local_addr().unwrap(),
        RemoteConfig { ttl, ..fast() },
    )
    .unwrap();
    wait_for("the snapshot", || client.status().ready).await;
    let down = std::time::Instant::now();
    drop(server);
    wait_for("the disconnect", || !client.status().connected).await;
    tokio::time::sleep(ttl / 2).await;
    assert!(
        client.state().borrow().is_some(),
        "withdrawn before the TTL"
    );
    assert!(client.status().serving);
    wait_for("the withdrawal", || client.state().borrow().is_none()).await;
    assert!(
        down.elapsed() >= ttl,
        "withdrawn after {:?}",
        down.elapsed()
    );
    let st = client.status();
    assert!(st.withdrawn && !st.serving && st.endpoints == 0, "{st:?}");
    assert!(st.last_error.is_some());
}
