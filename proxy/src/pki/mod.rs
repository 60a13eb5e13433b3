//! Cluster CAs and node certificates: creating, issuing, storing.
//!
//! Each cluster has one CA. A node's certificate names its cluster and node as the URI SAN
//! `spiffe://<cluster>/node/<node>` (what the receiving proxy believes) and as the DNS SAN
//! `<node>.<cluster>.strait` (what a dialing proxy checks the server against). In the lab the CA
//! key sits in the lab's state directory and each agent issues its own renewed certificate with
//! it; a real deployment keeps the CA key off the nodes and has agents send a CSR to a CA service.
//! Key files are written with mode 0600 and never logged.

pub mod credentials;

pub use credentials::{Credentials, CredentialsError};

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

/// A PKI operation that failed, naming the file or object.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {what}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}")]
    Cert {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("{0:?} is not usable in a node identity (letters, digits, '-', '.')")]
    BadName(String),
}

/// Whether CA `ca_der` issued `leaf`: its subject is the leaf's issuer and its key verifies the
/// leaf's signature. A name alone is not enough: a peer cluster trusted in the same root store
/// could create a CA of the same name.
pub fn issued_by(leaf: &x509_parser::certificate::X509Certificate<'_>, ca_der: &[u8]) -> bool {
    match x509_parser::parse_x509_certificate(ca_der) {
        Ok((_, ca)) => {
            ca.subject().as_raw() == leaf.issuer().as_raw()
                && leaf.verify_signature(Some(ca.public_key())).is_ok()
        }
        Err(_) => false,
    }
}

/// The URI SAN naming `node` of `cluster`.
pub fn node_uri(cluster: &str, node: &str) -> String {
    format!("spiffe://{cluster}/node/{node}")
}

/// The URI SAN naming admin client `name` of `cluster`.
pub fn client_uri(cluster: &str, name: &str) -> String {
    format!("spiffe://{cluster}/client/{name}")
}

/// The DNS SAN (and TLS server name) of `node` of `cluster`.
pub fn node_server_name(cluster: &str, node: &str) -> String {
    format!("{node}.{cluster}.strait")
}

/// The URI SAN of `cluster`'s mesh endpoint.
pub fn mesh_uri(cluster: &str) -> String {
    format!("spiffe://{cluster}/mesh")
}

/// The DNS SAN (and TLS server name) of `cluster`'s mesh endpoint.
pub fn mesh_server_name(cluster: &str) -> String {
    format!("mesh.{cluster}.strait")
}

/// `(cluster, node)` from a node URI SAN, if it is one.
pub fn parse_node_uri(uri: &str) -> Option<(&str, &str)> {
    let rest = uri.strip_prefix("spiffe://")?;
    let (cluster, node) = rest.split_once("/node/")?;
    (valid_name(cluster) && valid_name(node)).then_some((cluster, node))
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn check_name(s: &str) -> Result<(), PkiError> {
    if valid_name(s) {
        Ok(())
    } else {
        Err(PkiError::BadName(s.to_string()))
    }
}

fn cert_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> PkiError {
    let what = what.into();
    move |source| PkiError::Cert { what, source }
}

/// A cluster CA: certificate and key, PEM.
pub struct ClusterCa {
    pub cert_pem: String,
    key: KeyPair,
    issuer: Certificate,
}

impl std::fmt::Debug for ClusterCa {
    // The key never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new CA for `cluster`, valid ten years.
    pub fn create(cluster: &str) -> Result<Self, PkiError> {
        check_name(cluster)?;
        let key = KeyPair::generate().map_err(cert_err("generate CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "strait");
        // A distinct name per CA: a recreated cluster's CA is never mistaken for the old one
        // when a verifier looks up an issuer by name.
        dn.push(
            DnType::CommonName,
            format!("strait cluster {cluster} CA {:08x}", rand::random::<u32>()),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::days(3650);
        let cert = params
            .self_signed(&key)
            .map_err(cert_err(format!("self-sign CA of cluster {cluster}")))?;
        Ok(Self {
            cert_pem: cert.pem(),
            key,
            issuer: cert,
        })
    }

    /// The CA stored at `cert` and `key` (PEM files).
    pub fn load(cert: &Path, key: &Path) -> Result<Self, PkiError> {
        Self::load_pem(&read(cert)?, &read(key)?).map_err(|e| match e {
            PkiError::Cert { what, source } => PkiError::Cert {
                what: format!("{} / {}: {what}", cert.display(), key.display()),
                source,
            },
            e => e,
        })
    }

    /// The CA with this certificate and key (PEM).
    pub fn load_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(cert_err("CA key"))?;
        let params =
            CertificateParams::from_ca_cert_pem(cert_pem).map_err(cert_err("CA certificate"))?;
        // Re-signing the parsed parameters only rebuilds the issuer name and key identifier
        // that children reference; the stored certificate stays the one peers trust.
        let issuer = params
            .self_signed(&key)
            .map_err(cert_err("CA certificate"))?;
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            key,
            issuer,
        })
    }

    /// The CA key (PEM), for tests that need a second handle on one CA.
    #[cfg(test)]
    pub(crate) fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Writes the certificate (0644) and key (0600) to `cert` and `key`.
    pub fn save(&self, cert: &Path, key: &Path) -> Result<(), PkiError> {
        write_file(cert, self.cert_pem.as_bytes(), 0o644)?;
        write_file(key, self.key.serialize_pem().as_bytes(), 0o600)
    }

    /// A certificate for `node` of `cluster` over `node_key`'s public key, valid `validity` from
    /// now (PEM).
    pub fn issue_node(
        &self,
        cluster: &str,
        node: &str,
        node_key: &KeyPair,
        validity: Duration,
    ) -> Result<String, PkiError> {
        check_name(cluster)?;
        check_name(node)?;
        let what = || format!("certificate of node {cluster}/{node}");
        let sans = vec![
            SanType::URI(
                node_uri(cluster, node)
                    .try_into()
                    .map_err(cert_err(what()))?,
            ),
            SanType::DnsName(
                node_server_name(cluster, node)
                    .try_into()
                    .map_err(cert_err(what()))?,
            ),
        ];
        let ekus = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue_leaf(
            &what(),
            format!("{cluster}/{node}"),
            sans,
            ekus,
            node_key,
            validity,
        )
    }

    /// A client certificate for `name` of `cluster` (URI SAN `spiffe://<cluster>/client/<name>`,
    /// client authentication only) over `key`'s public key, valid `validity` from now (PEM): what
    /// an operator presents to the admin API's TLS listener.
    pub fn issue_client(
        &self,
        cluster: &str,
        name: &str,
        key: &KeyPair,
        validity: Duration,
    ) -> Result<String, PkiError> {
        check_name(cluster)?;
        check_name(name)?;
        let what = || format!("client certificate {cluster}/{name}");
        let sans = vec![SanType::URI(
            client_uri(cluster, name)
                .try_into()
                .map_err(cert_err(what()))?,
        )];
        let ekus = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue_leaf(
            &what(),
            format!("{cluster}/client/{name}"),
            sans,
            ekus,
            key,
            validity,
        )
    }

    /// A certificate for `cluster`'s mesh endpoint (URI SAN `spiffe://<cluster>/mesh`, DNS SAN
    /// `mesh.<cluster>.strait`, server and client authentication) over `key`'s public key,
    /// valid `validity` from now (PEM).
    pub fn issue_mesh(
        &self,
        cluster: &str,
        key: &KeyPair,
        validity: Duration,
    ) -> Result<String, PkiError> {
        check_name(cluster)?;
        let what = || format!("mesh certificate of cluster {cluster}");
        let sans = vec![
            SanType::URI(mesh_uri(cluster).try_into().map_err(cert_err(what()))?),
            SanType::DnsName(
                mesh_server_name(cluster)
                    .try_into()
                    .map_err(cert_err(what()))?,
            ),
        ];
        let ekus = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue_leaf(
            &what(),
            format!("{cluster}/mesh"),
            sans,
            ekus,
            key,
            validity,
        )
    }

    fn issue_leaf(
        &self,
        what: &str,
        common_name: String,
        sans: Vec<SanType>,
        ekus: Vec<ExtendedKeyUsagePurpose>,
        key: &KeyPair,
        validity: Duration,
    ) -> Result<String, PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "strait");
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = ekus;
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        // A little slack for clocks that differ between nodes; short validities are for tests.
        params.not_before = now - time::Duration::seconds(60);
        params.not_after = now + time::Duration::try_from(validity).unwrap_or(time::Duration::DAY);
        let cert = params
            .signed_by(key, &self.issuer, &self.key)
            .map_err(cert_err(what))?;
        Ok(cert.pem())
    }
}

