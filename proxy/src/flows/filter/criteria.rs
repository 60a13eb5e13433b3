//! The conditions a [`FlowFilter`](super::FlowFilter) combines: one [`Criterion`] per flag,
//! with its key, parse, display and match arms.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use super::time::{format_time, parse_time};
use super::{FilterError, KEYS, invalid, non_empty, verdict_name};
use crate::flows::{FlowPeer, FlowRecord, Verdict};
use crate::model::selector::{LabelKey, Selector};

const LABEL_EXPECTED: &str = "expected KEY, !KEY, KEY=VALUE, KEY!=VALUE, KEY in (V1,V2) or \
                              KEY notin (V1,V2), comma-separated";
const PROTOCOL_EXPECTED: &str = "expected TCP, UDP, HTTP, HTTP/1.1 or HTTP/2";
const PORT_EXPECTED: &str = "expected a port number (1-65535)";
const STATUS_EXPECTED: &str = "expected NNN, Nxx or Nxx+";
const METHOD_EXPECTED: &str = "expected an HTTP method such as GET or POST";
/// Longest compiled `http-path` expression accepted; agents compile what clients send.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// One condition on a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Criterion {
    /// The recording node's cluster or either endpoint's cluster.
    Cluster(String),
    /// Either endpoint's namespace.
    Namespace(String),
    /// The source's namespace.
    FromNamespace(String),
    /// The destination's namespace.
    ToNamespace(String),
    /// Either endpoint's pod, by name prefix.
    Pod(PodSelector),
    /// The source pod, by name prefix.
    FromPod(PodSelector),
    /// The destination pod, by name prefix.
    ToPod(PodSelector),
    /// Either endpoint's labels, by Kubernetes label selector (kubectl's syntax); `k8s:` and
    /// `any:` key prefixes match the pod's labels.
    Label(Selector),
    /// The source's labels.
    FromLabel(Selector),
    /// The destination's labels.
    ToLabel(Selector),
    Verdict(Verdict),
    /// The flow's L4 or L7 protocol.
    Protocol(ProtocolMatch),
    /// Either endpoint's port.
    Port(u16),
    /// The source port.
    FromPort(u16),
    /// The destination port (after service translation).
    ToPort(u16),
    /// The HTTP response status; flows without one never match.
    HttpStatus(StatusMatch),
    /// The HTTP request method, compared case-insensitively; held upper-case.
    HttpMethod(String),
    /// The HTTP request path, by unanchored regular expression.
    HttpPath(PathPattern),
    /// Flows recorded at or after this time.
    Since(SystemTime),
    /// Flows recorded at or before this time.
    Until(SystemTime),
}

/// A pod name prefix, optionally within one namespace (`NS/POD` or `POD`, like `hubble --pod`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSelector {
    /// `None` matches pods in any namespace.
    pub namespace: Option<String>,
    /// Empty matches every pod of the namespace (`NS/`).
    pub prefix: String,
}
/// The protocols `--protocol` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolMatch {
    /// TCP, including HTTP flows, which run over TCP (as Hubble's L7 flows carry their L4).
    Tcp,
    Udp,
    /// HTTP/1.1 or HTTP/2.
    Http,
    Http1,
    Http2,
}

/// An HTTP status condition: `200`, `4xx` or `5xx+` (500 and above).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatch {
    Exact(u16),
    /// The hundreds digit (1-5).
    Class(u16),
    /// This class (1-5) and every one above.
    ClassAndAbove(u16),
}

/// A regular expression over the HTTP path, found anywhere in it (as Hubble's `--http-path`).
#[derive(Debug, Clone)]
pub struct PathPattern(regex::Regex);
// === impl Criterion ===

