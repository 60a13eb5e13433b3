//! What syncing a large cluster over the mesh channel costs. Two in-process mesh endpoints on
//! loopback QUIC with real mutual TLS (two cluster CAs): cluster c2 publishes 5,000 global
//! services × 10 endpoints over 10,000 pods; c1 syncs it. Measured in one run:
//! - building the published state from the model snapshot, and publishing it;
//! - the initial sync: time from starting the client to a complete snapshot, bytes on the wire
//!   (sync frames and UDP payload), and the process RSS growth for the client's copy;
//! - one endpoint change (a pod turning not-ready): rebuild + diff on the server, then publish to
//!   applied on the client, and its bytes; median over rounds.
//!
//! Ratios are delta / snapshot. The last line printed is a JSON summary.
//!
//! `cargo bench -p strait --bench mesh_sync`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use strait::mesh::state::{AFFINITY_ANNOTATION, GLOBAL_ANNOTATION};
use strait::mesh::{
    ClusterId, MeshClient, MeshServer, MeshState, MeshTls, MeshTrust, Publisher, RemoteConfig,
};
use strait::model::*;
use strait::pki::{ClusterCa, generate_key};

const PODS: usize = 10_000;
const SERVICES: usize = 5_000;
const PER_SERVICE: usize = 10;
const ROUNDS: usize = 15;

fn rss_kib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn pod(i: usize, ready: bool) -> Endpoint {
    let group = i / PER_SERVICE;
    Endpoint {
        namespace: format!("ns-{}", group % 20),
        name: format!("pod-{i}"),
        node: format!("c2-node-{}", i % 50),
        ip: std::net::Ipv4Addr::from(0x0a02_0000 + i as u32),
        labels: [
            ("group".to_string(), format!("g{group}")),
            ("app".to_string(), format!("app-{}", group % 300)),
        ]
        .into(),
        identity: 0x2_0000 + (group % 300) as u32 + 256,
        workload: Some(format!("deploy-{group}")),
        ports: vec![NamedPort {
            name: Some("http".into()),
            port: 8080,
            protocol: Protocol::Tcp,
        }],
        ready,
        cgroup_id: None,
        host_ifname: None,
    }
}

/// Service `s` selects the 10 pods of group `s % 1000`: each group is selected by 5 services.
fn service(s: usize) -> Service {
    let group = s % (PODS / PER_SERVICE);
    Service {
        namespace: format!("ns-{}", group % 20),
        name: format!("svc-{s}"),
        cluster_ip: std::net::Ipv4Addr::from(0x0a60_0000 + s as u32),
        ports: vec![ServicePort {
            name: Some("http".into()),
            port: 80,
            target_port: TargetPort::Name("http".into()),
            protocol: Protocol::Tcp,
        }],
        selector: [("group".to_string(), format!("g{group}"))].into(),
        annotations: [
            (GLOBAL_ANNOTATION.to_string(), "true".to_string()),
            (AFFINITY_ANNOTATION.to_string(), "local".to_string()),
        ]
        .into(),
    }
}

fn cluster_state(not_ready: Option<usize>) -> ClusterState {
    ClusterState {
        revision: 1,
        cluster: ClusterInfo {
            name: "c2".into(),
            id: 2,
        },
        nodes: (0..50)
            .map(|n| Node {
                name: format!("c2-node-{n}"),
                underlay_ip: [192, 168, 2, n as u8 + 1].into(),
                pod_cidr: format!("10.2.{n}.0/24").parse().unwrap(),
                gateway: [10, 2, n as u8, 1].into(),
            })
            .collect(),
        namespaces: (0..20)
            .map(|n| Namespace {
                name: format!("ns-{n}"),
                labels: Labels::new(),
            })
            .collect(),
        endpoints: (0..PODS).map(|i| pod(i, not_ready != Some(i))).collect(),
        services: (0..SERVICES).map(service).collect(),
        policies: vec![],
    }
}

