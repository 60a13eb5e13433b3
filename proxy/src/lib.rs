//! Strait: a sidecar-free service mesh. This crate holds the agent, the node proxy, the lab and the CLI.

pub mod admin;
pub mod agent;
pub mod cli;
pub mod clustermesh;
pub mod compile;
pub mod config;
pub mod datapath;
pub mod dns;
pub mod errors;
pub mod flows;
pub mod identity;
pub mod lab;
pub mod mesh;
pub mod metrics;
pub mod model;
pub mod pki;
pub mod policy;
pub mod proxy;
pub mod sources;
pub mod ui;