impl Criterion {
    /// The flag and query-string name for this kind of criterion.
    pub fn key(&self) -> &'static str {
        match self {
            Criterion::Cluster(_) => "cluster",
            Criterion::Namespace(_) => "namespace",
            Criterion::FromNamespace(_) => "from-namespace",
            Criterion::ToNamespace(_) => "to-namespace",
            Criterion::Pod(_) => "pod",
            Criterion::FromPod(_) => "from-pod",
            Criterion::ToPod(_) => "to-pod",
            Criterion::Label(_) => "label",
            Criterion::FromLabel(_) => "from-label",
            Criterion::ToLabel(_) => "to-label",
            Criterion::Verdict(_) => "verdict",
            Criterion::Protocol(_) => "protocol",
            Criterion::Port(_) => "port",
            Criterion::FromPort(_) => "from-port",
            Criterion::ToPort(_) => "to-port",
            Criterion::HttpStatus(_) => "http-status",
            Criterion::HttpMethod(_) => "http-method",
            Criterion::HttpPath(_) => "http-path",
            Criterion::Since(_) => "since",
            Criterion::Until(_) => "until",
        }
    }

    /// Parses `value` for the criterion named `key` (the inverse of [`Criterion::key`] and
    /// `Display`). A duration for `since`/`until` means that long before now.
    pub fn parse(key: &str, value: &str) -> Result<Self, FilterError> {
        Self::parse_at(key, value, SystemTime::now())
    }

    /// [`Criterion::parse`] with durations counted back from `now`.
    pub fn parse_at(key: &str, value: &str, now: SystemTime) -> Result<Self, FilterError> {
        // The `&'static str` errors carry, resolved once.
        let Some(k) = KEYS.into_iter().find(|k| *k == key) else {
            return Err(FilterError::UnknownKey { key: key.into() });
        };
        let c = match k {
            "cluster" => Criterion::Cluster(non_empty(k, value)?.into()),
            "namespace" => Criterion::Namespace(non_empty(k, value)?.into()),
            "from-namespace" => Criterion::FromNamespace(non_empty(k, value)?.into()),
            "to-namespace" => Criterion::ToNamespace(non_empty(k, value)?.into()),
            "pod" => Criterion::Pod(PodSelector::parse(k, value)?),
            "from-pod" => Criterion::FromPod(PodSelector::parse(k, value)?),
            "to-pod" => Criterion::ToPod(PodSelector::parse(k, value)?),
            "label" => Criterion::Label(parse_labels(k, value)?),
            "from-label" => Criterion::FromLabel(parse_labels(k, value)?),
            "to-label" => Criterion::ToLabel(parse_labels(k, value)?),
            "verdict" => Criterion::Verdict(value.parse()?),
            "protocol" => Criterion::Protocol(ProtocolMatch::parse(k, value)?),
            "port" => Criterion::Port(parse_port(k, value)?),
            "from-port" => Criterion::FromPort(parse_port(k, value)?),
            "to-port" => Criterion::ToPort(parse_port(k, value)?),
            "http-status" => Criterion::HttpStatus(StatusMatch::parse(k, value)?),
            "http-method" => Criterion::HttpMethod(parse_method(k, value)?),
            "http-path" => Criterion::HttpPath(PathPattern::parse(k, value)?),
            "since" => Criterion::Since(parse_time(k, value, now)?),
            _ => Criterion::Until(parse_time(k, value, now)?),
        };
        Ok(c)
    }

    /// Whether this single condition holds for `flow`.
    pub fn matches(&self, flow: &FlowRecord) -> bool {
        let (src, dst) = (&flow.source, &flow.destination);
        match self {
            Criterion::Cluster(c) => flow.cluster == *c || src.cluster == *c || dst.cluster == *c,
            Criterion::Namespace(ns) => src.namespace == *ns || dst.namespace == *ns,
            Criterion::FromNamespace(ns) => src.namespace == *ns,
            Criterion::ToNamespace(ns) => dst.namespace == *ns,
            Criterion::Pod(sel) => sel.matches(src) || sel.matches(dst),
            Criterion::FromPod(sel) => sel.matches(src),
            Criterion::ToPod(sel) => sel.matches(dst),
            Criterion::Label(sel) => labels_match(sel, src) || labels_match(sel, dst),
            Criterion::FromLabel(sel) => labels_match(sel, src),
            Criterion::ToLabel(sel) => labels_match(sel, dst),
            Criterion::Verdict(v) => flow.verdict == *v,
            Criterion::Protocol(p) => p.matches(&flow.protocol),
            Criterion::Port(p) => src.port == *p || dst.port == *p,
            Criterion::FromPort(p) => src.port == *p,
            Criterion::ToPort(p) => dst.port == *p,
            Criterion::HttpStatus(s) => flow
                .http
                .as_ref()
                .and_then(|h| h.status)
                .is_some_and(|code| s.matches(code)),
            Criterion::HttpMethod(m) => flow
                .http
                .as_ref()
                .is_some_and(|h| h.method.eq_ignore_ascii_case(m)),
            Criterion::HttpPath(re) => flow.http.as_ref().is_some_and(|h| re.0.is_match(&h.path)),
            Criterion::Since(t) => flow.time >= *t,
            Criterion::Until(t) => flow.time <= *t,
        }
    }
}

