//! Which flows `strait observe` shows, with Hubble's combining rules: values of one criterion OR
//! together, different criteria AND.
//!
//! A new filter is a new [`Criterion`] variant with its key, parse, display and match arms; the
//! combining logic, the CLI and the admin query string pick it up through [`Criterion::parse`],
//! [`Criterion::key`] and `Display`, which [`Criterion::parse`] reads back: a filter travels to
//! the agents as `key=value` pairs.

use std::fmt;
use std::mem::discriminant;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{FlowPeer, FlowRecord, Verdict};

/// Every verdict, in the order help text lists them.
pub const VERDICTS: [Verdict; 4] = [
    Verdict::Forwarded,
    Verdict::Dropped,
    Verdict::Error,
    Verdict::Audit,
];

/// Every criterion key: the query-string names, and the `strait observe` flags without `--`.
pub const KEYS: [&str; 20] = [
    "cluster",
    "namespace",
    "from-namespace",
    "to-namespace",
    "pod",
    "from-pod",
    "to-pod",
    "label",
    "from-label",
    "to-label",
    "verdict",
    "protocol",
    "port",
    "from-port",
    "to-port",
    "http-status",
    "http-method",
    "http-path",
    "since",
    "until",
];

const LABEL_EXPECTED: &str = "expected KEY, !KEY, KEY=VALUE, KEY!=VALUE, KEY in (V1,V2) or \
                              KEY notin (V1,V2), comma-separated";
const PROTOCOL_EXPECTED: &str = "expected TCP, UDP, HTTP, HTTP/1.1 or HTTP/2";
const PORT_EXPECTED: &str = "expected a port number (1-65535)";
const STATUS_EXPECTED: &str = "expected NNN, Nxx or Nxx+";
const METHOD_EXPECTED: &str = "expected an HTTP method such as GET or POST";
const TIME_EXPECTED: &str =
    "expected an RFC 3339 time (2024-11-25T06:01:02Z) or a duration ago (30s, 5m, 1h30m)";

/// Longest compiled `http-path` expression accepted; agents compile what clients send.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A filter criterion that could not be parsed. Messages name the flag (`--KEY`), which is also
/// the query-string key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("unknown flow filter `{key}`")]
    UnknownKey { key: String },
    #[error("--{key} needs a value")]
    EmptyValue { key: &'static str },
    #[error("--verdict {value}: expected FORWARDED, DROPPED, ERROR or AUDIT")]
    Verdict { value: String },
    #[error("--{key} {value}: {expected}")]
    Invalid {
        key: &'static str,
        value: String,
        expected: String,
    },
}

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
    /// Either endpoint's labels.
    Label(LabelSelector),
    /// The source's labels.
    FromLabel(LabelSelector),
    /// The destination's labels.
    ToLabel(LabelSelector),
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

/// A Kubernetes label selector (`app=web,tier!=db,env in (a,b),!canary`); every requirement
/// must hold. Keys may carry Cilium's `k8s:` or `any:` source prefix, which matching ignores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<LabelRequirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct LabelRequirement {
    /// As written, source prefix included.
    key: String,
    op: LabelOp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelOp {
    Exists,
    NotExists,
    Equals(String),
    /// Holds when the label is absent too, as in Kubernetes.
    NotEquals(String),
    In(Vec<String>),
    /// Holds when the label is absent too, as in Kubernetes.
    NotIn(Vec<String>),
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

/// A set of criteria: all kinds must match, any value of a kind will do. Empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowFilter {
    criteria: Vec<Criterion>,
}

/// The name `Verdict` has in JSON and on the command line.
pub fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Forwarded => "FORWARDED",
        Verdict::Dropped => "DROPPED",
        Verdict::Error => "ERROR",
        Verdict::Audit => "AUDIT",
    }
}

impl FromStr for Verdict {
    type Err = FilterError;

    fn from_str(s: &str) -> Result<Self, FilterError> {
        VERDICTS
            .into_iter()
            .find(|v| verdict_name(*v).eq_ignore_ascii_case(s))
            .ok_or_else(|| FilterError::Verdict { value: s.into() })
    }
}

// === impl FlowFilter ===

impl FlowFilter {
    /// A filter matching every flow.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a criterion (builder style).
    pub fn with(mut self, c: Criterion) -> Self {
        self.criteria.push(c);
        self
    }

