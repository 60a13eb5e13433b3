use std::sync::Arc;

use super::*;
use crate::cli::observe::format::FOLLOW_WIDTHS;
use crate::cli::observe::*;
use crate::flows::verdict_name;

#[test]
fn compact_matches_hubble_style() {
    assert_eq!(
        compact_line(&sample(), false),
        "Nov 25 06:01:02.123 c1/node-1: demo/frontend-abc:41234 (ID:65792) -> \
         demo/backend-xyz:8080 (ID:65793) via backend 198.19.1.10:80 TCP egress FORWARDED  \
         1.2kB/3.4kB 12ms"
    );
}

#[test]
fn compact_drop_external_remote_and_colour() {
    let mut f = sample();
    f.service = None;
    f.verdict = Verdict::Dropped;
    f.drop_reason = Some(crate::flows::DropReason::PolicyDenied);
    f.source.cluster = "c2".into();
    f.destination = FlowPeer {
        ip: Some(IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8))),
        port: 53,
        ..FlowPeer::default()
    };
    f.bytes_sent = 0;
    f.bytes_received = 0;
    f.duration_us = 850;
    assert_eq!(
        compact_line(&f, false),
        "Nov 25 06:01:02.123 c1/node-1: demo/frontend-abc@c2:41234 (ID:65792) -> 8.8.8.8:53 \
         TCP egress DROPPED (POLICY_DENIED)  0B/0B 850µs"
    );
    assert!(compact_line(&f, true).contains("\x1b[31mDROPPED\x1b[0m (POLICY_DENIED)"));
    f.protocol = "HTTP/1.1".into();
    f.decided_by = Some(crate::flows::DecidedBy::Proxy);
    f.http = Some(crate::flows::HttpFlow {
        method: "GET".into(),
        path: "/private".into(),
        host: None,
        status: Some(403),
        latency_us: 850,
    });
    assert_eq!(
        compact_line(&f, false),
        "Nov 25 06:01:02.123 c1/node-1: demo/frontend-abc@c2:41234 (ID:65792) -> 8.8.8.8:53 \
         TCP egress DROPPED (POLICY_DENIED) HTTP/1.1 GET /private => 403 by proxy  0B/0B 850µs"
    );
}

#[test]
fn compact_http_without_answer_and_encrypted() {
    let mut f = sample();
    f.protocol = "HTTP/2".into();
    f.encrypted = true;
    f.verdict = Verdict::Error;
    f.error = Some("upstream reset".into());
    f.http = Some(crate::flows::HttpFlow {
        method: "POST".into(),
        path: "/api/orders".into(),
        host: Some("backend".into()),
        status: None,
        latency_us: 10,
    });
    assert_eq!(
        compact_line(&f, false),
        "Nov 25 06:01:02.123 c1/node-1: demo/frontend-abc:41234 (ID:65792) -> \
         demo/backend-xyz:8080 (ID:65793) via backend 198.19.1.10:80 TCP egress encrypted \
         ERROR (upstream reset) HTTP/2 POST /api/orders  1.2kB/3.4kB 12ms"
    );
}

#[test]
fn verdict_colours() {
    let mut f = sample();
    for (verdict, code) in [
        (Verdict::Forwarded, "32"),
        (Verdict::Dropped, "31"),
        (Verdict::Error, "33"),
        (Verdict::Audit, "36"),
    ] {
        f.verdict = verdict;
        let name = verdict_name(verdict);
        assert!(
            compact_line(&f, true).contains(&format!(" \x1b[{code}m{name}\x1b[0m ")),
            "{}",
            compact_line(&f, true)
        );
        assert!(!compact_line(&f, false).contains('\x1b'));
        assert!(!table_row(&f).iter().any(|c| c.contains('\x1b')));
    }
}

#[test]
fn colour_only_on_terminals_without_no_color() {
    assert!(color_enabled(true, None));
    assert!(!color_enabled(false, None));
    assert!(!color_enabled(true, Some("1".into())));
    assert!(!color_enabled(false, Some("1".into())));
    // An empty NO_COLOR does not count (no-color.org).
    assert!(color_enabled(true, Some("".into())));
}

#[test]
fn units() {
    let cases = [
        (0, "0B"),
        (999, "999B"),
        (1000, "1.0kB"),
        (1234, "1.2kB"),
        (999_949, "999.9kB"),
        (999_999, "1.0MB"),
        (3_400_000, "3.4MB"),
        (5_000_000_000, "5.0GB"),
    ];
    for (n, want) in cases {
        assert_eq!(format_bytes(n), want, "{n}");
    }
    let cases = [
        (0, "0µs"),
        (999, "999µs"),
        (12_345, "12ms"),
        (1_500_000, "1.5s"),
    ];
    for (us, want) in cases {
        assert_eq!(format_duration_us(us), want, "{us}");
    }
    assert_eq!(format_time(UNIX_EPOCH), "Jan 01 00:00:00.000");
}

