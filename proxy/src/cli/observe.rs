//! `strait observe`: show flows from every agent, filtered like `hubble observe`.
//!
//! All agents are queried at once. Without `--follow` their flows are merged in time order and
//! the last N shown; with `--follow` flows print as they arrive from any agent, so lines from
//! different agents are not reordered against each other. Times are shown in UTC.

use std::io::{self, IsTerminal, Write};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::bail;
use futures::StreamExt;

use crate::admin::FlowsQuery;
use crate::flows::client::{self, AgentEndpoint, ClientError};
use crate::flows::{
    Criterion, FilterError, FlowEvent, FlowFilter, FlowPeer, FlowRecord, PodSelector, Verdict,
    verdict_name,
};

/// Flows shown without `--follow` when `--last` is not given, as in Hubble.
pub const DEFAULT_LAST: usize = 20;

/// Arguments of `strait observe`.
#[derive(Debug, Clone, clap::Args)]
pub struct ObserveArgs {
    /// Flows recorded in, or with an endpoint in, this cluster (repeatable).
    #[arg(long, value_name = "CLUSTER")]
    pub cluster: Vec<String>,
    /// Flows with either endpoint in this namespace (repeatable).
    #[arg(long, short = 'n', value_name = "NAMESPACE")]
    pub namespace: Vec<String>,
    /// Flows with either endpoint a pod whose name starts with POD (repeatable).
    #[arg(long, value_name = "[NS/]POD", value_parser = parse_pod)]
    pub pod: Vec<PodSelector>,
    /// Flows with this verdict: FORWARDED, DROPPED, ERROR or AUDIT (repeatable).
    #[arg(long, value_name = "VERDICT", value_parser = parse_verdict)]
    pub verdict: Vec<Verdict>,
    /// Show the last N matching flows [default: 20, or 0 with --follow].
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,
    /// Keep running and print flows as they are recorded.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Compact)]
    pub output: Output,
}

/// How flows are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// One line per flow, like `hubble observe`.
    Compact,
    /// Aligned columns under a header.
    Table,
    /// One FlowRecord JSON object per line.
    Json,
}

fn parse_pod(s: &str) -> Result<PodSelector, FilterError> {
    s.parse()
}

fn parse_verdict(s: &str) -> Result<Verdict, FilterError> {
    s.parse()
}

impl ObserveArgs {
    /// The filter the flags describe.
    pub fn filter(&self) -> Result<FlowFilter, FilterError> {
        let mut f = FlowFilter::new();
        for c in &self.cluster {
            f.push(Criterion::parse("cluster", c)?);
        }
        for ns in &self.namespace {
            f.push(Criterion::parse("namespace", ns)?);
        }
        for p in &self.pod {
            f.push(Criterion::Pod(p.clone()));
        }
        for v in &self.verdict {
            f.push(Criterion::Verdict(*v));
        }
        Ok(f)
    }

    /// How many past flows to show.
    pub fn last(&self) -> usize {
        self.last
            .unwrap_or(if self.follow { 0 } else { DEFAULT_LAST })
    }
}

/// Runs `strait observe` against `agents`; fails only if no agent could be reached.
pub async fn run(args: &ObserveArgs, agents: Vec<AgentEndpoint>) -> anyhow::Result<()> {
    if agents.is_empty() {
        bail!("no agents to observe");
    }
    let query = FlowsQuery {
        last: Some(args.last()),
        follow: args.follow,
        filter: args.filter()?,
    };
    let color = args.output == Output::Compact && io::stdout().is_terminal();
    let res = if args.follow {
        follow(&agents, &query, args.output, color).await
    } else {
        one_shot(&agents, &query, args.output, color).await
    };
    match res {
        // `strait observe | head` closes stdout early; that is a normal way to stop.
        Err(e)
            if e.downcast_ref::<io::Error>().map(io::Error::kind)
                == Some(io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        res => res,
    }
}

async fn one_shot(
    agents: &[AgentEndpoint],
    query: &FlowsQuery,
    output: Output,
    color: bool,
) -> anyhow::Result<()> {
    let fetches = agents.iter().map(|agent| async move {
        let mut stream = client::flows(agent, query).await?;
        let mut flows = Vec::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(FlowEvent::Flow(f)) => flows.push(f),
                Ok(FlowEvent::Lost(n)) => report_lost(agent, n),
                Err(e) => report(&e),
            }
        }
        Ok::<_, ClientError>(flows)
    });
    let mut flows = Vec::new();
    let mut reached = 0;
    for res in futures::future::join_all(fetches).await {
        match res {
            Ok(f) => {
                reached += 1;
                flows.extend(f);
            }
            Err(e) => report(&e),
        }
    }
    if reached == 0 {
        bail!("none of the {} agents could be reached", agents.len());
    }
    let flows = select_last(flows, &query.filter, query.last.unwrap_or(DEFAULT_LAST));
    let text = match output {
        Output::Compact => flows
            .iter()
            .map(|f| compact_line(f, color) + "\n")
            .collect(),
        Output::Table => render_table(&flows),
        Output::Json => flows
            .iter()
            .map(|f| json_line(f))
            .collect::<Result<String, _>>()?,
    };
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

