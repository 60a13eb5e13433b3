//! Policies in Strait's own terms, whatever kind they were written as.
//!
//! Parsers (`cnp`, `netpol`) produce these after validation; the engine only ever sees them. Every
//! rule keeps the YAML path it came from so verdicts can name it.

use std::sync::Arc;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::http::HttpRule;
use super::selector::Selector;

/// The kind a policy was written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PolicyKind {
    // Declared in name order, so policies sort as the lab lists them (`Kind/namespace/name`).
    CiliumClusterwideNetworkPolicy,
    CiliumNetworkPolicy,
    NetworkPolicy,
}

impl PolicyKind {
    /// As Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CiliumNetworkPolicy => "CiliumNetworkPolicy",
            Self::CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
            Self::NetworkPolicy => "NetworkPolicy",
        }
    }
}

/// One policy object: one or more specs, each selecting its subjects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub kind: PolicyKind,
    /// `None` for cluster-wide policies.
    pub namespace: Option<String>,
    pub name: String,
    pub specs: Vec<PolicySpec>,
}

impl Policy {
    /// `namespace/name` (or `name` when cluster-wide), the key `apply` replaces by.
    pub fn key(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// The unit with one subject selector (`spec`, or one entry of `specs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySpec {
    /// `spec` or `specs[i]`.
    pub path: String,
    /// Which endpoints the rules apply to; namespaced policies include their namespace.
    pub subject: Selector,
    /// Whether selected endpoints become default-deny at ingress / egress.
    pub default_deny_ingress: bool,
    pub default_deny_egress: bool,
    pub rules: Vec<Rule>,
}

/// Traffic direction, from the subject's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RuleDirection {
    Ingress,
    Egress,
}

/// One `ingress`/`egress`/`ingressDeny`/`egressDeny` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// YAML path, e.g. `spec.ingress[0]`.
    pub path: String,
    pub direction: RuleDirection,
    pub deny: bool,
    /// Who is on the other end. `None`: anyone (the rule has only L4 constraints).
    pub peers: Option<Vec<Peer>>,
    /// Which ports. Empty: all ports and protocols.
    pub ports: Vec<PortRule>,
}

/// A peer selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Peer {
    /// Pods whose identity labels match (namespace requirement already added where implied).
    Endpoints(Selector),
    /// A reserved entity.
    Entity(Entity),
    /// Addresses in `net` but in none of `except`. Cilium's CIDR rules select only addresses
    /// outside the cluster; NetworkPolicy `ipBlock` selects pod addresses too (`pods`).
    Cidr {
        net: Ipv4Net,
        except: Vec<Ipv4Net>,
        pods: bool,
    },
}

/// Cilium's entities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Entity {
    All,
    World,
    Cluster,
    Host,
    RemoteNode,
    Init,
    Health,
}

impl Entity {
    /// Parses an entity name; `None` for unknown ones.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "all" => Self::All,
            "world" | "world-ipv4" => Self::World,
            "cluster" => Self::Cluster,
            "host" => Self::Host,
            "remote-node" => Self::RemoteNode,
            "init" => Self::Init,
            "health" => Self::Health,
            _ => return None,
        })
    }
}

/// Which protocols a port rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Proto {
    Any,
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    /// IP protocol number; 0 for any.
    pub fn number(self) -> u8 {
        match self {
            Self::Any => 0,
            Self::Tcp => strait_ebpf::abi::IPPROTO_TCP,
            Self::Udp => strait_ebpf::abi::IPPROTO_UDP,
            Self::Sctp => strait_ebpf::abi::IPPROTO_SCTP,
        }
    }

    /// Whether packets of IP protocol `p` are covered.
    pub fn covers(self, p: u8) -> bool {
        self == Self::Any || self.number() == p
    }
}

/// Which ports a port rule covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PortSel {
    /// Every port.
    Any,
    /// `first..=last`.
    Range(u16, u16),
    /// A named container port of the destination.
    Named(String),
}

/// One entry of `toPorts[i].ports` (or NetworkPolicy `ports`), with the L7 rules of its group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRule {
    /// YAML path of the port entry.
    pub path: String,
    pub protocol: Proto,
    pub port: PortSel,
    /// HTTP rules of the `toPorts` entry; `None`: L4 only (every request allowed).
    pub http: Option<Arc<Vec<HttpRule>>>,
}
