//! How flows are printed: Hubble's compact lines, an aligned table, or JSON lines.

use std::sync::Arc;
use std::time::SystemTime;

use crate::flows::{FlowPeer, FlowRecord, Verdict, verdict_name};

/// One flow in Hubble's compact style: time, recording node, endpoints, service, L4 protocol,
/// direction, `encrypted`, verdict, then for HTTP `HTTP/1.1 GET /path => 403`, who decided,
/// bytes and duration.
pub fn compact_line(f: &FlowRecord, color: bool) -> String {
    let mut line = format!(
        "{} {}/{}: {} -> {}",
        format_time(f.time),
        f.cluster,
        f.node,
        format_peer(&f.source, &f.cluster, true),
        format_peer(&f.destination, &f.cluster, true),
    );
    if let Some(svc) = &f.service {
        line.push_str(&format!(" via {} {}", svc.name, f.original_destination));
    }
    let direction = match f.direction {
        crate::flows::Direction::Egress => "egress",
        crate::flows::Direction::Ingress => "ingress",
    };
    line.push_str(&format!(" {} {direction}", l4_protocol(f)));
    if f.encrypted {
        line.push_str(" encrypted");
    }
    line.push(' ');
    line.push_str(&format_verdict(f, color));
    if let Some(http) = format_http(f) {
        line.push_str(&format!(" {} {http}", f.protocol));
    }
    if let Some(by) = &f.decided_by {
        line.push_str(&format!(" by {by}"));
    }
    line.push_str(&format!(
        "  {} {}",
        format_bytes_pair(f),
        format_duration_us(f.duration_us),
    ));
    line
}

/// The transport: `TCP` for HTTP requests, which the proxy sees on TCP connections.
fn l4_protocol(f: &FlowRecord) -> &str {
    if f.http.is_some() && f.protocol.starts_with("HTTP/") {
        "TCP"
    } else {
        &f.protocol
    }
}

/// `GET /path => 403` (`GET /path` without a response), for flows of one HTTP request.
fn format_http(f: &FlowRecord) -> Option<String> {
    let h = f.http.as_ref()?;
    let mut s = format!("{} {}", h.method, h.path);
    if let Some(status) = h.status {
        s.push_str(&format!(" => {status}"));
    }
    Some(s)
}

/// One flow as a JSON object (with a trailing newline).
pub fn json_line(f: &FlowRecord) -> serde_json::Result<String> {
    serde_json::to_string(f).map(|s| s + "\n")
}

/// Number of columns of the table output.
const COLUMNS: usize = 10;

/// Column titles of the table output.
pub const TABLE_HEADER: [&str; COLUMNS] = [
    "TIME",
    "NODE",
    "SOURCE",
    "DESTINATION",
    "SERVICE",
    "PROTOCOL",
    "VERDICT",
    "HTTP",
    "BYTES",
    "DURATION",
];

/// Column widths used while following, when later rows are unknown.
pub(super) const FOLLOW_WIDTHS: [usize; COLUMNS] = [19, 14, 32, 32, 16, 8, 9, 24, 13, 8];

/// The table cells of one flow.
pub fn table_row(f: &FlowRecord) -> [String; COLUMNS] {
    let mut protocol = f.protocol.clone();
    if f.encrypted {
        protocol.push_str(" encrypted");
    }
    [
        format_time(f.time),
        format!("{}/{}", f.cluster, f.node),
        format_peer(&f.source, &f.cluster, false),
        format_peer(&f.destination, &f.cluster, false),
        f.service
            .as_ref()
            .map_or_else(|| "-".into(), |s| format!("{}/{}", s.namespace, s.name)),
        protocol,
        format_verdict(f, false),
        format_http(f).unwrap_or_else(|| "-".into()),
        format_bytes_pair(f),
        format_duration_us(f.duration_us),
    ]
}

/// Header and rows, each column as wide as its widest cell.
pub fn render_table(flows: &[Arc<FlowRecord>]) -> String {
    let header = TABLE_HEADER.map(String::from);
    let rows: Vec<[String; COLUMNS]> = flows.iter().map(|f| table_row(f)).collect();
    let mut widths = [0; COLUMNS];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    std::iter::once(&header)
        .chain(&rows)
        .map(|row| table_line(row, &widths) + "\n")
        .collect()
}

/// One table line: cells padded to `widths`, three spaces apart, no trailing blanks.
pub fn table_line(cells: &[String; COLUMNS], widths: &[usize; COLUMNS]) -> String {
    let mut line = String::new();
    for (cell, w) in cells.iter().zip(widths) {
        line.push_str(cell);
        let pad = w.saturating_sub(cell.chars().count()) + 3;
        line.extend(std::iter::repeat_n(' ', pad));
    }
    line.trim_end().to_string()
}

/// `Nov 25 06:01:02.123`, in UTC.
pub fn format_time(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // humantime writes `2024-11-25T06:01:02.123Z`; reuse its calendar arithmetic.
    let iso = humantime::format_rfc3339_millis(t).to_string();
    let month = iso
        .get(5..7)
        .and_then(|m| m.parse::<usize>().ok())
        .and_then(|m| MONTHS.get(m.wrapping_sub(1)));
    match (month, iso.get(8..10), iso.get(11..23)) {
        (Some(month), Some(day), Some(clock)) => format!("{month} {day} {clock}"),
        _ => iso,
    }
}

/// `ns/pod:port (ID:n)`, or `ip:port` outside the cluster; `@cluster` when it differs from the
/// recording node's.
pub fn format_peer(p: &FlowPeer, local_cluster: &str, with_identity: bool) -> String {
    let mut s = if p.pod.is_empty() {
        p.ip.map_or_else(|| "?".into(), |ip| ip.to_string())
    } else {
        format!("{}/{}", p.namespace, p.pod)
    };
    if !p.cluster.is_empty() && p.cluster != local_cluster {
        s.push('@');
        s.push_str(&p.cluster);
    }
    s.push_str(&format!(":{}", p.port));
    if with_identity && p.identity != 0 {
        s.push_str(&format!(" (ID:{})", p.identity));
    }
    s
}

/// The verdict with its drop reason or error, coloured for terminals.
pub fn format_verdict(f: &FlowRecord, color: bool) -> String {
    let name = verdict_name(f.verdict);
    let mut s = if color {
        // Green, red, yellow, cyan.
        let code = match f.verdict {
            Verdict::Forwarded => "32",
            Verdict::Dropped => "31",
            Verdict::Error => "33",
            Verdict::Audit => "36",
        };
        format!("\x1b[{code}m{name}\x1b[0m")
    } else {
        name.to_string()
    };
    if let Some(why) = f.drop_reason.map(|r| r.as_str()).or(f.error.as_deref()) {
        s.push_str(&format!(" ({why})"));
    }
    s
}

fn format_bytes_pair(f: &FlowRecord) -> String {
    format!(
        "{}/{}",
        format_bytes(f.bytes_sent),
        format_bytes(f.bytes_received)
    )
}

/// Decimal byte count with one decimal place: `512B`, `1.2kB`, `3.4MB`.
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if n < 1000 {
        return format!("{n}B");
    }
    // Exact enough for display; u64 → f64 loses precision only beyond 2^53 bytes.
    let mut v = n as f64 / 1000.0;
    let mut unit = 0;
    while v >= 999.95 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.1}{}", UNITS[unit])
}

/// `850µs`, `12ms`, `1.5s`.
pub fn format_duration_us(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}µs"),
        1_000..1_000_000 => format!("{}ms", us / 1_000),
        _ => format!("{:.1}s", us as f64 / 1e6),
    }
}
