//! Mutual TLS between node proxies: rustls configs, swappable node certificates, and the peer's
//! node identity read from its verified certificate.
//!
//! Both ends present a certificate of their cluster's CA. The dialing side checks the server is
//! the node it meant to reach (DNS SAN `<node>.<cluster>.strait`); the accepting side takes the
//! peer node from the URI SAN `spiffe://<cluster>/node/<node>`. A SAN is believed only if the
//! certificate was issued by the CA trusted for the cluster it names, so trusting another
//! cluster's CA (the cluster mesh) never lets that cluster speak for this one.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::pki::{Credentials, CredentialsError};

/// ALPN of the tunnel: HTTP/2 inside TLS.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN of the admin API's TLS listener.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// A node as its certificate names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeIdentity {
    pub cluster: String,
    pub node: String,
}

/// A CA whose certificates are believed for one cluster's nodes.
#[derive(Debug, Clone)]
pub struct TrustedCa {
    pub cluster: String,
    pub cert_pem: String,
}

/// TLS material that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}: no PEM certificate")]
    NoCertificate { what: String },
    #[error("{what}: PEM")]
    Pem {
        what: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{what}")]
    Rustls {
        what: String,
        #[source]
        source: rustls::Error,
    },
    #[error("trusted CA of cluster {cluster}: cannot parse the certificate")]
    CaParse { cluster: String },
    #[error("client certificate verifier")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("no CA is trusted for this node's own cluster {cluster}")]
    NoLocalCa { cluster: String },
    #[error("trusted CA of cluster {cluster}: another trusted cluster's CA has the same name")]
    DuplicateCa { cluster: String },
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
}

/// Why a peer got no tunnel; the bounded `reason` label of the handshake failure metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The peer presented no certificate.
    NoCertificate,
    /// The certificate was not issued by a trusted CA.
    UnknownCa,
    /// The certificate is expired or not yet valid.
    Expired,
    /// Any other certificate problem (usage, signature, name).
    BadCertificate,
    /// The certificate names no node of a cluster whose CA issued it.
    NoNodeIdentity,
    /// The peer did not speak TLS (e.g. plain HTTP/2) or broke the protocol.
    Protocol,
    /// The peer did not offer the tunnel's ALPN.
    Alpn,
    /// The handshake did not finish in time.
    Timeout,
    /// The connection failed underneath TLS.
    Io,
}

impl HandshakeFailure {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoCertificate => "no_certificate",
            Self::UnknownCa => "unknown_ca",
            Self::Expired => "expired",
            Self::BadCertificate => "bad_certificate",
            Self::NoNodeIdentity => "no_node_identity",
            Self::Protocol => "protocol",
            Self::Alpn => "alpn",
            Self::Timeout => "timeout",
            Self::Io => "io",
        }
    }

    /// Classifies an error from a TLS handshake.
    pub fn classify(e: &std::io::Error) -> Self {
        use rustls::{CertificateError as C, Error as E};
        let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<E>()) else {
            return if e.kind() == std::io::ErrorKind::InvalidData {
                Self::Protocol
            } else {
                Self::Io
            };
        };
        match tls {
            E::NoCertificatesPresented => Self::NoCertificate,
            E::InvalidCertificate(C::UnknownIssuer) => Self::UnknownCa,
            E::InvalidCertificate(C::Expired | C::NotValidYet)
            | E::InvalidCertificate(C::ExpiredContext { .. } | C::NotValidYetContext { .. }) => {
                Self::Expired
            }
            E::InvalidCertificate(_) => Self::BadCertificate,
            E::NoApplicationProtocol => Self::Alpn,
            E::AlertReceived(rustls::AlertDescription::UnknownCA) => Self::UnknownCa,
            E::AlertReceived(rustls::AlertDescription::CertificateExpired) => Self::Expired,
            E::AlertReceived(rustls::AlertDescription::CertificateRequired) => Self::NoCertificate,
            E::AlertReceived(
                rustls::AlertDescription::BadCertificate
                | rustls::AlertDescription::DecryptError
                | rustls::AlertDescription::CertificateUnknown,
            ) => Self::BadCertificate,
            _ => Self::Protocol,
        }
    }
}

