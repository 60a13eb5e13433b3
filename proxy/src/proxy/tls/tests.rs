#![allow(clippy::unwrap_used)]
//! The admin API's TLS listener, end to end over loopback: it sits here, above `admin`, because
//! it needs the node's TLS.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::admin::{Admin, AdminState};
use crate::flows::FlowRing;
use crate::pki::ClusterCa;
use rustls::pki_types::PrivateKeyDer;

const HOUR: Duration = Duration::from_secs(3600);

/// A client's certificate and key (PEM).
struct ClientCert {
    cert: String,
    key: String,
}

fn client_cert(ca: &ClusterCa, cluster: &str, name: &str) -> ClientCert {
    let key = crate::pki::generate_key().unwrap();
    ClientCert {
        cert: ca.issue_client(cluster, name, &key, HOUR).unwrap(),
        key: key.serialize_pem(),
    }
}

fn trusted(cluster: &str, ca: &ClusterCa) -> TrustedCa {
    TrustedCa {
        cluster: cluster.into(),
        cert_pem: ca.cert_pem.clone(),
    }
}

/// node-1 of c1, trusting `c1` and, for tunnels only, the peer cluster `c2`.
fn node_tls(c1: &ClusterCa, c2: &ClusterCa) -> NodeTls {
    let key = crate::pki::generate_key().unwrap();
    let cert = c1.issue_node("c1", "node-1", &key, HOUR).unwrap();
    NodeTls::new(
        NodeIdentity {
            cluster: "c1".into(),
            node: "node-1".into(),
        },
        &cert,
        &key.serialize_pem(),
        &[trusted("c1", c1), trusted("c2", c2)],
    )
    .unwrap()
}

/// The socket directory, removed on drop.
struct SocketDir(PathBuf);

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Serves the admin API of `tls`'s node with one flow recorded; returns the plain TCP and TLS
/// addresses.
fn serve_admin(tls: &NodeTls) -> (SocketDir, SocketAddr, SocketAddr) {
    let dir = SocketDir(std::env::temp_dir().join(format!(
        "strait-admintls-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    )));
    std::fs::create_dir_all(&dir.0).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let bound = Admin::bind(&dir.0.join("admin.sock"), Some(any))
        .unwrap()
        .with_tls(any, tls.admin_acceptor().unwrap())
        .unwrap();
    let (tcp, tls_addr) = (bound.tcp_addr().unwrap(), bound.tls_addr().unwrap());
    let ring = Arc::new(FlowRing::new(10));
    ring.record(crate::flows::test_flow(1, 4242));
    bound.spawn(AdminState {
        flows: ring,
        status: Arc::new(|| serde_json::json!({"node": "node-1", "ready": true})),
        metrics: Arc::new(String::new),
    });
    (dir, tcp, tls_addr)
}

/// A TLS 1.3 client trusting `ca`, presenting `cert` if given.
fn connector(ca: &ClusterCa, cert: Option<&ClientCert>) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap())
        .unwrap();
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots);
    let mut config = match cert {
        Some(c) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(c.cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(c.key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// `GET path` over TLS; the server's certificate and the response, or the error as text. In
/// TLS 1.3 the server judges the client certificate after the client finished, so a refusal may
/// surface on the request rather than on connect.
async fn get(
    addr: SocketAddr,
    connector: &TlsConnector,
    path: &str,
) -> Result<(CertificateDer<'static>, http::StatusCode, String), String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("node-1.c1.strait").unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(ALPN_HTTP1));
    let server_cert = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, "node-1.c1.strait")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let rsp = send
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e:?}"))?;
    let status = rsp.status();
    let body = rsp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    Ok((
        server_cert,
        status,
        String::from_utf8(body.to_bytes().to_vec()).unwrap(),
    ))
}

async fn get_timed(
    addr: SocketAddr,
    connector: &TlsConnector,
    path: &str,
) -> Result<(CertificateDer<'static>, http::StatusCode, String), String> {
    tokio::time::timeout(Duration::from_secs(10), get(addr, connector, path))
        .await
        .expect("admin TLS request timed out")
}

#[tokio::test]
async fn admin_tls_serves_every_route_to_cluster_client_certificates_only() {
    let c1 = ClusterCa::create("c1").unwrap();
    let c2 = ClusterCa::create("c2").unwrap();
    let tls = node_tls(&c1, &c2);
    let (_dir, tcp, tls_addr) = serve_admin(&tls);

    let operator = connector(&c1, Some(&client_cert(&c1, "c1", "operator")));
    let (cert, status, body) = get_timed(tls_addr, &operator, "/status").await.unwrap();
    assert_eq!(status, http::StatusCode::OK, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["node"], "node-1");
    assert_eq!(Some(cert.clone()), tls.current_certificate());
    let first = cert;
    let (_, status, body) = get_timed(tls_addr, &operator, "/flows?last=10")
        .await
        .unwrap();
    assert_eq!(status, http::StatusCode::OK, "{body}");
    let lines: Vec<serde_json::Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{body}");
    assert_eq!(lines[0]["source"]["port"], 4242, "{body}");

    // No certificate; one of an unrelated CA; one of a peer cluster whose CA the tunnel trusts.
    let impostor = ClusterCa::create("c1").unwrap();
    for (what, refused, alert) in [
        (
            "no client certificate",
            connector(&c1, None),
            "CertificateRequired",
        ),
        (
            "another CA's certificate",
            connector(&c1, Some(&client_cert(&impostor, "c1", "operator"))),
            "UnknownCA",
        ),
        (
            "a peer cluster's certificate",
            connector(&c1, Some(&client_cert(&c2, "c2", "operator"))),
            "UnknownCA",
        ),
    ] {
        let err = get_timed(tls_addr, &refused, "/flows")
            .await
            .expect_err(what);
        assert!(err.contains(alert), "{what}: {err}");
    }

    // Plain TCP still keeps flows and status behind the certificate.
    for path in ["/flows", "/status"] {
        let mut s = tokio::net::TcpStream::connect(tcp).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut rsp = String::new();
        s.read_to_string(&mut rsp).await.unwrap();
        assert!(rsp.starts_with("HTTP/1.1 403"), "{path}: {rsp}");
    }

    // A renewed node certificate is what the next admin handshake presents.
    let key = crate::pki::generate_key().unwrap();
    let renewed = c1.issue_node("c1", "node-1", &key, HOUR).unwrap();
    tls.set_certificate(&renewed, &key.serialize_pem()).unwrap();
    // A fresh client: a resumed session would not show the server certificate again.
    let operator = connector(&c1, Some(&client_cert(&c1, "c1", "operator")));
    let (cert, status, _) = get_timed(tls_addr, &operator, "/healthz").await.unwrap();
    assert_eq!(status, http::StatusCode::OK);
    assert_ne!(cert, first);
    assert_eq!(Some(cert), tls.current_certificate());
}

#[test]
fn admin_acceptor_needs_the_local_cluster_ca() {
    let c1 = ClusterCa::create("c1").unwrap();
    let c2 = ClusterCa::create("c2").unwrap();
    let key = crate::pki::generate_key().unwrap();
    let cert = c1.issue_node("c1", "node-1", &key, HOUR).unwrap();
    let tls = NodeTls::new(
        NodeIdentity {
            cluster: "c1".into(),
            node: "node-1".into(),
        },
        &cert,
        &key.serialize_pem(),
        &[trusted("c2", &c2)],
    )
    .unwrap();
    let err = tls.admin_acceptor().err().unwrap();
    assert!(
        matches!(err, TlsError::NoLocalCa { ref cluster } if cluster == "c1"),
        "{err}"
    );
}

/// The leaf of a node certificate `ca` issues for `node` of `cluster`, as a handshake chain.
fn node_chain(ca: &ClusterCa, cluster: &str, node: &str) -> Vec<CertificateDer<'static>> {
    let key = crate::pki::generate_key().unwrap();
    let pem = ca.issue_node(cluster, node, &key, HOUR).unwrap();
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

#[test]
fn a_peer_cluster_speaks_only_for_its_own_nodes_even_with_a_ca_named_like_ours() {
    let c1 = ClusterCa::create("c1").unwrap();
    let c2 = ClusterCa::create("c2").unwrap();
    let tls = node_tls(&c1, &c2);
    let node = |chain: Vec<CertificateDer<'static>>| tls.peer_node(Some(&chain));
    assert_eq!(
        node(node_chain(&c2, "c2", "node-2")).unwrap(),
        NodeIdentity {
            cluster: "c2".into(),
            node: "node-2".into()
        }
    );
    // c2's CA cannot name a node of c1.
    assert!(node(node_chain(&c2, "c1", "node-2")).is_err());
    // Nor can a CA c2 made with c1's CA's exact name: the signature, not the name, decides.
    let forged = {
        let key = crate::pki::generate_key().unwrap();
        let params = rcgen::CertificateParams::from_ca_cert_pem(&c1.cert_pem).unwrap();
        let cert = params.self_signed(&key).unwrap();
        ClusterCa::load_pem(&cert.pem(), &key.serialize_pem()).unwrap()
    };
    assert!(node(node_chain(&forged, "c1", "node-2")).is_err());
    // Offered as a peer's CA, a CA named like a trusted one is refused, and the good peers
    // are trusted all the same.
    let c3 = ClusterCa::create("c3").unwrap();
    let refused = tls.set_peer_trust(&[trusted("c4", &forged), trusted("c3", &c3)]);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].0, "c4");
    assert!(
        refused[0].1.to_string().contains("same name"),
        "{}",
        refused[0].1
    );
    assert_eq!(tls.trusted_clusters(), ["c1", "c2", "c3"]);
}

