//! Security identities: a label set becomes a number, the cluster ID in bits 16–23 as Cilium does.
//!
//! Identities are allocated by the control plane (the lab today) and travel with endpoints, so
//! every node and every tunnel agrees on them without coordination on the data path.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::Labels;

/// Reserved identities, numbered as Cilium numbers them: the list in `strait_abi.h`
/// (`HOST`, `WORLD`, `HEALTH`, `INIT`, `REMOTE_NODE`, and `NAMES` with their entity names).
pub use strait_ebpf::abi::reserved_identity as reserved;

/// First identity number handed to workloads within a cluster.
const FIRST_LOCAL: u32 = 256;
/// Highest local identity number: the low 16 bits.
const LAST_LOCAL: u32 = 0xffff;

/// Label source prefix Cilium puts on Kubernetes-derived labels.
const K8S: &str = "k8s:";
/// Label carrying a pod's namespace.
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// Label carrying the cluster name.
pub const CLUSTER_LABEL: &str = "io.cilium.k8s.policy.cluster";
/// Prefix under which namespace labels appear on a pod's identity.
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";

/// The label set that determines a pod's identity: its own labels, its namespace, the namespace's
/// labels and the cluster name, each with the `k8s:` source prefix.
pub fn identity_labels(
    pod_labels: &Labels,
    namespace: &str,
    namespace_labels: &Labels,
    cluster: &str,
) -> Labels {
    let mut out: Labels = pod_labels
        .iter()
        .map(|(k, v)| (format!("{K8S}{k}"), v.clone()))
        .collect();
    for (k, v) in namespace_labels {
        out.insert(format!("{K8S}{NAMESPACE_LABELS_PREFIX}{k}"), v.clone());
    }
    out.insert(format!("{K8S}{NAMESPACE_LABEL}"), namespace.to_string());
    out.insert(format!("{K8S}{CLUSTER_LABEL}"), cluster.to_string());
    out
}

/// The cluster ID an identity belongs to (0 for reserved identities).
pub fn cluster_of(identity: u32) -> u8 {
    ((identity >> 16) & 0xff) as u8
}

/// Errors allocating identities.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// All 65 280 local identities of the cluster are in use.
    #[error("cluster {cluster_id} has no free identities left")]
    Exhausted { cluster_id: u8 },
}

/// Hands out identities for one cluster; the same label set always gets the same number.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IdentityAllocator {
    /// Label set (as `k=v,k=v`) → identity.
    by_labels: BTreeMap<String, u32>,
    next: u32,
}

impl IdentityAllocator {
    /// The identity of `labels` in cluster `cluster_id`, allocating a new one if needed.
    pub fn allocate(&mut self, cluster_id: u8, labels: &Labels) -> Result<u32, IdentityError> {
        let key = labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        if let Some(id) = self.by_labels.get(&key) {
            return Ok(*id);
        }
        let local = self.next.max(FIRST_LOCAL);
        if local > LAST_LOCAL {
            return Err(IdentityError::Exhausted { cluster_id });
        }
        self.next = local + 1;
        let id = (u32::from(cluster_id) << 16) | local;
        self.by_labels.insert(key, id);
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn identity_carries_cluster_id_in_high_bits() {
        let mut a = IdentityAllocator::default();
        let id = a.allocate(2, &labels(&[("app", "x")])).unwrap();
        assert_eq!(id, (2 << 16) | 256);
        assert_eq!(cluster_of(id), 2);
        assert_eq!(cluster_of(reserved::WORLD), 0);
    }

    #[test]
    fn same_labels_same_identity_different_labels_new_one() {
        let mut a = IdentityAllocator::default();
        let x = a.allocate(1, &labels(&[("app", "x")])).unwrap();
        let y = a.allocate(1, &labels(&[("app", "y")])).unwrap();
        assert_ne!(x, y);
        assert_eq!(a.allocate(1, &labels(&[("app", "x")])).unwrap(), x);
    }

    #[test]
    fn exhaustion_is_an_error() {
        let mut a = IdentityAllocator {
            next: LAST_LOCAL + 1,
            ..Default::default()
        };
        assert_eq!(
            a.allocate(1, &labels(&[("app", "z")])),
            Err(IdentityError::Exhausted { cluster_id: 1 })
        );
    }

    #[test]
    fn identity_labels_include_namespace_and_cluster() {
        let l = identity_labels(
            &labels(&[("app", "backend")]),
            "demo",
            &labels(&[("kubernetes.io/metadata.name", "demo")]),
            "c1",
        );
        assert_eq!(l.get("k8s:app").map(String::as_str), Some("backend"));
        assert_eq!(
            l.get("k8s:io.kubernetes.pod.namespace").map(String::as_str),
            Some("demo")
        );
        assert_eq!(
            l.get("k8s:io.cilium.k8s.policy.cluster")
                .map(String::as_str),
            Some("c1")
        );
        assert_eq!(
            l.get("k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name")
                .map(String::as_str),
            Some("demo")
        );
    }
}
