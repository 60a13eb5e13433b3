//! Tests of `strait observe`, one file per seam; the shared flow fixtures live here.

mod args;
mod format;
mod stream;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;

use super::ObserveArgs;
use crate::flows::{Direction, FlowPeer, FlowRecord, ServiceRef, Verdict};

/// 2024-11-25T06:01:02.123Z
fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_732_514_462_123)
}

fn pod(ns: &str, name: &str, port: u16, identity: u32) -> FlowPeer {
    FlowPeer {
        ip: Some(IpAddr::V4(Ipv4Addr::new(10, 1, 0, 5))),
        port,
        cluster: "c1".into(),
        namespace: ns.into(),
        pod: name.into(),
        identity,
        ..FlowPeer::default()
    }
}

fn sample() -> FlowRecord {
    FlowRecord {
        time: t0(),
        node: "node-1".into(),
        cluster: "c1".into(),
        direction: Direction::Egress,
        protocol: "TCP".into(),
        source: pod("demo", "frontend-abc", 41234, 65792),
        destination: pod("demo", "backend-xyz", 8080, 65793),
        original_destination: "198.19.1.10:80".into(),
        service: Some(ServiceRef {
            namespace: "demo".into(),
            name: "backend".into(),
        }),
        verdict: Verdict::Forwarded,
        drop_reason: None,
        error: None,
        tunnel_peer: None,
        bytes_sent: 1234,
        bytes_received: 3400,
        duration_us: 12_345,
        decided_by: None,
        policies: Vec::new(),
        http: None,
        encrypted: false,
    }
}

#[derive(Debug, clap::Parser)]
struct Cli {
    #[command(flatten)]
    args: ObserveArgs,
}

fn parse(args: &[&str]) -> Result<ObserveArgs, clap::Error> {
    Cli::try_parse_from(std::iter::once("observe").chain(args.iter().copied())).map(|c| c.args)
}
