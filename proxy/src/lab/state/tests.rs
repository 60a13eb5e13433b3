//! Plans and the state document, on the demo manifest and small objects.

use super::*;
use crate::lab::manifest::parse;
use crate::lab::topology::DEFAULT_TOPOLOGY;

fn c1() -> ClusterSpec {
    Topology::parse("d", DEFAULT_TOPOLOGY).unwrap().clusters[0].clone()
}

const DEMO: &str = include_str!("../../../../deploy/lab/demo.yaml");

#[test]
fn demo_spreads_replicas_and_allocates_addresses() {
    let spec = c1();
    let objs = parse("demo.yaml", DEMO).unwrap();
    let p = plan(&spec, &ClusterResources::new(), &objs, false).unwrap();
    assert_eq!(p.create.len(), 4);
    assert!(p.delete.is_empty());
    for app in ["backend", "frontend"] {
        let nodes: BTreeSet<_> = p
            .create
            .iter()
            .filter(|x| x.name.starts_with(app))
            .map(|x| x.node.clone())
            .collect();
        assert_eq!(nodes.len(), 2, "{app} replicas spread over both nodes");
    }
    let ips: BTreeSet<_> = p.create.iter().map(|x| x.ip).collect();
    assert_eq!(ips.len(), 4);
    for x in &p.create {
        let n = spec.nodes.iter().find(|n| n.name == x.node).unwrap();
        assert!(n.pod_cidr.contains(&x.ip) && x.ip != n.gateway);
    }
    let svc = &p.resources.services["demo/backend"];
    assert!(spec.service_cidr.contains(&svc.cluster_ip));
}

#[test]
fn reapply_is_a_no_op_and_template_change_replaces_pods() {
    let spec = c1();
    let objs = parse("demo.yaml", DEMO).unwrap();
    let first = plan(&spec, &ClusterResources::new(), &objs, false).unwrap();
    let again = plan(&spec, &first.resources, &objs, false).unwrap();
    assert!(again.create.is_empty() && again.delete.is_empty());
    assert_eq!(
        again.resources.services["demo/backend"].cluster_ip,
        first.resources.services["demo/backend"].cluster_ip
    );
    let changed = DEMO.replacen("replicas: 2", "replicas: 3", 1);
    let objs = parse("demo.yaml", &changed).unwrap();
    let scaled = plan(&spec, &again.resources, &objs, false).unwrap();
    assert_eq!(scaled.create.len(), 1);
    assert!(scaled.delete.is_empty());
    let relabeled = DEMO.replace("containerPort: 8080", "containerPort: 8081");
    let objs = parse("demo.yaml", &relabeled).unwrap();
    let rolled = plan(&spec, &again.resources, &objs, false).unwrap();
    assert_eq!(rolled.delete.len(), 2);
    assert_eq!(rolled.create.len(), 2);
}

#[test]
fn delete_removes_pods_and_services() {
    let spec = c1();
    let objs = parse("demo.yaml", DEMO).unwrap();
    let first = plan(&spec, &ClusterResources::new(), &objs, false).unwrap();
    let gone = plan(&spec, &first.resources, &objs, true).unwrap();
    assert_eq!(gone.delete.len(), 4);
    assert!(gone.resources.services.is_empty());
    assert!(!gone.resources.namespaces.contains_key("demo"));
}

#[test]
fn missing_namespace_and_unknown_node_are_errors() {
    let spec = c1();
    let y = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: nope}\nspec: {containers: [{name: c}]}\n";
    let e = plan(
        &spec,
        &ClusterResources::new(),
        &parse("p.yaml", y).unwrap(),
        false,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "p.yaml: document 1 (Pod nope/p): namespace \"nope\" not found"
    );
    let y = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {nodeName: node-9, containers: [{name: c}]}\n";
    let e = plan(
        &spec,
        &ClusterResources::new(),
        &parse("p.yaml", y).unwrap(),
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("spec.nodeName: node \"node-9\" does not exist"),
        "{e}"
    );
}

#[test]
fn pinned_pods_land_on_their_node_and_cluster_state_has_identities() {
    let spec = c1();
    let y = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, labels: {app: x}}\nspec: {nodeName: node-2, containers: [{name: c}]}\n";
    let mut p = plan(
        &spec,
        &ClusterResources::new(),
        &parse("p.yaml", y).unwrap(),
        false,
    )
    .unwrap();
    assert_eq!(p.create[0].node, "node-2");
    let doc = cluster_document(&spec, &mut p.resources, |_| PodRuntime {
        ready: true,
        ..PodRuntime::default()
    })
    .unwrap();
    let st = ClusterState::try_from(doc).unwrap();
    assert_eq!(st.endpoints.len(), 1);
    assert_eq!(crate::identity::cluster_of(st.endpoints[0].identity), 1);
    assert_eq!(st.nodes.len(), 2);
}

