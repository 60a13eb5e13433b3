//! The lab topology file: clusters, their IDs, address ranges and nodes.
//!
//! Parsed and validated at the border; everything after works on [`Topology`] with addresses
//! already assigned.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// The built-in topology: two clusters of two nodes, addresses from 198.18.0.0/15.
pub const DEFAULT_TOPOLOGY: &str = include_str!("default-topology.yaml");

/// Errors in a topology file; each names the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("{file}: cannot read")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {path}: {message}")]
    Parse {
        file: String,
        path: String,
        message: String,
    },
    #[error("{file}: {field}: {reason}")]
    Invalid {
        file: String,
        field: String,
        reason: String,
    },
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TopologyFile {
    #[serde(default)]
    underlay: Option<Ipv4Net>,
    clusters: Vec<ClusterFile>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ClusterFile {
    name: String,
    id: u8,
    #[serde(rename = "podCIDR")]
    pod_cidr: Ipv4Net,
    #[serde(rename = "serviceCIDR")]
    service_cidr: Ipv4Net,
    #[serde(default)]
    node_mask_size: Option<u8>,
    /// The agents' `mesh_ttl_secs` (default 30): tests of the TTL shorten it.
    #[serde(default, rename = "meshTTLSecs")]
    mesh_ttl_secs: Option<u64>,
    nodes: NodesFile,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum NodesFile {
    Count(u8),
    Names(Vec<String>),
}

/// A validated topology with every address assigned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub underlay: Ipv4Net,
    pub clusters: Vec<ClusterSpec>,
}

/// One cluster of the lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSpec {
    pub name: String,
    pub id: u8,
    pub pod_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
    pub nodes: Vec<NodeSpec>,
    /// Seconds a remote cluster may stay unreachable before this cluster's agents withdraw it
    /// (`None`: the agent's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_ttl_secs: Option<u64>,
}

/// One node of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub name: String,
    pub underlay_ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    pub gateway: Ipv4Addr,
}

