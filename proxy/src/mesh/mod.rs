//! Cluster mesh: this cluster's state published to connected clusters over QUIC with mutual TLS,
//! and the state of remote clusters kept in sync, with Cilium's cluster identity rules.
//!
//! `cluster` validates names and IDs and the connect check; `state` is what a cluster publishes
//! and the deltas between revisions; `wire` the frames; `server` the mesh endpoint and its
//! publisher; `client` the sync of one remote; `remote` the per-remote state and TTL rule;
//! `endpoint` the status file of the endpoint process (`crate::clustermesh`); `persist` the
//! remotes' last served states kept on disk across agent restarts.

pub mod client;
pub mod cluster;
pub mod endpoint;
pub mod persist;
pub mod remote;
pub mod server;
pub mod state;
pub mod tls;
pub mod wire;

pub use client::{ClientError, MeshClient, Persistence};
pub use cluster::{ClusterId, ClusterIdError, ClusterSpec, ConnectError, check_connect};
pub use persist::{PersistError, Restored, StateDir};
pub use remote::{DEFAULT_TTL, RemoteCluster, RemoteConfig, RemoteStatus};
pub use server::{MeshServer, Publisher, ServerError};
pub use state::{Delta, MeshState};
pub use tls::{MeshTls, MeshTlsError, MeshTrust};
