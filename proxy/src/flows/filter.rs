//! Which flows `strait observe` shows, with Hubble's combining rules: values of one criterion OR
//! together, different criteria AND.
//!
//! A new filter is a new [`Criterion`] variant with its key, parse and match arms; the combining
//! logic, the CLI and the admin query string pick it up through [`Criterion::parse`] and
//! [`Criterion::key`].

use std::fmt;
use std::mem::discriminant;
use std::str::FromStr;

use super::{FlowPeer, FlowRecord, Verdict};

/// Every verdict, in the order help text lists them.
pub const VERDICTS: [Verdict; 4] = [
    Verdict::Forwarded,
    Verdict::Dropped,
    Verdict::Error,
    Verdict::Audit,
];

/// A filter criterion that could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("unknown flow filter `{key}`")]
    UnknownKey { key: String },
    #[error("flow filter `{key}` needs a value")]
    EmptyValue { key: &'static str },
    #[error("unknown verdict `{value}` (expected FORWARDED, DROPPED, ERROR or AUDIT)")]
    Verdict { value: String },
}

/// One condition on a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Criterion {
    /// The recording node's cluster or either endpoint's cluster.
    Cluster(String),
    /// Either endpoint's namespace.
    Namespace(String),
    /// Either endpoint's pod, by name prefix.
    Pod(PodSelector),
    Verdict(Verdict),
}

/// A pod name prefix, optionally within one namespace (`NS/POD` or `POD`, like `hubble --pod`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSelector {
    /// `None` matches pods in any namespace.
    pub namespace: Option<String>,
    /// Empty matches every pod of the namespace (`NS/`).
    pub prefix: String,
}

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

// === impl Criterion ===

impl Criterion {
    /// The flag and query-string name for this kind of criterion.
    pub fn key(&self) -> &'static str {
        match self {
            Criterion::Cluster(_) => "cluster",
            Criterion::Namespace(_) => "namespace",
            Criterion::Pod(_) => "pod",
            Criterion::Verdict(_) => "verdict",
        }
    }

    /// Parses `value` for the criterion named `key` (the inverse of [`Criterion::key`] and `Display`).
    pub fn parse(key: &str, value: &str) -> Result<Self, FilterError> {
        let c = match key {
            "cluster" => Criterion::Cluster(non_empty("cluster", value)?.into()),
            "namespace" => Criterion::Namespace(non_empty("namespace", value)?.into()),
            "pod" => Criterion::Pod(non_empty("pod", value)?.parse()?),
            "verdict" => Criterion::Verdict(value.parse()?),
            _ => return Err(FilterError::UnknownKey { key: key.into() }),
        };
        Ok(c)
    }

    /// Whether this single condition holds for `flow`.
    pub fn matches(&self, flow: &FlowRecord) -> bool {
        match self {
            Criterion::Cluster(c) => {
                flow.cluster == *c || flow.source.cluster == *c || flow.destination.cluster == *c
            }
            Criterion::Namespace(ns) => {
                flow.source.namespace == *ns || flow.destination.namespace == *ns
            }
            Criterion::Pod(sel) => sel.matches(&flow.source) || sel.matches(&flow.destination),
            Criterion::Verdict(v) => flow.verdict == *v,
        }
    }
}

fn non_empty<'a>(key: &'static str, value: &'a str) -> Result<&'a str, FilterError> {
    if value.is_empty() {
        return Err(FilterError::EmptyValue { key });
    }
    Ok(value)
}

impl fmt::Display for Criterion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Criterion::Cluster(s) | Criterion::Namespace(s) => f.write_str(s),
            Criterion::Pod(sel) => sel.fmt(f),
            Criterion::Verdict(v) => f.write_str(verdict_name(*v)),
        }
    }
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
}

impl FromStr for PodSelector {
    type Err = FilterError;