    /// Adds a criterion.
    pub fn push(&mut self, c: Criterion) {
        self.criteria.push(c);
    }

    /// The criteria in the order they were added.
    pub fn criteria(&self) -> &[Criterion] {
        &self.criteria
    }

    /// Whether the filter lets every flow through.
    pub fn is_empty(&self) -> bool {
        self.criteria.is_empty()
    }

    /// Whether `flow` passes: for every kind of criterion present, at least one of its values matches.
    pub fn matches(&self, flow: &FlowRecord) -> bool {
        // A failing criterion is forgiven when another value of the same kind matches. Filters
        // hold a handful of criteria, so the quadratic scan beats building groups.
        self.criteria.iter().all(|c| {
            c.matches(flow)
                || self
                    .criteria
                    .iter()
                    .any(|o| discriminant(o) == discriminant(c) && o.matches(flow))
        })
    }
}

impl Extend<Criterion> for FlowFilter {
    fn extend<I: IntoIterator<Item = Criterion>>(&mut self, iter: I) {
        self.criteria.extend(iter);
    }
}

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
            "label" => Criterion::Label(LabelSelector::parse(k, value)?),
            "from-label" => Criterion::FromLabel(LabelSelector::parse(k, value)?),
            "to-label" => Criterion::ToLabel(LabelSelector::parse(k, value)?),
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
            Criterion::Label(sel) => sel.matches(src) || sel.matches(dst),
            Criterion::FromLabel(sel) => sel.matches(src),
            Criterion::ToLabel(sel) => sel.matches(dst),
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

fn non_empty<'a>(key: &'static str, value: &'a str) -> Result<&'a str, FilterError> {
    if value.is_empty() {
        return Err(FilterError::EmptyValue { key });
    }
    Ok(value)
}

