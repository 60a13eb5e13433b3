//! The `/flows` query string, owned here so the server's parser and the client's encoder agree.

use super::{Criterion, FilterError, FlowFilter};

/// A request for flows: how much history, whether to keep streaming, and which flows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowsQuery {
    /// How many of the most recent matching flows to send first; `None` sends the whole ring.
    pub last: Option<usize>,
    /// Keep the response open and stream flows as they are recorded.
    pub follow: bool,
    /// Applied before `last`, so `last` counts matching flows.
    pub filter: FlowFilter,
}

/// A `/flows` query string the server cannot use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    #[error("`last={value}` is not a number")]
    Last { value: String },
    #[error("`follow={value}` is not true or false")]
    Follow { value: String },
    #[error("`{pair}` is not valid percent-encoding")]
    Encoding { pair: String },
    #[error(transparent)]
    Filter(#[from] FilterError),
}

impl FlowsQuery {
    /// Parses the query part of a `/flows` URI (without the `?`).
    pub fn parse(query: Option<&str>) -> Result<Self, QueryError> {
        let mut q = FlowsQuery::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (k, v) = match (decode(k), decode(v)) {
                (Some(k), Some(v)) => (k, v),
                _ => return Err(QueryError::Encoding { pair: pair.into() }),
            };
            match k.as_str() {
                "last" => {
                    let n = v.parse().map_err(|_| QueryError::Last { value: v })?;
                    q.last = Some(n);
                }
                "follow" => {
                    q.follow = match v.as_str() {
                        "" | "true" | "1" => true,
                        "false" | "0" => false,
                        _ => return Err(QueryError::Follow { value: v }),
                    }
                }
                _ => q.filter.push(Criterion::parse(&k, &v)?),
            }
        }
        Ok(q)
    }

    /// The query string [`FlowsQuery::parse`] reads back as `self`.
    pub fn to_query_string(&self) -> String {
        let mut pairs = Vec::new();
        if let Some(n) = self.last {
            pairs.push(format!("last={n}"));
        }
        if self.follow {
            pairs.push("follow=true".to_string());
        }
        for c in self.filter.criteria() {
            pairs.push(format!("{}={}", c.key(), encode(&c.to_string())));
        }
        pairs.join("&")
    }
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hi = char::from(bytes.next()?).to_digit(16)?;
                let lo = char::from(bytes.next()?).to_digit(16)?;
                out.push(u8::try_from(hi * 16 + lo).ok()?);
            }
            b'+' => out.push(b' '),
            _ => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::Verdict;

    #[test]
    fn round_trips() {
        let q = FlowsQuery {
            last: Some(20),
            follow: true,
            filter: FlowFilter::new()
                .with(Criterion::parse("pod", "demo/front end").expect("pod"))
                .with(Criterion::Verdict(Verdict::Dropped))
                .with(Criterion::Cluster("c1".into())),
        };
        let s = q.to_query_string();
        assert_eq!(
            s,
            "last=20&follow=true&pod=demo%2Ffront%20end&verdict=DROPPED&cluster=c1"
        );
        assert_eq!(FlowsQuery::parse(Some(&s)), Ok(q));
    }

    #[test]
    fn every_filter_round_trips() {
        let mut filter = FlowFilter::new();
        for (k, v) in [
            ("cluster", "c1"),
            ("namespace", "demo"),
            ("from-namespace", "demo"),
            ("to-namespace", "kube-system"),
            ("pod", "demo/fe"),
            ("from-pod", "demo/"),
            ("to-pod", "back end"),
            ("label", "k8s:app=web,tier!=db,!canary"),
            ("from-label", "env in (a,b)"),
            ("to-label", "zone notin (x),any:team"),
            ("verdict", "FORWARDED"),
            ("protocol", "HTTP/1.1"),
            ("protocol", "UDP"),
            ("port", "80"),
            ("from-port", "41000"),
            ("to-port", "8080"),
            ("http-status", "200"),
            ("http-status", "4xx"),
            ("http-status", "5xx+"),
            ("http-method", "GET"),
            ("http-path", r"^/api/v[12]/(a|b)\?id=\d+&x=%20+"),
            ("since", "2024-11-25T06:01:02Z"),
            ("until", "2024-11-25T06:01:02.123Z"),
        ] {
            filter.push(Criterion::parse(k, v).unwrap_or_else(|e| panic!("{k}={v}: {e}")));
        }
        let q = FlowsQuery {
            last: None,
            follow: false,
            filter,
        };
        let s = q.to_query_string();
        // Only unreserved characters travel unencoded: `+` is a space to the decoder.
        assert!(
            s.contains("&http-status=5xx%2B&") && s.contains("&to-pod=back%20end&"),
            "{s}"
        );
        assert!(s.contains("&since=2024-11-25T06%3A01%3A02Z&"), "{s}");
        assert_eq!(FlowsQuery::parse(Some(&s)), Ok(q.clone()));
        // Each pair reads back on its own, with its key.
        for (pair, c) in s.split('&').zip(q.filter.criteria()) {
            let one = FlowsQuery::parse(Some(pair)).expect("one pair");
            assert_eq!(one.filter.criteria(), std::slice::from_ref(c), "{pair}");
        }
        // A relative time is made absolute before it travels.
        let q = FlowsQuery::parse(Some("since=5m")).expect("duration");
        let s = q.to_query_string();
        assert!(s.starts_with("since=20"), "{s}");
        assert_eq!(FlowsQuery::parse(Some(&s)), Ok(q));
    }

    #[test]
    fn defaults_and_errors() {
        assert_eq!(FlowsQuery::parse(None), Ok(FlowsQuery::default()));
        assert_eq!(
            FlowsQuery::parse(Some("follow&last=3")),
            Ok(FlowsQuery {
                last: Some(3),
                follow: true,
                filter: FlowFilter::new()
            })
        );
        assert_eq!(
            FlowsQuery::parse(Some("last=x")),
            Err(QueryError::Last { value: "x".into() })
        );
        assert_eq!(
            FlowsQuery::parse(Some("follow=maybe")),
            Err(QueryError::Follow {
                value: "maybe".into()
            })
        );
        assert_eq!(
            FlowsQuery::parse(Some("pod=%G1")),
            Err(QueryError::Encoding {
                pair: "pod=%G1".into()
            })
        );
        assert!(matches!(
            FlowsQuery::parse(Some("colour=red")),
            Err(QueryError::Filter(FilterError::UnknownKey { .. }))
        ));
        let err = FlowsQuery::parse(Some("last=5&http-status=6xx")).expect_err("bad status");
        assert_eq!(
            err.to_string(),
            "--http-status 6xx: expected NNN, Nxx or Nxx+"
        );
        assert!(matches!(
            FlowsQuery::parse(Some("http-path=%28")),
            Err(QueryError::Filter(FilterError::Invalid {
                key: "http-path",
                ..
            }))
        ));
    }
}
