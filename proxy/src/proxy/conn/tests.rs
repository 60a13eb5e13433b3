#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::flows::FlowRing;
use crate::model::*;
use crate::proxy::{OriginalDst, Proxy};

/// Identity of `backend` (node-1, 127.0.0.1: a loopback server stands in for it).
pub(crate) const BACKEND: u32 = 65792;
/// Identity of `frontend` (node-2).
pub(crate) const FRONTEND: u32 = 65793;
/// Identity of `other` (node-2).
pub(crate) const OTHER: u32 = 65794;

/// Ingress to `backend` only from `frontend`.
pub(crate) const ONLY_FRONTEND: &str = "frontend";
/// Ingress to `backend` only from `other`.
pub(crate) const ONLY_OTHER: &str = "other";

struct NoRedirects;
impl OriginalDst for NoRedirects {
    fn take(&self, _: SocketAddrV4) -> Option<SocketAddrV4> {
        None
    }
}

fn endpoint(name: &str, node: &str, ip: Ipv4Addr, identity: u32) -> Endpoint {
    Endpoint {
        namespace: "demo".into(),
        name: name.into(),
        node: node.into(),
        ip,
        labels: [("app".to_string(), name.to_string())].into(),
        identity,
        workload: None,
        ports: vec![],
        ready: true,
        cgroup_id: None,
        host_ifname: None,
    }
}

/// Node-1's tables when `backend` admits ingress only from the pod `allowed` (an app label).
/// Node-1 owns 127.0.0.0/8 so a loopback echo server stands in for `backend`.
pub(crate) fn tables(allowed: &str) -> ProxyTables {
    let policy = crate::policy::parse(
        serde_yaml::from_str(&format!(
            "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: backend, namespace: demo}}
spec:
  endpointSelector: {{matchLabels: {{app: backend}}}}
  ingress: [{{fromEndpoints: [{{matchLabels: {{app: {allowed}}}}}]}}]"
        ))
        .unwrap(),
        "demo",
    )
    .unwrap();
    let state = ClusterState {
        revision: 1,
        cluster: ClusterInfo {
            name: "c1".into(),
            id: 1,
        },
        nodes: vec![
            Node {
                name: "node-1".into(),
                underlay_ip: Ipv4Addr::new(127, 0, 0, 1),
                pod_cidr: "127.0.0.0/8".parse().unwrap(),
                gateway: Ipv4Addr::new(127, 0, 0, 254),
            },
            Node {
                name: "node-2".into(),
                underlay_ip: Ipv4Addr::new(10, 9, 0, 2),
                pod_cidr: "10.0.0.0/24".parse().unwrap(),
                gateway: Ipv4Addr::new(10, 0, 0, 1),
            },
        ],
        namespaces: vec![],
        endpoints: vec![
            endpoint("backend", "node-1", Ipv4Addr::new(127, 0, 0, 1), BACKEND),
            endpoint("frontend", "node-2", Ipv4Addr::new(10, 0, 0, 5), FRONTEND),
            endpoint("other", "node-2", Ipv4Addr::new(10, 0, 0, 6), OTHER),
        ],
        services: vec![],
        policies: vec![policy],
    };
    let compiled = crate::compile::compile_state(state, "node-1").unwrap();
    (*compiled.proxy).clone()
}

/// Node-1's proxy starting with [`tables`]`(allowed)`.
pub(crate) fn proxy(allowed: &str, rejudge: bool) -> Arc<Proxy> {
    Arc::new(
        Proxy::new(
            tables(allowed),
            Arc::new(FlowRing::new(16)),
            Arc::new(NoRedirects),
        )
        .rejudge_on_update(rejudge),
    )
}

/// A guard admitted from `src` to `backend`'s port 8080 under the proxy's current tables.
fn admitted(proxy: &Proxy, src: u32) -> ConnGuard {
    let mut conn = proxy.accept(Direction::Ingress, FlowPeer::default());
    conn.record.source.identity = src;
    let tables = proxy.tables();
    let admission = Admission {
        src_identity: src,
        dst_identity: BACKEND,
        port: 8080,
    };
    proxy.admit(&mut conn, admission, &tables);
    conn
}