// === impl NodeTls ===

/// A node's TLS identity and the configs its tunnel listener and pool use.
pub struct NodeTls {
    /// This node.
    pub local: NodeIdentity,
    certs: Credentials,
    /// The CAs given at start (this cluster's); the mesh's peers are added to them.
    base_trust: Vec<TrustedCa>,
    trusted: ArcSwap<Trusted>,
    /// The CA of this node's own cluster alone: the admin API's clients come from there.
    local_roots: Option<Arc<RootCertStore>>,
    logged: parking_lot::Mutex<HashSet<IpAddr>>,
    /// Bumped by every trust change: tunnels of a cluster no longer trusted are closed.
    trust_generation: tokio::sync::watch::Sender<u64>,
}

/// The configs built from one set of trusted CAs; replaced whole when the mesh's peers change.
struct Trusted {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    /// The CA (DER) trusted for each cluster: a SAN naming that cluster must come from a
    /// certificate this CA signed.
    issuers: HashMap<String, CertificateDer<'static>>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl NodeTls {
    /// TLS for `local` with its certificate and key (PEM), believing `trust`.
    pub fn new(
        local: NodeIdentity,
        cert_pem: &str,
        key_pem: &str,
        trust: &[TrustedCa],
    ) -> Result<Self, TlsError> {
        let certs = Credentials::from_pem("node", cert_pem, key_pem)?;
        let (trusted, local_roots) = build_trusted(&local, &certs, trust)?;
        Ok(Self {
            local,
            certs,
            base_trust: trust.to_vec(),
            trusted: ArcSwap::from_pointee(trusted),
            local_roots,
            logged: parking_lot::Mutex::default(),
            trust_generation: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Trusts these other clusters' CAs (the cluster mesh's connected peers) besides the CAs
    /// given at start, each for its own cluster's nodes only; replaces the previous peers. A
    /// peer naming this node's own cluster, a CA that does not parse or one named like another
    /// trusted CA is left out and returned with the reason; the others are trusted all the same
    /// (a bad peer never keeps a disconnected one trusted). New handshakes use the new set;
    /// established tunnels keep their sessions.
    pub fn set_peer_trust(&self, peers: &[TrustedCa]) -> Vec<(String, TlsError)> {
        let mut accepted = self.base_trust.clone();
        let mut refused = Vec::new();
        for p in peers {
            if accepted.iter().any(|c| c.cluster == p.cluster) {
                refused.push((
                    p.cluster.clone(),
                    TlsError::DuplicateCa {
                        cluster: p.cluster.clone(),
                    },
                ));
                continue;
            }
            let mut trial = accepted.clone();
            trial.push(p.clone());
            match build_trusted(&self.local, &self.certs, &trial) {
                Ok(_) => accepted = trial,
                Err(e) => refused.push((p.cluster.clone(), e)),
            }
        }
        match build_trusted(&self.local, &self.certs, &accepted) {
            Ok((trusted, _)) => {
                self.trusted.store(Arc::new(trusted));
                self.trust_generation.send_modify(|g| *g += 1);
            }
            Err(e) => refused.push((self.local.cluster.clone(), e)),
        }
        refused
    }

    /// Whether `cluster`'s node certificates are believed now.
    pub fn trusts(&self, cluster: &str) -> bool {
        self.trusted.load().issuers.contains_key(cluster)
    }

    /// Returns once `cluster` is no longer trusted (at once if it is not): what ends the
    /// tunnels of a cluster disconnected from the mesh.
    pub async fn untrusted(&self, cluster: &str) {
        let mut changes = self.trust_generation.subscribe();
        while self.trusts(cluster) {
            if changes.changed().await.is_err() {
                // Never: the sender lives as long as `self`.
                std::future::pending::<()>().await;
            }
        }
    }

    /// The clusters whose node certificates are believed now.
    pub fn trusted_clusters(&self) -> Vec<String> {
        let mut v: Vec<String> = self.trusted.load().issuers.keys().cloned().collect();
        v.sort();
        v
    }

    /// Presents this certificate (a renewal) in every handshake from now on.
    pub fn set_certificate(&self, cert_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        Ok(self.certs.replace(cert_pem, key_pem)?)
    }

    /// The certificate presented now (DER), for tests and status.
    pub fn current_certificate(&self) -> Option<CertificateDer<'static>> {
        self.certs.certificate()
    }

    /// The acceptor for the tunnel listener.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.trusted.load().acceptor.clone()
    }

