//! `strait observe`: show flows from every agent, filtered like `hubble observe`.
//!
//! All agents are queried at once. Without `--follow` their flows are merged in time order and
//! the last N shown; with `--follow` flows print as they arrive from any agent, so lines from
//! different agents are not reordered against each other. Times are shown in UTC.
//!
//! Filters travel to the agents as [`Criterion`]s (relative `--since`/`--until` already made
//! absolute) and are applied again here.

mod args;
mod format;
mod stream;
#[cfg(test)]
mod tests;

pub use args::{FilterArgs, ObserveArgs, Output};
pub use format::{
    TABLE_HEADER, compact_line, format_bytes, format_duration_us, format_peer, format_time,
    format_verdict, json_line, render_table, table_line, table_row,
};
pub use stream::select_last;

use std::ffi::OsString;
use std::io::{self, IsTerminal, Write};
use std::time::Duration;

use anyhow::bail;

use crate::admin::client::AgentEndpoint;

/// Flows shown without `--follow` when neither `--last` nor a time bound is given, as in Hubble.
pub const DEFAULT_LAST: usize = 20;

/// How long an agent may take to answer a `/flows` request (connect and response headers).
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an agent may take to send its whole backlog without `--follow`.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
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
        stream::follow(agents, &query, args.output, color, out, err).await
    } else {
        stream::one_shot(agents, &query, args.output, color, out, err).await
    }
}
