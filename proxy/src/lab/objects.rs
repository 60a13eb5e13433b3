//! The lab's records as the Kubernetes objects an API server would return for them: what the
//! cluster state file carries to the agents, which convert them with `sources::k8s`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, Namespace, NamespaceStatus, Pod, PodCondition, PodIP,
    PodSpec, PodStatus, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::state::PodRecord;
use super::topology::ClusterSpec;
use crate::model::{self, Labels, Protocol, TargetPort};

fn labels(l: &Labels) -> Option<BTreeMap<String, String>> {
    (!l.is_empty()).then(|| l.clone())
}

fn protocol(p: Protocol) -> String {
    match p {
        Protocol::Tcp => "TCP".into(),
        Protocol::Udp => "UDP".into(),
    }
}

/// A namespace with its labels (including `kubernetes.io/metadata.name`).
pub fn namespace(name: &str, l: &Labels) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: labels(l),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(NamespaceStatus {
            phase: Some("Active".into()),
            ..NamespaceStatus::default()
        }),
    }
}

/// A pod as the lab realised it: scheduled, addressed, owned, ready or not.
pub fn pod(spec: &ClusterSpec, p: &PodRecord, ready: bool) -> Pod {
    let owner_references = p.owner.as_ref().map(|owner| {
        let deployment = owner.split_once('/').map_or(owner.as_str(), |x| x.1);
        // Deployment-made pods are owned by a ReplicaSet `<deployment>-<pod-template-hash>`.
        let rs = format!("{deployment}-{}", p.template_hash);
        vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: rs.clone(),
            uid: uid(&format!("{}/{}/{rs}", spec.name, p.namespace)),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]
    });
    let containers = p
        .template
        .containers
        .iter()
        .map(|c| Container {
            name: c.name.clone(),
            command: (!c.argv.is_empty()).then(|| c.argv.clone()),
            env: (!c.env.is_empty()).then(|| {
                c.env
                    .iter()
                    .map(|(k, v)| EnvVar {
                        name: k.clone(),
                        value: Some(v.clone()),
                        ..EnvVar::default()
                    })
                    .collect()
            }),
            ports: (!c.ports.is_empty()).then(|| {
                c.ports
                    .iter()
                    .map(|port| ContainerPort {
                        name: port.name.clone(),
                        container_port: i32::from(port.port),
                        protocol: Some(protocol(port.protocol)),
                        ..ContainerPort::default()
                    })
                    .collect()
            }),
            ..Container::default()
        })
        .collect();
    let host_ip = spec
        .nodes
        .iter()
        .find(|n| n.name == p.node)
        .map(|n| n.underlay_ip.to_string());
    // A kubelet reports Running once the containers started; pods::ready says the workload serves.
    let running = ready || !p.pids.is_empty();
    Pod {
        metadata: ObjectMeta {
            name: Some(p.name.clone()),
            namespace: Some(p.namespace.clone()),
            labels: labels(&p.template.labels),
            owner_references,
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(p.node.clone()),
            containers,
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some(if running { "Running" } else { "Pending" }.into()),
            host_ip,
            pod_ip: Some(p.ip.to_string()),
            pod_ips: Some(vec![PodIP {
                ip: p.ip.to_string(),
            }]),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        }),
    }
}

/// A ClusterIP service with its allocated address.
pub fn service(s: &model::Service) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(s.name.clone()),
            namespace: Some(s.namespace.clone()),
            annotations: (!s.annotations.is_empty()).then(|| {
                s.annotations
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            }),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some(s.cluster_ip.to_string()),
            cluster_ips: Some(vec![s.cluster_ip.to_string()]),
            selector: labels(&s.selector),
            ports: Some(
                s.ports
                    .iter()
                    .map(|p| ServicePort {
                        name: p.name.clone(),
                        port: i32::from(p.port),
                        protocol: Some(protocol(p.protocol)),
                        target_port: Some(match &p.target_port {
                            TargetPort::Number(n) => IntOrString::Int(i32::from(*n)),
                            TargetPort::Name(n) => IntOrString::String(n.clone()),
                        }),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// A stable UUID-shaped ID for an object the lab only names (the ReplicaSets of Deployments).
fn uid(key: &str) -> String {
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for b in key.bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
    }
    let x = format!("{h:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..]
    )
}
