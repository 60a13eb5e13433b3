//! The service map: which workloads talk to which, and how it went, from a set of flows.
//!
//! A node is a workload: the pod's owning Deployment, else the pod itself; every address that is
//! not a lab pod is the one node [`WORLD`]. An edge counts the flows from one node to another by
//! verdict. A connection between pods is recorded twice (`EGRESS` on the source node, `INGRESS`
//! on the destination's: through the tunnel, or by the kernel fast path); the map counts it once, from the source node's record, unless
//! the receiving node is the one that dropped it.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::flows::{DecidedBy, Direction, DropReason, FlowPeer, FlowRecord, Verdict};

/// Node id and name of every address outside the lab's pods.
pub const WORLD: &str = "world";

/// One workload on the map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MapNode {
    /// `CLUSTER/NAMESPACE/WORKLOAD`, or `world`.
    pub id: String,
    /// Cluster of the workload; empty for `world`.
    pub cluster: String,
    /// Namespace of the workload; empty for `world`.
    pub namespace: String,
    /// The workload (Deployment) name, else the pod name; `world` outside the pods.
    pub name: String,
    /// The workload's pods seen in the flows.
    pub pods: BTreeSet<String>,
}

/// Flows from one node to another, counted by verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MapEdge {
    /// Id of the source node.
    pub from: String,
    /// Id of the destination node.
    pub to: String,
    /// Flows with verdict `FORWARDED`.
    pub forwarded: u64,
    /// Flows with verdict `DROPPED`.
    pub dropped: u64,
    /// Flows with verdict `ERROR`.
    pub error: u64,
    /// Flows with verdict `AUDIT`.
    pub audit: u64,
    /// Protocols seen (`TCP`, `UDP`, `HTTP/1.1`, …).
    pub protocols: BTreeSet<String>,
    /// Destination ports seen.
    pub ports: BTreeSet<u16>,
    /// Drop reasons seen.
    pub drop_reasons: BTreeSet<DropReason>,
}

/// Workloads and the edges between them; nodes sorted by cluster, namespace and name (`world`
/// last), edges by source and destination.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServiceMap {
    /// Every workload that appears in a counted flow.
    pub nodes: Vec<MapNode>,
    /// One edge per (source, destination) pair seen.
    pub edges: Vec<MapEdge>,
}

// === impl ServiceMap ===

impl ServiceMap {
    /// Aggregates `flows` (in any order) into a map.
    pub fn from_flows<'a>(flows: impl IntoIterator<Item = &'a FlowRecord>) -> Self {
        let mut nodes: BTreeMap<String, MapNode> = BTreeMap::new();
        let mut edges: BTreeMap<(String, String), MapEdge> = BTreeMap::new();
        for f in flows.into_iter().filter(|f| counts_in_map(f)) {
            let from = add_node(&mut nodes, &f.source, &f.cluster);
            let to = add_node(&mut nodes, &f.destination, &f.cluster);
            let e = edges
                .entry((from.clone(), to.clone()))
                .or_insert_with(|| MapEdge {
                    from,
                    to,
                    ..MapEdge::default()
                });
            match f.verdict {
                Verdict::Forwarded => e.forwarded += 1,
                Verdict::Dropped => e.dropped += 1,
                Verdict::Error => e.error += 1,
                Verdict::Audit => e.audit += 1,
            }
            e.protocols.insert(f.protocol.clone());
            e.ports.insert(f.destination.port);
            if let Some(r) = f.drop_reason {
                e.drop_reasons.insert(r);
            }
        }
        let mut nodes: Vec<MapNode> = nodes.into_values().collect();
        nodes.sort_by(|a, b| {
            (a.id == WORLD, &a.cluster, &a.namespace, &a.name).cmp(&(
                b.id == WORLD,
                &b.cluster,
                &b.namespace,
                &b.name,
            ))
        });
        ServiceMap {
            nodes,
            edges: edges.into_values().collect(),
        }
    }
}