    fn from_str(s: &str) -> Result<Self, FilterError> {
        let sel = match s.split_once('/') {
            Some((ns, prefix)) => PodSelector {
                namespace: Some(non_empty("pod", ns)?.into()),
                prefix: prefix.into(),
            },
            None => PodSelector {
                namespace: None,
                prefix: non_empty("pod", s)?.into(),
            },
        };
        Ok(sel)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::test_flow as flow;

    fn peer(cluster: &str, ns: &str, pod: &str) -> FlowPeer {
        FlowPeer {
            cluster: cluster.into(),
            namespace: ns.into(),
            pod: pod.into(),
            ..FlowPeer::default()
        }
    }

    /// Fixed flows, named so a test can list which pass.
    fn flows() -> Vec<(&'static str, FlowRecord)> {
        let mk = |name, rec_cluster: &str, src: FlowPeer, dst: FlowPeer, verdict| {
            let mut f = flow(1, 1);
            f.cluster = rec_cluster.into();
            f.source = src;
            f.destination = dst;
            f.verdict = verdict;
            (name, f)
        };
        vec![
            // demo/frontend -> demo/backend in c1, forwarded.
            mk(
                "fe-be",
                "c1",
                peer("c1", "demo", "frontend-abc"),
                peer("c1", "demo", "backend-xyz"),
                Verdict::Forwarded,
            ),
            // demo/frontend -> other/db in c1, dropped.
            mk(
                "fe-db",
                "c1",
                peer("c1", "demo", "frontend-abc"),
                peer("c1", "other", "db-0"),
                Verdict::Dropped,
            ),
            // Recorded in c2: other/client -> c3's demo/backend, forwarded.
            mk(
                "cl-be3",
                "c2",
                peer("c2", "other", "client-1"),
                peer("c3", "demo", "backend-remote"),
                Verdict::Forwarded,
            ),
            // Recorded in c2: kube-system/coredns -> outside world, error.
            mk(
                "dns-out",
                "c2",
                peer("c2", "kube-system", "coredns-7d"),
                FlowPeer::default(),
                Verdict::Error,
            ),
        ]
    }

    fn filter(pairs: &[(&str, &str)]) -> FlowFilter {
        let mut f = FlowFilter::new();
        for (k, v) in pairs {
            match Criterion::parse(k, v) {
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
        let cases: &[Case] = &[
            (&[], &["fe-be", "fe-db", "cl-be3", "dns-out"]),
            // Cluster: recording node's or either endpoint's.
            (&[("cluster", "c1")], &["fe-be", "fe-db"]),
            (&[("cluster", "c2")], &["cl-be3", "dns-out"]),
            (&[("cluster", "c3")], &["cl-be3"]),
            (&[("cluster", "c9")], &[]),
            // Namespace: either end.
            (&[("namespace", "demo")], &["fe-be", "fe-db", "cl-be3"]),
            (&[("namespace", "other")], &["fe-db", "cl-be3"]),
            // Pod: prefix, either end, optional namespace.
            (&[("pod", "backend")], &["fe-be", "cl-be3"]),
            (&[("pod", "demo/backend-r")], &["cl-be3"]),
            (&[("pod", "other/backend")], &[]),
            (&[("pod", "kube-system/")], &["dns-out"]),
            (&[("pod", "frontend-abc")], &["fe-be", "fe-db"]),
            // Verdict, case-insensitive.
            (&[("verdict", "dropped")], &["fe-db"]),
            (&[("verdict", "FORWARDED")], &["fe-be", "cl-be3"]),
            // Same kind ORs.
            (
                &[("verdict", "dropped"), ("verdict", "error")],
                &["fe-db", "dns-out"],
            ),
            (
                &[("namespace", "kube-system"), ("namespace", "other")],
                &["fe-db", "cl-be3", "dns-out"],
            ),
            (&[("pod", "db-"), ("pod", "coredns")], &["fe-db", "dns-out"]),
            // Different kinds AND.
            (&[("cluster", "c1"), ("verdict", "forwarded")], &["fe-be"]),
            (&[("namespace", "demo"), ("cluster", "c2")], &["cl-be3"]),
            (&[("pod", "frontend"), ("namespace", "other")], &["fe-db"]),
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
        ];
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
            Criterion::parse("verdict", "allowed"),
            Err(FilterError::Verdict {
                value: "allowed".into()
            })
        );
    }

    #[test]
    fn display_round_trips_through_parse() {
        for (k, v) in [
            ("cluster", "c1"),
            ("namespace", "demo"),
            ("pod", "demo/fe"),
            ("pod", "fe"),
            ("pod", "demo/"),
            ("verdict", "AUDIT"),
        ] {
            let c = Criterion::parse(k, v).expect("parses");
            assert_eq!((c.key(), c.to_string().as_str()), (k, v));
        }
    }
}
