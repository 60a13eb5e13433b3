//! `networking.k8s.io/v1` `NetworkPolicy` → [`Policy`], with upstream Kubernetes semantics:
//! absent `from`/`to` means every peer, absent `ports` every port, `ipBlock` matches pod
//! addresses too, and `policyTypes` decides default deny.

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::FieldError;
use super::cnp::{parse_cidr, port_sel};
use crate::identity::{NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX};
use crate::model::policy::{
    Peer, Policy, PolicyKind, PolicySpec, PortRule, PortSel, Proto, Rule, RuleDirection,
};
use crate::model::selector::{LabelKey, RawExpression, Selector};

fn selector(field: &str, s: &LabelSelector) -> Result<Selector, FieldError> {
    let exprs: Option<Vec<RawExpression>> = s.match_expressions.as_ref().map(|v| {
        v.iter()
            .map(|e| RawExpression {
                key: e.key.clone(),
                operator: e.operator.clone(),
                values: e.values.clone(),
            })
            .collect()
    });
    let mut sel = Selector::parse(field, s.match_labels.as_ref(), exprs.as_deref())?;
    // NetworkPolicy keys are plain Kubernetes labels.
    for r in &mut sel.requirements {
        r.key.source = Some("k8s".into());
    }
    Ok(sel)
}

/// A namespace selector becomes requirements on the namespace labels pods carry.
fn namespace_selector(field: &str, s: &LabelSelector) -> Result<Selector, FieldError> {
    let mut sel = selector(field, s)?;
    for r in &mut sel.requirements {
        r.key = LabelKey::k8s(&format!("{NAMESPACE_LABELS_PREFIX}{}", r.key.key));
    }
    Ok(sel)
}

/// Parses a NetworkPolicy; `default_namespace` applies without `metadata.namespace`.
pub fn parse(value: serde_yaml::Value, default_namespace: &str) -> Result<Policy, FieldError> {
    let field_error = |e: serde_path_to_error::Error<serde_yaml::Error>| {
        let field = e.path().to_string();
        FieldError::new(field, e.into_inner().to_string())
    };
    serde_path_to_error::deserialize::<_, shape::NetworkPolicy>(value.clone())
        .map_err(field_error)?;
    let np: NetworkPolicy = serde_path_to_error::deserialize(value).map_err(field_error)?;
    let name = np.metadata.name.clone().unwrap_or_default();
    if name.is_empty() {
        return Err(FieldError::new("metadata.name", "missing"));
    }
    let namespace = np
        .metadata
        .namespace
        .clone()
        .unwrap_or(default_namespace.to_string());
    let Some(spec) = np.spec else {
        return Err(FieldError::new("spec", "missing"));
    };
    let mut subject = match &spec.pod_selector {
        Some(s) => selector("spec.podSelector", s)?,
        None => Selector::default(),
    };
    subject.require(LabelKey::k8s(NAMESPACE_LABEL), &namespace);
    let ingress = spec.ingress.unwrap_or_default();
    let egress = spec.egress.unwrap_or_default();
    let (mut dd_in, mut dd_eg) = (true, !egress.is_empty());
    if let Some(types) = &spec.policy_types {
        (dd_in, dd_eg) = (false, false);
        for (i, t) in types.iter().enumerate() {
            match t.as_str() {
                "Ingress" => dd_in = true,
                "Egress" => dd_eg = true,
                other => {
                    return Err(FieldError::new(
                        format!("spec.policyTypes[{i}]"),
                        format!("{other:?} is not Ingress or Egress"),
                    ));
                }
            }
        }
    }
    let mut rules = Vec::new();
    // Rules of a direction the policy does not declare are ignored, as Kubernetes does.
    if dd_in {
        for (i, r) in ingress.iter().enumerate() {
            rules.push(rule(
                format!("spec.ingress[{i}]"),
                RuleDirection::Ingress,
                "from",
                r.from.as_deref(),
                r.ports.as_deref(),
                &namespace,
            )?);
        }
    }
    if dd_eg {
        for (i, r) in egress.iter().enumerate() {
            rules.push(rule(
                format!("spec.egress[{i}]"),
                RuleDirection::Egress,
                "to",
                r.to.as_deref(),
                r.ports.as_deref(),
                &namespace,
            )?);
        }
    }
    Ok(Policy {
        kind: PolicyKind::NetworkPolicy,
        namespace: Some(namespace),
        name,
        specs: vec![PolicySpec {
            path: "spec".into(),
            subject,
            default_deny_ingress: dd_in,
            default_deny_egress: dd_eg,
            rules,
        }],
    })
}

