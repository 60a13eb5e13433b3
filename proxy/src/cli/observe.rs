//! `strait observe`: show flows from every agent, filtered like `hubble observe`.
//!
//! All agents are queried at once. Without `--follow` their flows are merged in time order and
//! the last N shown; with `--follow` flows print as they arrive from any agent, so lines from
//! different agents are not reordered against each other. Times are shown in UTC.
//!
//! Filters travel to the agents as [`Criterion`]s (relative `--since`/`--until` already made
//! absolute) and are applied again here.

use std::ffi::{OsStr, OsString};
use std::io::{self, IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::bail;
use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use futures::StreamExt;

use crate::admin::FlowsQuery;
use crate::flows::client::{self, AgentEndpoint, ClientError};
use crate::flows::{
    Criterion, FilterError, FlowEvent, FlowFilter, FlowPeer, FlowRecord, PodSelector, Verdict,
    verdict_name,
};

/// Flows shown without `--follow` when neither `--last` nor a time bound is given, as in Hubble.
pub const DEFAULT_LAST: usize = 20;

/// How long an agent may take to answer a `/flows` request (connect and response headers).
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an agent may take to send its whole backlog without `--follow`.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Arguments of `strait observe`.
#[derive(Debug, Clone, clap::Args)]
pub struct ObserveArgs {
    /// Show the last N matching flows [default: 20; every match with --since or --until; 0
    /// with --follow].
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,
    /// Keep running and print flows as they are recorded.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Compact)]
    pub output: Output,
    /// Which flows to show (boxed: the flags make a large struct). Last, so its help heading
    /// covers only its own flags.
    #[command(flatten)]
    pub filters: Box<FilterArgs>,
}

/// The filter flags of `strait observe`, with Hubble's names and combining rules.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Filters (a repeated flag ORs its values, different flags AND)")]
pub struct FilterArgs {
    /// Flows recorded in, or with an endpoint in, this cluster.
    #[arg(long, value_name = "CLUSTER",
          value_parser = Flag(|s| Criterion::parse("cluster", s).map(|_| s.to_string())))]
    pub cluster: Vec<String>,
    /// Flows with either endpoint in this namespace.
    #[arg(long, short = 'n', value_name = "NAMESPACE",
          value_parser = Flag(|s| Criterion::parse("namespace", s).map(|_| s.to_string())))]
    pub namespace: Vec<String>,
    /// Flows whose source is in this namespace.
    #[arg(long, value_name = "NAMESPACE",
          value_parser = Flag(|s| Criterion::parse("from-namespace", s)))]
    pub from_namespace: Vec<Criterion>,
    /// Flows whose destination is in this namespace.
    #[arg(long, value_name = "NAMESPACE",
          value_parser = Flag(|s| Criterion::parse("to-namespace", s)))]
    pub to_namespace: Vec<Criterion>,
    /// Flows with either endpoint a pod whose name starts with POD.
    #[arg(long, value_name = "[NS/]POD",
          value_parser = Flag(|s| s.parse::<PodSelector>()))]
    pub pod: Vec<PodSelector>,
    /// Flows whose source is a pod whose name starts with POD.
    #[arg(long, value_name = "[NS/]POD",
          value_parser = Flag(|s| Criterion::parse("from-pod", s)))]
    pub from_pod: Vec<Criterion>,
    /// Flows whose destination is a pod whose name starts with POD.
    #[arg(long, value_name = "[NS/]POD",
          value_parser = Flag(|s| Criterion::parse("to-pod", s)))]
    pub to_pod: Vec<Criterion>,
    /// Flows with either endpoint matching a label selector: `key=value`, `key!=value`, `key`,
    /// `!key`, `key in (a,b)`, `key notin (a,b)`; commas AND requirements; keys may carry a
    /// `k8s:` or `any:` prefix.
    #[arg(long, short = 'l', value_name = "SELECTOR",
          value_parser = Flag(|s| Criterion::parse("label", s)))]
    pub label: Vec<Criterion>,
    /// Flows whose source matches a label selector (as --label).
    #[arg(long, value_name = "SELECTOR",
          value_parser = Flag(|s| Criterion::parse("from-label", s)))]
    pub from_label: Vec<Criterion>,
    /// Flows whose destination matches a label selector (as --label).
    #[arg(long, value_name = "SELECTOR",
          value_parser = Flag(|s| Criterion::parse("to-label", s)))]
    pub to_label: Vec<Criterion>,
    /// Flows with this verdict: FORWARDED, DROPPED, ERROR or AUDIT.
    #[arg(long, value_name = "VERDICT",
          value_parser = Flag(|s| s.parse::<Verdict>()))]
    pub verdict: Vec<Verdict>,
    /// Flows of this protocol: TCP (HTTP included), UDP, HTTP (either version), HTTP/1.1 or
    /// HTTP/2.
    #[arg(long, value_name = "PROTOCOL",
          value_parser = Flag(|s| Criterion::parse("protocol", s)))]
    pub protocol: Vec<Criterion>,
    /// Flows with this port on either side.
    #[arg(long, value_name = "PORT",
          value_parser = Flag(|s| Criterion::parse("port", s)))]
    pub port: Vec<Criterion>,
    /// Flows with this source port.
    #[arg(long, value_name = "PORT",
          value_parser = Flag(|s| Criterion::parse("from-port", s)))]
    pub from_port: Vec<Criterion>,
    /// Flows with this destination port (the backend's, after service translation).
    #[arg(long, value_name = "PORT",
          value_parser = Flag(|s| Criterion::parse("to-port", s)))]
    pub to_port: Vec<Criterion>,
    /// HTTP flows answered with this status: `404`, `4xx` or `5xx+` (500 and above).
    #[arg(long, value_name = "STATUS",
          value_parser = Flag(|s| Criterion::parse("http-status", s)))]
    pub http_status: Vec<Criterion>,
    /// HTTP flows with this request method (case-insensitive).
    #[arg(long, value_name = "METHOD",
          value_parser = Flag(|s| Criterion::parse("http-method", s)))]
    pub http_method: Vec<Criterion>,
    /// HTTP flows whose path matches this regular expression anywhere (anchor with ^ and $).
    #[arg(long, value_name = "REGEX",
          value_parser = Flag(|s| Criterion::parse("http-path", s)))]
    pub http_path: Vec<Criterion>,
    /// Flows recorded at or after TIME: RFC 3339 (2024-11-25T06:01:02Z) or a duration ago (5m,
    /// 1h30m). Without --last, shows every such flow.
    #[arg(long, value_name = "TIME",
          value_parser = Flag(|s| Criterion::parse("since", s)))]
    pub since: Option<Criterion>,
    /// Flows recorded at or before TIME (as --since).
    #[arg(long, value_name = "TIME", conflicts_with = "follow",
          value_parser = Flag(|s| Criterion::parse("until", s)))]
    pub until: Option<Criterion>,
}

