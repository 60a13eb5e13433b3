//! Kubernetes objects → model types, validated at the border.
//!
//! The lab's state file, and later the Kubernetes watchers and mesh peers, hand us objects as the
//! API server returns them (`kubectl get -o yaml`); this module is the one place that turns them
//! into [`crate::model`] and [`crate::policy::Policy`] values. The k8s-openapi types never leave
//! it. Every error names the object (kind, `namespace/name`) and the field path. The lab CLI calls
//! the same field checks on manifests before it applies them, so what the lab accepts the agent
//! can convert.

mod pod;
mod service;

#[cfg(test)]
mod tests;

use std::fmt;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;

use crate::model::{self, Labels, Protocol};
use crate::policy::{self, Policy};

pub use pod::{PodEndpoint, container_ports, workload_of};
pub use service::{cluster_ip, service_ports};

/// Label Kubernetes puts on every namespace, naming it.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Kinds [`decode`] converts.
pub const SUPPORTED_KINDS: &str =
    "Namespace, Pod, Service, CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy";

/// Which object an error is about: `Kind namespace/name` (or `Kind name` when cluster-scoped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

/// An object that cannot be converted: which one, which field, why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// A field is missing or holds something we cannot use.
    #[error("{object}: {field}: {reason}")]
    Field {
        object: ObjectRef,
        field: String,
        reason: String,
    },
    /// A kind (or apiVersion) this module does not convert.
    #[error("{object}: kind: not supported (supported: {SUPPORTED_KINDS})")]
    UnsupportedKind { object: ObjectRef },
}

/// A field-level problem before it is tied to an object: the shared checks return these, and
/// each caller names the object in its own terms (the manifest reader adds file and document).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldIssue {
    pub field: String,
    pub reason: String,
}

/// One converted object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    Namespace(model::Namespace),
    Pod(Box<PodEndpoint>),
    Service(model::Service),
    Policy(Box<Policy>),
}

// === impl ObjectRef ===