async fn follow(
    agents: &[AgentEndpoint],
    query: &FlowsQuery,
    output: Output,
    color: bool,
) -> anyhow::Result<()> {
    let opened = futures::future::join_all(agents.iter().map(|a| client::flows(a, query))).await;
    let mut streams = Vec::new();
    for (agent, res) in agents.iter().zip(opened) {
        match res {
            Ok(s) => {
                let agent = agent.clone();
                // A trailing `None` marks the end of this agent's stream.
                let tagged = s.map(Some).chain(futures::stream::once(async { None }));
                streams.push(tagged.map(move |item| (agent.clone(), item)).boxed());
            }
            Err(e) => report(&e),
        }
    }
    if streams.is_empty() {
        bail!("none of the {} agents could be reached", agents.len());
    }
    if output == Output::Table {
        emit(&table_line(&TABLE_HEADER.map(String::from), &FOLLOW_WIDTHS))?;
    }
    let mut all = futures::stream::select_all(streams);
    while let Some((agent, item)) = all.next().await {
        match item {
            Some(Ok(FlowEvent::Flow(f))) if query.filter.matches(&f) => {
                let line = match output {
                    Output::Compact => compact_line(&f, color),
                    Output::Table => table_line(&table_row(&f), &FOLLOW_WIDTHS),
                    Output::Json => json_line(&f)?.trim_end().to_string(),
                };
                emit(&line)?;
            }
            Some(Ok(FlowEvent::Flow(_))) => {}
            Some(Ok(FlowEvent::Lost(n))) => report_lost(&agent, n),
            Some(Err(e)) => report(&e),
            None => eprintln!("strait observe: agent {agent}: flow stream ended"),
        }
    }
    bail!("flow streams from all agents ended")
}

fn emit(line: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

fn report(e: &ClientError) {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    eprintln!("strait observe: {msg}");
}

fn report_lost(agent: &AgentEndpoint, n: u64) {
    eprintln!("strait observe: agent {agent}: {n} flows lost because this reader fell behind");
}

/// The last `last` flows passing `filter`, oldest first, across agents.
pub fn select_last(
    mut flows: Vec<Arc<FlowRecord>>,
    filter: &FlowFilter,
    last: usize,
) -> Vec<Arc<FlowRecord>> {
    flows.retain(|f| filter.matches(f));
    // Stable, so flows with equal times keep each agent's order.
    flows.sort_by_key(|f| f.unix_nanos());
    let skip = flows.len().saturating_sub(last);
    flows.split_off(skip)
}

// === formatting ===

/// One flow in Hubble's compact style.
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
    line.push_str(&format!(
        " {} {direction} {}",
        f.protocol,
        format_verdict(f, color)
    ));
    if let Some(h) = &f.http {
        line.push_str(&format!(" {} {}", h.method, h.path));
        if let Some(status) = h.status {
            line.push_str(&format!(" => {status}"));
        }
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

/// One flow as a JSON object (with a trailing newline).
pub fn json_line(f: &FlowRecord) -> serde_json::Result<String> {
    serde_json::to_string(f).map(|s| s + "\n")
}

/// Column titles of the table output.
pub const TABLE_HEADER: [&str; 8] = [
    "TIME",
    "NODE",
    "SOURCE",
    "DESTINATION",
    "SERVICE",
    "VERDICT",
    "BYTES",
    "DURATION",
];

/// Column widths used while following, when later rows are unknown.
const FOLLOW_WIDTHS: [usize; 8] = [19, 14, 32, 32, 16, 9, 13, 8];

/// The table cells of one flow.
pub fn table_row(f: &FlowRecord) -> [String; 8] {
    [
        format_time(f.time),
        format!("{}/{}", f.cluster, f.node),
        format_peer(&f.source, &f.cluster, false),
        format_peer(&f.destination, &f.cluster, false),
        f.service
            .as_ref()
            .map_or_else(|| "-".into(), |s| format!("{}/{}", s.namespace, s.name)),
        format_verdict(f, false),
        format_bytes_pair(f),
        format_duration_us(f.duration_us),
    ]
}

/// Header and rows, each column as wide as its widest cell.
pub fn render_table(flows: &[Arc<FlowRecord>]) -> String {
    let header = TABLE_HEADER.map(String::from);
    let rows: Vec<[String; 8]> = flows.iter().map(|f| table_row(f)).collect();
    let mut widths = [0; 8];
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
pub fn table_line(cells: &[String; 8], widths: &[usize; 8]) -> String {
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
        let code = match f.verdict {
            Verdict::Forwarded => "32",
            Verdict::Dropped | Verdict::Error => "31",
            Verdict::Audit => "33",
        };
        format!("\x1b[{code}m{name}\x1b[0m")
    } else {
        name.to_string()
    };
    if let Some(why) = f.drop_reason.as_ref().or(f.error.as_ref()) {
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

#[cfg(test)]
mod tests;
