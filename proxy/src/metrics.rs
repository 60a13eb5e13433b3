//! Prometheus metrics through the `metrics` facade, rendered on the agent's admin `/metrics`.
//!
//! Flow-derived metrics are counted from each recorded flow ([`record_flow`], subscribed to the
//! agent's flow ring as [`FlowMetrics`]), so every path (proxy connections, L7 requests, kernel
//! drops) is counted once and the same way. Gauges that
//! mirror kernel state are refreshed on each scrape. Labels are bounded: verdicts, protocols,
//! reasons, namespaces and workloads; pod names only when switched on ([`Options::pod_labels`]),
//! never IP addresses.

use std::sync::atomic::{AtomicBool, Ordering};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::flows::{FlowObserver, FlowPeer, FlowRecord, Verdict, verdict_name};

/// Metric names, so tests and the Grafana dashboard refer to one list.
pub mod names {
    pub const BUILD_INFO: &str = "strait_build_info";
    pub const FLOWS: &str = "strait_flows_total";
    pub const DROPS: &str = "strait_drops_total";
    pub const KERNEL_DROPS: &str = "strait_kernel_drops_total";
    pub const HTTP_REQUESTS: &str = "strait_http_requests_total";
    pub const HTTP_DURATION: &str = "strait_http_request_duration_seconds";
    pub const CONNECTIONS: &str = "strait_connections_total";
    pub const CONNECTIONS_OPEN: &str = "strait_connections_open";
    pub const BYTES: &str = "strait_proxy_bytes_total";
    pub const TUNNEL_CONNECTIONS: &str = "strait_tunnel_connections_total";
    pub const TUNNEL_STREAMS: &str = "strait_tunnel_streams_total";
    pub const TUNNEL_HANDSHAKE_FAILURES: &str = "strait_tunnel_handshake_failures_total";
    pub const POLICY_REVISION: &str = "strait_policy_revision";
    pub const POLICIES: &str = "strait_policies";
    pub const POLICY_KERNEL_RULES: &str = "strait_policy_kernel_rules";
    pub const POLICY_COMPILE: &str = "strait_policy_compile_duration_seconds";
    pub const MAP_ENTRIES: &str = "strait_ebpf_map_entries";
    pub const MAP_CAPACITY: &str = "strait_ebpf_map_capacity";
    pub const PROGRAM_ATTACHED: &str = "strait_ebpf_program_attached";
    pub const FLOW_RING_FLOWS: &str = "strait_flow_ring_flows";
    pub const FLOWS_EVICTED: &str = "strait_flow_ring_evicted_total";
    pub const MESH_READY: &str = "strait_clustermesh_remote_ready";
    pub const MESH_CONNECTED: &str = "strait_clustermesh_remote_connected";
    pub const MESH_NODES: &str = "strait_clustermesh_remote_nodes";
    pub const MESH_ENDPOINTS: &str = "strait_clustermesh_remote_endpoints";
    pub const MESH_IDENTITIES: &str = "strait_clustermesh_remote_identities";
    pub const MESH_SERVICES: &str = "strait_clustermesh_remote_services";
    pub const MESH_FAILURES: &str = "strait_clustermesh_remote_sync_failures_total";
    pub const MESH_LAST_SYNC: &str = "strait_clustermesh_remote_last_sync_timestamp_seconds";
    pub const MESH_BYTES: &str = "strait_clustermesh_remote_received_bytes_total";
    pub const MESH_WITHDRAWALS: &str = "strait_clustermesh_remote_withdrawals_total";

    /// Every name above.
    pub const ALL: &[&str] = &[
        BUILD_INFO,
        FLOWS,
        DROPS,
        KERNEL_DROPS,
        HTTP_REQUESTS,
        HTTP_DURATION,
        CONNECTIONS,
        CONNECTIONS_OPEN,
        BYTES,
        TUNNEL_CONNECTIONS,
        TUNNEL_STREAMS,
        TUNNEL_HANDSHAKE_FAILURES,
        POLICY_REVISION,
        POLICIES,
        POLICY_KERNEL_RULES,
        POLICY_COMPILE,
        MAP_ENTRIES,
        MAP_CAPACITY,
        PROGRAM_ATTACHED,
        FLOW_RING_FLOWS,
        FLOWS_EVICTED,
        MESH_READY,
        MESH_CONNECTED,
        MESH_NODES,
        MESH_ENDPOINTS,
        MESH_IDENTITIES,
        MESH_SERVICES,
        MESH_FAILURES,
        MESH_LAST_SYNC,
        MESH_BYTES,
        MESH_WITHDRAWALS,
    ];
}