    /// An acceptor for the admin API's TLS listener: presents the node certificate (renewals
    /// included) over HTTP/1.1 and requires a client certificate issued by this node's own
    /// cluster CA; a peer cluster's CA, trusted for tunnels, is not trusted here.
    pub fn admin_acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let roots = self
            .local_roots
            .clone()
            .ok_or_else(|| TlsError::NoLocalCa {
                cluster: self.local.cluster.clone(),
            })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots, provider.clone()).build()?;
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|source| TlsError::Rustls {
                what: "admin server config".into(),
                source,
            })?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(self.certs.server_resolver());
        server.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        Ok(TlsAcceptor::from(Arc::new(server)))
    }

    /// The connector for tunnels to other nodes.
    pub fn connector(&self) -> TlsConnector {
        self.trusted.load().connector.clone()
    }

    /// The TLS server name of `peer`.
    pub fn server_name(peer: &NodeIdentity) -> Result<ServerName<'static>, HandshakeFailure> {
        ServerName::try_from(crate::pki::node_server_name(&peer.cluster, &peer.node))
            .map_err(|_| HandshakeFailure::NoNodeIdentity)
    }

    /// The node a verified peer certificate chain names, if the CA trusted for that node's
    /// cluster issued it.
    pub fn peer_node(
        &self,
        chain: Option<&[CertificateDer<'_>]>,
    ) -> Result<NodeIdentity, HandshakeFailure> {
        let leaf = chain
            .and_then(|c| c.first())
            .ok_or(HandshakeFailure::NoCertificate)?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|_| HandshakeFailure::BadCertificate)?;
        let san = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .ok_or(HandshakeFailure::NoNodeIdentity)?;
        let (cluster, node) = san
            .value
            .general_names
            .iter()
            .find_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => crate::pki::parse_node_uri(u),
                _ => None,
            })
            .ok_or(HandshakeFailure::NoNodeIdentity)?;
        match self.trusted.load().issuers.get(cluster) {
            Some(ca) if crate::pki::issued_by(&cert, ca) => Ok(NodeIdentity {
                cluster: cluster.to_string(),
                node: node.to_string(),
            }),
            _ => Err(HandshakeFailure::NoNodeIdentity),
        }
    }

    /// Counts a failed handshake and logs it the first time for this peer address (a peer
    /// retrying in a loop must not flood the log).
    pub fn handshake_failed(&self, peer: IpAddr, role: &'static str, reason: HandshakeFailure) {
        metrics::counter!(crate::metrics::names::TUNNEL_HANDSHAKE_FAILURES,
            "role" => role, "reason" => reason.as_str())
        .increment(1);
        let first = {
            let mut seen = self.logged.lock();
            // Bounded: past this many distinct peers, start over rather than grow.
            if seen.len() >= 4096 {
                seen.clear();
            }
            seen.insert(peer)
        };
        if first {
            tracing::warn!(%peer, role, reason = reason.as_str(),
                "tunnel handshake refused (logged once per peer address)");
        }
    }
}