async fn is_closed(signal: CloseSignal) -> bool {
    tokio::time::timeout(Duration::from_millis(50), signal.closed())
        .await
        .is_ok()
}

#[tokio::test]
async fn a_revoked_connection_is_closed_and_its_flow_names_the_rule() {
    let proxy = proxy(ONLY_FRONTEND, true);
    let frontend = admitted(&proxy, FRONTEND);
    let other = admitted(&proxy, OTHER);
    assert_eq!(proxy.live_connections(), 2);

    proxy.swap_tables(Arc::new(tables(ONLY_OTHER)));

    assert!(
        is_closed(frontend.close_signal()).await,
        "frontend is denied now"
    );
    assert!(
        !is_closed(other.close_signal()).await,
        "other is allowed now"
    );
    drop(frontend);
    let flows = proxy.flows().recent(None);
    assert_eq!(flows.len(), 1, "one flow for the closed connection");
    let f = &flows[0];
    assert_eq!(f.verdict, Verdict::Dropped);
    assert_eq!(f.drop_reason, Some(DropReason::PolicyDenied));
    assert_eq!(f.decided_by, Some(DecidedBy::Proxy));
    assert!(
        f.policies.iter().any(|p| p.contains("ingress")),
        "{:?}",
        f.policies
    );
    drop(other);
    let flows = proxy.flows().recent(None);
    assert_eq!(flows[1].verdict, Verdict::Forwarded, "{:?}", flows[1]);
    assert_eq!(proxy.live_connections(), 0, "guards deregister");
}

#[tokio::test]
async fn without_rejudging_established_connections_survive_policy_changes() {
    let proxy = proxy(ONLY_FRONTEND, false);
    let frontend = admitted(&proxy, FRONTEND);
    proxy.swap_tables(Arc::new(tables(ONLY_OTHER)));
    assert!(!is_closed(frontend.close_signal()).await);
    // Asked explicitly, the proxy still judges it.
    assert_eq!(proxy.rejudge(&proxy.tables()), 1);
    assert!(is_closed(frontend.close_signal()).await);
}

#[tokio::test]
async fn a_connection_admitted_under_old_tables_is_judged_against_the_new_ones() {
    let proxy = proxy(ONLY_FRONTEND, true);
    let old = proxy.tables();
    proxy.swap_tables(Arc::new(tables(ONLY_OTHER)));
    let mut conn = proxy.accept(Direction::Egress, FlowPeer::default());
    let admission = Admission {
        src_identity: FRONTEND,
        dst_identity: BACKEND,
        port: 8080,
    };
    proxy.admit(&mut conn, admission, &old);
    assert!(is_closed(conn.close_signal()).await);
}

#[test]
fn every_exit_path_records_exactly_one_flow() {
    let proxy = proxy(ONLY_FRONTEND, false);
    // Early return before admission.
    {
        let mut conn = proxy.accept(Direction::Egress, FlowPeer::default());
        conn.dropped(DropReason::NoServiceBackend);
    }
    // Panic unwinding through the connection's task.
    let p = proxy.clone();
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _conn = admitted(&p, FRONTEND);
        panic!("relay bug");
    }));
    assert!(unwound.is_err());
    // An L7 connection records per request, not per connection.
    {
        let mut conn = admitted(&proxy, FRONTEND);
        let template = conn.per_request();
        assert_eq!(template.verdict, Verdict::Forwarded);
    }
    let flows = proxy.flows().recent(None);
    assert_eq!(flows.len(), 2, "{flows:#?}");
    assert_eq!(flows[0].drop_reason, Some(DropReason::NoServiceBackend));
    assert_eq!(flows[1].verdict, Verdict::Error);
    assert_eq!(proxy.live_connections(), 0);
}

#[tokio::test]
async fn a_cancelled_connection_task_still_records_its_flow() {
    let proxy = proxy(ONLY_FRONTEND, false);
    let p = proxy.clone();
    let (started, running) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let _conn = admitted(&p, FRONTEND);
        let _ = started.send(());
        std::future::pending::<()>().await;
    });
    running.await.unwrap();
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(proxy.flows().recent(None).len(), 1);
    assert_eq!(proxy.live_connections(), 0);
}
