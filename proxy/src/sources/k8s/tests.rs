//! Conversion of objects as `kubectl get -o yaml` returns them (status, managedFields,
//! ownerReferences included): the recorded API responses the Kubernetes source is tested against.

use super::*;
use crate::model::TargetPort;
use crate::policy::PolicyKind;

fn yaml(text: &str) -> serde_json::Value {
    serde_yaml::from_str(text).expect("test object is YAML")
}

const NAMESPACE: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  creationTimestamp: "2025-05-02T09:14:07Z"
  labels:
    kubernetes.io/metadata.name: demo
    team: payments
  managedFields:
  - apiVersion: v1
    fieldsType: FieldsV1
    fieldsV1:
      f:metadata:
        f:labels:
          .: {}
          f:kubernetes.io/metadata.name: {}
    manager: kubectl-create
    operation: Update
    time: "2025-05-02T09:14:07Z"
  name: demo
  resourceVersion: "1203"
  uid: 0b8f3c55-7a8e-4a2b-9a55-2f1c2f3e6d11
spec:
  finalizers:
  - kubernetes
status:
  phase: Active
"#;

const DEPLOYMENT_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  creationTimestamp: "2025-05-02T09:15:21Z"
  generateName: backend-6d4cf56db6-
  labels:
    app: backend
    pod-template-hash: 6d4cf56db6
  managedFields:
  - apiVersion: v1
    fieldsType: FieldsV1
    fieldsV1:
      f:status:
        f:podIP: {}
    manager: kubelet
    operation: Update
    subresource: status
    time: "2025-05-02T09:15:24Z"
  name: backend-6d4cf56db6-x7kqp
  namespace: demo
  ownerReferences:
  - apiVersion: apps/v1
    blockOwnerDeletion: true
    controller: true
    kind: ReplicaSet
    name: backend-6d4cf56db6
    uid: 3f0d5c9e-2b7a-4d7e-8c1f-5b6a9e0d4c21
  resourceVersion: "1388"
  uid: 9a1e0f7c-4b2d-4f3a-8e6b-1c2d3e4f5a6b
spec:
  containers:
  - image: ghcr.io/example/echo:1.4
    imagePullPolicy: IfNotPresent
    name: echo
    ports:
    - containerPort: 8080
      name: http
      protocol: TCP
    - containerPort: 5353
      name: dns
      protocol: UDP
    resources: {}
    terminationMessagePath: /dev/termination-log
    terminationMessagePolicy: File
  dnsPolicy: ClusterFirst
  enableServiceLinks: true
  nodeName: node-2
  preemptionPolicy: PreemptLowerPriority
  priority: 0
  restartPolicy: Always
  schedulerName: default-scheduler
  securityContext: {}
  serviceAccountName: default
  terminationGracePeriodSeconds: 30
status:
  conditions:
  - lastProbeTime: null
    lastTransitionTime: "2025-05-02T09:15:24Z"
    status: "True"
    type: PodReadyToStartContainers
  - lastProbeTime: null
    lastTransitionTime: "2025-05-02T09:15:21Z"
    status: "True"
    type: Initialized
  - lastProbeTime: null
    lastTransitionTime: "2025-05-02T09:15:24Z"
    status: "True"
    type: Ready
  - lastProbeTime: null
    lastTransitionTime: "2025-05-02T09:15:24Z"
    status: "True"
    type: ContainersReady
  - lastProbeTime: null
    lastTransitionTime: "2025-05-02T09:15:21Z"
    status: "True"
    type: PodScheduled
  containerStatuses:
  - containerID: containerd://4c1b2a
    image: ghcr.io/example/echo:1.4
    imageID: ghcr.io/example/echo@sha256:1f2e
    lastState: {}
    name: echo
    ready: true
    restartCount: 0
    started: true
    state:
      running:
        startedAt: "2025-05-02T09:15:23Z"
  hostIP: 198.18.0.11
  hostIPs:
  - ip: 198.18.0.11
  phase: Running
  podIP: 10.1.1.7
  podIPs:
  - ip: 10.1.1.7
  qosClass: BestEffort
  startTime: "2025-05-02T09:15:21Z"
