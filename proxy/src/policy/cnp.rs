//! `cilium.io/v2` `CiliumNetworkPolicy` and `CiliumClusterwideNetworkPolicy` → [`Policy`].
//!
//! The wire structs deny unknown fields, so a typo is an error rather than a silently wider
//! policy; fields Cilium has and Strait does not enforce are named explicitly and rejected with
//! "not supported".

use std::collections::BTreeMap;
use std::sync::Arc;

use ipnet::Ipv4Net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use super::FieldError;
use crate::identity::NAMESPACE_LABEL;
use crate::model::http::{HeaderMatch, HttpRule, Pattern};
use crate::model::policy::{
    Entity, Peer, Policy, PolicyKind, PolicySpec, PortRule, PortSel, Proto, Rule, RuleDirection,
};
use crate::model::selector::{LabelKey, RawExpression, Selector};

type Unsupported = Option<serde_yaml::Value>;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Raw {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    #[serde(default)]
    metadata: ObjectMeta,
    spec: Option<RawSpec>,
    specs: Option<Vec<RawSpec>>,
    #[allow(dead_code)]
    status: Option<serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSpec {
    endpoint_selector: Option<RawSelector>,
    node_selector: Unsupported,
    #[serde(default)]
    ingress: Vec<RawRule>,
    #[serde(default)]
    ingress_deny: Vec<RawRule>,
    #[serde(default)]
    egress: Vec<RawRule>,
    #[serde(default)]
    egress_deny: Vec<RawRule>,
    enable_default_deny: Option<RawDefaultDeny>,
    #[allow(dead_code)]
    description: Option<String>,
    #[allow(dead_code)]
    labels: Option<serde_yaml::Value>,
    log: Unsupported,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaultDeny {
    ingress: Option<bool>,
    egress: Option<bool>,
}

/// A label selector as written.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawSelector {
    pub match_labels: Option<BTreeMap<String, String>>,
    pub match_expressions: Option<Vec<RawExpression>>,
}

impl RawSelector {
    fn parse(&self, field: &str) -> Result<Selector, FieldError> {
        let sel = Selector::parse(
            field,
            self.match_labels.as_ref(),
            self.match_expressions.as_deref(),
        )?;
        Ok(sel)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawRule {
    from_endpoints: Option<Vec<RawSelector>>,
    to_endpoints: Option<Vec<RawSelector>>,
    from_entities: Option<Vec<String>>,
    to_entities: Option<Vec<String>>,
    #[serde(rename = "fromCIDR")]
    from_cidr: Option<Vec<String>>,
    #[serde(rename = "toCIDR")]
    to_cidr: Option<Vec<String>>,
    #[serde(rename = "fromCIDRSet")]
    from_cidr_set: Option<Vec<RawCidrSet>>,
    #[serde(rename = "toCIDRSet")]
    to_cidr_set: Option<Vec<RawCidrSet>>,
    to_ports: Option<Vec<RawPortRule>>,
    // Known to Cilium, not enforced by Strait: rejected by name.
    #[serde(rename = "toFQDNs")]
    to_fqdns: Unsupported,
    to_services: Unsupported,
    to_groups: Unsupported,
    from_groups: Unsupported,
    from_requires: Unsupported,
    to_requires: Unsupported,
    from_nodes: Unsupported,
    to_nodes: Unsupported,
    icmps: Unsupported,
    authentication: Unsupported,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawCidrSet {
    cidr: Option<String>,
    except: Option<Vec<String>>,
    cidr_group_ref: Unsupported,
    cidr_group_selector: Unsupported,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawPortRule {
    ports: Option<Vec<RawPort>>,
    rules: Option<RawL7>,
    #[serde(rename = "terminatingTLS")]
    terminating_tls: Unsupported,
    #[serde(rename = "originatingTLS")]
    originating_tls: Unsupported,
    server_names: Unsupported,
    listener: Unsupported,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawPort {
    port: Option<serde_yaml::Value>,
    end_port: Option<i64>,
    protocol: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawL7 {
    http: Option<Vec<RawHttp>>,
    dns: Unsupported,
    kafka: Unsupported,
    l7proto: Unsupported,
    l7: Unsupported,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawHttp {
    method: Option<String>,
    path: Option<String>,
    host: Option<String>,
    headers: Option<Vec<String>>,
    header_matches: Option<Vec<RawHeaderMatch>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawHeaderMatch {
    name: String,
    value: Option<String>,
    mismatch: Unsupported,
    secret: Unsupported,
}

fn unsupported(field: String, what: &str) -> FieldError {
    FieldError::new(
        field,
        format!("{what} is not supported by Strait yet; remove it or enforce it elsewhere"),
    )
}

fn reject(field: &str, name: &str, v: &Unsupported, what: &str) -> Result<(), FieldError> {
    match v {
        Some(_) => Err(unsupported(format!("{field}.{name}"), what)),
        None => Ok(()),
    }
}

/// Parses a Cilium policy; `namespace` is `Some` (the default namespace) for the namespaced
/// kind and `None` for the cluster-wide one.
pub fn parse(value: serde_yaml::Value, namespace: Option<&str>) -> Result<Policy, FieldError> {
    let raw: Raw = serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        FieldError::new(field, e.into_inner().to_string())
    })?;
    let name = raw.metadata.name.clone().unwrap_or_default();
    if name.is_empty() {
        return Err(FieldError::new("metadata.name", "missing"));
    }
    let (kind, namespace) = match namespace {
        Some(default) => (
            PolicyKind::CiliumNetworkPolicy,
            Some(
                raw.metadata
                    .namespace
                    .clone()
                    .unwrap_or(default.to_string()),
            ),
        ),
        None => {
            if raw.metadata.namespace.is_some() {
                return Err(FieldError::new(
                    "metadata.namespace",
                    "CiliumClusterwideNetworkPolicy is cluster-scoped and takes no namespace",
                ));
            }
            (PolicyKind::CiliumClusterwideNetworkPolicy, None)
        }
    };
    let mut specs = Vec::new();
    match (raw.spec, raw.specs) {
        (None, None) => return Err(FieldError::new("spec", "missing (spec or specs)")),
        (spec, list) => {
            if let Some(s) = spec {
                specs.push(parse_spec("spec".into(), s, namespace.as_deref())?);
            }
            for (i, s) in list.into_iter().flatten().enumerate() {
                specs.push(parse_spec(format!("specs[{i}]"), s, namespace.as_deref())?);
            }
        }
    }
    Ok(Policy {
        kind,
        namespace,
        name,
        specs,
    })
}

fn parse_spec(path: String, s: RawSpec, namespace: Option<&str>) -> Result<PolicySpec, FieldError> {
    reject(
        &path,
        "nodeSelector",
        &s.node_selector,
        "nodeSelector (host policies)",
    )?;
    reject(&path, "log", &s.log, "policy logging")?;
    let Some(sel) = &s.endpoint_selector else {
        return Err(FieldError::new(
            format!("{path}.endpointSelector"),
            "missing; every rule needs an endpointSelector",
        ));
    };
    let mut subject = sel.parse(&format!("{path}.endpointSelector"))?;
    if let Some(ns) = namespace {
        // A namespaced policy only ever selects endpoints of its own namespace.
        subject.require(LabelKey::k8s(NAMESPACE_LABEL), ns);
    }
    let has_ingress = !s.ingress.is_empty() || !s.ingress_deny.is_empty();
    let has_egress = !s.egress.is_empty() || !s.egress_deny.is_empty();
    let dd = s.enable_default_deny.as_ref();
    let mut rules = Vec::new();
    for (list, name, direction, deny) in [
        (&s.ingress, "ingress", RuleDirection::Ingress, false),
        (&s.ingress_deny, "ingressDeny", RuleDirection::Ingress, true),
        (&s.egress, "egress", RuleDirection::Egress, false),
        (&s.egress_deny, "egressDeny", RuleDirection::Egress, true),
    ] {
        for (i, r) in list.iter().enumerate() {
            rules.push(parse_rule(
                format!("{path}.{name}[{i}]"),
                r,
                direction,
                deny,
                namespace,
            )?);
        }
    }
    Ok(PolicySpec {
        path,
        subject,
        default_deny_ingress: dd.and_then(|d| d.ingress).unwrap_or(has_ingress),
        default_deny_egress: dd.and_then(|d| d.egress).unwrap_or(has_egress),
        rules,
    })
}

fn parse_rule(
    path: String,
    r: &RawRule,
    direction: RuleDirection,
    deny: bool,
    namespace: Option<&str>,
) -> Result<Rule, FieldError> {
    let (from, wrong) = match direction {
        RuleDirection::Ingress => ("from", "to"),
        RuleDirection::Egress => ("to", "from"),
    };
    // Fields of the other direction are a mistake, not something to ignore.
    let misplaced = [
        (r.from_endpoints.is_some(), "fromEndpoints"),
        (r.to_endpoints.is_some(), "toEndpoints"),
        (r.from_entities.is_some(), "fromEntities"),
        (r.to_entities.is_some(), "toEntities"),
        (r.from_cidr.is_some(), "fromCIDR"),
        (r.to_cidr.is_some(), "toCIDR"),
        (r.from_cidr_set.is_some(), "fromCIDRSet"),
        (r.to_cidr_set.is_some(), "toCIDRSet"),
    ];
    for (present, name) in misplaced {
        if present && name.starts_with(wrong) {
            return Err(FieldError::new(
                format!("{path}.{name}"),
                format!("not allowed in an {direction:?} rule (use {from}…)").to_lowercase(),
            ));
        }
    }
    reject(&path, "toFQDNs", &r.to_fqdns, "toFQDNs (DNS-based policy)")?;
    reject(&path, "toServices", &r.to_services, "toServices")?;
    reject(&path, "toGroups", &r.to_groups, "toGroups")?;
    reject(&path, "fromGroups", &r.from_groups, "fromGroups")?;
    reject(&path, "fromRequires", &r.from_requires, "fromRequires")?;
    reject(&path, "toRequires", &r.to_requires, "toRequires")?;
    reject(&path, "fromNodes", &r.from_nodes, "fromNodes")?;
    reject(&path, "toNodes", &r.to_nodes, "toNodes")?;
    reject(&path, "icmps", &r.icmps, "ICMP rules")?;
    reject(
        &path,
        "authentication",
        &r.authentication,
        "mutual authentication",
    )?;

    let (endpoints, entities, cidrs, cidr_sets) = match direction {
        RuleDirection::Ingress => (
            &r.from_endpoints,
            &r.from_entities,
            &r.from_cidr,
            &r.from_cidr_set,
        ),
        RuleDirection::Egress => (&r.to_endpoints, &r.to_entities, &r.to_cidr, &r.to_cidr_set),
    };
    let mut peers = Vec::new();
    let mut any_l3 = false;
    if let Some(list) = endpoints {
        any_l3 = true;
        for (i, s) in list.iter().enumerate() {
            let field = format!("{path}.{from}Endpoints[{i}]");
            let mut sel = s.parse(&field)?;
            if let Some(ns) = namespace
                && !sel.mentions(NAMESPACE_LABEL)
            {
                sel.require(LabelKey::k8s(NAMESPACE_LABEL), ns);
            }
            peers.push(Peer::Endpoints(sel));
        }
    }
    if let Some(list) = entities {
        any_l3 = true;
        for (i, e) in list.iter().enumerate() {
            let field = format!("{path}.{from}Entities[{i}]");
            let entity = match Entity::parse(e) {
                Some(x) => x,
                None if matches!(e.as_str(), "kube-apiserver" | "ingress" | "unmanaged") => {
                    return Err(unsupported(field, &format!("entity {e:?}")));
                }
                None => {
                    return Err(FieldError::new(
                        field,
                        format!(
                            "{e:?} is not an entity (all, world, cluster, host, remote-node, init, health)"
                        ),
                    ));
                }
            };
            peers.push(Peer::Entity(entity));
        }
    }
    if let Some(list) = cidrs {
        any_l3 = true;
        for (i, c) in list.iter().enumerate() {
            let field = format!("{path}.{from}CIDR[{i}]");
            peers.push(Peer::Cidr {
                net: parse_cidr(&field, c)?,
                except: vec![],
                pods: false,
            });
        }
    }
    if let Some(list) = cidr_sets {
        any_l3 = true;
        for (i, set) in list.iter().enumerate() {
            let field = format!("{path}.{from}CIDRSet[{i}]");
            reject(&field, "cidrGroupRef", &set.cidr_group_ref, "CIDR groups")?;
            reject(
                &field,
                "cidrGroupSelector",
                &set.cidr_group_selector,
                "CIDR groups",
            )?;
            let Some(c) = &set.cidr else {
                return Err(FieldError::new(format!("{field}.cidr"), "missing"));
            };
            let net = parse_cidr(&format!("{field}.cidr"), c)?;
            let mut except = Vec::new();
            for (j, e) in set.except.iter().flatten().enumerate() {
                let ef = format!("{field}.except[{j}]");
                let x = parse_cidr(&ef, e)?;
                if !net.contains(&x) {
                    return Err(FieldError::new(ef, format!("{x} is not inside {net}")));
                }
                except.push(x);
            }
            peers.push(Peer::Cidr {
                net,
                except,
                pods: false,
            });
        }
    }
    let mut ports = Vec::new();
    for (i, pr) in r.to_ports.iter().flatten().enumerate() {
        ports.extend(parse_port_rule(&format!("{path}.toPorts[{i}]"), pr, deny)?);
    }
    // No L3 selector: with ports the rule applies to every peer; without, it selects nothing
    // (`ingress: [{}]` only turns on default deny), as in Cilium.
    let peers = if any_l3 {
        Some(peers)
    } else if r.to_ports.is_some() {
        None
    } else {
        Some(Vec::new())
    };
    Ok(Rule {
        path,
        direction,
        deny,
        peers,
        ports,
    })
}

/// Parses `a.b.c.d/n` or a bare address (a /32).
pub(super) fn parse_cidr(field: &str, s: &str) -> Result<Ipv4Net, FieldError> {
    if s.contains(':') {
        return Err(unsupported(field.to_string(), "IPv6"));
    }
    let bad = || FieldError::new(field, format!("{s:?} is not an IPv4 CIDR"));
    let net = if s.contains('/') {
        s.parse::<Ipv4Net>().map_err(|_| bad())?
    } else {
        Ipv4Net::from(s.parse::<std::net::Ipv4Addr>().map_err(|_| bad())?)
    };
    if net.trunc() != net {
        return Err(FieldError::new(
            field,
            format!("{s} has host bits set (did you mean {}?)", net.trunc()),
        ));
    }
    Ok(net)
}

fn parse_port_rule(field: &str, pr: &RawPortRule, deny: bool) -> Result<Vec<PortRule>, FieldError> {
    reject(
        field,
        "terminatingTLS",
        &pr.terminating_tls,
        "TLS interception",
    )?;
    reject(
        field,
        "originatingTLS",
        &pr.originating_tls,
        "TLS origination",
    )?;
    reject(field, "serverNames", &pr.server_names, "serverNames (SNI)")?;
    reject(field, "listener", &pr.listener, "custom Envoy listeners")?;
    let http = match &pr.rules {
        None => None,
        Some(l7) => {
            let rf = format!("{field}.rules");
            reject(&rf, "dns", &l7.dns, "DNS rules")?;
            reject(&rf, "kafka", &l7.kafka, "Kafka rules")?;
            reject(&rf, "l7proto", &l7.l7proto, "generic L7 protocols")?;
            reject(&rf, "l7", &l7.l7, "generic L7 rules")?;
            if deny {
                return Err(FieldError::new(
                    rf,
                    "L7 rules are not allowed in deny rules (Cilium denies at L3/L4 only)",
                ));
            }
            let mut rules = Vec::new();
            for (i, h) in l7.http.iter().flatten().enumerate() {
                rules.push(parse_http(&format!("{rf}.http[{i}]"), h)?);
            }
            Some(Arc::new(rules))
        }
    };
    let raw_ports = pr.ports.as_deref().unwrap_or_default();
    if raw_ports.is_empty() {
        if http.is_some() {
            return Err(FieldError::new(
                format!("{field}.ports"),
                "L7 rules need at least one port",
            ));
        }
        return Ok(vec![PortRule {
            path: field.to_string(),
            protocol: Proto::Any,
            port: PortSel::Any,
            http: None,
        }]);
    }
    let mut out = Vec::new();
    for (i, p) in raw_ports.iter().enumerate() {
        let pf = format!("{field}.ports[{i}]");
        let mut protocol = match p
            .protocol
            .as_deref()
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            None | Some("ANY") => Proto::Any,
            Some("TCP") => Proto::Tcp,
            Some("UDP") => Proto::Udp,
            Some("SCTP") => Proto::Sctp,
            Some("ICMP" | "ICMPV6") => return Err(unsupported(format!("{pf}.protocol"), "ICMP")),
            Some(other) => {
                return Err(FieldError::new(
                    format!("{pf}.protocol"),
                    format!("{other:?} is not one of TCP, UDP, SCTP, ANY"),
                ));
            }
        };
        if http.is_some() {
            match protocol {
                // HTTP runs over TCP: the L7 rules are what the port allows.
                Proto::Any | Proto::Tcp => protocol = Proto::Tcp,
                _ => {
                    return Err(FieldError::new(
                        format!("{pf}.protocol"),
                        "HTTP rules need protocol TCP",
                    ));
                }
            }
        }
        let port = port_sel(&pf, p.port.as_ref(), p.end_port)?;
        out.push(PortRule {
            path: pf,
            protocol,
            port,
            http: http.clone(),
        });
    }
    Ok(out)
}

/// A port given as a number, a numeric string, a name, or 0/absent for every port.
pub(super) fn port_sel(
    field: &str,
    port: Option<&serde_yaml::Value>,
    end_port: Option<i64>,
) -> Result<PortSel, FieldError> {
    let number = |n: i64| -> Result<u16, FieldError> {
        u16::try_from(n).map_err(|_| {
            FieldError::new(
                format!("{field}.port"),
                format!("{n} is not a port (0-65535)"),
            )
        })
    };
    let first = match port {
        None | Some(serde_yaml::Value::Null) => None,
        Some(serde_yaml::Value::Number(n)) => Some(number(n.as_i64().unwrap_or(-1))?),
        Some(serde_yaml::Value::String(s)) => match s.parse::<i64>() {
            Ok(n) => Some(number(n)?),
            Err(_) => {
                if !valid_port_name(s) {
                    return Err(FieldError::new(
                        format!("{field}.port"),
                        format!(
                            "{s:?} is neither a port number nor a port name (1-15 lowercase letters, digits, '-')"
                        ),
                    ));
                }
                if end_port.is_some() {
                    return Err(FieldError::new(
                        format!("{field}.endPort"),
                        format!("cannot be used with the named port {s:?}"),
                    ));
                }
                return Ok(PortSel::Named(s.clone()));
            }
        },
        Some(other) => {
            return Err(FieldError::new(
                format!("{field}.port"),
                format!("{other:?} is not a port"),
            ));
        }
    };
    let first = first.unwrap_or(0);
    match end_port {
        None if first == 0 => Ok(PortSel::Any),
        None => Ok(PortSel::Range(first, first)),
        Some(_) if first == 0 => Err(FieldError::new(
            format!("{field}.endPort"),
            "needs a port to start from",
        )),
        Some(e) => {
            let end = u16::try_from(e).map_err(|_| {
                FieldError::new(format!("{field}.endPort"), format!("{e} is not a port"))
            })?;
            if end < first {
                return Err(FieldError::new(
                    format!("{field}.endPort"),
                    format!("{end} is below port {first}"),
                ));
            }
            Ok(PortSel::Range(first, end))
        }
    }
}

/// An IANA service name as Kubernetes accepts for named ports.
fn valid_port_name(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn parse_http(field: &str, h: &RawHttp) -> Result<HttpRule, FieldError> {
    let pattern = |name: &str, v: &Option<String>| -> Result<Option<Pattern>, FieldError> {
        v.as_deref()
            .map(|s| Pattern::new(s).map_err(|r| FieldError::new(format!("{field}.{name}"), r)))
            .transpose()
    };
    let mut headers = Vec::new();
    for (i, raw) in h.headers.iter().flatten().enumerate() {
        let (name, value) = match raw.split_once(':') {
            Some((n, v)) => (n.trim(), Some(v.trim().to_string())),
            None => (raw.trim(), None),
        };
        if name.is_empty() {
            return Err(FieldError::new(
                format!("{field}.headers[{i}]"),
                "header name is empty",
            ));
        }
        headers.push(HeaderMatch {
            name: name.to_string(),
            value,
        });
    }
    for (i, m) in h.header_matches.iter().flatten().enumerate() {
        let mf = format!("{field}.headerMatches[{i}]");
        reject(&mf, "secret", &m.secret, "header values from secrets")?;
        reject(&mf, "mismatch", &m.mismatch, "header mismatch actions")?;
        headers.push(HeaderMatch {
            name: m.name.clone(),
            value: m.value.clone(),
        });
    }
    Ok(HttpRule {
        path: field.to_string(),
        method: pattern("method", &h.method)?,
        url_path: pattern("path", &h.path)?,
        host: pattern("host", &h.host)?,
        headers,
    })
}
