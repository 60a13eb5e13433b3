//! Strait: a sidecar-free service mesh. This crate holds the agent, the node proxy, the lab and the CLI.

pub mod flows;
pub mod model;