#[test]
fn document_carries_objects_as_applied_and_converts_as_before() {
    let spec = c1();
    let cnp = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: be}\nspec:\n  endpointSelector: {matchLabels: {app: backend}}\n  ingress: [{fromEndpoints: [{matchLabels: {app: frontend}}]}]\n";
    let mut objs = parse("demo.yaml", DEMO).unwrap();
    objs.extend(
        parse(
            "cnp.yaml",
            &cnp.replace("name: be", "name: be, namespace: demo"),
        )
        .unwrap(),
    );
    let mut p = plan(&spec, &ClusterResources::new(), &objs, false).unwrap();
    let doc = cluster_document(&spec, &mut p.resources, |r| PodRuntime {
        ready: r.name.starts_with("backend"),
        cgroup_id: Some(7),
        host_ifname: Some("lxc1".into()),
    })
    .unwrap();
    let text = serde_json::to_string(&doc).unwrap();
    let back: LabClusterState = serde_json::from_str(&text).unwrap();
    assert_eq!(back, doc, "the file round-trips");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["apiVersion"], "strait.io/v1alpha1");
    assert_eq!(v["kind"], "LabClusterState");
    let pod = v["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "Pod")
        .unwrap();
    let owner = &pod["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "ReplicaSet");
    assert!(
        pod["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with(owner["name"].as_str().unwrap())
    );
    let policy = v["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "CiliumNetworkPolicy")
        .unwrap();
    assert_eq!(
        policy["spec"]["ingress"][0]["fromEndpoints"][0]["matchLabels"]["app"],
        "frontend"
    );
    assert_eq!(policy["metadata"]["namespace"], "demo");

    let st = ClusterState::try_from(doc).unwrap();
    assert_eq!(st.endpoints.len(), 4);
    for ep in &st.endpoints {
        let rec = &p.resources.pods[&format!("{}/{}", ep.namespace, ep.name)];
        assert_eq!((ep.ip, &ep.node), (rec.ip, &rec.node));
        let app = &ep.labels["app"];
        assert_eq!(ep.workload.as_deref(), Some(app.as_str()));
        assert_eq!(ep.ready, app == "backend");
        assert_eq!(
            (ep.cgroup_id, ep.host_ifname.as_deref()),
            (Some(7), Some("lxc1"))
        );
        assert_eq!(ep.ports, rec.ports());
    }
    let backends: BTreeSet<u32> = st
        .endpoints
        .iter()
        .filter(|e| e.labels["app"] == "backend")
        .map(|e| e.identity)
        .collect();
    assert_eq!(backends.len(), 1, "replicas share an identity");
    assert_eq!(
        st.services,
        p.resources.services.values().cloned().collect::<Vec<_>>()
    );
    assert_eq!(st.policies.len(), 1);
    assert_eq!(st.policies[0].key(), "demo/be");
    let names: Vec<&str> = st.namespaces.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["default", "demo", "kube-system"]);
    // Identities stay what the allocator handed out: a second document agrees.
    let again = ClusterState::try_from(
        cluster_document(&spec, &mut p.resources, |_| PodRuntime::default()).unwrap(),
    )
    .unwrap();
    let ids = |s: &ClusterState| s.endpoints.iter().map(|e| e.identity).collect::<Vec<_>>();
    assert_eq!(ids(&again), ids(&st));
    // Deleting the namespace takes its policies with it.
    let demo_ns = parse("demo.yaml", DEMO).unwrap();
    let gone = plan(&spec, &p.resources, &demo_ns[..1], true).unwrap();
    assert!(gone.resources.policies.is_empty());
}

#[test]
fn a_state_the_agents_would_refuse_is_refused_by_plan() {
    let spec = c1();
    let mut r = ClusterResources::new();
    r.policies.insert(
        "CiliumNetworkPolicy/default/x".into(),
        serde_json::json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "x", "namespace": "default"}, "spec": {"bogus": 1}}),
    );
    let e = plan(&spec, &r, &[], false).unwrap_err();
    let msg = crate::errors::chain(&e);
    assert!(msg.starts_with("cluster c1: the resulting cluster state is not valid: objects[2]: CiliumNetworkPolicy default/x: "), "{msg}");
}
