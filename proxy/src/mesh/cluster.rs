//! Cluster identity in the mesh: names and IDs as Cilium requires them, and the check run before
//! two clusters connect.

use std::fmt;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// Longest cluster name Cilium accepts.
pub const MAX_NAME_LEN: usize = 32;

/// A cluster name or ID that Cilium would not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterIdError {
    #[error("cluster name {name:?}: {why}")]
    BadName { name: String, why: &'static str },
    #[error("cluster {name}: ID {id} is out of range (1-255)")]
    BadId { name: String, id: u8 },
}

/// Why two clusters may not connect; the text is what `strait clustermesh connect` prints.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect cluster {a} to cluster {b}: {source}")]
    Invalid {
        a: ClusterId,
        b: ClusterId,
        #[source]
        source: ClusterIdError,
    },
    #[error("cannot connect cluster {a} to cluster {b}: both are named {name:?}")]
    SameName {
        a: ClusterId,
        b: ClusterId,
        name: String,
    },
    #[error("cannot connect cluster {a} to cluster {b}: both have cluster ID {id}")]
    SameId { a: ClusterId, b: ClusterId, id: u8 },
    #[error(
        "cannot connect cluster {a} to cluster {b}: pod CIDR {a_cidr} of {a} overlaps pod CIDR {b_cidr} of {b}"
    )]
    OverlappingCidrs {
        a: ClusterId,
        b: ClusterId,
        a_cidr: Ipv4Net,
        b_cidr: Ipv4Net,
    },
}

/// A cluster's mesh-wide name and ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClusterId {
    pub name: String,
    pub id: u8,
}

/// What is compared before two clusters connect: identity and pod address space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSpec {
    pub cluster: ClusterId,
    pub pod_cidrs: Vec<Ipv4Net>,
}

// === impl ClusterId ===

impl ClusterId {
    /// A validated cluster identity.
    pub fn new(name: &str, id: u8) -> Result<Self, ClusterIdError> {
        let c = Self {
            name: name.to_string(),
            id,
        };
        c.validate()?;
        Ok(c)
    }

    /// Checks the name and ID against Cilium's rules: name of 1-32 lowercase alphanumerics or
    /// '-', starting and ending alphanumeric; ID 1-255.
    pub fn validate(&self) -> Result<(), ClusterIdError> {
        validate_name(&self.name)?;
        if self.id == 0 {
            return Err(ClusterIdError::BadId {
                name: self.name.clone(),
                id: self.id,
            });
        }
        Ok(())
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (ID {})", self.name, self.id)
    }
}

impl From<&crate::model::ClusterInfo> for ClusterId {
    fn from(c: &crate::model::ClusterInfo) -> Self {
        Self {
            name: c.name.clone(),
            id: c.id,
        }
    }
}

/// Checks a cluster name against Cilium's rules.
pub fn validate_name(name: &str) -> Result<(), ClusterIdError> {
    let bad = |why| {
        Err(ClusterIdError::BadName {
            name: name.to_string(),
            why,
        })
    };
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = name.as_bytes();
    match (bytes.first(), bytes.last()) {
        (None, _) | (_, None) => bad("must not be empty"),
        _ if bytes.len() > MAX_NAME_LEN => bad("longer than 32 characters"),
        _ if !bytes.iter().all(|&b| alnum(b) || b == b'-') => {
            bad("only lowercase letters, digits and '-' are allowed")
        }
        (Some(&f), Some(&l)) if !alnum(f) || !alnum(l) => {
            bad("must start and end with a lowercase letter or digit")
        }
        _ => Ok(()),
    }
}

/// Whether clusters `a` and `b` may connect: both valid, different names, different IDs, and no
/// pod CIDR of one overlapping a pod CIDR of the other.
pub fn check_connect(a: &ClusterSpec, b: &ClusterSpec) -> Result<(), ConnectError> {
    let (ca, cb) = (a.cluster.clone(), b.cluster.clone());
    for c in [&a.cluster, &b.cluster] {
        c.validate().map_err(|source| ConnectError::Invalid {
            a: ca.clone(),
            b: cb.clone(),
            source,
        })?;
    }
    if ca.name == cb.name {
        let name = ca.name.clone();
        return Err(ConnectError::SameName { a: ca, b: cb, name });
    }
    if ca.id == cb.id {
        let id = ca.id;
        return Err(ConnectError::SameId { a: ca, b: cb, id });
    }
    for x in &a.pod_cidrs {
        if let Some(y) = b.pod_cidrs.iter().find(|y| overlaps(x, y)) {
            return Err(ConnectError::OverlappingCidrs {
                a: ca,
                b: cb,
                a_cidr: *x,
                b_cidr: *y,
            });
        }
    }
    Ok(())
}

fn overlaps(x: &Ipv4Net, y: &Ipv4Net) -> bool {
    x.contains(&y.network()) || y.contains(&x.network())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spec(name: &str, id: u8, cidrs: &[&str]) -> ClusterSpec {
        ClusterSpec {
            cluster: ClusterId {
                name: name.into(),
                id,
            },
            pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn names_follow_cilium_rules() {
        for ok in ["c1", "a", "cluster-east-1", &"a".repeat(32)] {
            assert!(ClusterId::new(ok, 1).is_ok(), "{ok}");
        }
        for bad in ["", "C1", "-c1", "c1-", "c_1", "c.1", &"a".repeat(33)] {
            let e = ClusterId::new(bad, 1).unwrap_err();
            assert!(matches!(e, ClusterIdError::BadName { .. }), "{bad}: {e}");
        }
        assert_eq!(
            ClusterId::new("c1", 0).unwrap_err().to_string(),
            "cluster c1: ID 0 is out of range (1-255)"
        );
        assert!(ClusterId::new("c1", 255).is_ok());
    }

    #[test]
    fn connecting_refuses_duplicates_and_overlaps_naming_both_clusters() {
        let c1 = spec("c1", 1, &["10.1.0.0/16"]);
        assert!(check_connect(&c1, &spec("c2", 2, &["10.2.0.0/16"])).is_ok());
        assert_eq!(
            check_connect(&c1, &spec("c1", 2, &["10.2.0.0/16"]))
                .unwrap_err()
                .to_string(),
            "cannot connect cluster c1 (ID 1) to cluster c1 (ID 2): both are named \"c1\""
        );
        assert_eq!(
            check_connect(&c1, &spec("c2", 1, &["10.2.0.0/16"]))
                .unwrap_err()
                .to_string(),
            "cannot connect cluster c1 (ID 1) to cluster c2 (ID 1): both have cluster ID 1"
        );
        let e = check_connect(&c1, &spec("c2", 2, &["10.3.0.0/16", "10.1.128.0/17"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot connect cluster c1 (ID 1) to cluster c2 (ID 2): pod CIDR 10.1.0.0/16 of \
             c1 (ID 1) overlaps pod CIDR 10.1.128.0/17 of c2 (ID 2)"
        );
        let e = check_connect(&c1, &spec("C2", 2, &[])).unwrap_err();
        assert!(e.to_string().contains("cluster name \"C2\""), "{e}");
    }
}
