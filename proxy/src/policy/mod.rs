//! L3–L7 network policy: Cilium's `CiliumNetworkPolicy` / `CiliumClusterwideNetworkPolicy` and
//! Kubernetes `NetworkPolicy`, parsed into one model, resolved against identities and compiled
//! into verdicts for the proxy and entries for the kernel maps.
//!
//! Data flows one way: YAML → [`parse`] → [`Policy`] (stored in the cluster state) → [`Engine`]
//! (per-identity rules, built with the [`Universe`] of identities) → per-flow [`PolicyVerdict`]s in the
//! proxy and [`kernel::compile`] output for the eBPF maps. Both consumers read the same engine, so
//! the kernel and the proxy cannot disagree on L3/L4.

pub mod cnp;
pub mod engine;
pub mod kernel;
pub mod netpol;
pub mod universe;

pub use crate::model::policy::{Policy, PolicyKind, RuleDirection};
pub use engine::{DirOutcome, Engine, PolicyVerdict};
pub use universe::Universe;

/// A field of a policy that is wrong: where (YAML path) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    /// An error at `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<crate::model::selector::SelectorError> for FieldError {
    fn from(e: crate::model::selector::SelectorError) -> Self {
        Self::new(e.at, e.reason)
    }
}

/// Whether `kind`/`apiVersion` is a policy kind this module parses.
pub fn is_policy_kind(kind: &str) -> bool {
    matches!(
        kind,
        "CiliumNetworkPolicy" | "CiliumClusterwideNetworkPolicy" | "NetworkPolicy"
    )
}

/// Parses one policy object (a YAML document already split out). `default_namespace` applies to
/// namespaced kinds without `metadata.namespace`.
pub fn parse(value: serde_yaml::Value, default_namespace: &str) -> Result<Policy, FieldError> {
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or_default()
        .to_string();
    let api = value
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .unwrap_or_default()
        .to_string();
    let expected = match kind.as_str() {
        "CiliumNetworkPolicy" | "CiliumClusterwideNetworkPolicy" => "cilium.io/v2",
        "NetworkPolicy" => "networking.k8s.io/v1",
        other => {
            return Err(FieldError::new(
                "kind",
                format!("{other:?} is not a policy"),
            ));
        }
    };
    if api != expected {
        return Err(FieldError::new(
            "apiVersion",
            format!("{kind} needs apiVersion {expected}, not {api:?}"),
        ));
    }
    match kind.as_str() {
        "NetworkPolicy" => netpol::parse(value, default_namespace),
        "CiliumClusterwideNetworkPolicy" => cnp::parse(value, None),
        _ => cnp::parse(value, Some(default_namespace)),
    }
}