/// Whether `f` counts on the map: the receiving node's record of a connection from a pod (through
/// the tunnel, or pod to pod on the kernel fast path) repeats the source node's, unless the
/// receiving node dropped it.
pub fn counts_in_map(f: &FlowRecord) -> bool {
    let repeats_source = f.tunnel_peer.is_some()
        || (f.decided_by == Some(DecidedBy::Kernel) && !f.source.pod.is_empty());
    !(f.direction == Direction::Ingress && repeats_source && f.verdict != Verdict::Dropped)
}

/// The node id of `peer`, as recorded by a node of cluster `recorded_in`.
pub fn node_id(peer: &FlowPeer, recorded_in: &str) -> String {
    match workload(peer, recorded_in) {
        Some((cluster, namespace, name)) => format!("{cluster}/{namespace}/{name}"),
        None => WORLD.to_string(),
    }
}

/// Cluster, namespace and workload name of a pod peer; `None` outside the pods.
fn workload<'a>(peer: &'a FlowPeer, recorded_in: &'a str) -> Option<(&'a str, &'a str, &'a str)> {
    if peer.pod.is_empty() {
        return None;
    }
    let cluster = if peer.cluster.is_empty() {
        recorded_in
    } else {
        &peer.cluster
    };
    let name = peer
        .workload
        .as_deref()
        .filter(|w| !w.is_empty())
        .unwrap_or(&peer.pod);
    Some((cluster, &peer.namespace, name))
}