/// Histogram buckets for request durations, in seconds (100 µs … 10 s).
const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Whether HTTP metrics carry pod names (off by default: unbounded cardinality).
static POD_LABELS: AtomicBool = AtomicBool::new(false);

/// How metrics are recorded.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Add `source_pod` / `destination_pod` labels to HTTP metrics.
    pub pod_labels: bool,
}

/// The recorder could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("build the Prometheus recorder")]
    Build(#[from] metrics_exporter_prometheus::BuildError),
    #[error("a global metrics recorder is already installed")]
    AlreadyInstalled,
}

/// A Prometheus recorder configured as Strait's metrics need (buckets for `_seconds`).
pub fn recorder() -> Result<metrics_exporter_prometheus::PrometheusRecorder, MetricsError> {
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)?
        .build_recorder())
}

/// Installs the Prometheus recorder for the whole process and describes every metric.
pub fn install(opts: Options) -> Result<PrometheusHandle, MetricsError> {
    POD_LABELS.store(opts.pod_labels, Ordering::Relaxed);
    let rec = recorder()?;
    let handle = rec.handle();
    metrics::set_global_recorder(rec).map_err(|_| MetricsError::AlreadyInstalled)?;
    describe();
    gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

/// Help texts and units (`# HELP` lines).
pub fn describe() {
    use names::*;
    describe_gauge!(BUILD_INFO, "Strait build; the value is always 1");
    describe_counter!(FLOWS, "Flows recorded, by verdict, protocol and direction");
    describe_counter!(
        DROPS,
        "Dropped flows, by drop reason and the layer that decided"
    );
    describe_counter!(
        KERNEL_DROPS,
        "Packets and connects the eBPF programs dropped, by reason (kernel counters)"
    );
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests on L7 ports, by method, status class, source and destination"
    );
    describe_histogram!(
        HTTP_DURATION,
        metrics::Unit::Seconds,
        "Time from HTTP request to response headers"
    );
    describe_counter!(
        CONNECTIONS,
        "TCP connections the proxy accepted, by direction"
    );
    describe_gauge!(
        CONNECTIONS_OPEN,
        "TCP connections open in the proxy, by direction"
    );
    describe_counter!(
        BYTES,
        metrics::Unit::Bytes,
        "Bytes the proxy carried, towards the server (sent) or the client (received)"
    );
    describe_counter!(
        TUNNEL_CONNECTIONS,
        "HTTP/2 tunnel connections between node proxies, by role"
    );
    describe_counter!(
        TUNNEL_STREAMS,
        "Connections carried as tunnel streams, by role"
    );
    describe_counter!(
        TUNNEL_HANDSHAKE_FAILURES,
        "Tunnel TLS handshakes refused, by role and reason (no or untrusted certificate, not TLS...)"
    );
    describe_gauge!(
        POLICY_REVISION,
        "Cluster state revision whose policy is in force"
    );
    describe_gauge!(POLICIES, "Network policies in force");
    describe_gauge!(
        POLICY_KERNEL_RULES,
        "Policy entries compiled for the kernel"
    );
    describe_histogram!(
        POLICY_COMPILE,
        metrics::Unit::Seconds,
        "Time to compile a revision's policy (engine and kernel entries)"
    );
    describe_gauge!(MAP_ENTRIES, "Entries in each eBPF map");
    describe_gauge!(MAP_CAPACITY, "Capacity of each eBPF map");
    describe_gauge!(
        PROGRAM_ATTACHED,
        "Whether each eBPF program is attached (1) or not (0)"
    );
    describe_gauge!(FLOW_RING_FLOWS, "Flows held in the agent's ring");
    describe_counter!(FLOWS_EVICTED, "Flows pushed out of the ring by newer ones");
    describe_gauge!(
        MESH_READY,
        "Whether the remote cluster is connected and synced (1) or not (0)"
    );
    describe_gauge!(
        MESH_CONNECTED,
        "Whether the mesh channel to the remote cluster is up (1) or not (0)"
    );
    describe_gauge!(MESH_NODES, "Nodes of the remote cluster the agent holds");
    describe_gauge!(
        MESH_ENDPOINTS,
        "Pods (ipcache entries) of the remote cluster the agent holds"
    );
    describe_gauge!(
        MESH_IDENTITIES,
        "Identities of the remote cluster the agent holds"
    );
    describe_gauge!(
        MESH_SERVICES,
        "Global services of the remote cluster the agent holds"
    );
    describe_counter!(
        MESH_FAILURES,
        "Failed connections and broken channels to the remote cluster's mesh endpoint"
    );
    describe_gauge!(
        MESH_LAST_SYNC,
        metrics::Unit::Seconds,
        "When the remote cluster's state last completed a sync (Unix time)"
    );
    describe_counter!(
        MESH_BYTES,
        metrics::Unit::Bytes,
        "Sync frame bytes received from the remote cluster"
    );
    describe_counter!(
        MESH_WITHDRAWALS,
        "Times the remote cluster's state was withdrawn after the TTL of unreachability"
    );
}

