//! Traces across two clusters built in memory: a policy of c2 allowing only c1's frontends, the
//! default local cluster of selectors without a cluster label, the `cluster` entity, clusters not
//! connected.
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;

use super::*;
use crate::lab::manifest::{self, Object};
use crate::model::*;

const C2_BACKEND_IP: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 6);

/// c2's backends admit only c1's frontends.
const C2_ONLY_C1_FRONTENDS: &str = "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: only-c1-frontends, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend, io.cilium.k8s.policy.cluster: c1}}]
";

/// c1's frontends may reach backends, naming no cluster.
const C1_FRONTEND_EGRESS: &str = "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: frontend-out, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
  - toEndpoints: [{matchLabels: {app: backend}}]
";

fn policies(yaml: &str) -> Vec<Policy> {
    manifest::parse("test.yaml", yaml)
        .unwrap()
        .into_iter()
        .filter_map(|(_, o)| match o {
            Object::Policy { policy, .. } => Some(*policy),
            _ => None,
        })
        .collect()
}

fn cluster(name: &str, id: u8, policy_yaml: Option<&str>, synced: &[&str]) -> LabCluster {
    let n = id;
    let endpoint = |pod: &str, app: &str, host: u8, local: u32| Endpoint {
        namespace: "shop".into(),
        name: pod.into(),
        node: "node-1".into(),
        ip: Ipv4Addr::new(10, n, 0, host),
        labels: [("app".to_string(), app.to_string())].into(),
        identity: (u32::from(id) << 16) | local,
        workload: Some(app.into()),
        ports: vec![],
        ready: true,
        cgroup_id: None,
        host_ifname: None,
    };
    LabCluster {
        state: ClusterState {
            revision: 1,
            cluster: ClusterInfo {
                name: name.into(),
                id,
            },
            nodes: vec![Node {
                name: "node-1".into(),
                underlay_ip: Ipv4Addr::new(192, 168, 0, 10 + n),
                pod_cidr: format!("10.{n}.0.0/24").parse().unwrap(),
                gateway: Ipv4Addr::new(10, n, 0, 1),
            }],
            namespaces: vec![Namespace {
                name: "shop".into(),
                labels: [(
                    "kubernetes.io/metadata.name".to_string(),
                    "shop".to_string(),
                )]
                .into(),
            }],
            endpoints: vec![
                endpoint("frontend-1", "frontend", 5, 0x100),
                endpoint("backend-1", "backend", 6, 0x101),
            ],
            services: vec![],
            policies: policy_yaml.map(policies).unwrap_or_default(),
        },
        synced: synced.iter().map(|s| s.to_string()).collect(),
    }
}

fn mesh(connected: bool) -> Vec<LabCluster> {
    let (a, b): (&[&str], &[&str]) = match connected {
        true => (&["c2"], &["c1"]),
        false => (&[], &[]),
    };
    vec![
        cluster("c1", 1, None, a),
        cluster("c2", 2, Some(C2_ONLY_C1_FRONTENDS), b),
    ]
}

fn query<'a>(src: &'a str, dst: &'a str, extra: &'a [Policy]) -> Query<'a> {
    Query {
        src,
        dst,
        proto: strait_ebpf::abi::IPPROTO_TCP,
        dport: 8080,
        extra,
        default_local_cluster: true,
    }
}

#[test]
fn ingress_is_judged_by_the_destination_cluster_with_the_source_cluster_named() {
    let clusters = mesh(true);
    let t = trace(
        &clusters,
        &query("c1/shop/frontend-1", "c2/shop/backend-1", &[]),
    )
    .unwrap();
    assert_eq!(
        (t.src.name.as_str(), t.src.identity, t.src.cluster.as_str()),
        ("c1/shop/frontend-1", 0x1_0100, "c1")
    );
    assert_eq!(
        (t.dst.name.as_str(), t.dst.identity, t.dst.cluster.as_str()),
        ("c2/shop/backend-1", 0x2_0101, "c2")
    );
    assert_eq!((t.egress_by.as_str(), t.ingress_by.as_str()), ("c1", "c2"));
    assert_eq!(t.verdict.egress, DirOutcome::NotEnforced);
    assert!(t.verdict.allowed(), "{:?}", t.verdict);
    assert!(
        outcome_text(&t.verdict.ingress)
            .starts_with("ALLOWED by CiliumNetworkPolicy shop/only-c1-frontends: spec.ingress[0]"),
        "{:?}",
        t.verdict.ingress
    );

    // The same labels in c2 are another cluster's frontend: default deny.
    let t = trace(
        &clusters,
        &query("c2/shop/frontend-1", "c2/shop/backend-1", &[]),
    )
    .unwrap();
    assert_eq!((t.egress_by.as_str(), t.ingress_by.as_str()), ("c2", "c2"));
    assert!(
        matches!(&t.verdict.ingress, DirOutcome::DefaultDenied { selected_by }
            if selected_by == &["CiliumNetworkPolicy shop/only-c1-frontends".to_string()]),
        "{:?}",
        t.verdict.ingress
    );
}