fn rule(
    path: String,
    direction: RuleDirection,
    peers_field: &str,
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
    namespace: &str,
) -> Result<Rule, FieldError> {
    let peers = match peers {
        None | Some([]) => None,
        Some(list) => {
            let mut out = Vec::new();
            for (i, p) in list.iter().enumerate() {
                out.push(peer(&format!("{path}.{peers_field}[{i}]"), p, namespace)?);
            }
            Some(out)
        }
    };
    let mut port_rules = Vec::new();
    for (i, p) in ports.into_iter().flatten().enumerate() {
        let pf = format!("{path}.ports[{i}]");
        let protocol = match p.protocol.as_deref() {
            None | Some("TCP") => Proto::Tcp,
            Some("UDP") => Proto::Udp,
            Some("SCTP") => Proto::Sctp,
            Some(other) => {
                return Err(FieldError::new(
                    format!("{pf}.protocol"),
                    format!("{other:?} is not one of TCP, UDP, SCTP"),
                ));
            }
        };
        let value = p.port.as_ref().map(|v| match v {
            IntOrString::Int(n) => serde_yaml::Value::Number((*n).into()),
            IntOrString::String(s) => serde_yaml::Value::String(s.clone()),
        });
        let port = port_sel(&pf, value.as_ref(), p.end_port.map(i64::from))?;
        port_rules.push(PortRule {
            path: pf,
            protocol,
            port,
            http: None,
        });
    }
    if port_rules.is_empty() {
        port_rules.push(PortRule {
            path: path.clone(),
            protocol: Proto::Any,
            port: PortSel::Any,
            http: None,
        });
    }
    Ok(Rule {
        path,
        direction,
        deny: false,
        peers,
        ports: port_rules,
    })
}

fn peer(field: &str, p: &NetworkPolicyPeer, namespace: &str) -> Result<Peer, FieldError> {
    if let Some(block) = &p.ip_block {
        if p.pod_selector.is_some() || p.namespace_selector.is_some() {
            return Err(FieldError::new(
                field,
                "ipBlock cannot be combined with podSelector or namespaceSelector",
            ));
        }
        let net = parse_cidr(&format!("{field}.ipBlock.cidr"), &block.cidr)?;
        let mut except = Vec::new();
        for (j, e) in block.except.iter().flatten().enumerate() {
            let ef = format!("{field}.ipBlock.except[{j}]");
            let x = parse_cidr(&ef, e)?;
            if !net.contains(&x) {
                return Err(FieldError::new(ef, format!("{x} is not inside {net}")));
            }
            except.push(x);
        }
        return Ok(Peer::Cidr {
            net,
            except,
            pods: true,
        });
    }
    let mut sel = match &p.pod_selector {
        Some(s) => selector(&format!("{field}.podSelector"), s)?,
        None => Selector::default(),
    };
    match &p.namespace_selector {
        Some(ns) => sel
            .requirements
            .extend(namespace_selector(&format!("{field}.namespaceSelector"), ns)?.requirements),
        None if p.pod_selector.is_some() => {
            sel.require(LabelKey::k8s(NAMESPACE_LABEL), namespace);
        }
        None => {
            return Err(FieldError::new(
                field,
                "a peer needs podSelector, namespaceSelector or ipBlock",
            ));
        }
    }
    Ok(Peer::Endpoints(sel))
}

/// The fields a NetworkPolicy may have, only to reject unknown ones: k8s-openapi skips them, and
/// a typo such as `frm:` or `prot:` would silently widen a rule to every peer or every port.
mod shape {
    #![allow(dead_code)]

    use serde::Deserialize;
    use serde::de::IgnoredAny;

    use super::super::cnp::RawSelector;

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub(super) struct NetworkPolicy {
        api_version: Option<IgnoredAny>,
        kind: Option<IgnoredAny>,
        metadata: Option<IgnoredAny>,
        spec: Option<Spec>,
        status: Option<IgnoredAny>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Spec {
        pod_selector: Option<RawSelector>,
        policy_types: Option<IgnoredAny>,
        ingress: Option<Vec<Ingress>>,
        egress: Option<Vec<Egress>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Ingress {
        from: Option<Vec<Peer>>,
        ports: Option<Vec<Port>>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Egress {
        to: Option<Vec<Peer>>,
        ports: Option<Vec<Port>>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Peer {
        pod_selector: Option<RawSelector>,
        namespace_selector: Option<RawSelector>,
        ip_block: Option<IpBlock>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct IpBlock {
        cidr: Option<IgnoredAny>,
        except: Option<IgnoredAny>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Port {
        port: Option<IgnoredAny>,
        end_port: Option<IgnoredAny>,
        protocol: Option<IgnoredAny>,
    }
}