/// The tunnel configs believing `trust`, and the root store of `local`'s own cluster.
fn build_trusted(
    local: &NodeIdentity,
    certs: &Credentials,
    trust: &[TrustedCa],
) -> Result<(Trusted, Option<Arc<RootCertStore>>), TlsError> {
    let mut roots = RootCertStore::empty();
    let mut issuers = HashMap::new();
    let mut subjects = HashSet::new();
    let mut local_roots = None;
    for ca in trust {
        let what = || format!("trusted CA of cluster {}", ca.cluster);
        let der = CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).map_err(|source| {
            TlsError::Pem {
                what: what(),
                source,
            }
        })?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(&der).map_err(|_| TlsError::CaParse {
                cluster: ca.cluster.clone(),
            })?;
        // Two trusted CAs of one name would make issuer names ambiguous in logs and chains.
        let subject = parsed.subject().as_raw().to_vec();
        if !subjects.insert(subject) {
            return Err(TlsError::DuplicateCa {
                cluster: ca.cluster.clone(),
            });
        }
        issuers.insert(ca.cluster.clone(), der.clone());
        if ca.cluster == local.cluster {
            let mut own = RootCertStore::empty();
            own.add(der.clone()).map_err(|source| TlsError::Rustls {
                what: what(),
                source,
            })?;
            local_roots = Some(Arc::new(own));
        }
        roots.add(der).map_err(|source| TlsError::Rustls {
            what: what(),
            source,
        })?;
    }
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let rustls_err = |what: &str| {
        let what = what.to_string();
        move |source| TlsError::Rustls { what, source }
    };
    let verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(rustls_err("server config"))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certs.server_resolver());
    server.alpn_protocols = vec![ALPN_H2.to_vec()];
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(rustls_err("client config"))?
        .with_root_certificates(roots)
        .with_client_cert_resolver(certs.client_resolver());
    client.alpn_protocols = vec![ALPN_H2.to_vec()];
    let trusted = Trusted {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        connector: TlsConnector::from(Arc::new(client)),
        issuers,
    };
    Ok((trusted, local_roots))
}

// === impl NodeIssuer ===

/// Issues this node's certificate with its cluster CA and renews it: the lab's stand-in for a
/// CSR service (a real deployment sends a CSR and never holds the CA key on a node).
pub struct NodeIssuer {
    local: NodeIdentity,
    ca: crate::pki::ClusterCa,
    key: rcgen::KeyPair,
    cert_file: std::path::PathBuf,
    validity: std::time::Duration,
}

impl NodeIssuer {
    /// An issuer of `local`'s certificates over `key`, written to `cert_file`.
    pub fn new(
        local: NodeIdentity,
        ca: crate::pki::ClusterCa,
        key: rcgen::KeyPair,
        cert_file: std::path::PathBuf,
        validity: std::time::Duration,
    ) -> Self {
        Self {
            local,
            ca,
            key,
            cert_file,
            validity,
        }
    }

    /// A new certificate for the node key (PEM), also written to the certificate file.
    pub fn issue(&self) -> Result<String, crate::pki::PkiError> {
        let pem = self.ca.issue_node(
            &self.local.cluster,
            &self.local.node,
            &self.key,
            self.validity,
        )?;
        crate::pki::write_file(&self.cert_file, pem.as_bytes(), 0o644)?;
        Ok(pem)
    }

    /// The node's TLS with a freshly issued certificate, believing `trust`.
    pub fn node_tls(&self, trust: &[TrustedCa]) -> Result<Arc<NodeTls>, IssueError> {
        let cert = self.issue()?;
        Ok(Arc::new(NodeTls::new(
            self.local.clone(),
            &cert,
            &self.key.serialize_pem(),
            trust,
        )?))
    }

    /// Renews the certificate at two thirds of its validity, forever. Established tunnels keep
    /// their sessions; new handshakes present the new certificate.
    pub async fn renew(self, tls: Arc<NodeTls>) {
        let period = self.validity * 2 / 3;
        let mut wait = period;
        loop {
            tokio::time::sleep(wait).await;
            let renewed = self
                .issue()
                .map_err(IssueError::from)
                .and_then(|pem| Ok(tls.set_certificate(&pem, &self.key.serialize_pem())?));
            wait = match renewed {
                Ok(()) => {
                    tracing::info!(valid_for = ?self.validity, "node certificate renewed");
                    period
                }
                Err(e) => {
                    // Retry well before the current certificate runs out.
                    tracing::error!(error = %crate::errors::chain(&e),
                        "node certificate renewal failed; retrying");
                    (period / 10).max(std::time::Duration::from_secs(1))
                }
            };
        }
    }
}

/// A node certificate that could not be issued or installed.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("issue node certificate")]
    Pki(#[from] crate::pki::PkiError),
    #[error("install node certificate")]
    Tls(#[from] TlsError),
}

#[cfg(test)]
mod tests;
