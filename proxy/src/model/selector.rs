//! Kubernetes label selectors: one implementation for policies and for `strait observe -l`.
//!
//! Two written forms build the same [`Selector`]: the API object (`matchLabels`,
//! `matchExpressions`, as CiliumNetworkPolicy and NetworkPolicy carry it) through
//! [`Selector::parse`], and kubectl's string syntax (`app=web,tier!=db,env in (a,b),!canary`)
//! through `FromStr`. `Display` writes the string syntax back.
//!
//! Keys may carry a Cilium source prefix (`k8s:app`, `reserved:host`). Identity labels carry a
//! source too: a key without one (or with `any:`) matches the key from any source; `k8s:` or
//! `reserved:` match only that source, as in Cilium. Label maps without sources (a flow's pod
//! labels) are looked up by the caller through [`Selector::matches_with`].

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::Labels;

/// A selector that could not be parsed: where (a YAML field path, or the requirement as written)
/// and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {reason}")]
pub struct SelectorError {
    pub at: String,
    pub reason: String,
}

impl SelectorError {
    fn new(at: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            at: at.into(),
            reason: reason.into(),
        }
    }
}

// === impl LabelKey ===

/// A label key as a selector names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LabelKey {
    /// `k8s`, `reserved`, …; `None` matches any source.
    pub source: Option<String>,
    pub key: String,
}

impl LabelKey {
    /// Parses `key`, `any:key`, `k8s:key` or `reserved:key`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let (source, key) = match raw.split_once(':') {
            Some(("any", k)) => (None, k),
            Some((s @ ("k8s" | "reserved" | "cidr" | "unspec"), k)) => (Some(s.to_string()), k),
            Some((other, _)) => {
                return Err(format!(
                    "label source {other:?} is not supported (use k8s:, reserved: or none)"
                ));
            }
            None => (None, raw),
        };
        if key.is_empty() {
            return Err(format!("label key {raw:?} is empty"));
        }
        Ok(Self {
            source,
            key: key.to_string(),
        })
    }

    /// A key of the Kubernetes source.
    pub fn k8s(key: &str) -> Self {
        Self {
            source: Some("k8s".into()),
            key: key.to_string(),
        }
    }

    /// The value of this key in `labels` (identity labels, with source prefixes).
    pub fn value_in<'a>(&self, labels: &'a Labels) -> Option<&'a str> {
        match &self.source {
            Some(s) => labels.get(&format!("{s}:{}", self.key)).map(String::as_str),
            None => labels.iter().find_map(|(k, v)| {
                let bare = k.split_once(':').map_or(k.as_str(), |(_, b)| b);
                (bare == self.key).then_some(v.as_str())
            }),
        }
    }
}

impl fmt::Display for LabelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(s) => write!(f, "{s}:{}", self.key),
            None => f.write_str(&self.key),
        }
    }
}

// === impl Requirement ===

/// How a requirement compares a label's value, with Kubernetes' operators: `matchLabels` entries
/// and `key=value` are `Equals`; `key!=value` is `NotEquals`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Operator {
    Equals(String),
    /// Holds when the label is absent too, as in Kubernetes.
    NotEquals(String),
    In(Vec<String>),
    /// Holds when the label is absent too, as in Kubernetes.
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Requirement {
    pub key: LabelKey,
    pub op: Operator,
}