fn mesh_tls(dir: &std::path::Path, cluster: &str, cas: &[(&str, &ClusterCa)]) -> Arc<MeshTls> {
    let own = cas.iter().find(|(c, _)| *c == cluster).unwrap().1;
    let key = generate_key().unwrap();
    let cert = own
        .issue_mesh(cluster, &key, Duration::from_secs(3600))
        .unwrap();
    strait::pki::write_file(
        &dir.join(format!("{cluster}-mesh.crt")),
        cert.as_bytes(),
        0o644,
    )
    .unwrap();
    let trust: Vec<_> = cas
        .iter()
        .map(|(c, ca)| MeshTrust {
            cluster: c.to_string(),
            ca_pem: ca.cert_pem.clone(),
        })
        .collect();
    Arc::new(MeshTls::new(cluster, &cert, &key.serialize_pem(), &trust).unwrap())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let dir = std::env::temp_dir().join(format!("strait-bench-mesh-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca1, ca2) = (
        ClusterCa::create("c1").unwrap(),
        ClusterCa::create("c2").unwrap(),
    );
    let cas = [("c1", &ca1), ("c2", &ca2)];
    let (tls1, tls2) = (mesh_tls(&dir, "c1", &cas), mesh_tls(&dir, "c2", &cas));

    let rss_start = rss_kib();
    let store = Store::new();
    store.apply(Update::ReplaceCluster(cluster_state(None)));
    let snap = store.current().unwrap();
    let t = Instant::now();
    let state = MeshState::from_snapshot(&snap);
    let build_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(state.services.len(), SERVICES);
    assert_eq!(state.endpoint_count(), SERVICES * PER_SERVICE);
    assert_eq!(state.ipcache.len(), PODS);
    let publisher = Arc::new(Publisher::new(ClusterId::new("c2", 2).unwrap()));
    let t = Instant::now();
    publisher.publish(state);
    let publish_ms = t.elapsed().as_secs_f64() * 1e3;
    let server = MeshServer::bind("127.0.0.1:0".parse().unwrap(), tls2, publisher.clone()).unwrap();
    let rss_server = rss_kib();

    // Initial sync.
    let t = Instant::now();
    let client = MeshClient::spawn(
        tls1,
        ClusterId::new("c1", 1).unwrap(),
        "c2",
        server.local_addr().unwrap(),
        RemoteConfig::default(),
    )
    .unwrap();
    let mut rx = client.state();
    while rx.borrow_and_update().is_none() {
        rx.changed().await.unwrap();
    }
    let snapshot_ms = t.elapsed().as_secs_f64() * 1e3;
    let st = client.status();
    let (snap_bytes, snap_udp) = (st.bytes_received, st.udp_bytes_received);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_client = rss_kib();
    assert_eq!(st.endpoints, SERVICES * PER_SERVICE);

    // One endpoint change per round: pod i turns not-ready (touching the 5 services of its
    // group), then ready again.
    let (mut rebuild, mut delta_ms, mut delta_bytes, mut delta_udp) =
        (vec![], vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        let changed = round * 37 % PODS;
        let t = Instant::now();
        store.apply(Update::ReplaceCluster(cluster_state(
            (round % 2 == 0).then_some(changed),
        )));
        let next = MeshState::from_snapshot(&store.current().unwrap());
        let before = client.status();
        let t_pub = Instant::now();
        let rev = publisher.publish(next);
        rebuild.push((t_pub - t).as_secs_f64() * 1e3);
        loop {
            rx.changed().await.unwrap();
            if rx
                .borrow_and_update()
                .as_ref()
                .is_some_and(|s| s.revision == rev)
            {
                break;
            }
        }
        delta_ms.push(t_pub.elapsed().as_secs_f64() * 1e3);
        let after = client.status();
        delta_bytes.push((after.bytes_received - before.bytes_received) as f64);
        delta_udp.push((after.udp_bytes_received - before.udp_bytes_received) as f64);
    }
    assert!(
        rx.borrow()
            .as_ref()
            .unwrap()
            .same_content(&publisher.current())
    );
    let (rebuild, delta_ms, delta_bytes, delta_udp) = (
        median(rebuild),
        median(delta_ms),
        median(delta_bytes),
        median(delta_udp),
    );
    let server_mib = (rss_server - rss_start) / 1024.0;
    let client_mib = (rss_client - rss_server) / 1024.0;

    println!("mesh sync: {SERVICES} global services x {PER_SERVICE} endpoints, {PODS} pods");
    println!(
        "  build state from snapshot   {build_ms:8.1} ms   publish (diff vs empty) {publish_ms:.1} ms"
    );
    println!(
        "  snapshot sync               {snapshot_ms:8.1} ms   {:.2} MB frames, {:.2} MB UDP",
        snap_bytes as f64 / 1e6,
        snap_udp as f64 / 1e6
    );
    println!(
        "  RSS: model + published state {server_mib:.1} MiB; client's synced copy {client_mib:.1} MiB"
    );
    println!(
        "  one endpoint change: rebuild+diff {rebuild:.1} ms, publish->applied {delta_ms:.2} ms, \
         {delta_bytes:.0} B frames, {delta_udp:.0} B UDP"
    );
    println!(
        "  ratios delta/snapshot: time {:.4}, frame bytes {:.6}",
        delta_ms / snapshot_ms,
        delta_bytes / snap_bytes as f64
    );
    println!(
        "{{\"bench\":\"mesh_sync\",\"services\":{SERVICES},\"endpoints_per_service\":{PER_SERVICE},\
         \"pods\":{PODS},\"build_ms\":{build_ms:.1},\"publish_ms\":{publish_ms:.1},\
         \"snapshot_ms\":{snapshot_ms:.1},\"snapshot_frame_bytes\":{snap_bytes},\
         \"snapshot_udp_bytes\":{snap_udp},\"rss_server_mib\":{server_mib:.1},\
         \"rss_client_mib\":{client_mib:.1},\"delta_rebuild_ms\":{rebuild:.1},\
         \"delta_ms\":{delta_ms:.2},\"delta_frame_bytes\":{delta_bytes:.0},\
         \"delta_udp_bytes\":{delta_udp:.0}}}"
    );
    drop(client);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