"#;

const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata:
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: |
      {"apiVersion":"v1","kind":"Service","metadata":{"annotations":{},"name":"backend","namespace":"demo"},"spec":{"ports":[{"name":"http","port":80,"targetPort":"http"}],"selector":{"app":"backend"}}}
  creationTimestamp: "2025-05-02T09:15:21Z"
  name: backend
  namespace: demo
  resourceVersion: "1371"
  uid: 5e2c1d0b-8f7a-4c3e-9b2a-7d6e5f4c3b2a
spec:
  clusterIP: 10.96.0.17
  clusterIPs:
  - 10.96.0.17
  internalTrafficPolicy: Cluster
  ipFamilies:
  - IPv4
  ipFamilyPolicy: SingleStack
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: http
  - name: metrics
    port: 9090
    protocol: TCP
    targetPort: 9091
  selector:
    app: backend
  sessionAffinity: None
  type: ClusterIP
status:
  loadBalancer: {}
"#;

const NETWORK_POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  creationTimestamp: "2025-05-02T09:20:02Z"
  generation: 1
  name: backend-ingress
  namespace: demo
  resourceVersion: "1544"
  uid: 7c6b5a49-3827-4161-9504-f3e2d1c0b9a8
spec:
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: frontend
    ports:
    - port: 8080
      protocol: TCP
  podSelector:
    matchLabels:
      app: backend
  policyTypes:
  - Ingress
"#;

const CNP: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  creationTimestamp: "2025-05-02T09:21:40Z"
  generation: 1
  name: allow-frontend-get
  namespace: demo
  resourceVersion: "1602"
  uid: 1d2c3b4a-5968-4776-8594-a3b2c1d0e9f8
spec:
  endpointSelector:
    matchLabels:
      app: backend
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: frontend
    toPorts:
    - ports:
      - port: "8080"
        protocol: TCP
      rules:
        http:
        - method: GET
          path: /api/.*
status:
  conditions:
  - lastTransitionTime: "2025-05-02T09:21:41Z"
    message: Policy validation succeeded
    status: "True"
    type: Valid
"#;

const CCNP: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata:
  creationTimestamp: "2025-05-02T09:22:10Z"
  generation: 1
  name: deny-to-kube-system
  resourceVersion: "1650"
  uid: 2e3d4c5b-6a79-4887-96a5-b4c3d2e1f0a9
spec:
  endpointSelector: {}
  egressDeny:
  - toEndpoints:
    - matchLabels:
        k8s:io.kubernetes.pod.namespace: kube-system
"#;

#[test]
fn namespace_keeps_labels_and_names_itself() {
    let Resource::Namespace(ns) = decode(yaml(NAMESPACE)).unwrap() else {
        panic!("not a namespace")
    };
    assert_eq!(ns.name, "demo");
    assert_eq!(ns.labels["team"], "payments");
    assert_eq!(ns.labels[NAMESPACE_NAME_LABEL], "demo");
    // Kubernetes always sets the name label; a recorded object without it still gets it.
    let mut v = yaml(NAMESPACE);
    v["metadata"]["labels"] = serde_json::json!({});
    let Resource::Namespace(ns) = decode(v).unwrap() else {
        panic!()
    };
    assert_eq!(ns.labels[NAMESPACE_NAME_LABEL], "demo");
}

#[test]
fn deployment_pod_becomes_a_ready_endpoint_of_its_deployment() {
    let Resource::Pod(p) = decode(yaml(DEPLOYMENT_POD)).unwrap() else {
        panic!("not a pod")
    };
    assert_eq!(p.key(), "demo/backend-6d4cf56db6-x7kqp");
    assert_eq!(p.node, "node-2");
    assert_eq!(p.ip, std::net::Ipv4Addr::new(10, 1, 1, 7));
    assert_eq!(p.workload.as_deref(), Some("backend"));
    assert!(p.ready);
    assert_eq!(p.labels["app"], "backend");
    assert_eq!(p.ports.len(), 2);
    assert_eq!(p.ports[0].name.as_deref(), Some("http"));
    assert_eq!(p.ports[1].port, 5353);
    assert_eq!(p.ports[1].protocol, Protocol::Udp);
    let ep = p.into_endpoint(65_792, Some(42), Some("lxc1".into()));
    assert_eq!((ep.identity, ep.cgroup_id), (65_792, Some(42)));
}

