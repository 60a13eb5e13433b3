//! The mesh endpoint process (`strait clustermesh-endpoint`, the role of Cilium's
//! clustermesh-apiserver without etcd): reads the cluster state file with the agents' code,
//! publishes this cluster's [`MeshState`] at every snapshot, and serves it to the connected
//! clusters named in the file's `mesh` section, trusting exactly their CAs.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::MeshEndpointConfig;
use crate::mesh::endpoint::EndpointStatus;
use crate::mesh::{
    ClusterId, ClusterIdError, MeshServer, MeshState, MeshTls, MeshTlsError, MeshTrust, Publisher,
    ServerError,
};
use crate::model::Store;
use crate::sources::file::{self, MeshView};

/// The mesh endpoint could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("mesh endpoint of cluster {cluster}: CA")]
    Pki {
        cluster: String,
        #[source]
        source: crate::pki::PkiError,
    },
    #[error("mesh endpoint of cluster {cluster}: TLS")]
    Tls {
        cluster: String,
        #[source]
        source: MeshTlsError,
    },
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("mesh endpoint: cluster {0}")]
    Cluster(#[from] ClusterIdError),
    #[error("mesh endpoint of cluster {cluster}: write {path}")]
    Status {
        cluster: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// What this cluster publishes at `snap`: [`MeshState::from_snapshot`], plus the ports whose
/// L7 rules this cluster judges for other clusters (from its own policies and pods).
fn published(snap: &crate::model::Snapshot) -> MeshState {
    let mut state = MeshState::from_snapshot(snap);
    if !snap.model.policies.is_empty() {
        let engine = crate::compile::local_engine(&snap.model);
        state.l7_ingress = crate::policy::kernel::ingress_l7_ports(&engine)
            .into_iter()
            .collect();
    }
    state
}

/// Runs the endpoint until the process is stopped.
pub async fn run(cfg: MeshEndpointConfig) -> Result<(), EndpointError> {
    let pki = |source| EndpointError::Pki {
        cluster: cfg.cluster.clone(),
        source,
    };
    let ca = Arc::new(
        crate::pki::ClusterCa::load(&cfg.issuer.ca_cert, &cfg.issuer.ca_key).map_err(pki)?,
    );
    let key = crate::pki::generate_key().map_err(pki)?;
    let validity = Duration::from_secs(cfg.cert_validity_secs.max(3));
    let cert = ca.issue_mesh(&cfg.cluster, &key, validity).map_err(pki)?;
    let creds = crate::pki::Credentials::from_pem(
        &format!("mesh of cluster {}", cfg.cluster),
        &cert,
        &key.serialize_pem(),
    )
    .map_err(|source| EndpointError::Tls {
        cluster: cfg.cluster.clone(),
        source: source.into(),
    })?;
    // Renewed in place: the server config presents the new certificate at the next handshake.
    tokio::spawn({
        let (ca, cluster) = (ca.clone(), cfg.cluster.clone());
        crate::pki::credentials::renew(creds.clone(), validity, move || {
            let key = crate::pki::generate_key()?;
            let cert = ca.issue_mesh(&cluster, &key, validity)?;
            Ok((cert, key.serialize_pem()))
        })
    });
    let tls_for = |view: &MeshView| -> Result<(Arc<MeshTls>, Vec<MeshTrust>), EndpointError> {
        // The own CA is always trusted (a verifier needs one root); a client of this cluster
        // is still refused, by name and ID.
        let mut trust = vec![MeshTrust {
            cluster: cfg.cluster.clone(),
            ca_pem: ca.cert_pem.clone(),
        }];
        let peers: Vec<MeshTrust> = view
            .settings
            .iter()
            .flat_map(|s| &s.peers)
            .map(|p| MeshTrust {
                cluster: p.name.clone(),
                ca_pem: p.ca_pem.clone(),
            })
            .collect();
        trust.extend(peers.iter().cloned());
        let tls =
            MeshTls::with_credentials(&cfg.cluster, creds.clone(), &trust).map_err(|source| {
                EndpointError::Tls {
                    cluster: cfg.cluster.clone(),
                    source,
                }
            })?;
        Ok((Arc::new(tls), peers))
    };

    let store = Arc::new(Store::new());
    let (view_tx, mut views) = watch::channel(None);
    tokio::spawn(file::watch(
        cfg.state_file.clone(),
        cfg.cluster.clone(),
        store.clone(),
        Some(view_tx),
    ));
    // Serve nothing before the cluster's own state is known: an empty publication would
    // withdraw this cluster from every peer.
    let view = loop {
        if let Some(v) = views.borrow_and_update().clone() {
            break v;
        }
        if views.changed().await.is_err() {
            return Ok(());
        }
    };
    let publisher = Arc::new(Publisher::new(ClusterId::new(
        &view.cluster.name,
        view.cluster.id,
    )?));
    let mut snaps = store.subscribe();
    if let Some(snap) = snaps.borrow_and_update().clone() {
        publisher.publish(published(&snap));
    }
    let (tls, mut trusted) = tls_for(&view)?;
    let server = MeshServer::bind(cfg.listen, tls, publisher.clone())?;
    let status = |trusted: &[MeshTrust], revision| EndpointStatus {
        cluster: cfg.cluster.clone(),
        listen: cfg.listen,
        trusted: trusted.iter().map(|t| t.cluster.clone()).collect(),
        revision,
    };
    info!(cluster = %cfg.cluster, listen = %cfg.listen,
        trusted = ?status(&trusted, 0).trusted, "mesh endpoint serving");
    write_status(&cfg, &status(&trusted, publisher.current().revision))?;
    loop {
        tokio::select! {
            changed = snaps.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let Some(snap) = snaps.borrow_and_update().clone() else { continue };
                let rev = publisher.publish(published(&snap));
                write_status(&cfg, &status(&trusted, rev))?;
            }
            changed = views.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let Some(view) = views.borrow_and_update().clone() else { continue };
                match tls_for(&view) {
                    Ok((tls, now)) if now != trusted => {
                        server.set_tls(tls)?;
                        trusted = now;
                        info!(trusted = ?status(&trusted, 0).trusted, "mesh endpoint trust changed");
                        write_status(&cfg, &status(&trusted, publisher.current().revision))?;
                    }
                    Ok(_) => {}
                    // A peer CA that does not parse: keep the trust in force, say why.
                    Err(e) => warn!(error = %crate::errors::chain(&e),
                        "cannot use the new mesh settings; the previous trust stays in force"),
                }
            }
        }
    }
}

fn write_status(cfg: &MeshEndpointConfig, st: &EndpointStatus) -> Result<(), EndpointError> {
    let err = |source| EndpointError::Status {
        cluster: cfg.cluster.clone(),
        path: cfg.status_file.display().to_string(),
        source,
    };
    let bytes = serde_json::to_vec_pretty(st).map_err(|e| err(e.into()))?;
    crate::lab::write_atomic(&cfg.status_file, &bytes).map_err(err)
}