/// Adds (or updates) the node of `peer` and returns its id.
fn add_node(nodes: &mut BTreeMap<String, MapNode>, peer: &FlowPeer, recorded_in: &str) -> String {
    let id = node_id(peer, recorded_in);
    let node = nodes.entry(id.clone()).or_insert_with(|| {
        let (cluster, namespace, name) = workload(peer, recorded_in).unwrap_or(("", "", WORLD));
        MapNode {
            id: id.clone(),
            cluster: cluster.into(),
            namespace: namespace.into(),
            name: name.into(),
            pods: BTreeSet::new(),
        }
    });
    if !peer.pod.is_empty() {
        node.pods.insert(peer.pod.clone());
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::test_flow;

    fn pod(cluster: &str, ns: &str, pod: &str, workload: Option<&str>, port: u16) -> FlowPeer {
        FlowPeer {
            ip: Some([198, 18, 16, 10].into()),
            port,
            cluster: cluster.into(),
            namespace: ns.into(),
            pod: pod.into(),
            workload: workload.map(Into::into),
            ..FlowPeer::default()
        }
    }

    fn flow(src: FlowPeer, dst: FlowPeer, verdict: Verdict) -> FlowRecord {
        let mut f = test_flow(1, src.port);
        f.source = src;
        f.destination = dst;
        f.verdict = verdict;
        if verdict == Verdict::Dropped {
            f.drop_reason = Some(DropReason::PolicyDenied);
        }
        f
    }

    /// Fixed flows: deployments, a bare pod, a tunnelled connection seen from both ends, another
    /// cluster and the world.
    fn flows() -> Vec<FlowRecord> {
        let fe = |name: &str| pod("c1", "demo", name, Some("frontend"), 40000);
        let be = |name: &str| pod("c1", "demo", name, Some("backend"), 8080);
        let intruder = pod("c1", "demo", "intruder", None, 40001);
        let mut flows = vec![
            flow(fe("frontend-a"), be("backend-x"), Verdict::Forwarded),
            flow(fe("frontend-b"), be("backend-y"), Verdict::Forwarded),
            flow(fe("frontend-a"), be("backend-y"), Verdict::Forwarded),
            flow(intruder.clone(), be("backend-x"), Verdict::Dropped),
            flow(intruder.clone(), be("backend-y"), Verdict::Dropped),
        ];
        // The node the tunnel reached records the first connection again: not counted twice.
        let mut ingress = flows[0].clone();
        ingress.direction = Direction::Ingress;
        ingress.node = "node-2".into();
        ingress.tunnel_peer = Some("198.18.0.2".into());
        flows.push(ingress);
        // Dropped by the receiving node: that record is the one that tells.
        let mut refused = flow(intruder, be("backend-x"), Verdict::Dropped);
        refused.direction = Direction::Ingress;
        refused.tunnel_peer = Some("198.18.0.2".into());
        flows.push(refused);
        // The frontend calls out of the lab; an HTTP request whose answer never came.
        let outside = FlowPeer {
            ip: Some([203, 0, 113, 9].into()),
            port: 443,
            ..FlowPeer::default()
        };
        flows.push(flow(fe("frontend-b"), outside, Verdict::Error));
        // A client in c2 (recorded by a c2 node, peer cluster left empty) reaches the c1 backend.
        let mut remote = flow(
            pod("", "demo", "client-0", None, 40002),
            be("backend-x"),
            Verdict::Forwarded,
        );
        remote.cluster = "c2".into();
        remote.protocol = "HTTP/1.1".into();
        flows.push(remote);
        flows
    }

    fn edge(map: &ServiceMap, from: &str, to: &str) -> MapEdge {
        map.edges
            .iter()
            .find(|e| e.from == from && e.to == to)
            .unwrap_or_else(|| panic!("no edge {from} -> {to} in {map:#?}"))
            .clone()
    }

    #[test]
    fn aggregates_workloads_and_counts_each_connection_once() {
        let flows = flows();
        let map = ServiceMap::from_flows(&flows);

        let ids: Vec<&str> = map.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "c1/demo/backend",
                "c1/demo/frontend",
                "c1/demo/intruder",
                "c2/demo/client-0",
                "world"
            ]
        );
        let fe = &map.nodes[1];
        assert_eq!(
            (fe.cluster.as_str(), fe.namespace.as_str(), fe.name.as_str()),
            ("c1", "demo", "frontend")
        );
        assert_eq!(
            fe.pods.iter().map(String::as_str).collect::<Vec<_>>(),
            ["frontend-a", "frontend-b"]
        );
        let world = &map.nodes[4];
        assert_eq!(
            (
                world.cluster.as_str(),
                world.name.as_str(),
                world.pods.len()
            ),
            ("", "world", 0)
        );

        assert_eq!(map.edges.len(), 4, "{map:#?}");
        let allowed = edge(&map, "c1/demo/frontend", "c1/demo/backend");
        assert_eq!((allowed.forwarded, allowed.dropped), (3, 0));
        assert_eq!(allowed.ports.iter().copied().collect::<Vec<_>>(), [8080]);
        let denied = edge(&map, "c1/demo/intruder", "c1/demo/backend");
        assert_eq!((denied.forwarded, denied.dropped, denied.error), (0, 3, 0));
        assert_eq!(
            denied.drop_reasons.iter().collect::<Vec<_>>(),
            [&DropReason::PolicyDenied]
        );
        let out = edge(&map, "c1/demo/frontend", "world");
        assert_eq!((out.forwarded, out.error), (0, 1));
        let remote = edge(&map, "c2/demo/client-0", "c1/demo/backend");
        assert_eq!(remote.forwarded, 1);
        assert_eq!(remote.protocols.iter().collect::<Vec<_>>(), ["HTTP/1.1"]);
    }

    #[test]
    fn serializes_what_the_page_reads() {
        let flows = flows();
        let map = ServiceMap::from_flows(flows.iter().take(1));
        let v = serde_json::to_value(&map).expect("encodes");
        assert_eq!(v["edges"][0]["from"], "c1/demo/frontend");
        assert_eq!(v["edges"][0]["to"], "c1/demo/backend");
        assert_eq!(v["edges"][0]["forwarded"], 1);
        assert_eq!(v["edges"][0]["dropped"], 0);
        assert_eq!(v["nodes"][0]["id"], "c1/demo/backend");
        assert_eq!(v["nodes"][0]["pods"][0], "backend-x");
    }

    #[test]
    fn empty_flows_give_an_empty_map() {
        assert_eq!(ServiceMap::from_flows([]), ServiceMap::default());
    }
}