/// A new node key (ECDSA P-256), PEM.
pub fn generate_key() -> Result<KeyPair, PkiError> {
    KeyPair::generate().map_err(cert_err("generate node key"))
}

/// The key at `path`, or a new one written there (0600) if there is none: a restarted agent
/// keeps its key.
pub fn load_or_create_key(path: &Path) -> Result<KeyPair, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(pem) => KeyPair::from_pem(&pem).map_err(cert_err(format!("{}: key", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = generate_key()?;
            write_file(path, key.serialize_pem().as_bytes(), 0o600)?;
            Ok(key)
        }
        Err(source) => Err(PkiError::Io {
            path: path.to_path_buf(),
            what: "read key",
            source,
        }),
    }
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        what: "read",
        source,
    })
}

/// Writes `bytes` to `path` atomically (temp file + rename) with `mode`, so readers never see
/// a half-written certificate and a key is never world-readable, not even briefly.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let io = |what| {
        let path = path.to_path_buf();
        move |source| PkiError::Io { path, what, source }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("create directory"))?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("create"))?;
    f.write_all(bytes).map_err(io("write"))?;
    f.sync_all().map_err(io("sync"))?;
    std::fs::rename(&tmp, path).map_err(io("rename into place"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn node_uris_round_trip_and_reject_other_shapes() {
        assert_eq!(
            parse_node_uri(&node_uri("c1", "node-1")),
            Some(("c1", "node-1"))
        );
        assert_eq!(parse_node_uri("spiffe://c1/ns/demo/sa/x"), None);
        assert_eq!(parse_node_uri("spiffe://c1/node/a/b"), None);
        assert_eq!(parse_node_uri("https://c1/node/n"), None);
    }

    #[test]
    fn ca_and_keys_persist_with_private_modes_and_a_key_is_reused() {
        let dir = std::env::temp_dir().join(format!("strait-pki-{}", std::process::id()));
        let ca = ClusterCa::create("c1").unwrap();
        ca.save(&dir.join("ca.crt"), &dir.join("ca.key")).unwrap();
        let mode = |p: &str| std::fs::metadata(dir.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("ca.key"), 0o600);
        let loaded = ClusterCa::load(&dir.join("ca.crt"), &dir.join("ca.key")).unwrap();
        let k1 = load_or_create_key(&dir.join("node.key")).unwrap();
        assert_eq!(mode("node.key"), 0o600);
        let k2 = load_or_create_key(&dir.join("node.key")).unwrap();
        assert_eq!(k1.public_key_der(), k2.public_key_der());
        let pem = loaded
            .issue_node("c1", "node-1", &k2, Duration::from_secs(60))
            .unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(format!("{ca:?}").len() < 40, "no key material in Debug");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