/// How flows are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// One line per flow, like `hubble observe`.
    Compact,
    /// Aligned columns under a header.
    Table,
    /// One FlowRecord JSON object per line, with stable field names.
    Json,
}

/// A clap value parser whose errors are the [`FilterError`]s, which name the flag themselves.
#[derive(Clone, Copy)]
struct Flag<T>(fn(&str) -> Result<T, FilterError>);

impl<T: Clone + Send + Sync + 'static> TypedValueParser for Flag<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let s = value
            .to_str()
            .ok_or_else(|| clap::Error::new(ErrorKind::InvalidUtf8).with_cmd(cmd))?;
        (self.0)(s).map_err(|e| {
            clap::Error::raw(ErrorKind::ValueValidation, format!("{e}\n")).with_cmd(cmd)
        })
    }
}

impl FilterArgs {
    /// The filter the flags describe, in flag order.
    pub fn filter(&self) -> Result<FlowFilter, FilterError> {
        let mut f = FlowFilter::new();
        for c in &self.cluster {
            f.push(Criterion::parse("cluster", c)?);
        }
        for ns in &self.namespace {
            f.push(Criterion::parse("namespace", ns)?);
        }
        for c in self.from_namespace.iter().chain(&self.to_namespace) {
            f.push(c.clone());
        }
        for p in &self.pod {
            f.push(Criterion::Pod(p.clone()));
        }
        for c in [
            &self.from_pod,
            &self.to_pod,
            &self.label,
            &self.from_label,
            &self.to_label,
        ] {
            f.extend(c.iter().cloned());
        }
        for v in &self.verdict {
            f.push(Criterion::Verdict(*v));
        }
        for c in [
            &self.protocol,
            &self.port,
            &self.from_port,
            &self.to_port,
            &self.http_status,
            &self.http_method,
            &self.http_path,
        ] {
            f.extend(c.iter().cloned());
        }
        f.extend(self.since.iter().chain(&self.until).cloned());
        Ok(f)
    }
}

