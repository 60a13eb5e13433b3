//! Reading the agents' flow streams: all at once, merged in time order without `--follow`,
//! interleaved as they arrive with it; an agent that fails is reported and the rest shown.

use std::io::{self, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use futures::StreamExt;

use super::format::{FOLLOW_WIDTHS, compact_line, json_line, render_table, table_line, table_row};
use super::{FETCH_TIMEOUT, OPEN_TIMEOUT, Output, TABLE_HEADER};
use crate::admin::FlowsQuery;
use crate::admin::client::{self, AgentEndpoint, ClientError};
use crate::flows::{FlowEvent, FlowFilter, FlowRecord};

pub(super) async fn one_shot(
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

pub(super) async fn follow(
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
