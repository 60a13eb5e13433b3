//! The status file of a cluster's mesh endpoint process (`crate::clustermesh` runs it): what it
//! serves and whom it trusts, so whoever started it knows when a change is in force.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// What the endpoint writes to its status file after every change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStatus {
    pub cluster: String,
    pub listen: std::net::SocketAddr,
    /// Clusters whose mesh certificates are accepted (this cluster's own CA aside).
    pub trusted: Vec<String>,
    /// Revision of the state published now.
    pub revision: u64,
}

/// Reads an endpoint's status file; `None` if it is missing or unreadable.
pub fn read_status(path: &Path) -> Option<EndpointStatus> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}
