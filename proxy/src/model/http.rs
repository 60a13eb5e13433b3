//! L7 HTTP rules: method, path and host as anchored regular expressions (Envoy matches the whole
//! value, as Cilium configures it), headers by presence or exact value.

use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The parts of a request policy rules look at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestInfo {
    pub method: String,
    /// Path with query, as Envoy matches `:path`.
    pub path: String,
    pub host: Option<String>,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
}

impl RequestInfo {
    fn header(&self, name: &str) -> impl Iterator<Item = &str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(move |(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A regular expression that must match the whole value.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    regex: Regex,
}

impl Pattern {
    /// Compiles `source`, anchored at both ends.
    pub fn new(source: &str) -> Result<Self, String> {
        let regex = Regex::new(&format!("^(?:{source})$"))
            .map_err(|e| format!("{source:?} is not a valid regular expression: {e}"))?;
        Ok(Self {
            source: source.to_string(),
            regex,
        })
    }

    /// Whether the whole of `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        self.regex.is_match(value)
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Pattern::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A header a rule requires: present, or present with exactly this value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderMatch {
    pub name: String,
    pub value: Option<String>,
}

/// One entry of `rules.http`: every given field must match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRule {
    /// YAML path, e.g. `spec.ingress[0].toPorts[0].rules.http[1]`.
    pub path: String,
    pub method: Option<Pattern>,
    pub url_path: Option<Pattern>,
    pub host: Option<Pattern>,
    pub headers: Vec<HeaderMatch>,
}

impl HttpRule {
    /// Whether `req` satisfies this rule.
    pub fn matches(&self, req: &RequestInfo) -> bool {
        self.method.as_ref().is_none_or(|m| m.matches(&req.method))
            && self.url_path.as_ref().is_none_or(|p| p.matches(&req.path))
            && self.host.as_ref().is_none_or(|h| {
                req.host.as_deref().is_some_and(|v| {
                    // Envoy matches the authority without a default port.
                    h.matches(v) || v.rsplit_once(':').is_some_and(|(n, _)| h.matches(n))
                })
            })
            && self.headers.iter().all(|hm| match &hm.value {
                None => req.header(&hm.name).next().is_some(),
                Some(v) => req.header(&hm.name).any(|x| x == v),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str) -> RequestInfo {
        RequestInfo {
            method: method.into(),
            path: path.into(),
            host: Some("backend:8080".into()),
            headers: vec![("x-team".into(), "blue".into())],
        }
    }

    #[test]
    fn patterns_are_anchored() {
        let p = Pattern::new("/public.*").unwrap();
        assert!(p.matches("/public/x"));
        assert!(!p.matches("/x/public"));
        assert!(Pattern::new("GET").unwrap().matches("GET"));
        assert!(!Pattern::new("GET").unwrap().matches("GETX"));
        assert!(Pattern::new("(").is_err());
    }

    #[test]
    fn every_field_must_match() {
        let rule = HttpRule {
            path: "x".into(),
            method: Some(Pattern::new("GET|HEAD").unwrap()),
            url_path: Some(Pattern::new("/api/.*").unwrap()),
            host: Some(Pattern::new("backend").unwrap()),
            headers: vec![HeaderMatch {
                name: "X-Team".into(),
                value: Some("blue".into()),
            }],
        };
        assert!(rule.matches(&req("GET", "/api/v1")));
        assert!(rule.matches(&req("HEAD", "/api/v1")));
        assert!(!rule.matches(&req("POST", "/api/v1")));
        assert!(!rule.matches(&req("GET", "/other")));
        let mut r = req("GET", "/api/v1");
        r.headers.clear();
        assert!(!rule.matches(&r));
    }
}