/// Names must work as DNS labels and inside interface and namespace names.
fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl Topology {
    /// Reads and validates a topology file.
    pub fn from_file(path: &Path) -> Result<Self, TopologyError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            file: file.clone(),
            source,
        })?;
        Self::parse(&file, &text)
    }

    /// Parses and validates topology YAML; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, TopologyError> {
        let de = serde_yaml::Deserializer::from_str(text);
        let raw: TopologyFile =
            serde_path_to_error::deserialize(de).map_err(|e| TopologyError::Parse {
                file: file.to_string(),
                path: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        let invalid = |field: String, reason: String| TopologyError::Invalid {
            file: file.to_string(),
            field,
            reason,
        };
        let underlay = raw
            .underlay
            .unwrap_or_else(|| Ipv4Net::new(Ipv4Addr::new(198, 18, 0, 0), 24).expect("valid"));
        let mut underlay_hosts = underlay.hosts().skip(9);
        if raw.clusters.is_empty() {
            return Err(invalid(
                "clusters".into(),
                "at least one cluster is required".into(),
            ));
        }
        let mut names = BTreeSet::new();
        let mut clusters: Vec<ClusterSpec> = Vec::new();
        for (ci, c) in raw.clusters.iter().enumerate() {
            let field = |f: &str| format!("clusters[{ci}].{f}");
            if !valid_name(&c.name, 12) {
                return Err(invalid(
                    field("name"),
                    format!("{:?} must be 1-12 lowercase letters, digits or '-'", c.name),
                ));
            }
            if !names.insert(c.name.clone()) {
                return Err(invalid(
                    field("name"),
                    format!("duplicate cluster name {:?}", c.name),
                ));
            }
            if c.id == 0 {
                return Err(invalid(field("id"), "cluster IDs run from 1 to 255".into()));
            }
            // Clusters sharing an ID or overlapping pod CIDRs are islands (as independent
            // Cilium clusters are): they come up, and `clustermesh connect` refuses to join them
            // (see [`Topology::islands`]).
            for (what, net) in [("podCIDR", c.pod_cidr), ("serviceCIDR", c.service_cidr)] {
                if overlaps(&net, &underlay) {
                    return Err(invalid(
                        field(what),
                        format!("{net} overlaps the underlay {underlay}"),
                    ));
                }
            }
            if overlaps(&c.pod_cidr, &c.service_cidr) {
                return Err(invalid(
                    field("serviceCIDR"),
                    format!("{} overlaps the pod CIDR {}", c.service_cidr, c.pod_cidr),
                ));
            }
            let node_names: Vec<String> = match &c.nodes {
                NodesFile::Count(n) => (1..=*n).map(|i| format!("node-{i}")).collect(),
                NodesFile::Names(v) => v.clone(),
            };
            if node_names.is_empty() {
                return Err(invalid(
                    field("nodes"),
                    "a cluster needs at least one node".into(),
                ));
            }
            let mask = c.node_mask_size.unwrap_or(24);
            if mask < c.pod_cidr.prefix_len() || mask > 28 {
                return Err(invalid(
                    field("nodeMaskSize"),
                    format!(
                        "{mask} must lie between the pod CIDR's prefix {} and 28",
                        c.pod_cidr.prefix_len()
                    ),
                ));
            }
            let mut subnets = c
                .pod_cidr
                .subnets(mask)
                .map_err(|e| invalid(field("nodeMaskSize"), e.to_string()))?;
            let mut nodes = Vec::new();
            let mut seen = BTreeSet::new();
            for (ni, name) in node_names.iter().enumerate() {
                if !valid_name(name, 12) || !seen.insert(name.clone()) {
                    return Err(invalid(
                        format!("clusters[{ci}].nodes[{ni}]"),
                        format!(
                            "{name:?} must be a unique name of 1-12 lowercase letters, digits or '-'"
                        ),
                    ));
                }
                let pod_cidr = subnets.next().ok_or_else(|| {
                    invalid(
                        field("podCIDR"),
                        format!(
                            "{} has room for fewer than {} nodes",
                            c.pod_cidr,
                            node_names.len()
                        ),
                    )
                })?;
                let gateway = pod_cidr.hosts().next().ok_or_else(|| {
                    invalid(field("nodeMaskSize"), "node pod CIDRs are too small".into())
                })?;
                let underlay_ip = underlay_hosts.next().ok_or_else(|| {
                    invalid(
                        "underlay".into(),
                        format!("{underlay} has too few addresses"),
                    )
                })?;
                nodes.push(NodeSpec {
                    name: name.clone(),
                    underlay_ip,
                    pod_cidr,
                    gateway,
                });
            }
            clusters.push(ClusterSpec {
                name: c.name.clone(),
                id: c.id,
                pod_cidr: c.pod_cidr,
                service_cidr: c.service_cidr,
                nodes,
                mesh_ttl_secs: c.mesh_ttl_secs,
            });
        }
        Ok(Topology { underlay, clusters })
    }

    /// The cluster called `name`.
    pub fn cluster(&self, name: &str) -> Option<&ClusterSpec> {
        self.clusters.iter().find(|c| c.name == name)
    }

    /// Pairs of clusters that can never be connected: they share a cluster ID or their pod
    /// CIDRs overlap; each with the reason, for a warning when the lab comes up.
    pub fn islands(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for (i, a) in self.clusters.iter().enumerate() {
            for b in &self.clusters[i + 1..] {
                if a.id == b.id {
                    out.push((
                        a.name.clone(),
                        b.name.clone(),
                        format!("both have cluster ID {}", a.id),
                    ));
                }
                if overlaps(&a.pod_cidr, &b.pod_cidr) {
                    out.push((
                        a.name.clone(),
                        b.name.clone(),
                        format!("pod CIDRs {} and {} overlap", a.pod_cidr, b.pod_cidr),
                    ));
                }
            }
        }
        out
    }

    /// Whether nodes of cluster `from` route to the pods of cluster `to` over the underlay:
    /// always within a cluster; across clusters only when `to`'s pod CIDR is unambiguous
    /// (overlapping no other cluster's), so overlapping clusters stay islands reachable only
    /// from inside.
    pub fn routes_between(&self, from: &ClusterSpec, to: &ClusterSpec) -> bool {
        from.name == to.name
            || !self
                .clusters
                .iter()
                .any(|o| o.name != to.name && overlaps(&o.pod_cidr, &to.pod_cidr))
    }

    /// Every node of every cluster, with its cluster.
    pub fn all_nodes(&self) -> impl Iterator<Item = (&ClusterSpec, &NodeSpec)> {
        self.clusters
            .iter()
            .flat_map(|c| c.nodes.iter().map(move |n| (c, n)))
    }
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_topology_has_two_clusters_of_two_nodes() {
        let t = Topology::parse("default", DEFAULT_TOPOLOGY).unwrap();
        assert_eq!(t.clusters.len(), 2);
        assert_eq!((t.clusters[0].name.as_str(), t.clusters[0].id), ("c1", 1));
        assert_eq!((t.clusters[1].name.as_str(), t.clusters[1].id), ("c2", 2));
        let nodes: Vec<_> = t.all_nodes().collect();
        assert_eq!(nodes.len(), 4);
        let ips: BTreeSet<_> = nodes.iter().map(|(_, n)| n.underlay_ip).collect();
        assert_eq!(ips.len(), 4, "underlay addresses are unique");
        let n = &t.clusters[0].nodes[0];
        assert!(n.pod_cidr.contains(&n.gateway));
        assert!(t.clusters[0].pod_cidr.contains(&n.pod_cidr.network()));
    }

    #[test]
    fn shared_ids_and_overlapping_pod_cidrs_make_islands_without_routes_between() {
        let y = "clusters:\n- {name: a, id: 1, podCIDR: 10.1.0.0/16, serviceCIDR: 10.9.0.0/24, nodes: 2}\n- {name: b, id: 2, podCIDR: 10.1.128.0/20, serviceCIDR: 10.9.1.0/24, nodes: 1}\n- {name: c, id: 1, podCIDR: 10.3.0.0/16, serviceCIDR: 10.9.2.0/24, nodes: 1}\n";
        let t = Topology::parse("t.yaml", y).unwrap();
        assert_eq!(
            t.islands(),
            [
                (
                    "a".into(),
                    "b".into(),
                    "pod CIDRs 10.1.0.0/16 and 10.1.128.0/20 overlap".into()
                ),
                ("a".into(), "c".into(), "both have cluster ID 1".into()),
            ]
        );
        let [a, b, c] = [0, 1, 2].map(|i| &t.clusters[i]);
        assert!(t.routes_between(a, a), "within a cluster always");
        assert!(!t.routes_between(a, b) && !t.routes_between(c, b) && !t.routes_between(c, a));
        // A shared ID alone does not hide a cluster's addresses.
        assert!(t.routes_between(a, c) && t.routes_between(b, c));
        assert!(
            Topology::parse("default", DEFAULT_TOPOLOGY)
                .unwrap()
                .islands()
                .is_empty()
        );
    }

    #[test]
    fn duplicate_names_and_bad_fields_are_rejected_with_paths() {
        let y = "clusters:\n- {name: a, id: 1, podCIDR: 10.1.0.0/16, serviceCIDR: 10.9.0.0/24, nodes: 1}\n- {name: a, id: 2, podCIDR: 10.2.0.0/16, serviceCIDR: 10.9.1.0/24, nodes: 1}\n";
        let e = Topology::parse("t.yaml", y).unwrap_err().to_string();
        assert!(
            e.contains("clusters[1].name: duplicate cluster name \"a\""),
            "{e}"
        );
        let y =
            "clusters:\n- {name: a, id: 1, podCIDR: 10.1.0.0/16, serviceCIDR: nope, nodes: 1}\n";
        let e = Topology::parse("t.yaml", y).unwrap_err().to_string();
        assert!(e.contains("clusters[0].serviceCIDR"), "{e}");
        let y = "clusters:\n- {name: a, id: 0, podCIDR: 10.1.0.0/16, serviceCIDR: 10.9.0.0/24, nodes: 1}\n";
        assert!(
            Topology::parse("t.yaml", y)
                .unwrap_err()
                .to_string()
                .contains("1 to 255")
        );
    }

    #[test]
    fn a_cluster_can_shorten_its_agents_mesh_ttl() {
        let y = "clusters:\n- {name: a, id: 1, podCIDR: 10.1.0.0/16, serviceCIDR: 10.9.0.0/24, nodes: 1, meshTTLSecs: 4}\n- {name: b, id: 2, podCIDR: 10.2.0.0/16, serviceCIDR: 10.9.1.0/24, nodes: 1}\n";
        let t = Topology::parse("t.yaml", y).unwrap();
        let paths = crate::lab::paths::LabPaths::new("t", Path::new("/cg"), Path::new("/bpf"));
        let cfg = |c: &ClusterSpec| crate::lab::agents::config_for(&paths, c, &c.nodes[0]);
        assert_eq!(cfg(&t.clusters[0]).mesh_ttl_secs, 4);
        assert_eq!(cfg(&t.clusters[1]).mesh_ttl_secs, 30, "the default");
        assert_eq!(
            cfg(&t.clusters[1]).mesh_state_dir.unwrap(),
            paths.node_dir("b", "node-1").join("mesh")
        );
    }

    #[test]
    fn node_names_can_be_listed() {
        let y = "clusters:\n- {name: a, id: 1, podCIDR: 10.1.0.0/16, serviceCIDR: 10.9.0.0/24, nodes: [alpha, beta]}\n";
        let t = Topology::parse("t.yaml", y).unwrap();
        let names: Vec<_> = t.clusters[0]
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect();
        assert_eq!(names, ["alpha", "beta"]);
    }
}