impl Requirement {
    /// Whether the requirement holds when its key has `value` (`None`: the label is absent).
    pub fn holds(&self, value: Option<&str>) -> bool {
        match &self.op {
            Operator::Equals(v) => value == Some(v.as_str()),
            Operator::NotEquals(v) => value != Some(v.as_str()),
            Operator::In(values) => value.is_some_and(|v| values.iter().any(|x| x == v)),
            Operator::NotIn(values) => value.is_none_or(|v| values.iter().all(|x| x != v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

impl FromStr for Requirement {
    type Err = SelectorError;

    /// One requirement in kubectl's syntax: `k`, `!k`, `k=v`, `k==v`, `k!=v`, `k in (v1,v2)`,
    /// `k notin (v1,v2)`; blanks around keys and values are ignored.
    fn from_str(s: &str) -> Result<Self, SelectorError> {
        let s = s.trim();
        let bad = |reason: &str| SelectorError::new(s, reason);
        let (key, op) = if let Some(key) = s.strip_prefix('!') {
            (key, Operator::DoesNotExist)
        } else if let Some((head, rest)) = s.split_once('(') {
            let values = rest
                .strip_suffix(')')
                .ok_or_else(|| bad("text after the value list"))?;
            if values.trim().is_empty() {
                return Err(bad("empty value list"));
            }
            let values = values
                .split(',')
                .map(|v| label_value(s, v.trim()))
                .collect::<Result<Vec<_>, _>>()?;
            let mut words = head.split_whitespace();
            let (key, op) = match (words.next(), words.next(), words.next()) {
                (Some(key), Some(op), None) => (key, op),
                _ => return Err(bad("expected KEY in (…) or KEY notin (…)")),
            };
            match op {
                "in" => (key, Operator::In(values)),
                "notin" => (key, Operator::NotIn(values)),
                _ => return Err(bad("operator must be in or notin")),
            }
        } else if let Some((key, v)) = s.split_once("!=") {
            (key, Operator::NotEquals(label_value(s, v.trim())?))
        } else if let Some((key, v)) = s.split_once("==").or_else(|| s.split_once('=')) {
            (key, Operator::Equals(label_value(s, v.trim())?))
        } else {
            (s, Operator::Exists)
        };
        let key = key.trim();
        let key_char = |b: u8| b.is_ascii_alphanumeric() || b"-_./:".contains(&b);
        if key.is_empty() || !key.bytes().all(key_char) {
            return Err(bad("invalid label key"));
        }
        let key = LabelKey::parse(key).map_err(|r| bad(&r))?;
        Ok(Self { key, op })
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = &self.key;
        match &self.op {
            Operator::Equals(v) => write!(f, "{key}={v}"),
            Operator::NotEquals(v) => write!(f, "{key}!={v}"),
            Operator::In(vs) => write!(f, "{key} in ({})", vs.join(",")),
            Operator::NotIn(vs) => write!(f, "{key} notin ({})", vs.join(",")),
            Operator::Exists => write!(f, "{key}"),
            Operator::DoesNotExist => write!(f, "!{key}"),
        }
    }
}

/// A label value in the string syntax: possibly empty, alphanumerics with `-`, `_` and `.`.
fn label_value(requirement: &str, v: &str) -> Result<String, SelectorError> {
    let ok = v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !ok {
        return Err(SelectorError::new(
            requirement,
            format!("invalid label value {v:?}"),
        ));
    }
    Ok(v.into())
}

// === impl Selector ===

/// All requirements must hold; no requirement selects every endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

impl Selector {
    /// Whether `labels` (identity labels) satisfy every requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.matches_with(|key| key.value_in(labels))
    }

    /// Whether every requirement holds, `value` giving each key's value (`None` when absent).
    pub fn matches_with<'a>(&self, value: impl Fn(&LabelKey) -> Option<&'a str>) -> bool {
        self.requirements.iter().all(|r| r.holds(value(&r.key)))
    }

    /// Whether some requirement names `key` (any source), e.g. the namespace label.
    pub fn mentions(&self, key: &str) -> bool {
        self.requirements.iter().any(|r| r.key.key == key)
    }

    /// Adds `key=value`.
    pub fn require(&mut self, key: LabelKey, value: &str) {
        self.requirements.push(Requirement {
            key,
            op: Operator::Equals(value.to_string()),
        });
    }

    /// Parses `matchLabels` and `matchExpressions`; `field` prefixes error paths.
    pub fn parse(
        field: &str,
        match_labels: Option<&BTreeMap<String, String>>,
        match_expressions: Option<&[RawExpression]>,
    ) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for (k, v) in match_labels.into_iter().flatten() {
            let key = LabelKey::parse(k)
                .map_err(|r| SelectorError::new(format!("{field}.matchLabels.{k}"), r))?;
            requirements.push(Requirement {
                key,
                op: Operator::Equals(v.clone()),
            });
        }
        for (i, e) in match_expressions.into_iter().flatten().enumerate() {
            let at = format!("{field}.matchExpressions[{i}]");
            let key =
                LabelKey::parse(&e.key).map_err(|r| SelectorError::new(format!("{at}.key"), r))?;
            let values = e.values.clone().unwrap_or_default();
            let op = match e.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(SelectorError::new(
                        format!("{at}.values"),
                        format!("operator {} needs at least one value", e.operator),
                    ));
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(SelectorError::new(
                        format!("{at}.values"),
                        format!("operator {} takes no values", e.operator),
                    ));
                }
                "In" => Operator::In(values),
                "NotIn" => Operator::NotIn(values),
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err(SelectorError::new(
                        format!("{at}.operator"),
                        format!("{other:?} is not one of In, NotIn, Exists, DoesNotExist"),
                    ));
                }
            };
            requirements.push(Requirement { key, op });
        }
        Ok(Self { requirements })
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    /// kubectl's syntax: comma-separated requirements, all of which must hold. Blank selects
    /// everything, as in Kubernetes.
    fn from_str(s: &str) -> Result<Self, SelectorError> {
        let requirements = if s.trim().is_empty() {
            Vec::new()
        } else {
            split_requirements(s)
                .ok_or_else(|| SelectorError::new(s, "parentheses do not balance or nest"))?
                .into_iter()
                .map(str::parse)
                .collect::<Result<_, _>>()?
        };
        Ok(Self { requirements })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            r.fmt(f)?;
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

/// A `matchExpressions` entry as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExpression {
    pub key: String,
    pub operator: String,
    #[serde(default)]
    pub values: Option<Vec<String>>,
}

#[cfg(test)]
mod tests;