fn invalid(key: &'static str, value: &str, expected: impl Into<String>) -> FilterError {
    FilterError::Invalid {
        key,
        value: value.into(),
        expected: expected.into(),
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

/// An RFC 3339 time (any offset) or a duration before `now`.
fn parse_time(key: &'static str, value: &str, now: SystemTime) -> Result<SystemTime, FilterError> {
    let value = non_empty(key, value)?.trim();
    let t = match humantime::parse_duration(value) {
        Ok(ago) => now.checked_sub(ago),
        Err(_) => parse_rfc3339(value),
    };
    // RFC 3339 as written back to agents covers years 1970 to 9999.
    let last = UNIX_EPOCH + Duration::from_secs(253_402_300_799);
    t.filter(|t| *t >= UNIX_EPOCH && *t <= last)
        .ok_or_else(|| invalid(key, value, TIME_EXPECTED))
}

/// RFC 3339 with `Z` or a numeric offset (humantime alone takes only UTC).
fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.to_ascii_uppercase();
    let b = s.as_bytes();
    let n = b.len();
    if n <= 6 || !matches!(b[n - 6], b'+' | b'-') || b[n - 3] != b':' {
        return humantime::parse_rfc3339(&s).ok();
    }
    let two = |i: usize| {
        let (x, y) = (b[i], b[i + 1]);
        (x.is_ascii_digit() && y.is_ascii_digit())
            .then(|| u64::from(x - b'0') * 10 + u64::from(y - b'0'))
    };
    let (hh, mm) = (two(n - 5)?, two(n - 2)?);
    if hh > 23 || mm > 59 {
        return None;
    }
    // `n - 6` holds an ASCII sign, so it is a character boundary.
    let utc = humantime::parse_rfc3339(&format!("{}Z", &s[..n - 6])).ok()?;
    let offset = Duration::from_secs(hh * 3600 + mm * 60);
    // Local time is UTC plus the offset.
    if b[n - 6] == b'+' {
        utc.checked_sub(offset)
    } else {
        utc.checked_add(offset)
    }
}

/// RFC 3339 in UTC with as many fractional digits as needed (none, 3, 6 or 9).
fn format_time(t: SystemTime) -> String {
    let nanos = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let formatted = if nanos == 0 {
        humantime::format_rfc3339_seconds(t)
    } else if nanos.is_multiple_of(1_000_000) {
        humantime::format_rfc3339_millis(t)
    } else if nanos.is_multiple_of(1_000) {
        humantime::format_rfc3339_micros(t)
    } else {
        humantime::format_rfc3339_nanos(t)
    };
    formatted.to_string()
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

// === impl LabelSelector ===

impl LabelSelector {
    /// Whether every requirement holds for `peer`'s labels.
    pub fn matches(&self, peer: &FlowPeer) -> bool {
        self.requirements.iter().all(|r| {
            let value = peer_label(peer, &r.key);
            match &r.op {
                LabelOp::Exists => value.is_some(),
                LabelOp::NotExists => value.is_none(),
                LabelOp::Equals(v) => value == Some(v.as_str()),
                LabelOp::NotEquals(v) => value != Some(v.as_str()),
                LabelOp::In(vs) => value.is_some_and(|l| vs.iter().any(|v| v == l)),
                LabelOp::NotIn(vs) => value.is_none_or(|l| vs.iter().all(|v| v != l)),
            }
        })
    }

    /// Parses a selector for the flag `key`.
    fn parse(key: &'static str, s: &str) -> Result<Self, FilterError> {
        if s.trim().is_empty() {
            return Err(FilterError::EmptyValue { key });
        }
        let requirements = split_requirements(s)
            .and_then(|parts| {
                parts
                    .into_iter()
                    .map(|p| LabelRequirement::parse(p.trim()))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| invalid(key, s, LABEL_EXPECTED))?;
        Ok(Self { requirements })
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let key = &r.key;
            match &r.op {
                LabelOp::Exists => write!(f, "{key}")?,
                LabelOp::NotExists => write!(f, "!{key}")?,
                LabelOp::Equals(v) => write!(f, "{key}={v}")?,
                LabelOp::NotEquals(v) => write!(f, "{key}!={v}")?,
                LabelOp::In(vs) => write!(f, "{key} in ({})", vs.join(","))?,
                LabelOp::NotIn(vs) => write!(f, "{key} notin ({})", vs.join(","))?,
            }
        }
        Ok(())
    }
}

/// Splits at commas outside parentheses; `None` if parentheses do not balance or nest.
fn split_requirements(s: &str) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    let mut open = false;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' if open => return None,
            '(' => open = true,
            ')' if !open => return None,
            ')' => open = false,
            ',' if !open => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if open {
        return None;
    }
    parts.push(&s[start..]);
    Some(parts)
}

impl LabelRequirement {
    fn parse(s: &str) -> Option<Self> {
        let (key, op) = if let Some(key) = s.strip_prefix('!') {
            (key, LabelOp::NotExists)
        } else if let Some((head, rest)) = s.split_once('(') {
            let values = rest.strip_suffix(')')?;
            if values.trim().is_empty() {
                return None;
            }
            let values = values
                .split(',')
                .map(|v| label_value(v.trim()))
                .collect::<Option<Vec<_>>>()?;
            let mut words = head.split_whitespace();
            let (key, op) = (words.next()?, words.next()?);
            if words.next().is_some() {
                return None;
            }
            match op {
                "in" => (key, LabelOp::In(values)),
                "notin" => (key, LabelOp::NotIn(values)),
                _ => return None,
            }
        } else if let Some((key, v)) = s.split_once("!=") {
            (key, LabelOp::NotEquals(label_value(v.trim())?))
        } else if let Some((key, v)) = s.split_once("==").or_else(|| s.split_once('=')) {
            (key, LabelOp::Equals(label_value(v.trim())?))
        } else {
            (s, LabelOp::Exists)
        };
        let key = key.trim();
        let key_char = |b: u8| b.is_ascii_alphanumeric() || b"-_./:".contains(&b);
        if key.is_empty() || !key.bytes().all(key_char) {
            return None;
        }
        Some(Self {
            key: key.into(),
            op,
        })
    }
}

/// A label value: possibly empty, alphanumerics with `-`, `_` and `.`.
fn label_value(v: &str) -> Option<String> {
    let ok = v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    ok.then(|| v.into())
}

/// The value of label `key` on `peer`, ignoring a `k8s:`/`any:` source prefix. Pods also carry
/// Cilium's namespace and cluster labels.
fn peer_label<'a>(peer: &'a FlowPeer, key: &str) -> Option<&'a str> {
    let key = key
        .strip_prefix("k8s:")
        .or_else(|| key.strip_prefix("any:"))
        .unwrap_or(key);
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

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::flows::HttpFlow;
    use crate::flows::test_flow as flow;

    /// 2024-11-25T06:00:00Z; flow N of [`flows`] is recorded N seconds later.
    const T0: u64 = 1_732_514_400;

    /// What `5m` and friends count back from in the table: 2024-11-25T06:00:10Z.
    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(T0 + 10)
    }

    fn peer(cluster: &str, ns: &str, pod: &str, port: u16, labels: &[(&str, &str)]) -> FlowPeer {
        FlowPeer {
            ip: Some(IpAddr::V4(Ipv4Addr::new(198, 18, 16, 5))),
            port,
            cluster: cluster.into(),
            namespace: ns.into(),
            pod: pod.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..FlowPeer::default()
        }
    }

    fn http(method: &str, path: &str, status: Option<u16>) -> Option<HttpFlow> {
        Some(HttpFlow {
            method: method.into(),
            path: path.into(),
            host: None,
            status,
            latency_us: 100,
        })
    }

    /// Fixed flows, named so a test can list which pass; the Nth is recorded at T0 + N s.
    fn flows() -> Vec<(&'static str, FlowRecord)> {
        let fe = |port| peer("c1", "demo", "frontend-abc", port, &[("app", "frontend")]);
        let be = |port| {
            peer(
                "c1",
                "demo",
                "backend-xyz",
                port,
                &[("app", "backend"), ("tier", "api")],
            )
        };
        let db = || peer("c1", "other", "db-0", 5432, &[("app", "db")]);
        let mut out = Vec::new();
        let mut mk = |name, rec_cluster: &str, src, dst, verdict, protocol: &str, h| {
            let n = u64::try_from(out.len()).expect("few flows") + 1;
            let mut f = flow(T0 + n, 1);
            f.cluster = rec_cluster.into();
            f.source = src;
            f.destination = dst;
            f.verdict = verdict;
            f.protocol = protocol.into();
            f.http = h;
            out.push((name, f));
        };
        // demo/frontend -> demo/backend in c1, an HTTP/1.1 request answered 200.
        mk(
            "fe-be",
            "c1",
            fe(41000),
            be(8080),
            Verdict::Forwarded,
            "HTTP/1.1",
            http("GET", "/api/items?id=1", Some(200)),
        );
        // demo/frontend -> other/db in c1, dropped in the kernel.
        mk(
            "fe-db",
            "c1",
            fe(41001),
            db(),
            Verdict::Dropped,
            "TCP",
            None,
        );
        // Recorded in c2: other/client -> c3's demo/backend, HTTP/2 answered 503.
        mk(
            "cl-be3",
            "c2",
            peer("c2", "other", "client-1", 42000, &[("app", "client")]),
            peer(
                "c3",
                "demo",
                "backend-remote",
                8080,
                &[("app", "backend"), ("tier", "api")],
            ),
            Verdict::Forwarded,
            "HTTP/2",
            http("POST", "/api/orders", Some(503)),
        );
        // Recorded in c2: kube-system/coredns -> outside world over UDP, error.
        mk(
            "dns-out",
            "c2",
            peer(
                "c2",
                "kube-system",
                "coredns-7d",
                53000,
                &[("k8s-app", "kube-dns")],
            ),
            FlowPeer {
                ip: Some(IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8))),
                port: 53,
                ..FlowPeer::default()
            },
            Verdict::Error,
            "UDP",
            None,
        );
        // demo/frontend -> demo/backend in c1, an HTTP/1.1 request denied by L7 policy.
        mk(
            "fe-admin",
            "c1",
            fe(41002),
            be(8080),
            Verdict::Dropped,
            "HTTP/1.1",
            http("DELETE", "/admin/users", Some(403)),
        );
        // demo/backend -> other/db in c1, audited, an HTTP request never answered.
        mk(
            "be-db",
            "c1",
            be(43000),
            db(),
            Verdict::Audit,
            "HTTP/1.1",
            http("get", "/healthz", None),
        );
        out
    }

    fn filter(pairs: &[(&str, &str)]) -> FlowFilter {
        let mut f = FlowFilter::new();
        for (k, v) in pairs {
            match Criterion::parse_at(k, v, now()) {
                Ok(c) => f.push(c),
                Err(e) => panic!("{k}={v}: {e}"),
            }
        }
        f
    }

    #[test]
    fn table() {
        // (criteria as key/value pairs, names of the flows that pass)
        type Case = (
            &'static [(&'static str, &'static str)],
            &'static [&'static str],
        );
        const ALL: &[&str] = &["fe-be", "fe-db", "cl-be3", "dns-out", "fe-admin", "be-db"];
        let cases: &[Case] = &[
            (&[], ALL),
            // Cluster: recording node's or either endpoint's.
            (
                &[("cluster", "c1")],
                &["fe-be", "fe-db", "fe-admin", "be-db"],
            ),
            (&[("cluster", "c2")], &["cl-be3", "dns-out"]),
            (&[("cluster", "c3")], &["cl-be3"]),
            (&[("cluster", "c9")], &[]),
            // Namespace: either end, or one side.
            (
                &[("namespace", "demo")],
                &["fe-be", "fe-db", "cl-be3", "fe-admin", "be-db"],
            ),
            (&[("namespace", "other")], &["fe-db", "cl-be3", "be-db"]),
            (
                &[("from-namespace", "demo")],
                &["fe-be", "fe-db", "fe-admin", "be-db"],
            ),
            (&[("from-namespace", "other")], &["cl-be3"]),
            (&[("to-namespace", "other")], &["fe-db", "be-db"]),
            (&[("to-namespace", "kube-system")], &[]),
            // Pod: prefix, either end or one side, optional namespace.
            (
                &[("pod", "backend")],
                &["fe-be", "cl-be3", "fe-admin", "be-db"],
            ),
            (&[("pod", "demo/backend-r")], &["cl-be3"]),
            (&[("pod", "other/backend")], &[]),
            (&[("pod", "kube-system/")], &["dns-out"]),
            (&[("pod", "frontend-abc")], &["fe-be", "fe-db", "fe-admin"]),
            (&[("from-pod", "backend")], &["be-db"]),
            (&[("to-pod", "backend")], &["fe-be", "cl-be3", "fe-admin"]),
            (&[("to-pod", "demo/")], &["fe-be", "cl-be3", "fe-admin"]),
            (&[("from-pod", "other/client")], &["cl-be3"]),
            (&[("to-pod", "frontend")], &[]),
            // Labels: equality, inequality (absent counts), existence, sets, source prefixes.
            (&[("label", "app=db")], &["fe-db", "be-db"]),
            (
                &[("label", "k8s:app=backend")],
                &["fe-be", "cl-be3", "fe-admin", "be-db"],
            ),
            (&[("from-label", "any:app==backend")], &["be-db"]),
            (&[("to-label", "tier")], &["fe-be", "cl-be3", "fe-admin"]),
            (&[("to-label", "!tier")], &["fe-db", "dns-out", "be-db"]),
            (
                &[("from-label", "app!=frontend")],
                &["cl-be3", "dns-out", "be-db"],
            ),
            (
                &[("from-label", "app in (client, backend)")],
                &["cl-be3", "be-db"],
            ),
            (&[("to-label", "app notin (backend,db)")], &["dns-out"]),
            (&[("label", "k8s-app=kube-dns")], &["dns-out"]),
            // Comma-separated requirements AND within one flag.
            (
                &[("to-label", "app=backend,tier=api")],
                &["fe-be", "cl-be3", "fe-admin"],
            ),
            (&[("to-label", "app=backend,tier=web")], &[]),
            // Cilium's namespace and cluster labels come with every pod.
            (
                &[("from-label", "k8s:io.kubernetes.pod.namespace=other")],
                &["cl-be3"],
            ),
            (
                &[("to-label", "io.cilium.k8s.policy.cluster=c3")],
                &["cl-be3"],
            ),
            // Verdict, case-insensitive.
            (&[("verdict", "dropped")], &["fe-db", "fe-admin"]),
            (&[("verdict", "FORWARDED")], &["fe-be", "cl-be3"]),
            (&[("verdict", "audit")], &["be-db"]),
            // Protocol: HTTP runs over TCP; HTTP means either version.
            (
                &[("protocol", "tcp")],
                &["fe-be", "fe-db", "cl-be3", "fe-admin", "be-db"],
            ),
            (&[("protocol", "UDP")], &["dns-out"]),
            (
                &[("protocol", "http")],
                &["fe-be", "cl-be3", "fe-admin", "be-db"],
            ),
            (&[("protocol", "HTTP/1.1")], &["fe-be", "fe-admin", "be-db"]),
            (&[("protocol", "http/2")], &["cl-be3"]),
            // Ports: either side or one side (the backend's, after service translation).
            (&[("port", "8080")], &["fe-be", "cl-be3", "fe-admin"]),
            (&[("port", "53")], &["dns-out"]),
            (&[("from-port", "41001")], &["fe-db"]),
            (&[("to-port", "5432")], &["fe-db", "be-db"]),
            (&[("to-port", "41001")], &[]),
            // HTTP status: exact, class, class and above; flows without a status never match.
            (&[("http-status", "200")], &["fe-be"]),
            (&[("http-status", "4xx")], &["fe-admin"]),
            (&[("http-status", "5XX")], &["cl-be3"]),
            (&[("http-status", "4xx+")], &["cl-be3", "fe-admin"]),
            (&[("http-status", "2xx+")], &["fe-be", "cl-be3", "fe-admin"]),
            (&[("http-status", "404")], &[]),
            // HTTP method: case-insensitive both ways.
            (&[("http-method", "get")], &["fe-be", "be-db"]),
            (&[("http-method", "DELETE")], &["fe-admin"]),
            // HTTP path: unanchored regular expression.
            (&[("http-path", "^/api/")], &["fe-be", "cl-be3"]),
            (&[("http-path", "users")], &["fe-admin"]),
            (&[("http-path", r"id=\d+$")], &["fe-be"]),
            (&[("http-path", "^/healthz$")], &["be-db"]),
            // Time: RFC 3339 (any offset) or a duration before now (T0 + 10 s), bounds included.
            (
                &[("since", "2024-11-25T06:00:03Z")],
                &["cl-be3", "dns-out", "fe-admin", "be-db"],
            ),
            (
                &[("until", "2024-11-25T06:00:03Z")],
                &["fe-be", "fe-db", "cl-be3"],
            ),
            (
                &[("since", "2024-11-25T07:00:05+01:00")],
                &["fe-admin", "be-db"],
            ),
            (&[("until", "2024-11-25t01:00:01.5-05:00")], &["fe-be"]),
            (&[("since", "6s")], &["dns-out", "fe-admin", "be-db"]),
            (&[("since", "1h")], ALL),
            (&[("until", "1m")], &[]),
            (
                &[("since", "2024-11-25T06:00:02Z"), ("until", "8s")],
                &["fe-db"],
            ),
            // Same kind ORs.
            (
                &[("verdict", "dropped"), ("verdict", "error")],
                &["fe-db", "dns-out", "fe-admin"],
            ),
            (
                &[("namespace", "kube-system"), ("namespace", "other")],
                &["fe-db", "cl-be3", "dns-out", "be-db"],
            ),
            (
                &[("pod", "db-"), ("pod", "coredns")],
                &["fe-db", "dns-out", "be-db"],
            ),
            (
                &[("http-status", "200"), ("http-status", "403")],
                &["fe-be", "fe-admin"],
            ),
            (
                &[("from-label", "app=client"), ("from-label", "k8s-app")],
                &["cl-be3", "dns-out"],
            ),
            (
                &[("to-port", "53"), ("to-port", "5432")],
                &["fe-db", "dns-out", "be-db"],
            ),
            (
                &[("protocol", "udp"), ("protocol", "http/2")],
                &["cl-be3", "dns-out"],
            ),
            // Different kinds AND.
            (&[("cluster", "c1"), ("verdict", "forwarded")], &["fe-be"]),
            (&[("namespace", "demo"), ("cluster", "c2")], &["cl-be3"]),
            (&[("pod", "frontend"), ("namespace", "other")], &["fe-db"]),
            (
                &[("from-pod", "frontend"), ("to-pod", "backend")],
                &["fe-be", "fe-admin"],
            ),
            (
                &[("from-namespace", "demo"), ("to-namespace", "demo")],
                &["fe-be", "fe-admin"],
            ),
            (
                &[
                    ("label", "app=backend"),
                    ("protocol", "tcp"),
                    ("http-method", "get"),
                ],
                &["fe-be", "be-db"],
            ),
            (&[("port", "8080"), ("verdict", "dropped")], &["fe-admin"]),
            (
                &[("http-path", "^/api"), ("http-status", "5xx+")],
                &["cl-be3"],
            ),
            (&[("to-label", "app=db"), ("since", "5s")], &["be-db"]),
            // `from` and `to` of one field are different kinds: they AND too.
            (&[("from-port", "41000"), ("to-port", "8080")], &["fe-be"]),
            (
                &[("from-label", "app=frontend"), ("to-label", "app=db")],
                &["fe-db"],
            ),
            // Both at once: (c1 OR c3) AND (FORWARDED) AND (demo).
            (
                &[
                    ("cluster", "c1"),
                    ("verdict", "forwarded"),
                    ("cluster", "c3"),
                    ("namespace", "demo"),
                ],
                &["fe-be", "cl-be3"],
            ),
            (
                &[("verdict", "error"), ("verdict", "dropped"), ("pod", "db")],
                &["fe-db"],
            ),
            // (GET OR POST) AND (2xx OR 5xx) AND HTTP/2.
            (
                &[
                    ("http-method", "GET"),
                    ("http-status", "2xx"),
                    ("http-method", "post"),
                    ("http-status", "5xx"),
                    ("protocol", "HTTP/2"),
                ],
                &["cl-be3"],
            ),
        ];
        assert!(cases.len() >= 40, "{} rows", cases.len());
        let flows = flows();
        for (pairs, want) in cases {
            let f = filter(pairs);
            let got: Vec<&str> = flows
                .iter()
                .filter(|(_, fl)| f.matches(fl))
                .map(|(n, _)| *n)
                .collect();
            assert_eq!(got, *want, "filter {pairs:?}");
        }
    }

    #[test]
    fn parse_errors_name_the_filter() {
        assert_eq!(
            Criterion::parse("colour", "red"),
            Err(FilterError::UnknownKey {
                key: "colour".into()
            })
        );
        assert_eq!(
            Criterion::parse("pod", ""),
            Err(FilterError::EmptyValue { key: "pod" })
        );
        assert_eq!(
            Criterion::parse("pod", "/x"),
            Err(FilterError::EmptyValue { key: "pod" })
        );
        assert_eq!(
            Criterion::parse("to-pod", "/x"),
            Err(FilterError::EmptyValue { key: "to-pod" })
        );
        assert_eq!(
            Criterion::parse("verdict", "allowed"),
            Err(FilterError::Verdict {
                value: "allowed".into()
            })
        );
        let message = |k: &str, v: &str| match Criterion::parse(k, v) {
            Ok(c) => panic!("{k}={v} parsed as {c:?}"),
            Err(e) => e.to_string(),
        };
        for (k, v, want) in [
            ("pod", "", "--pod needs a value"),
            ("from-namespace", "", "--from-namespace needs a value"),
            ("label", " ", "--label needs a value"),
            (
                "verdict",
                "allowed",
                "--verdict allowed: expected FORWARDED, DROPPED, ERROR or AUDIT",
            ),
            (
                "http-status",
                "6xx",
                "--http-status 6xx: expected NNN, Nxx or Nxx+",
            ),
            (
                "http-status",
                "99",
                "--http-status 99: expected NNN, Nxx or Nxx+",
            ),
            (
                "http-status",
                "600",
                "--http-status 600: expected NNN, Nxx or Nxx+",
            ),
            (
                "http-status",
                "4x",
                "--http-status 4x: expected NNN, Nxx or Nxx+",
            ),
            (
                "http-status",
                "5+",
                "--http-status 5+: expected NNN, Nxx or Nxx+",
            ),
            (
                "protocol",
                "sctp",
                "--protocol sctp: expected TCP, UDP, HTTP, HTTP/1.1 or HTTP/2",
            ),
            (
                "port",
                "http",
                "--port http: expected a port number (1-65535)",
            ),
            (
                "to-port",
                "0",
                "--to-port 0: expected a port number (1-65535)",
            ),
            (
                "from-port",
                "70000",
                "--from-port 70000: expected a port number (1-65535)",
            ),
            (
                "http-method",
                "GE T",
                "--http-method GE T: expected an HTTP method such as GET or POST",
            ),
            (
                "since",
                "yesterday",
                "--since yesterday: expected an RFC 3339 time (2024-11-25T06:01:02Z) or a \
                 duration ago (30s, 5m, 1h30m)",
            ),
        ] {
            assert_eq!(message(k, v), want, "{k}={v}");
        }
        for (k, v) in [
            ("until", "2024-13-01T00:00:00Z"),
            ("until", "2024-11-25T06:00:00+24:00"),
            ("since", "2024-11-25"),
            ("since", "-5m"),
            ("since", "100000y"),
            ("until", "9999-12-31T23:59:59-01:00"),
        ] {
            assert!(
                message(k, v).starts_with(&format!("--{k} {v}: expected an RFC 3339 time")),
                "{k}={v}"
            );
        }
        for v in [
            "app=a b",
            "=x",
            "app in ()",
            "app in (a,(b))",
            "app in (a",
            "app out (a)",
            "a,,b",
            "app=x)",
            "!",
        ] {
            let msg = message("from-label", v);
            assert!(
                msg.starts_with(&format!("--from-label {v}: expected KEY, !KEY")),
                "{v}: {msg}"
            );
        }
        let msg = message("http-path", "(unclosed");
        assert!(
            msg.starts_with("--http-path (unclosed: invalid regular expression: "),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn display_round_trips_through_parse() {
        for (k, v) in [
            ("cluster", "c1"),
            ("namespace", "demo"),
            ("from-namespace", "demo"),
            ("to-namespace", "kube-system"),
            ("pod", "demo/fe"),
            ("pod", "fe"),
            ("pod", "demo/"),
            ("from-pod", "demo/fe"),
            ("to-pod", "be"),
            ("label", "app=web"),
            (
                "label",
                "k8s:app=web,tier!=db,!canary,env in (a,b),zone notin (x),team",
            ),
            ("from-label", "any:app"),
            ("to-label", "app="),
            ("verdict", "AUDIT"),
            ("protocol", "TCP"),
            ("protocol", "UDP"),
            ("protocol", "HTTP"),
            ("protocol", "HTTP/1.1"),
            ("protocol", "HTTP/2"),
            ("port", "80"),
            ("from-port", "41000"),
            ("to-port", "65535"),
            ("http-status", "200"),
            ("http-status", "4xx"),
            ("http-status", "5xx+"),
            ("http-method", "GET"),
            ("http-path", r"^/api/v[12]/.*\?id=\d+"),
            ("since", "2024-11-25T06:01:02Z"),
            ("until", "2024-11-25T06:01:02.123Z"),
            ("until", "2024-11-25T06:01:02.123456789Z"),
        ] {
            let c = Criterion::parse(k, v).expect("parses");
            assert_eq!((c.key(), c.to_string().as_str()), (k, v));
        }
        // Every key is covered above.
        for k in KEYS {
            assert!(
                !matches!(
                    Criterion::parse(k, "x"),
                    Err(FilterError::UnknownKey { .. })
                ),
                "{k}"
            );
        }
    }

    #[test]
    fn values_are_normalised() {
        let show = |k: &str, v: &str| {
            Criterion::parse_at(k, v, now())
                .expect("parses")
                .to_string()
        };
        assert_eq!(show("protocol", "http/1.1"), "HTTP/1.1");
        assert_eq!(show("http-method", "delete"), "DELETE");
        assert_eq!(show("http-status", "4XX+"), "4xx+");
        assert_eq!(show("label", " app == web , k8s:tier "), "app=web,k8s:tier");
        assert_eq!(show("label", "env in ( a , b )"), "env in (a,b)");
        // Durations become absolute times, which is what travels to the agents.
        assert_eq!(show("since", "5m"), "2024-11-25T05:55:10Z");
        assert_eq!(show("until", "1h30m"), "2024-11-25T04:30:10Z");
        assert_eq!(
            show("since", "2024-11-25T08:00:00+02:00"),
            "2024-11-25T06:00:00Z"
        );
        assert_eq!(
            show("since", "2024-11-25T06:00:00+00:00"),
            "2024-11-25T06:00:00Z"
        );
    }
}