impl fmt::Display for Criterion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Criterion::Cluster(s)
            | Criterion::Namespace(s)
            | Criterion::FromNamespace(s)
            | Criterion::ToNamespace(s)
            | Criterion::HttpMethod(s) => f.write_str(s),
            Criterion::Pod(sel) | Criterion::FromPod(sel) | Criterion::ToPod(sel) => sel.fmt(f),
            Criterion::Label(sel) | Criterion::FromLabel(sel) | Criterion::ToLabel(sel) => {
                sel.fmt(f)
            }
            Criterion::Verdict(v) => f.write_str(verdict_name(*v)),
            Criterion::Protocol(p) => p.fmt(f),
            Criterion::Port(p) | Criterion::FromPort(p) | Criterion::ToPort(p) => p.fmt(f),
            Criterion::HttpStatus(s) => s.fmt(f),
            Criterion::HttpPath(re) => f.write_str(re.0.as_str()),
            Criterion::Since(t) | Criterion::Until(t) => f.write_str(&format_time(*t)),
        }
    }
}
fn parse_port(key: &'static str, value: &str) -> Result<u16, FilterError> {
    match non_empty(key, value)?.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(invalid(key, value, PORT_EXPECTED)),
    }
}

fn parse_method(key: &'static str, value: &str) -> Result<String, FilterError> {
    // An HTTP token (RFC 9110 `tchar`).
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !non_empty(key, value)?.bytes().all(tchar) {
        return Err(invalid(key, value, METHOD_EXPECTED));
    }
    Ok(value.to_ascii_uppercase())
}
// === impl PodSelector ===

impl PodSelector {
    /// Whether `peer` is a pod this selector names.
    pub fn matches(&self, peer: &FlowPeer) -> bool {
        !peer.pod.is_empty()
            && peer.pod.starts_with(&self.prefix)
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| *ns == peer.namespace)
    }

    /// Parses `[NS/]POD` for the flag `key`.
    fn parse(key: &'static str, s: &str) -> Result<Self, FilterError> {
        let sel = match s.split_once('/') {
            Some((ns, prefix)) => PodSelector {
                namespace: Some(non_empty(key, ns)?.into()),
                prefix: prefix.into(),
            },
            None => PodSelector {
                namespace: None,
                prefix: non_empty(key, s)?.into(),
            },
        };
        Ok(sel)
    }
}

impl FromStr for PodSelector {
    type Err = FilterError;

    fn from_str(s: &str) -> Result<Self, FilterError> {
        Self::parse("pod", s)
    }
}

impl fmt::Display for PodSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.prefix),
            None => f.write_str(&self.prefix),
        }
    }
}
// === label selectors ===

/// Parses a label selector (kubectl's syntax) for the flag `key`.
fn parse_labels(key: &'static str, s: &str) -> Result<Selector, FilterError> {
    if s.trim().is_empty() {
        return Err(FilterError::EmptyValue { key });
    }
    s.parse().map_err(|_| invalid(key, s, LABEL_EXPECTED))
}

/// Whether `peer`'s labels satisfy every requirement of `sel`.
fn labels_match(sel: &Selector, peer: &FlowPeer) -> bool {
    sel.matches_with(|key| peer_label(peer, key))
}

