//! Pods → endpoints: address, node, labels, ports, readiness and owning workload.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{ConvertError, FieldIssue, ObjectRef, namespace_of, port_number, protocol};
use crate::model::{self, Labels, NamedPort};

/// Label the Deployment controller puts on its pods (and in its ReplicaSets' names).
const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// What a pod object says about its endpoint; the identity and node-local facts (cgroup,
/// interface) come from elsewhere, see [`PodEndpoint::into_endpoint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEndpoint {
    pub namespace: String,
    pub name: String,
    /// `spec.nodeName`.
    pub node: String,
    /// `status.podIP`.
    pub ip: Ipv4Addr,
    pub labels: Labels,
    /// Owning workload (Deployment, StatefulSet, DaemonSet, Job), from `ownerReferences`.
    pub workload: Option<String>,
    pub ports: Vec<NamedPort>,
    /// Phase `Running` with condition `Ready` true.
    pub ready: bool,
}

impl PodEndpoint {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The model endpoint, given what the pod object does not carry.
    pub fn into_endpoint(
        self,
        identity: u32,
        cgroup_id: Option<u64>,
        host_ifname: Option<String>,
    ) -> model::Endpoint {
        model::Endpoint {
            namespace: self.namespace,
            name: self.name,
            node: self.node,
            ip: self.ip,
            labels: self.labels,
            identity,
            workload: self.workload,
            ports: self.ports,
            ready: self.ready,
            cgroup_id,
            host_ifname,
        }
    }
}

impl TryFrom<&Pod> for PodEndpoint {
    type Error = ConvertError;

    fn try_from(pod: &Pod) -> Result<Self, ConvertError> {
        let obj = ObjectRef::new("Pod", &pod.metadata);
        let namespace = namespace_of(&obj)?;
        // Kubernetes allows DNS subdomains as pod names (the lab itself is stricter).
        if !super::valid_dns_subdomain(&obj.name) {
            return Err(obj.err(
                "metadata.name",
                format!("{:?} must be a DNS subdomain", obj.name),
            ));
        }
        let spec = pod
            .spec
            .as_ref()
            .ok_or_else(|| obj.err("spec", "missing"))?;
        let node = spec
            .node_name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| obj.err("spec.nodeName", "missing: the pod is not scheduled"))?;
        let status = pod.status.as_ref();
        let ip = match status.and_then(|s| s.pod_ip.as_deref()) {
            None | Some("") => {
                return Err(obj.err("status.podIP", "missing: the pod has no address"));
            }
            Some(ip) => ip
                .parse()
                .map_err(|_| obj.err("status.podIP", format!("{ip:?} is not an IPv4 address")))?,
        };
        let mut ports = Vec::new();
        for (i, c) in spec.containers.iter().enumerate() {
            let field = format!("spec.containers[{i}]");
            ports.extend(container_ports(&field, c).map_err(|e| obj.issue(e))?);
        }
        let ready = status.is_some_and(|s| {
            s.phase.as_deref() == Some("Running")
                && s.conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        });
        Ok(Self {
            namespace,
            name: obj.name.clone(),
            node,
            ip,
            labels: super::labels_of(&pod.metadata),
            workload: workload_of(&pod.metadata),
            ports,
            ready,
        })
    }
}

/// The ports a container declares; `field` is the container's path (`spec.containers[0]`).
pub fn container_ports(field: &str, c: &Container) -> Result<Vec<NamedPort>, FieldIssue> {
    let mut ports = Vec::new();
    for (i, p) in c.ports.iter().flatten().enumerate() {
        let pf = format!("{field}.ports[{i}]");
        ports.push(NamedPort {
            name: p.name.clone(),
            port: port_number(&format!("{pf}.containerPort"), p.container_port)?,
            protocol: protocol(&format!("{pf}.protocol"), p.protocol.as_deref())?,
        });
    }
    Ok(ports)
}

/// The workload owning a pod, from its controller owner reference. A Deployment's pods are owned
/// by a ReplicaSet named `<deployment>-<pod-template-hash>`; the hash is taken from the pod's
/// `pod-template-hash` label, or else is the name's last `-` segment.
pub fn workload_of(meta: &ObjectMeta) -> Option<String> {
    let refs = meta.owner_references.as_deref().unwrap_or_default();
    let owner = refs
        .iter()
        .find(|r| r.controller == Some(true))
        .or_else(|| refs.first())?;
    if owner.kind != "ReplicaSet" {
        return Some(owner.name.clone());
    }
    let hash = meta.labels.as_ref().and_then(|l| l.get(POD_TEMPLATE_HASH));
    let deployment = match hash {
        Some(h) => owner
            .name
            .strip_suffix(h.as_str())
            .and_then(|n| n.strip_suffix('-')),
        None => owner.name.rsplit_once('-').map(|(d, _)| d),
    };
    Some(deployment.unwrap_or(&owner.name).to_string())
}
