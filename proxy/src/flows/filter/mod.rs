//! Which flows `strait observe` shows, with Hubble's combining rules: values of one criterion OR
//! together, different criteria AND.
//!
//! A new filter is a new [`Criterion`] variant with its key, parse, display and match arms; the
//! combining logic, the CLI and the admin query string pick it up through [`Criterion::parse`],
//! [`Criterion::key`] and `Display`, which [`Criterion::parse`] reads back: a filter travels to
//! the agents as `key=value` pairs.

mod criteria;
#[cfg(test)]
mod tests;
mod time;

pub use criteria::{Criterion, PodSelector};

use std::mem::discriminant;
use std::str::FromStr;

use super::{FlowRecord, Verdict};

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