#[test]
fn pod_readiness_needs_running_and_the_ready_condition() {
    let mut v = yaml(DEPLOYMENT_POD);
    v["status"]["conditions"][2]["status"] = "False".into();
    let Resource::Pod(p) = decode(v).unwrap() else {
        panic!()
    };
    assert!(!p.ready);
    let mut v = yaml(DEPLOYMENT_POD);
    v["status"]["phase"] = "Succeeded".into();
    let Resource::Pod(p) = decode(v).unwrap() else {
        panic!()
    };
    assert!(!p.ready);
}

#[test]
fn workload_comes_from_the_controller_owner() {
    let mut v = yaml(DEPLOYMENT_POD);
    // Without the hash label, the ReplicaSet name's last segment is the hash.
    v["metadata"]["labels"] = serde_json::json!({"app": "backend"});
    v["metadata"]["ownerReferences"][0]["name"] = "my-backend-7f9c8d".into();
    let Resource::Pod(p) = decode(v).unwrap() else {
        panic!()
    };
    assert_eq!(p.workload.as_deref(), Some("my-backend"));
    let mut v = yaml(DEPLOYMENT_POD);
    v["metadata"]["ownerReferences"] = serde_json::json!([
        {"apiVersion": "v1", "kind": "Node", "name": "node-2", "uid": "u1"},
        {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "u2", "controller": true}
    ]);
    let Resource::Pod(p) = decode(v).unwrap() else {
        panic!()
    };
    assert_eq!(p.workload.as_deref(), Some("db"));
    let mut v = yaml(DEPLOYMENT_POD);
    v["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("ownerReferences");
    let Resource::Pod(p) = decode(v).unwrap() else {
        panic!()
    };
    assert_eq!(p.workload, None);
}

#[test]
fn pod_errors_name_the_pod_and_field() {
    let mut v = yaml(DEPLOYMENT_POD);
    v["status"].as_object_mut().unwrap().remove("podIP");
    assert_eq!(
        decode(v).unwrap_err().to_string(),
        "Pod demo/backend-6d4cf56db6-x7kqp: status.podIP: missing: the pod has no address"
    );
    let mut v = yaml(DEPLOYMENT_POD);
    v["spec"].as_object_mut().unwrap().remove("nodeName");
    assert!(
        decode(v)
            .unwrap_err()
            .to_string()
            .contains("spec.nodeName: missing"),
    );
    let mut v = yaml(DEPLOYMENT_POD);
    v["status"]["podIP"] = "fd00::7".into();
    assert!(
        decode(v)
            .unwrap_err()
            .to_string()
            .ends_with("status.podIP: \"fd00::7\" is not an IPv4 address"),
    );
    let mut v = yaml(DEPLOYMENT_POD);
    v["spec"]["containers"][0]["ports"][1]["containerPort"] = 0.into();
    assert_eq!(
        decode(v).unwrap_err().to_string(),
        "Pod demo/backend-6d4cf56db6-x7kqp: spec.containers[0].ports[1].containerPort: 0 is not a port number (1-65535)"
    );
    let mut v = yaml(DEPLOYMENT_POD);
    v["spec"]["containers"][0]["ports"][0]["protocol"] = "SCTP".into();
    assert!(
        decode(v)
            .unwrap_err()
            .to_string()
            .ends_with("spec.containers[0].ports[0].protocol: SCTP is not supported (TCP or UDP)"),
    );
    // Type errors carry the path serde took.
    let mut v = yaml(DEPLOYMENT_POD);
    v["spec"]["containers"][0]["ports"][0]["containerPort"] = "http".into();
    let e = decode(v).unwrap_err().to_string();
    assert!(
        e.starts_with(
            "Pod demo/backend-6d4cf56db6-x7kqp: spec.containers[0].ports[0].containerPort:"
        ),
        "{e}"
    );
}

#[test]
fn service_keeps_cluster_ip_ports_and_selector() {
    let Resource::Service(s) = decode(yaml(SERVICE)).unwrap() else {
        panic!("not a service")
    };
    assert_eq!(s.cluster_ip, std::net::Ipv4Addr::new(10, 96, 0, 17));
    assert_eq!(s.ports[0].target_port, TargetPort::Name("http".into()));
    assert_eq!(s.ports[1].target_port, TargetPort::Number(9091));
    assert_eq!(s.selector["app"], "backend");
}

#[test]
fn service_errors_name_the_service_and_field() {
    let mut v = yaml(SERVICE);
    v["spec"]["clusterIP"] = "None".into();
    assert_eq!(
        decode(v).unwrap_err().to_string(),
        "Service demo/backend: spec.clusterIP: headless services are not supported by the lab yet"
    );
    let mut v = yaml(SERVICE);
    v["spec"].as_object_mut().unwrap().remove("clusterIP");
    assert!(
        decode(v)
            .unwrap_err()
            .to_string()
            .contains("spec.clusterIP: missing")
    );
    let mut v = yaml(SERVICE);
    v["spec"]["type"] = "NodePort".into();
    assert!(
        decode(v)
            .unwrap_err()
            .to_string()
            .contains("spec.type: NodePort")
    );
    let mut v = yaml(SERVICE);
    v["spec"]["ports"][1]["targetPort"] = 70_000.into();
    assert!(
        decode(v)
            .unwrap_err()
            .to_string()
            .contains("spec.ports[1].targetPort: 70000 is not a port number")
    );
    let mut v = yaml(SERVICE);
    v["spec"]["ports"] = serde_json::json!([]);
    assert!(
        decode(v)
            .unwrap_err()
            .to_string()
            .contains("spec.ports: a ClusterIP service needs at least one port")
    );
}

#[test]
fn policies_of_all_three_kinds_convert() {
    for (text, kind, key) in [
        (
            NETWORK_POLICY,
            PolicyKind::NetworkPolicy,
            "demo/backend-ingress",
        ),
        (
            CNP,
            PolicyKind::CiliumNetworkPolicy,
            "demo/allow-frontend-get",
        ),
        (
            CCNP,
            PolicyKind::CiliumClusterwideNetworkPolicy,
            "deny-to-kube-system",
        ),
    ] {
        let Resource::Policy(p) = decode(yaml(text)).unwrap() else {
            panic!("not a policy")
        };
        assert_eq!((p.kind, p.key().as_str()), (kind, key));
        assert!(!p.specs.is_empty());
    }
}

#[test]
fn policy_errors_name_the_policy_and_field() {
    let mut v = yaml(CNP);
    v["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["endPort"] = 70.into();
    assert_eq!(
        decode(v).unwrap_err().to_string(),
        "CiliumNetworkPolicy demo/allow-frontend-get: spec.ingress[0].toPorts[0].ports[0].endPort: 70 is below port 8080"
    );
    let mut v = yaml(NETWORK_POLICY);
    v["metadata"]["name"] = "Bad_Name".into();
    assert!(
        decode(v)
            .unwrap_err()
            .to_string()
            .contains("metadata.name: \"Bad_Name\" must be a DNS subdomain")
    );
}

#[test]
fn unsupported_kinds_and_wrong_api_versions_are_refused() {
    let e = decode(serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "demo"}
    }))
    .unwrap_err();
    assert!(matches!(e, ConvertError::UnsupportedKind { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("ConfigMap demo/x: kind: not supported")
    );
    let mut v = yaml(SERVICE);
    v["apiVersion"] = "v2".into();
    assert!(
        decode(v)
            .unwrap_err()
            .to_string()
            .starts_with("Service demo/backend: ")
    );
}