/// Status class label: `2xx`, `4xx`, …
pub fn status_class(status: Option<u16>) -> &'static str {
    match status {
        Some(100..=199) => "1xx",
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        _ => "none",
    }
}

/// Method label; anything non-standard is `OTHER` so clients cannot grow the label set.
pub fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "OTHER",
    }
}

fn direction_label(d: crate::flows::Direction) -> &'static str {
    match d {
        crate::flows::Direction::Egress => "egress",
        crate::flows::Direction::Ingress => "ingress",
    }
}

fn workload(p: &FlowPeer) -> String {
    match (&p.workload, p.pod.is_empty()) {
        (Some(w), _) => w.clone(),
        // A pod without a Deployment is its own workload.
        (None, false) => p.pod.clone(),
        (None, true) => "world".into(),
    }
}

/// Counts one recorded flow.
pub fn record_flow(f: &FlowRecord) {
    use names::*;
    let verdict = verdict_name(f.verdict);
    let direction = direction_label(f.direction);
    counter!(FLOWS, "verdict" => verdict, "protocol" => f.protocol.clone(), "direction" => direction)
        .increment(1);
    if f.verdict == Verdict::Dropped {
        counter!(
            DROPS,
            "reason" => f.drop_reason.map_or("UNKNOWN", |r| r.as_str()),
            "decided_by" => f.decided_by.map_or("proxy", |d| d.as_str())
        )
        .increment(1);
    }
    match &f.http {
        Some(h) => {
            let method = method_label(&h.method);
            let class = status_class(h.status);
            let mut labels = vec![
                ("method", method.to_string()),
                ("status_class", class.to_string()),
                ("source_namespace", f.source.namespace.clone()),
                ("source_workload", workload(&f.source)),
                ("destination_namespace", f.destination.namespace.clone()),
                ("destination_workload", workload(&f.destination)),
            ];
            if POD_LABELS.load(Ordering::Relaxed) {
                labels.push(("source_pod", f.source.pod.clone()));
                labels.push(("destination_pod", f.destination.pod.clone()));
            }
            let labels: Vec<metrics::Label> = labels
                .into_iter()
                .map(|(k, v)| metrics::Label::new(k, v))
                .collect();
            counter!(HTTP_REQUESTS, labels.clone()).increment(1);
            histogram!(HTTP_DURATION, labels).record(h.latency_us as f64 / 1e6);
        }
        None => {
            if f.bytes_sent > 0 {
                counter!(BYTES, "direction" => "sent").increment(f.bytes_sent);
            }
            if f.bytes_received > 0 {
                counter!(BYTES, "direction" => "received").increment(f.bytes_received);
            }
        }
    }
}

/// Counts every flow recorded in the ring it observes ([`crate::flows::FlowRing::observed_by`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct FlowMetrics;

impl FlowObserver for FlowMetrics {
    fn observe(&self, flow: &FlowRecord) {
        record_flow(flow);
    }
}

/// Counts a connection the proxy accepted and keeps it in the open gauge until dropped.
#[derive(Debug)]
pub struct OpenConnection {
    direction: &'static str,
}

impl OpenConnection {
    /// A connection accepted now.
    pub fn start(direction: crate::flows::Direction) -> Self {
        let direction = direction_label(direction);
        counter!(names::CONNECTIONS, "direction" => direction).increment(1);
        gauge!(names::CONNECTIONS_OPEN, "direction" => direction).increment(1.0);
        Self { direction }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        gauge!(names::CONNECTIONS_OPEN, "direction" => self.direction).decrement(1.0);
    }
}

