//! The node agent: loads the eBPF programs, binds every listener, then follows the model and
//! serves. Startup errors surface before any traffic is accepted.

use std::net::SocketAddrV4;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::compile::{CompileStats, CompiledState, Compiler};
use crate::config::AgentConfig;
use crate::datapath::{Installed, Installer};
use crate::dns::{DnsServer, DnsTable};
use crate::flows::FlowRing;
use crate::model::{ClusterInfo, Store};
use crate::proxy::tables::ProxyTables;
use crate::proxy::tls::{NodeIdentity, NodeIssuer, NodeTls, TrustedCa};
use crate::proxy::{OriginalDst, Proxy};
use crate::{admin, proxy, sources};

/// First wait before retrying a revision the kernel refused; doubled up to the maximum.
const INSTALL_RETRY_MIN: std::time::Duration = std::time::Duration::from_millis(200);
const INSTALL_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest wait of the first compile for the mesh peers' persisted states (they are read right
/// after the first cluster state; the wait only runs out without a readable state file).
const MESH_RESTORE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("eBPF data path")]
    Datapath(#[from] strait_ebpf::Error),
    #[error("bind {what} on {addr}")]
    Bind {
        what: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("admin API")]
    Admin(#[from] admin::AdminError),
    #[error("DNS")]
    Dns(#[from] crate::dns::DnsError),
    #[error("metrics")]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("node certificate")]
    Pki(#[from] crate::pki::PkiError),
    #[error("tunnel TLS")]
    Tls(#[from] crate::proxy::tls::IssueError),
    #[error("admin API TLS")]
    AdminTls(#[source] crate::proxy::tls::TlsError),
    #[error("mesh identity")]
    MeshIdentity(#[from] sources::mesh::IdentityError),
}

/// The eBPF maps as the proxy's source of original destinations.
struct KernelOriginalDst(Arc<strait_ebpf::Datapath>);

impl OriginalDst for KernelOriginalDst {
    fn take(&self, client: SocketAddrV4) -> Option<SocketAddrV4> {
        match self.0.take_original_dst(client) {
            Ok(dst) => dst,
            Err(e) => {
                error!(error = %crate::errors::chain(&e), %client, "original destination lookup failed");
                None
            }
        }
    }
}

/// Runs the agent until the process is stopped.
pub async fn run(cfg: AgentConfig) -> Result<(), AgentError> {
    let metrics = crate::metrics::install(crate::metrics::Options {
        pod_labels: cfg.metrics_pod_labels,
    })?;
    let datapath = Arc::new(strait_ebpf::Datapath::load_and_attach(
        &strait_ebpf::DatapathConfig {
            pin_dir: cfg.bpf_pin_dir.clone(),
            cgroup: cfg.cgroup.clone(),
            proxy: cfg.outbound,
            bypass: vec![*cfg.outbound.ip()],
        },
    )?);
    datapath.set_fast_path(cfg.kernel_fast_path)?;
    let mut drops = datapath.drop_events()?;
    let mut kernel_flows = datapath.flow_events()?;
    let programs: Vec<serde_json::Value> = datapath
        .programs()
        .into_iter()
        .map(|p| serde_json::json!({"name": p.name, "hook": p.hook, "attached": p.attached}))
        .collect();
    info!(programs = programs.len(), cgroup = %cfg.cgroup.display(), "eBPF programs attached");

    let bind =
        |what: &'static str, addr: String| move |source| AgentError::Bind { what, addr, source };
    let outbound = TcpListener::bind(cfg.outbound)
        .await
        .map_err(bind("outbound listener", cfg.outbound.to_string()))?;
    let tunnel = TcpListener::bind(cfg.tunnel)
        .await
        .map_err(bind("tunnel listener", cfg.tunnel.to_string()))?;
    let dns = match cfg.dns {
        Some(addr) => Some(DnsServer::bind(addr).await?),
        None => None,
    };
    let admin = admin::Admin::bind(&cfg.admin_socket, cfg.admin_tcp)?;
    let (node_tls, issuer) = start_tls(&cfg)?;
    let mesh_ca = crate::pki::ClusterCa::load(&cfg.tls.issuer.ca_cert, &cfg.tls.issuer.ca_key)?;
    let mesh_validity = Duration::from_secs(cfg.tls.cert_validity_secs.max(3));
    let mesh_identity = sources::mesh::MeshIdentity::issue(&mesh_ca, &cfg.cluster, mesh_validity)?;
    // Renewed as the node certificate is: a mesh that outlives one validity keeps syncing.
    tokio::spawn(mesh_identity.clone().renew(mesh_ca, mesh_validity));
    let admin = match cfg.admin_tls {
        Some(addr) => admin.with_tls(
            addr,
            node_tls.admin_acceptor().map_err(AgentError::AdminTls)?,
        )?,
        None => admin,
    };

    let flows =
        Arc::new(FlowRing::new(cfg.flow_ring_capacity).observed_by(crate::metrics::FlowMetrics));
    let proxy = Arc::new(
        Proxy::new(
            ProxyTables::empty(
                ClusterInfo {
                    name: cfg.cluster.clone(),
                    id: 0,
                },
                cfg.node.clone(),
            ),
            flows.clone(),
            Arc::new(KernelOriginalDst(datapath.clone())),
        )
        .rejudge_on_update(cfg.rejudge_on_update)
        .http_path_escaped_slashes(cfg.http_path_escaped_slashes)
        .tunnel_transport(proxy::tunnel::Transport::Mtls(node_tls.clone())),
    );
    tokio::spawn(issuer.renew(node_tls.clone()));
    let (dns_tx, dns_rx) = tokio::sync::watch::channel(Arc::new(DnsTable::default()));
    let installer = Arc::new(Installer::new(datapath.clone(), proxy.clone(), dns_tx));
    let store = Arc::new(Store::new());
    let mesh =
        Arc::new(sources::mesh::MeshSource::new().with_state_dir(cfg.mesh_state_dir.clone()));
    let ready = Arc::new(AtomicBool::new(false));
    let compile_stats = Arc::new(parking_lot::Mutex::new(CompileStats::default()));

    // Compile every new snapshot and install it. Compiling is CPU work: it runs on the blocking
    // pool, not on the workers that move traffic.
    {
        let mut rx = store.subscribe();
        let installer = installer.clone();
        let ready = ready.clone();
        let compile_stats = compile_stats.clone();
        let node = cfg.node.clone();
        let default_local_cluster = cfg.policy_default_local_cluster;
        let rejudge_sockets = cfg.rejudge_on_update.then(|| datapath.clone());
        let mesh = mesh.clone();
        tokio::spawn(async move {
            // The first compile waits for the mesh peers' persisted states: compiled without
            // them, a restarted agent would drop remote backends from maps that still hold them.
            if tokio::time::timeout(MESH_RESTORE_WAIT, mesh.settled())
                .await
                .is_err()
            {
                warn!(wait = ?MESH_RESTORE_WAIT, "no mesh settings yet; compiling without remote clusters");
            }
            let report = |state: &CompiledState, installed: Installed| {
                if installed.map_changes > 0
                    && let Some(datapath) = rejudge_sockets.clone()
                {
                    tokio::task::spawn_blocking(move || end_revoked_sockets(&datapath));
                }
                let st = &state.stats;
                metrics::histogram!(crate::metrics::names::POLICY_COMPILE)
                    .record(st.compile_us as f64 / 1e6);
                metrics::gauge!(crate::metrics::names::POLICIES).set(st.policies as f64);
                metrics::gauge!(crate::metrics::names::POLICY_KERNEL_RULES)
                    .set(st.kernel_rules as f64);
                metrics::gauge!(crate::metrics::names::POLICY_REVISION)
                    .set(state.source_revision as f64);
                info!(
                    model_revision = state.revision,
                    source_revision = state.source_revision,
                    full = st.full,
                    changed_objects = st.changed_objects,
                    changed_pairs = st.changed_pairs,
                    map_changes = installed.map_changes,
                    compile_us = st.compile_us,
                    "revision installed"
                );
                *compile_stats.lock() = st.clone();
                ready.store(true, Ordering::SeqCst);
            };
            let mut compiler =
                Compiler::new(&node).policy_default_local_cluster(default_local_cluster);
            // A revision compiled but not installed (the kernel refused it): retried with
            // backoff until it is in force or a newer snapshot replaces it.
            let mut pending: Option<Arc<CompiledState>> = None;
            let mut backoff = INSTALL_RETRY_MIN;
            loop {
                if let Some(state) = pending.clone() {
                    tokio::select! {
                        changed = rx.changed() => {
                            if changed.is_err() {
                                break;
                            }
                            pending = None;
                        }
                        () = tokio::time::sleep(backoff) => {
                            let installer = installer.clone();
                            let retry = state.clone();
                            match tokio::task::spawn_blocking(move || installer.apply(&retry)).await {
                                Ok(Ok(installed)) => {
                                    report(&state, installed);
                                    pending = None;
                                    backoff = INSTALL_RETRY_MIN;
                                }
                                Ok(Err(e)) => {
                                    warn!(error = %crate::errors::chain(&e), revision = state.revision,
                                        "still cannot install revision; retrying");
                                    backoff = (backoff * 2).min(INSTALL_RETRY_MAX);
                                }
                                Err(e) => error!(error = %e, "install task failed"),
                            }
                            continue;
                        }
                    }
                } else if rx.changed().await.is_err() {
                    break;
                }
                let Some(snap) = rx.borrow_and_update().clone() else {
                    continue;
                };
                // The compiler moves to the blocking pool and back; if that task dies, a fresh
                // compiler (whose first compile is full) takes over.
                let mut c = std::mem::replace(
                    &mut compiler,
                    Compiler::new(&node).policy_default_local_cluster(default_local_cluster),
                );
                let installer = installer.clone();
                let job = tokio::task::spawn_blocking(move || {
                    let result = c.compile(&snap).map(|state| {
                        let installed = installer.apply(&state);
                        (state, installed)
                    });
                    (c, snap.revision, result)
                });
                let (c, revision, result) = match job.await {
                    Ok(x) => x,
                    Err(e) => {
                        error!(error = %e, "compile task failed; the next revision is compiled from scratch");
                        continue;
                    }
                };
                compiler = c;
                match result {
                    Err(e) => error!(error = %crate::errors::chain(&e), revision,
                        "cannot compile revision; the previous one stays in force"),
                    Ok((state, Err(e))) => {
                        error!(error = %crate::errors::chain(&e), revision,
                            "cannot install revision; the previous one stays in force, retrying");
                        pending = Some(Arc::new(state));
                        backoff = INSTALL_RETRY_MIN;
                    }
                    Ok((state, Ok(installed))) => report(&state, installed),
                }
            }
        });
    }
    // Kernel drops become flows; reading never blocks the data path (a full ring drops events).
    {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            loop {
                match drops.next().await {
                    Ok(ev) => {
                        let flow = crate::proxy::drops::flow_from_drop(&ev, &proxy.tables());
                        proxy.flows().record(flow);
                    }
                    Err(e) => {
                        error!(error = %crate::errors::chain(&e), "drop events");
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                }
            }
        });
    }
    // Connections of the kernel fast path become flows the same way.
    {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            loop {
                match kernel_flows.next().await {
                    Ok(ev) => {
                        let flow = crate::proxy::kflows::flow_from_kernel(&ev, &proxy.tables());
                        proxy.flows().record(flow);
                    }
                    Err(e) => {
                        error!(error = %crate::errors::chain(&e), "kernel flow events");
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                }
            }
        });
    }
    let (mesh_tx, mesh_rx) = tokio::sync::watch::channel(None);
    tokio::spawn(follow_mesh_trust(mesh_rx.clone(), node_tls));
    tokio::spawn(mesh.clone().run(
        mesh_rx,
        store.clone(),
        mesh_identity,
        crate::mesh::RemoteConfig {
            ttl: Duration::from_secs(cfg.mesh_ttl_secs),
            ..Default::default()
        },
    ));
    tokio::spawn(sources::file::watch(
        cfg.state_file.clone(),
        cfg.cluster.clone(),
        store.clone(),
        Some(mesh_tx),
    ));
    tokio::spawn(proxy::outbound::serve(outbound, proxy.clone()));
    tokio::spawn(proxy::tunnel::serve(tunnel, proxy.clone()));
    if let Some(dns) = dns {
        tokio::spawn(dns.serve(dns_rx));
    }
    let scrape_mesh = mesh.clone();
    let status = {
        let proxy = proxy.clone();
        let cfg = cfg.clone();
        let store = store.clone();
        move || {
            let t = proxy.tables();
            // What the model holds of each remote cluster, next to what the channel reports.
            let remote_model: serde_json::Map<String, serde_json::Value> = store
                .current()
                .map(|s| {
                    s.model
                        .remotes
                        .iter()
                        .map(|(name, r)| {
                            (
                                name.clone(),
                                serde_json::json!({
                                    "id": r.cluster.id,
                                    "nodes": r.nodes.len(),
                                    "identities": r.identities.len(),
                                    "endpoints": r.ipcache.len(),
                                    "services": r.services.len(),
                                }),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            serde_json::json!({
                "cluster": cfg.cluster,
                "cluster_id": t.cluster.id,
                "node": cfg.node,
                "ready": ready.load(Ordering::SeqCst),
                "source_revision": installer.source_revision(),
                "model_revision": installer.revision(),
                "endpoints": t.endpoints.len(),
                "services": t.services.len(),
                "programs": programs,
                "pod_interfaces": installer.interfaces(),
                "policy": compile_stats.lock().clone(),
                "mesh": {
                    "ttl_secs": cfg.mesh_ttl_secs,
                    "remotes": mesh.statuses(),
                    "model": remote_model,
                },
                "listeners": {
                    "outbound": cfg.outbound.to_string(),
                    "tunnel": cfg.tunnel.to_string(),
                    "dns": cfg.dns.map(|a| a.to_string()),
                    "admin": cfg.admin_socket.display().to_string(),
                    "admin_tls": cfg.admin_tls.map(|a| a.to_string()),
                },
            })
        }
    };
    info!(node = %cfg.node, cluster = %cfg.cluster, "agent serving");
    let scrape = {
        let datapath = datapath.clone();
        let flows = flows.clone();
        let mesh = scrape_mesh;
        let store = store.clone();
        let mesh_metrics = crate::metrics::MeshMetrics::default();
        move || {
            refresh_kernel_gauges(&datapath, &flows);
            mesh_metrics.record(&mesh_samples(&mesh, &store));
            metrics.render()
        }
    };
    admin
        .serve(admin::AdminState {
            flows,
            status: Arc::new(status),
            metrics: Arc::new(scrape),
        })
        .await?;
    Ok(())
}

/// Loads (or creates, 0600) the node key, issues a fresh certificate with the configured CA and
/// builds the tunnel's TLS around it.
/// Ends the kernel-path connections the maps just installed no longer allow (policy, or a
/// Service backend gone), in every pod's network namespace. Their flows say why (sockops reports
/// the close with the reason the iterator set).
fn end_revoked_sockets(datapath: &strait_ebpf::Datapath) {
    match datapath.rejudge_pods() {
        Ok(n) if n.destroyed() > 0 => info!(
            policy_denied = n.policy_denied,
            proxy_required = n.proxy_required,
            backend_removed = n.backend_removed,
            failed = n.failed,
            "ended live connections the new revision no longer allows"
        ),
        Ok(_) => {}
        // Logged once by the data path: the kernel lacks the socket iterator or bpf_sock_destroy;
        // tc still stops the packets of such connections.
        Err(strait_ebpf::Error::SockIterUnavailable(_)) => {}
        Err(e) => warn!(error = %crate::errors::chain(&e), "cannot judge live connections again"),
    }
}

/// Keeps the tunnels' trust in step with the mesh: the CA of every connected cluster is believed
/// for that cluster's nodes, so cross-cluster streams ride the same authenticated tunnels.
async fn follow_mesh_trust(
    mut views: tokio::sync::watch::Receiver<Option<sources::file::MeshView>>,
    tls: Arc<NodeTls>,
) {
    let mut current: Option<Vec<(String, String)>> = None;
    loop {
        let peers: Vec<(String, String)> = views
            .borrow_and_update()
            .as_ref()
            .and_then(|v| v.settings.as_ref())
            .map(|s| {
                s.peers
                    .iter()
                    .filter(|p| p.sync)
                    .map(|p| (p.name.clone(), p.ca_pem.clone()))
                    .collect()
            })
            .unwrap_or_default();
        if current.as_ref() != Some(&peers) {
            let trust: Vec<TrustedCa> = peers
                .iter()
                .map(|(cluster, cert_pem)| TrustedCa {
                    cluster: cluster.clone(),
                    cert_pem: cert_pem.clone(),
                })
                .collect();
            for (cluster, e) in tls.set_peer_trust(&trust) {
                warn!(%cluster, error = %crate::errors::chain(&e),
                    "mesh peer's CA not trusted for tunnels");
            }
            info!(clusters = ?tls.trusted_clusters(), "tunnel trust updated");
            current = Some(peers);
        }
        if views.changed().await.is_err() {
            return;
        }
    }
}

fn start_tls(cfg: &AgentConfig) -> Result<(Arc<NodeTls>, NodeIssuer), AgentError> {
    let t = &cfg.tls;
    let local = NodeIdentity {
        cluster: cfg.cluster.clone(),
        node: cfg.node.clone(),
    };
    let issuer = NodeIssuer::new(
        local.clone(),
        crate::pki::ClusterCa::load(&t.issuer.ca_cert, &t.issuer.ca_key)?,
        crate::pki::load_or_create_key(&t.node_key)?,
        t.node_cert.clone(),
        Duration::from_secs(t.cert_validity_secs.max(3)),
    );
    let mut trust = Vec::new();
    for ca in &t.trust {
        let cert_pem =
            std::fs::read_to_string(&ca.ca_cert).map_err(|source| crate::pki::PkiError::Io {
                path: ca.ca_cert.clone(),
                what: "read trusted CA",
                source,
            })?;
        trust.push(TrustedCa {
            cluster: ca.cluster.clone(),
            cert_pem,
        });
    }
    let tls = issuer.node_tls(&trust)?;
    Ok((tls, issuer))
}

/// Each configured remote cluster: its channel's status, with the counts of what the model holds
/// of it (as `clustermesh status` counts them).
fn mesh_samples(
    mesh: &sources::mesh::MeshSource,
    store: &Store,
) -> Vec<crate::metrics::MeshSample> {
    let snap = store.current();
    mesh.statuses()
        .into_iter()
        .map(|p| {
            let s = p.status;
            let held = snap.as_ref().and_then(|m| m.model.remotes.get(&s.cluster));
            crate::metrics::MeshSample {
                connected: s.connected,
                ready: s.ready,
                nodes: held.map_or(0, |r| r.nodes.len()),
                endpoints: held.map_or(0, |r| r.ipcache.len()),
                identities: held.map_or(0, |r| r.identities.len()),
                services: held.map_or(0, |r| r.services.len()),
                failures: s.failures,
                bytes_received: s.bytes_received,
                withdrawals: s.withdrawals,
                last_sync: s.last_sync,
                cluster: s.cluster,
            }
        })
        .collect()
}

/// Mirrors kernel state into gauges (and the kernel's drop counters into counters) before a
/// scrape renders them.
fn refresh_kernel_gauges(datapath: &strait_ebpf::Datapath, flows: &FlowRing) {
    use crate::metrics::names;
    for (map, entries, capacity) in datapath.map_fill() {
        metrics::gauge!(names::MAP_ENTRIES, "map" => map).set(entries as f64);
        metrics::gauge!(names::MAP_CAPACITY, "map" => map).set(capacity as f64);
    }
    for p in datapath.programs() {
        metrics::gauge!(names::PROGRAM_ATTACHED, "program" => p.name.to_string(), "hook" => p.hook.to_string())
            .set(if p.attached { 1.0 } else { 0.0 });
    }
    match datapath.drop_counters() {
        Ok(counters) => {
            for (reason, n) in counters {
                metrics::counter!(names::KERNEL_DROPS, "reason" => reason.as_str()).absolute(n);
            }
        }
        Err(e) => error!(error = %crate::errors::chain(&e), "read kernel drop counters"),
    }
    let stats = flows.stats();
    metrics::gauge!(names::FLOW_RING_FLOWS).set(stats.len as f64);
    metrics::counter!(names::FLOWS_EVICTED).absolute(stats.evicted);
}
