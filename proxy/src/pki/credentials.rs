//! A certificate and key that rustls configs present, replaceable in place: a renewal reaches
//! every config built from it without rebuilding them. Sessions already established keep the
//! certificate they were made with; new handshakes get the new one.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// A certificate and key that cannot be used; `what` names whose (never the key's bytes).
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("{what} certificate: PEM")]
    CertPem {
        what: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{what} certificate: no PEM certificate")]
    NoCertificate { what: String },
    #[error("{what} key: PEM")]
    KeyPem {
        what: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{what} key: {reason}")]
    Key {
        what: String,
        reason: &'static str,
        #[source]
        source: Box<rustls::Error>,
    },
}

/// The certificate (chain) and key presented now; cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct Credentials {
    what: String,
    current: Arc<ArcSwap<CertifiedKey>>,
}

// === impl Credentials ===

impl Credentials {
    /// Credentials of `what` (e.g. "node", "mesh of cluster c1") from PEM.
    pub fn from_pem(what: &str, cert_pem: &str, key_pem: &str) -> Result<Self, CredentialsError> {
        Ok(Self {
            what: what.to_string(),
            current: Arc::new(ArcSwap::from_pointee(certified_key(
                what, cert_pem, key_pem,
            )?)),
        })
    }

    /// Presents this certificate and key in every handshake from now on; on error the old pair
    /// stays.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<(), CredentialsError> {
        let key = certified_key(&self.what, cert_pem, key_pem)?;
        self.current.store(Arc::new(key));
        Ok(())
    }

    /// The leaf certificate presented now (DER).
    pub fn certificate(&self) -> Option<CertificateDer<'static>> {
        self.current.load().cert.first().cloned()
    }

    /// As a server certificate resolver for a rustls config.
    pub fn server_resolver(&self) -> Arc<dyn ResolvesServerCert> {
        Arc::new(self.clone())
    }

    /// As a client certificate resolver for a rustls config.
    pub fn client_resolver(&self) -> Arc<dyn ResolvesClientCert> {
        Arc::new(self.clone())
    }
}

impl ResolvesServerCert for Credentials {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl ResolvesClientCert for Credentials {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Replaces `creds` with a fresh pair from `issue` (certificate PEM, key PEM) at two thirds of
/// `validity`, forever; a failed issue is logged and retried after a tenth of the validity, while
/// the current pair stays in use.
pub async fn renew<F>(creds: Credentials, validity: std::time::Duration, issue: F)
where
    F: Fn() -> Result<(String, String), super::PkiError> + Send,
{
    let period = validity * 2 / 3;
    let mut wait = period;
    loop {
        tokio::time::sleep(wait).await;
        let renewed = issue()
            .map_err(|e| crate::errors::chain(&e))
            .and_then(|(cert, key)| {
                creds
                    .replace(&cert, &key)
                    .map_err(|e| crate::errors::chain(&e))
            });
        wait = match renewed {
            Ok(()) => {
                tracing::info!(what = %creds.what, valid_for = ?validity, "certificate renewed");
                period
            }
            Err(error) => {
                tracing::warn!(what = %creds.what, %error, "certificate renewal failed; retrying");
                validity / 10
            }
        };
    }
}

/// A checked certificate chain and signing key from PEM.
fn certified_key(
    what: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<CertifiedKey, CredentialsError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| CredentialsError::CertPem {
            what: what.to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(CredentialsError::NoCertificate {
            what: what.to_string(),
        });
    }
    // Errors from here on never include key bytes.
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|source| {
        CredentialsError::KeyPem {
            what: what.to_string(),
            source,
        }
    })?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|source| {
        CredentialsError::Key {
            what: what.to_string(),
            reason: "unsupported key type",
            source: Box::new(source),
        }
    })?;
    let ck = CertifiedKey::new(certs, signer);
    ck.keys_match().map_err(|source| CredentialsError::Key {
        what: what.to_string(),
        reason: "does not match its certificate",
        source: Box::new(source),
    })?;
    Ok(ck)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_replacement_is_presented_and_a_bad_one_changes_nothing() {
        let ca = crate::pki::ClusterCa::create("c1").unwrap();
        let issue = || {
            let key = crate::pki::generate_key().unwrap();
            let cert = ca
                .issue_mesh("c1", &key, std::time::Duration::from_secs(60))
                .unwrap();
            (cert, key.serialize_pem())
        };
        let (cert, key) = issue();
        let creds = Credentials::from_pem("mesh of cluster c1", &cert, &key).unwrap();
        let first = creds.certificate().unwrap();
        let (cert2, key2) = issue();
        creds.replace(&cert2, &key2).unwrap();
        let second = creds.certificate().unwrap();
        assert_ne!(first, second);
        // A key of another certificate: refused, named, and the renewed pair stays.
        let err = creds.replace(&cert, &key2).unwrap_err();
        assert!(
            err.to_string()
                .contains("mesh of cluster c1 key: does not match"),
            "{err}"
        );
        assert_eq!(creds.certificate().unwrap(), second);
        // Clones share the pair: a config built earlier presents the renewal.
        let earlier = creds.clone();
        creds.replace(&cert, &key).unwrap();
        assert_eq!(earlier.certificate().unwrap(), first);
    }

    #[tokio::test]
    async fn renewal_replaces_the_pair_at_two_thirds_of_its_validity() {
        let ca = crate::pki::ClusterCa::create("c1").unwrap();
        let validity = std::time::Duration::from_millis(900);
        let issue = move || {
            let key = crate::pki::generate_key()?;
            let cert = ca.issue_mesh("c1", &key, validity)?;
            Ok((cert, key.serialize_pem()))
        };
        let (cert, key) = issue().unwrap();
        let creds = Credentials::from_pem("mesh of cluster c1", &cert, &key).unwrap();
        let first = creds.certificate().unwrap();
        let task = tokio::spawn(renew(creds.clone(), validity, issue));
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(creds.certificate().unwrap(), first, "not before two thirds");
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        assert_ne!(creds.certificate().unwrap(), first, "renewed by then");
        task.abort();
    }
}