#[test]
fn table_aligns_columns() {
    let mut other = sample();
    other.node = "n2".into();
    other.service = None;
    other.verdict = Verdict::Error;
    other.error = Some("refused".into());
    let mut http = sample();
    http.protocol = "HTTP/1.1".into();
    http.encrypted = true;
    http.http = Some(crate::flows::HttpFlow {
        method: "GET".into(),
        path: "/public".into(),
        host: None,
        status: Some(200),
        latency_us: 850,
    });
    let out = render_table(&[Arc::new(sample()), Arc::new(other), Arc::new(http)]);
    let want = "\
TIME                  NODE        SOURCE                    DESTINATION             SERVICE        PROTOCOL             VERDICT           HTTP                 BYTES         DURATION
Nov 25 06:01:02.123   c1/node-1   demo/frontend-abc:41234   demo/backend-xyz:8080   demo/backend   TCP                  FORWARDED         -                    1.2kB/3.4kB   12ms
Nov 25 06:01:02.123   c1/n2       demo/frontend-abc:41234   demo/backend-xyz:8080   -              TCP                  ERROR (refused)   -                    1.2kB/3.4kB   12ms
Nov 25 06:01:02.123   c1/node-1   demo/frontend-abc:41234   demo/backend-xyz:8080   demo/backend   HTTP/1.1 encrypted   FORWARDED         GET /public => 200   1.2kB/3.4kB   12ms
";
    assert_eq!(out, want);
    // While following, rows use fixed widths and never leave trailing blanks.
    let row = table_line(&table_row(&sample()), &FOLLOW_WIDTHS);
    assert!(
        row.starts_with("Nov 25 06:01:02.123   c1/node-1        demo/"),
        "{row}"
    );
    assert!(row.ends_with("1.2kB/3.4kB     12ms"), "{row}");
    let header = table_line(&TABLE_HEADER.map(String::from), &FOLLOW_WIDTHS);
    assert!(header.starts_with("TIME                  NODE"), "{header}");
}

#[test]
fn json_round_trips() {
    let line = json_line(&sample()).expect("json");
    assert!(line.ends_with("}\n"));
    assert_eq!(line.matches('\n').count(), 1);
    let back: FlowRecord = serde_json::from_str(&line).expect("parse");
    assert_eq!(back, sample());
}

/// The JSON field names are an interface (scripts, the README): FlowRecord's serde names.
#[test]
fn json_field_names_are_stable() {
    let mut f = sample();
    f.source.workload = Some("frontend".into());
    f.source.node = Some("node-2".into());
    f.source.labels = [("app".to_string(), "frontend".to_string())].into();
    f.drop_reason = Some(crate::flows::DropReason::PolicyDenied);
    f.error = Some("refused".into());
    f.tunnel_peer = Some("node-2".into());
    f.decided_by = Some(crate::flows::DecidedBy::Proxy);
    f.policies = vec!["demo/p: spec.ingress[0]".into()];
    f.http = Some(crate::flows::HttpFlow {
        method: "GET".into(),
        path: "/".into(),
        host: Some("backend".into()),
        status: Some(200),
        latency_us: 1,
    });
    let v: serde_json::Value = serde_json::from_str(&json_line(&f).expect("json")).expect("parse");
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        k.sort_unstable();
        k
    };
    let mut want = vec![
        "time",
        "node",
        "cluster",
        "direction",
        "protocol",
        "source",
        "destination",
        "original_destination",
        "service",
        "verdict",
        "drop_reason",
        "error",
        "tunnel_peer",
        "bytes_sent",
        "bytes_received",
        "duration_us",
        "decided_by",
        "policies",
        "http",
        "encrypted",
    ];
    want.sort_unstable();
    assert_eq!(keys(&v), want);
    let mut peer = vec![
        "ip",
        "port",
        "cluster",
        "namespace",
        "pod",
        "workload",
        "node",
        "labels",
        "identity",
    ];
    peer.sort_unstable();
    assert_eq!(keys(&v["source"]), peer);
    assert_eq!(keys(&v["service"]), ["name", "namespace"]);
    assert_eq!(
        keys(&v["http"]),
        ["host", "latency_us", "method", "path", "status"]
    );
    assert_eq!(v["time"], "2024-11-25T06:01:02.123000000Z");
    assert_eq!(v["verdict"], "FORWARDED");
    assert_eq!(v["direction"], "EGRESS");
}