#[test]
fn destinations_by_address_and_deployment_resolve_in_their_cluster() {
    let clusters = mesh(true);
    let t = trace(
        &clusters,
        &query("c1/shop/deploy/frontend", &C2_BACKEND_IP.to_string(), &[]),
    )
    .unwrap();
    assert_eq!(t.src.name, "c1/shop/frontend-1");
    assert_eq!(
        (t.dst.name.as_str(), t.dst.identity, t.ingress_by.as_str()),
        ("c2/shop/backend-1 (10.2.0.6)", 0x2_0101, "c2")
    );
    assert!(t.verdict.allowed());
    // c2's node, as c1's agents see it once connected.
    let t = trace(&clusters, &query("c1/shop/frontend-1", "192.168.0.12", &[])).unwrap();
    assert_eq!(t.dst.identity, reserved::REMOTE_NODE);
}

#[test]
fn selectors_without_a_cluster_label_select_the_local_cluster_unless_switched_off() {
    let clusters = mesh(true);
    let extra = policies(C1_FRONTEND_EGRESS);
    let mut q = query("c1/shop/frontend-1", "c2/shop/backend-1", &extra);
    let t = trace(&clusters, &q).unwrap();
    assert!(
        matches!(t.verdict.egress, DirOutcome::DefaultDenied { .. }),
        "{:?}",
        t.verdict.egress
    );
    assert!(!t.verdict.allowed());
    // The local backend is selected.
    let local = trace(
        &clusters,
        &query("c1/shop/frontend-1", "c1/shop/backend-1", &extra),
    )
    .unwrap();
    assert!(local.verdict.allowed(), "{:?}", local.verdict);
    // Cilium's old behaviour: every cluster's backends.
    q.default_local_cluster = false;
    let t = trace(&clusters, &q).unwrap();
    assert!(t.verdict.allowed(), "{:?}", t.verdict);
}

#[test]
fn clusters_not_connected_are_refused_by_name() {
    let clusters = mesh(false);
    for dst in ["c2/shop/backend-1", "10.2.0.6"] {
        let e = trace(&clusters, &query("c1/shop/frontend-1", dst, &[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("clusters c1 and c2 are not connected")
                && e.contains("strait clustermesh connect --cluster c1 --destination-cluster c2"),
            "{e}"
        );
    }
    // Half a connect (c1 syncs c2, c2 not yet c1) is not connected either.
    let mut half = mesh(false);
    half[0].synced.insert("c2".into());
    assert!(
        trace(
            &half,
            &query("c1/shop/frontend-1", "c2/shop/backend-1", &[])
        )
        .is_err()
    );
    // Within one cluster nothing changes.
    let t = trace(
        &clusters,
        &query("c2/shop/frontend-1", "c2/shop/backend-1", &[]),
    )
    .unwrap();
    assert!(!t.verdict.allowed());
    let e = trace(&clusters, &query("c3/shop/x", "c2/shop/backend-1", &[]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no cluster \"c3\" in the lab"), "{e}");
}

#[test]
fn the_cluster_entity_is_the_judging_cluster() {
    let mut clusters = mesh(true);
    clusters[1].state.policies = policies(
        "
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-cluster, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEntities: [cluster]
",
    );
    let own = trace(
        &clusters,
        &query("c2/shop/frontend-1", "c2/shop/backend-1", &[]),
    )
    .unwrap();
    assert!(own.verdict.allowed(), "{:?}", own.verdict);
    let other = trace(
        &clusters,
        &query("c1/shop/frontend-1", "c2/shop/backend-1", &[]),
    )
    .unwrap();
    assert!(
        matches!(other.verdict.ingress, DirOutcome::DefaultDenied { .. }),
        "{:?}",
        other.verdict.ingress
    );
}