/// The value of label `key` on `peer`. Flows carry a pod's Kubernetes labels without source
/// prefixes: a `k8s:` key or one of any source looks there, other sources find nothing. Pods
/// also carry Cilium's namespace and cluster labels.
fn peer_label<'a>(peer: &'a FlowPeer, key: &LabelKey) -> Option<&'a str> {
    if key.source.as_deref().is_some_and(|s| s != "k8s") {
        return None;
    }
    let key = key.key.as_str();
    if let Some(v) = peer.labels.get(key) {
        return Some(v);
    }
    if peer.pod.is_empty() {
        return None;
    }
    match key {
        "io.kubernetes.pod.namespace" => Some(&peer.namespace),
        "io.cilium.k8s.policy.cluster" if !peer.cluster.is_empty() => Some(&peer.cluster),
        _ => None,
    }
}

// === impl ProtocolMatch ===

impl ProtocolMatch {
    const ALL: [ProtocolMatch; 5] = [
        ProtocolMatch::Tcp,
        ProtocolMatch::Udp,
        ProtocolMatch::Http,
        ProtocolMatch::Http1,
        ProtocolMatch::Http2,
    ];

    fn name(self) -> &'static str {
        match self {
            ProtocolMatch::Tcp => "TCP",
            ProtocolMatch::Udp => "UDP",
            ProtocolMatch::Http => "HTTP",
            ProtocolMatch::Http1 => "HTTP/1.1",
            ProtocolMatch::Http2 => "HTTP/2",
        }
    }

    /// Whether a flow whose `protocol` field is `p` matches.
    pub fn matches(self, p: &str) -> bool {
        let is = |name: &str| p.eq_ignore_ascii_case(name);
        match self {
            ProtocolMatch::Tcp => is("TCP") || ProtocolMatch::Http.matches(p),
            ProtocolMatch::Udp => is("UDP"),
            ProtocolMatch::Http => {
                ProtocolMatch::Http1.matches(p) || ProtocolMatch::Http2.matches(p)
            }
            ProtocolMatch::Http1 => is("HTTP/1.1") || is("HTTP/1.0"),
            ProtocolMatch::Http2 => is("HTTP/2") || is("HTTP/2.0"),
        }
    }

    fn parse(key: &'static str, s: &str) -> Result<Self, FilterError> {
        let s = non_empty(key, s)?;
        Self::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| invalid(key, s, PROTOCOL_EXPECTED))
    }
}

impl fmt::Display for ProtocolMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// === impl StatusMatch ===

impl StatusMatch {
    /// Whether response status `code` matches.
    pub fn matches(self, code: u16) -> bool {
        match self {
            StatusMatch::Exact(c) => code == c,
            StatusMatch::Class(c) => code / 100 == c,
            StatusMatch::ClassAndAbove(c) => code / 100 >= c,
        }
    }

    fn parse(key: &'static str, s: &str) -> Result<Self, FilterError> {
        let class = |d: u8| (b'1'..=b'5').contains(&d).then(|| u16::from(d - b'0'));
        let m = match non_empty(key, s)?.to_ascii_lowercase().as_bytes() {
            [d, b'x', b'x'] => class(*d).map(StatusMatch::Class),
            [d, b'x', b'x', b'+'] => class(*d).map(StatusMatch::ClassAndAbove),
            [a, b, c] if [a, b, c].iter().all(|d| d.is_ascii_digit()) => s
                .parse()
                .ok()
                .filter(|n| (100..=599).contains(n))
                .map(StatusMatch::Exact),
            _ => None,
        };
        m.ok_or_else(|| invalid(key, s, STATUS_EXPECTED))
    }
}

impl fmt::Display for StatusMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusMatch::Exact(c) => write!(f, "{c}"),
            StatusMatch::Class(c) => write!(f, "{c}xx"),
            StatusMatch::ClassAndAbove(c) => write!(f, "{c}xx+"),
        }
    }
}

// === impl PathPattern ===

impl PathPattern {
    fn parse(key: &'static str, s: &str) -> Result<Self, FilterError> {
        regex::RegexBuilder::new(non_empty(key, s)?)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map(PathPattern)
            .map_err(|e| {
                // Syntax errors span lines (pattern, caret, reason); keep the reason.
                let msg = e.to_string();
                let reason = msg.lines().last().unwrap_or_default().trim();
                let reason = reason.strip_prefix("error: ").unwrap_or(reason);
                invalid(key, s, format!("invalid regular expression: {reason}"))
            })
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl PartialEq for PathPattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for PathPattern {}