impl ObjectRef {
    /// The object `meta` describes, of kind `kind`.
    pub fn new(kind: impl Into<String>, meta: &ObjectMeta) -> Self {
        Self {
            kind: kind.into(),
            namespace: meta.namespace.clone(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }

    /// The object a raw value says it is (kind, metadata.namespace, metadata.name).
    pub fn of_value(value: &serde_json::Value) -> Self {
        let s = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(str::to_string);
        let meta = value.get("metadata");
        Self {
            kind: s(value.get("kind")).unwrap_or_else(|| "object".into()),
            namespace: s(meta.and_then(|m| m.get("namespace"))),
            name: s(meta.and_then(|m| m.get("name"))).unwrap_or_default(),
        }
    }

    /// An error about `field` of this object.
    pub fn err(&self, field: impl Into<String>, reason: impl Into<String>) -> ConvertError {
        ConvertError::Field {
            object: self.clone(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    fn issue(&self, i: FieldIssue) -> ConvertError {
        self.err(i.field, i.reason)
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

// === impl FieldIssue ===

impl FieldIssue {
    /// A problem at `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

// === conversions ===

/// Converts one object as the API server returns it, dispatching on `kind`.
pub fn decode(value: serde_json::Value) -> Result<Resource, ConvertError> {
    let obj = ObjectRef::of_value(&value);
    if policy::is_policy_kind(&obj.kind) {
        let yaml = serde_yaml::to_value(&value).map_err(|e| obj.err("", e.to_string()))?;
        return policy_from(yaml).map(|p| Resource::Policy(Box::new(p)));
    }
    match obj.kind.as_str() {
        "Namespace" => {
            let ns: core::Namespace = typed(&obj, value)?;
            model::Namespace::try_from(&ns).map(Resource::Namespace)
        }
        "Pod" => {
            let pod: core::Pod = typed(&obj, value)?;
            PodEndpoint::try_from(&pod).map(|p| Resource::Pod(Box::new(p)))
        }
        "Service" => {
            let svc: core::Service = typed(&obj, value)?;
            model::Service::try_from(&svc).map(Resource::Service)
        }
        _ => Err(ConvertError::UnsupportedKind { object: obj }),
    }
}

/// Deserialises `value` as `T`; a wrong field is named by its path.
fn typed<T: DeserializeOwned>(
    obj: &ObjectRef,
    value: serde_json::Value,
) -> Result<T, ConvertError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        obj.err(path, e.into_inner().to_string())
    })
}

/// A NetworkPolicy, CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy object (namespaced
/// kinds without `metadata.namespace` land in `default`, as `kubectl apply` puts them).
pub fn policy_from(value: serde_yaml::Value) -> Result<Policy, ConvertError> {
    let s = |v: Option<&serde_yaml::Value>| v.and_then(|v| v.as_str()).map(str::to_string);
    let meta = value.get("metadata");
    let obj = ObjectRef {
        kind: s(value.get("kind")).unwrap_or_else(|| "object".into()),
        namespace: s(meta.and_then(|m| m.get("namespace"))),
        name: s(meta.and_then(|m| m.get("name"))).unwrap_or_default(),
    };
    let p = policy::parse(value, "default").map_err(|e| obj.err(e.field, e.reason))?;
    if let Some(ns) = &p.namespace
        && !valid_dns_label(ns)
    {
        return Err(obj.err(
            "metadata.namespace",
            format!("{ns:?} is not a valid namespace name"),
        ));
    }
    if !valid_dns_subdomain(&p.name) {
        return Err(obj.err(
            "metadata.name",
            format!(
                "{:?} must be a DNS subdomain: lowercase letters, digits, '-' and '.'",
                p.name
            ),
        ));
    }
    Ok(p)
}

impl TryFrom<&core::Namespace> for model::Namespace {
    type Error = ConvertError;

    fn try_from(ns: &core::Namespace) -> Result<Self, ConvertError> {
        let obj = ObjectRef::new("Namespace", &ns.metadata);
        let name = name_of(&obj)?;
        let mut labels = labels_of(&ns.metadata);
        labels.insert(NAMESPACE_NAME_LABEL.into(), name.clone());
        Ok(model::Namespace { name, labels })
    }
}

// === shared field checks ===

/// `metadata.name`, required to be a DNS label (namespaces, services and, here, pods).
fn name_of(obj: &ObjectRef) -> Result<String, ConvertError> {
    if !valid_dns_label(&obj.name) {
        return Err(obj.err(
            "metadata.name",
            format!(
                "{:?} must be a DNS label: 1-63 lowercase letters, digits or '-'",
                obj.name
            ),
        ));
    }
    Ok(obj.name.clone())
}

/// `metadata.namespace`, which the API server always sets on namespaced objects.
fn namespace_of(obj: &ObjectRef) -> Result<String, ConvertError> {
    match &obj.namespace {
        None => Err(obj.err("metadata.namespace", "missing")),
        Some(ns) if !valid_dns_label(ns) => Err(obj.err(
            "metadata.namespace",
            format!("{ns:?} is not a valid namespace name"),
        )),
        Some(ns) => Ok(ns.clone()),
    }
}

/// An object's labels, sorted.
pub fn labels_of(meta: &ObjectMeta) -> Labels {
    meta.labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect()
}

/// A port number field: 1-65535.
pub fn port_number(field: &str, n: i32) -> Result<u16, FieldIssue> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| FieldIssue::new(field, format!("{n} is not a port number (1-65535)")))
}

/// A `protocol` field: TCP (the default) or UDP.
pub fn protocol(field: &str, p: Option<&str>) -> Result<Protocol, FieldIssue> {
    match p {
        None | Some("TCP") => Ok(Protocol::Tcp),
        Some("UDP") => Ok(Protocol::Udp),
        Some(other) => Err(FieldIssue::new(
            field,
            format!("{other} is not supported (TCP or UDP)"),
        )),
    }
}

/// RFC 1123 subdomain, as Kubernetes requires for names of most objects.
pub fn valid_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(valid_dns_label)
}

/// RFC 1123 label, as Kubernetes requires for names of namespaces, services and (here) pods.
pub fn valid_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}