#[test]
fn peer_trust_follows_the_mesh_and_never_replaces_the_local_ca() {
    let c1 = ClusterCa::create("c1").unwrap();
    let c2 = ClusterCa::create("c2").unwrap();
    let key = crate::pki::generate_key().unwrap();
    let cert = c1.issue_node("c1", "node-1", &key, HOUR).unwrap();
    let tls = NodeTls::new(
        NodeIdentity {
            cluster: "c1".into(),
            node: "node-1".into(),
        },
        &cert,
        &key.serialize_pem(),
        &[trusted("c1", &c1)],
    )
    .unwrap();
    let c2_node = node_chain(&c2, "c2", "node-1");
    assert!(tls.peer_node(Some(&c2_node)).is_err(), "not connected yet");
    assert!(tls.set_peer_trust(&[trusted("c2", &c2)]).is_empty());
    assert_eq!(tls.peer_node(Some(&c2_node)).unwrap().cluster, "c2");
    // A peer claiming this cluster's name does not replace its CA.
    let refused = tls.set_peer_trust(&[trusted("c1", &c2), trusted("c2", &c2)]);
    assert_eq!(refused.len(), 1);
    assert!(tls.peer_node(Some(&node_chain(&c2, "c1", "x"))).is_err());
    assert_eq!(
        tls.peer_node(Some(&node_chain(&c1, "c1", "x")))
            .unwrap()
            .node,
        "x"
    );
    // Disconnected: c2's nodes are strangers again.
    assert!(tls.set_peer_trust(&[]).is_empty());
    assert!(tls.peer_node(Some(&c2_node)).is_err());
    assert_eq!(tls.trusted_clusters(), ["c1"]);
}
