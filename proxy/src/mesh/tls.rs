//! Mutual TLS of the mesh channel: QUIC configs from the cluster's mesh certificate and the CAs
//! of connected clusters, and the cluster a verified peer certificate speaks for.
//!
//! The server requires a client certificate from any trusted CA, then believes the URI SAN
//! `spiffe://<cluster>/mesh` only if that cluster's own CA issued it: trusting several clusters
//! never lets one speak for another. The client trusts only the CA of the cluster it dials.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::WebPkiClientVerifier;

use crate::pki::{Credentials, CredentialsError};

/// The CA whose certificates are believed for one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshTrust {
    pub cluster: String,
    pub ca_pem: String,
}

/// TLS material of the mesh endpoint that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MeshTlsError {
    #[error("{what}: PEM")]
    Pem {
        what: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{what}: no certificate")]
    NoCertificate { what: String },
    #[error("{what}")]
    Rustls {
        what: String,
        #[source]
        source: rustls::Error,
    },
    #[error("CA of cluster {cluster}: cannot parse the certificate")]
    CaParse { cluster: String },
    #[error("mesh client certificate verifier")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("{what}: not usable for QUIC")]
    Quic {
        what: String,
        #[source]
        source: quinn::crypto::rustls::NoInitialCipherSuite,
    },
    #[error("no CA is trusted for cluster {cluster}")]
    Untrusted { cluster: String },
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
}

/// A cluster's mesh TLS identity and the CAs it trusts.
pub struct MeshTls {
    /// This cluster's name.
    pub cluster: String,
    /// The mesh certificate presented; renewals replace it in every config built from it.
    creds: Credentials,
    /// CA certificate (DER) and raw subject per trusted cluster.
    trusted: HashMap<String, (CertificateDer<'static>, Vec<u8>)>,
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshTls")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl MeshTls {
    /// The mesh TLS of `cluster` with its mesh certificate and key (PEM), believing `trust`
    /// (which should include the cluster's own CA when its own agents connect).
    pub fn new(
        cluster: &str,
        cert_pem: &str,
        key_pem: &str,
        trust: &[MeshTrust],
    ) -> Result<Self, MeshTlsError> {
        let creds =
            Credentials::from_pem(&format!("mesh of cluster {cluster}"), cert_pem, key_pem)?;
        Self::with_credentials(cluster, creds, trust)
    }

    /// The mesh TLS of `cluster` presenting `creds` (shared: replacing them renews every
    /// config built from this), believing `trust`.
    pub fn with_credentials(
        cluster: &str,
        creds: Credentials,
        trust: &[MeshTrust],
    ) -> Result<Self, MeshTlsError> {
        let mut trusted = HashMap::new();
        for t in trust {
            let der = CertificateDer::from_pem_slice(t.ca_pem.as_bytes()).map_err(|source| {
                MeshTlsError::Pem {
                    what: format!("CA of cluster {}", t.cluster),
                    source,
                }
            })?;
            let (_, parsed) =
                x509_parser::parse_x509_certificate(&der).map_err(|_| MeshTlsError::CaParse {
                    cluster: t.cluster.clone(),
                })?;
            let subject = parsed.subject().as_raw().to_vec();
            trusted.insert(t.cluster.clone(), (der.clone(), subject));
        }
        Ok(Self {
            cluster: cluster.to_string(),
            creds,
            trusted,
        })
    }

    fn roots<'a>(
        &self,
        ders: impl Iterator<Item = &'a CertificateDer<'static>>,
    ) -> Result<Arc<RootCertStore>, MeshTlsError> {
        let mut roots = RootCertStore::empty();
        for der in ders {
            roots
                .add(der.clone())
                .map_err(|source| MeshTlsError::Rustls {
                    what: "trusted CA".into(),
                    source,
                })?;
        }
        Ok(Arc::new(roots))
    }

    /// The QUIC server config of the mesh endpoint: presents the mesh certificate and requires a
    /// client certificate from a trusted CA.
    pub fn server_config(&self) -> Result<quinn::ServerConfig, MeshTlsError> {
        let roots = self.roots(self.trusted.values().map(|(der, _)| der))?;
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider()).build()?;
        let rustls_err = |source| MeshTlsError::Rustls {
            what: "mesh server config".into(),
            source,
        };
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(rustls_err)?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(self.creds.server_resolver());
        tls.alpn_protocols = vec![super::wire::ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|source| {
            MeshTlsError::Quic {
                what: "mesh server config".into(),
                source,
            }
        })?;
        let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
        cfg.transport_config(transport());
        Ok(cfg)
    }

    /// The QUIC client config for dialing `remote`'s mesh endpoint: only `remote`'s CA is
    /// trusted for the server, and this cluster's mesh certificate is presented.
    pub fn client_config(&self, remote: &str) -> Result<quinn::ClientConfig, MeshTlsError> {
        let (der, _) = self
            .trusted
            .get(remote)
            .ok_or_else(|| MeshTlsError::Untrusted {
                cluster: remote.to_string(),
            })?;
        let roots = self.roots(std::iter::once(der))?;
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|source| MeshTlsError::Rustls {
                what: "mesh client config".into(),
                source,
            })?
            .with_root_certificates(roots)
            .with_client_cert_resolver(self.creds.client_resolver());
        tls.alpn_protocols = vec![super::wire::ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|source| {
            MeshTlsError::Quic {
                what: "mesh client config".into(),
                source,
            }
        })?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
        cfg.transport_config(transport());
        Ok(cfg)
    }

    /// The cluster a verified peer's mesh certificate speaks for, if that cluster's own CA
    /// issued it; otherwise why not.
    pub fn peer_cluster(&self, conn: &quinn::Connection) -> Result<String, String> {
        let chain = conn
            .peer_identity()
            .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
            .ok_or("no peer certificate")?;
        let leaf = chain.first().ok_or("no peer certificate")?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|_| "peer certificate does not parse")?;
        let cluster = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .and_then(|san| {
                san.value.general_names.iter().find_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => u
                        .strip_prefix("spiffe://")
                        .and_then(|r| r.strip_suffix("/mesh"))
                        .map(str::to_string),
                    _ => None,
                })
            })
            .ok_or("peer certificate names no mesh endpoint (spiffe://<cluster>/mesh)")?;
        match self.trusted.get(&cluster) {
            Some((ca, _)) if crate::pki::issued_by(&cert, ca) => Ok(cluster),
            _ => Err(format!(
                "peer certificate for cluster {cluster} was not issued by that cluster's CA"
            )),
        }
    }
}

/// Keep-alives and an idle timeout so a dead peer is noticed in seconds, and flow-control
/// windows large enough for a multi-megabyte snapshot in few round trips.
fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(std::time::Duration::from_millis(500)));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(std::time::Duration::from_secs(3)).ok());
    t.stream_receive_window(quinn::VarInt::from_u32(16 << 20));
    t.receive_window(quinn::VarInt::from_u32(32 << 20));
    t.send_window(32 << 20);
    Arc::new(t)
}