/// One remote cluster of the mesh at a scrape: the channel's status and what the model holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeshSample {
    pub cluster: String,
    pub connected: bool,
    pub ready: bool,
    pub nodes: usize,
    pub endpoints: usize,
    pub identities: usize,
    pub services: usize,
    /// Counters of the channel since it started (a restarted channel starts at 0 again).
    pub failures: u64,
    pub bytes_received: u64,
    pub withdrawals: u64,
    pub last_sync: Option<std::time::SystemTime>,
}

/// Mirrors the mesh's remote clusters into the `strait_clustermesh_remote_*` series on each
/// scrape. A remote no longer configured (disconnected) keeps its series at 0 and its counters
/// where they were: the series says the cluster is gone rather than vanishing.
#[derive(Debug, Default)]
pub struct MeshMetrics {
    /// Counter values last seen per remote (failures, bytes, withdrawals), so counters only
    /// ever grow while the channel's own counts restart with it.
    last: parking_lot::Mutex<std::collections::BTreeMap<String, [u64; 3]>>,
}

impl MeshMetrics {
    /// Records the remotes configured now.
    pub fn record(&self, remotes: &[MeshSample]) {
        use names::*;
        let mut last = self.last.lock();
        let gone: Vec<String> = last
            .keys()
            .filter(|k| !remotes.iter().any(|r| &r.cluster == *k))
            .cloned()
            .collect();
        for c in gone {
            last.remove(&c);
            for g in [
                MESH_READY,
                MESH_CONNECTED,
                MESH_NODES,
                MESH_ENDPOINTS,
                MESH_IDENTITIES,
                MESH_SERVICES,
            ] {
                gauge!(g, "remote_cluster" => c.clone()).set(0.0);
            }
        }
        for r in remotes {
            let l = || [("remote_cluster", r.cluster.clone())];
            let flag = |b: bool| if b { 1.0 } else { 0.0 };
            gauge!(MESH_READY, &l()).set(flag(r.ready));
            gauge!(MESH_CONNECTED, &l()).set(flag(r.connected));
            gauge!(MESH_NODES, &l()).set(r.nodes as f64);
            gauge!(MESH_ENDPOINTS, &l()).set(r.endpoints as f64);
            gauge!(MESH_IDENTITIES, &l()).set(r.identities as f64);
            gauge!(MESH_SERVICES, &l()).set(r.services as f64);
            if let Some(t) = r
                .last_sync
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            {
                gauge!(MESH_LAST_SYNC, &l()).set(t.as_secs_f64());
            }
            let now = [r.failures, r.bytes_received, r.withdrawals];
            let before = last.insert(r.cluster.clone(), now).unwrap_or_default();
            for ((name, n), b) in [MESH_FAILURES, MESH_BYTES, MESH_WITHDRAWALS]
                .into_iter()
                .zip(now)
                .zip(before)
            {
                // A channel restarted from 0 adds what it counted since.
                let add = if n >= b { n - b } else { n };
                counter!(name, &l()).increment(add);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::{Direction, HttpFlow};
    use crate::proxy::conn::ConnRecord;

    fn flow() -> FlowRecord {
        let mut r =
            ConnRecord::start("node-1", "c1", Direction::Egress, FlowPeer::default()).finish();
        r.source.namespace = "demo".into();
        r.source.pod = "frontend-abc".into();
        r.source.workload = Some("frontend".into());
        r.destination.namespace = "demo".into();
        r.destination.pod = "backend-xyz".into();
        r.destination.workload = Some("backend".into());
        r
    }

    #[test]
    fn flows_drops_and_requests_are_counted_with_bounded_labels() {
        let rec = recorder().unwrap();
        let handle = rec.handle();
        metrics::with_local_recorder(&rec, || {
            describe();
            let mut f = flow();
            f.bytes_sent = 10;
            f.bytes_received = 32;
            record_flow(&f);
            let mut d = flow();
            d.verdict = Verdict::Dropped;
            d.drop_reason = Some(crate::flows::DropReason::PolicyDenied);
            d.decided_by = Some(crate::flows::DecidedBy::Kernel);
            record_flow(&d);
            for (status, method) in [(200, "GET"), (403, "GET"), (200, "BREW")] {
                let mut h = flow();
                h.protocol = "HTTP/1.1".into();
                h.http = Some(HttpFlow {
                    method: method.into(),
                    path: "/x".into(),
                    host: None,
                    status: Some(status),
                    latency_us: 1500,
                });
                record_flow(&h);
            }
        });
        let text = handle.render();
        let has = |line: &str| {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        };
        has(r#"strait_flows_total{verdict="FORWARDED",protocol="TCP",direction="egress"} 1"#);
        has(r#"strait_drops_total{reason="POLICY_DENIED",decided_by="kernel"} 1"#);
        has(r#"strait_proxy_bytes_total{direction="sent"} 10"#);
        has(
            r#"strait_http_requests_total{method="GET",status_class="4xx",source_namespace="demo",source_workload="frontend",destination_namespace="demo",destination_workload="backend"} 1"#,
        );
        has(
            r#"strait_http_requests_total{method="OTHER",status_class="2xx",source_namespace="demo",source_workload="frontend",destination_namespace="demo",destination_workload="backend"} 1"#,
        );
        has(
            r#"strait_http_request_duration_seconds_bucket{method="GET",status_class="2xx",source_namespace="demo",source_workload="frontend",destination_namespace="demo",destination_workload="backend",le="0.0025"} 1"#,
        );
        assert!(
            !text.contains("frontend-abc"),
            "pod names are off by default"
        );
        assert!(text.contains("# TYPE strait_http_request_duration_seconds histogram"));
    }
}

#[cfg(test)]
mod mesh_tests {
    use super::*;

    fn has(text: &str, line: &str) {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }

    #[test]
    fn remote_clusters_are_mirrored_and_a_disconnected_one_reads_zero() {
        let rec = recorder().unwrap();
        let handle = rec.handle();
        let m = MeshMetrics::default();
        let c2 = MeshSample {
            cluster: "c2".into(),
            connected: true,
            ready: true,
            nodes: 2,
            endpoints: 3,
            identities: 2,
            services: 1,
            failures: 1,
            bytes_received: 900,
            withdrawals: 0,
            last_sync: Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000)),
        };
        metrics::with_local_recorder(&rec, || {
            describe();
            m.record(std::slice::from_ref(&c2));
            m.record(&[MeshSample {
                bytes_received: 1000,
                ..c2.clone()
            }]);
        });
        let text = handle.render();
        has(
            &text,
            r#"strait_clustermesh_remote_ready{remote_cluster="c2"} 1"#,
        );
        has(
            &text,
            r#"strait_clustermesh_remote_endpoints{remote_cluster="c2"} 3"#,
        );
        has(
            &text,
            r#"strait_clustermesh_remote_received_bytes_total{remote_cluster="c2"} 1000"#,
        );
        has(
            &text,
            r#"strait_clustermesh_remote_sync_failures_total{remote_cluster="c2"} 1"#,
        );
        has(
            &text,
            r#"strait_clustermesh_remote_last_sync_timestamp_seconds{remote_cluster="c2"} 1700000000"#,
        );
        // Disconnected: gauges read 0, counters stay; reconnected with a fresh channel, the
        // counters grow by what the new channel counted.
        metrics::with_local_recorder(&rec, || {
            m.record(&[]);
        });
        let text = handle.render();
        has(
            &text,
            r#"strait_clustermesh_remote_ready{remote_cluster="c2"} 0"#,
        );
        has(
            &text,
            r#"strait_clustermesh_remote_endpoints{remote_cluster="c2"} 0"#,
        );
        has(
            &text,
            r#"strait_clustermesh_remote_received_bytes_total{remote_cluster="c2"} 1000"#,
        );
        metrics::with_local_recorder(&rec, || {
            m.record(&[MeshSample {
                bytes_received: 50,
                withdrawals: 1,
                ..c2.clone()
            }]);
        });
        let text = handle.render();
        has(
            &text,
            r#"strait_clustermesh_remote_received_bytes_total{remote_cluster="c2"} 1050"#,
        );
        has(
            &text,
            r#"strait_clustermesh_remote_withdrawals_total{remote_cluster="c2"} 1"#,
        );
        has(
            &text,
            r#"strait_clustermesh_remote_ready{remote_cluster="c2"} 1"#,
        );
    }
}