impl ObserveArgs {
    /// The filter the flags describe, in flag order.
    pub fn filter(&self) -> Result<FlowFilter, FilterError> {
        self.filters.filter()
    }

    /// How many past flows to show; `None` for every matching flow the agents hold.
    pub fn last(&self) -> Option<usize> {
        let bounded = self.filters.since.is_some() || self.filters.until.is_some();
        match self.last {
            Some(n) => Some(n),
            None if bounded => None,
            None if self.follow => Some(0),
            None => Some(DEFAULT_LAST),
        }
    }

    /// The request every agent gets.
    pub fn query(&self) -> anyhow::Result<FlowsQuery> {
        let f = &self.filters;
        if let (Some(since @ Criterion::Since(from)), Some(until @ Criterion::Until(to))) =
            (&f.since, &f.until)
            && from > to
        {
            bail!("--since {since} is later than --until {until}");
        }
        Ok(FlowsQuery {
            last: self.last(),
            follow: self.follow,
            filter: self.filter()?,
        })
    }
}

/// Whether to colour verdicts: on a terminal, unless `NO_COLOR` is set to something
/// (<https://no-color.org>).
pub fn color_enabled(is_terminal: bool, no_color: Option<OsString>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Runs `strait observe` against `agents`; fails if no agent could be reached.
pub async fn run(args: &ObserveArgs, agents: Vec<AgentEndpoint>) -> anyhow::Result<()> {
    let color = args.output == Output::Compact
        && color_enabled(io::stdout().is_terminal(), std::env::var_os("NO_COLOR"));
    let res = observe(args, &agents, color, &mut io::stdout(), &mut io::stderr()).await;
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

/// [`run`] with its output and reports going to `out` and `err`.
pub async fn observe(
    args: &ObserveArgs,
    agents: &[AgentEndpoint],
    color: bool,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    if agents.is_empty() {
        bail!("no agents to observe");
    }
    let query = args.query()?;
    if args.follow {
        follow(agents, &query, args.output, color, out, err).await
    } else {
        one_shot(agents, &query, args.output, color, out, err).await
    }
}

async fn one_shot(
    agents: &[AgentEndpoint],
    query: &FlowsQuery,
    output: Output,
    color: bool,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let fetches = agents.iter().map(|agent| async move {
        let fetch = async {
            let mut stream = open(agent, query).await?;
            // Reports wait until every agent is done, so they are not interleaved.
            let (mut flows, mut reports) = (Vec::new(), Vec::new());
            while let Some(item) = stream.next().await {
                match item {
                    Ok(FlowEvent::Flow(f)) => flows.push(f),
                    Ok(FlowEvent::Lost(n)) => reports.push(lost_message(agent, n)),
                    Err(e) => reports.push(error_message(&e)),
                }
            }
            Ok::<_, ClientError>((flows, reports))
        };
        tokio::time::timeout(FETCH_TIMEOUT, fetch)
            .await
            .unwrap_or_else(|_| Err(timeout(agent, FETCH_TIMEOUT)))
    });
    let mut flows = Vec::new();
    let mut reached = 0;
    for res in futures::future::join_all(fetches).await {
        match res {
            Ok((f, reports)) => {
                reached += 1;
                flows.extend(f);
                for r in reports {
                    let _ = writeln!(err, "{r}");
                }
            }
            Err(e) => {
                let _ = writeln!(err, "{}", error_message(&e));
            }
        }
    }
    if reached == 0 {
        bail!("none of the {} agents could be reached", agents.len());
    }
    let flows = select_last(flows, &query.filter, query.last);
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
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

async fn follow(
    agents: &[AgentEndpoint],
    query: &FlowsQuery,
    output: Output,
    color: bool,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let opened = futures::future::join_all(agents.iter().map(|a| open(a, query))).await;
    let mut streams = Vec::new();
    for (agent, res) in agents.iter().zip(opened) {
        match res {
            Ok(s) => {
                let agent = agent.clone();
                // A trailing `None` marks the end of this agent's stream.
                let tagged = s.map(Some).chain(futures::stream::once(async { None }));
                streams.push(tagged.map(move |item| (agent.clone(), item)).boxed());
            }
            Err(e) => {
                let _ = writeln!(err, "{}", error_message(&e));
            }
        }
    }
    if streams.is_empty() {
        bail!("none of the {} agents could be reached", agents.len());
    }
    if output == Output::Table {
        emit(
            out,
            &table_line(&TABLE_HEADER.map(String::from), &FOLLOW_WIDTHS),
        )?;
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
                emit(out, &line)?;
            }
            Some(Ok(FlowEvent::Flow(_))) => {}
            Some(Ok(FlowEvent::Lost(n))) => {
                let _ = writeln!(err, "{}", lost_message(&agent, n));
            }
            Some(Err(e)) => {
                let _ = writeln!(err, "{}", error_message(&e));
            }
            None => {
                let _ = writeln!(err, "strait observe: agent {agent}: flow stream ended");
            }
        }
    }
    bail!("flow streams from all agents ended")
}

/// Opens an agent's `/flows` stream, giving up after [`OPEN_TIMEOUT`].
async fn open(
    agent: &AgentEndpoint,
    query: &FlowsQuery,
) -> Result<client::FlowStream, ClientError> {
    tokio::time::timeout(OPEN_TIMEOUT, client::flows(agent, query))
        .await
        .unwrap_or_else(|_| Err(timeout(agent, OPEN_TIMEOUT)))
}

fn timeout(agent: &AgentEndpoint, after: Duration) -> ClientError {
    ClientError::Timeout {
        agent: agent.to_string(),
        after,
    }
}

fn emit(out: &mut (dyn Write + Send), line: &str) -> io::Result<()> {
    writeln!(out, "{line}")?;
    out.flush()
}

/// An error with its causes, one line, prefixed for stderr.
fn error_message(e: &ClientError) -> String {
    let mut msg = format!("strait observe: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}

fn lost_message(agent: &AgentEndpoint, n: u64) -> String {
    format!("strait observe: agent {agent}: {n} flows lost because this reader fell behind")
}

/// The last `last` flows passing `filter` (all when `None`), oldest first, across agents.
pub fn select_last(
    mut flows: Vec<Arc<FlowRecord>>,
    filter: &FlowFilter,
    last: Option<usize>,
) -> Vec<Arc<FlowRecord>> {
    flows.retain(|f| filter.matches(f));
    // Stable, so flows with equal times keep each agent's order.
    flows.sort_by_key(|f| f.unix_nanos());
    let skip = last.map_or(0, |n| flows.len().saturating_sub(n));
    flows.split_off(skip)
}

// === formatting ===

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
const FOLLOW_WIDTHS: [usize; COLUMNS] = [19, 14, 32, 32, 16, 8, 9, 24, 13, 8];

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

#[cfg(test)]
mod tests;
