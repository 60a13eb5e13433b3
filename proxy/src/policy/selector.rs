//! Label selectors as Cilium evaluates them against identity labels.
//!
//! Identity labels carry a source prefix (`k8s:app`, `reserved:host`). A selector key without a
//! source (or with `any:`) matches the key from any source; `k8s:` or `reserved:` match only that
//! source, as in Cilium.

use serde::{Deserialize, Serialize};

use crate::model::Labels;

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

impl std::fmt::Display for LabelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Some(s) => write!(f, "{s}:{}", self.key),
            None => f.write_str(&self.key),
        }
    }
}

/// A `matchExpressions` operator (or a `matchLabels` entry, which is `In` with one value).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Operator {
    In(Vec<String>),
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
    fn matches(&self, labels: &Labels) -> bool {
        let value = self.key.value_in(labels);
        match &self.op {
            Operator::In(values) => value.is_some_and(|v| values.iter().any(|x| x == v)),
            // Kubernetes semantics: an absent label is "not in" any set.
            Operator::NotIn(values) => value.is_none_or(|v| values.iter().all(|x| x != v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// All requirements must hold; no requirement selects every endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

impl Selector {
    /// Whether `labels` (identity labels) satisfy every requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Whether some requirement names `key` (any source), e.g. the namespace label.
    pub fn mentions(&self, key: &str) -> bool {
        self.requirements.iter().any(|r| r.key.key == key)
    }

    /// Adds `k8s:key=value`.
    pub fn require(&mut self, key: LabelKey, value: &str) {
        self.requirements.push(Requirement {
            key,
            op: Operator::In(vec![value.to_string()]),
        });
    }

    /// Parses `matchLabels` and `matchExpressions`; `field` prefixes error paths.
    pub fn parse(
        field: &str,
        match_labels: Option<&std::collections::BTreeMap<String, String>>,
        match_expressions: Option<&[RawExpression]>,
    ) -> Result<Self, super::FieldError> {
        let mut requirements = Vec::new();
        for (k, v) in match_labels.into_iter().flatten() {
            let key = LabelKey::parse(k)
                .map_err(|r| super::FieldError::new(format!("{field}.matchLabels.{k}"), r))?;
            requirements.push(Requirement {
                key,
                op: Operator::In(vec![v.clone()]),
            });
        }
        for (i, e) in match_expressions.into_iter().flatten().enumerate() {
            let at = format!("{field}.matchExpressions[{i}]");
            let key = LabelKey::parse(&e.key)
                .map_err(|r| super::FieldError::new(format!("{at}.key"), r))?;
            let values = e.values.clone().unwrap_or_default();
            let op = match e.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(super::FieldError::new(
                        format!("{at}.values"),
                        format!("operator {} needs at least one value", e.operator),
                    ));
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(super::FieldError::new(
                        format!("{at}.values"),
                        format!("operator {} takes no values", e.operator),
                    ));
                }
                "In" => Operator::In(values),
                "NotIn" => Operator::NotIn(values),
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err(super::FieldError::new(
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

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("{}");
        }
        let parts: Vec<String> = self
            .requirements
            .iter()
            .map(|r| match &r.op {
                Operator::In(v) if v.len() == 1 => format!("{}={}", r.key, v[0]),
                Operator::In(v) => format!("{} in ({})", r.key, v.join(",")),
                Operator::NotIn(v) => format!("{} notin ({})", r.key, v.join(",")),
                Operator::Exists => r.key.to_string(),
                Operator::DoesNotExist => format!("!{}", r.key),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
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
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn source_prefixes_select_as_cilium_does() {
        let l = labels(&[("k8s:app", "web"), ("reserved:host", "")]);
        assert_eq!(
            LabelKey::parse("app").unwrap().value_in(&l),
            Some("web"),
            "no source matches any source"
        );
        assert_eq!(
            LabelKey::parse("k8s:app").unwrap().value_in(&l),
            Some("web")
        );
        assert_eq!(
            LabelKey::parse("any:app").unwrap().value_in(&l),
            Some("web")
        );
        assert_eq!(LabelKey::parse("reserved:app").unwrap().value_in(&l), None);
        assert!(LabelKey::parse("container:app").is_err());
    }

    #[test]
    fn not_in_matches_absent_labels() {
        let r = Requirement {
            key: LabelKey::parse("tier").unwrap(),
            op: Operator::NotIn(vec!["db".into()]),
        };
        assert!(r.matches(&labels(&[])));
        assert!(r.matches(&labels(&[("k8s:tier", "web")])));
        assert!(!r.matches(&labels(&[("k8s:tier", "db")])));
    }
}
