//! `strait ui`: a web page over the flows of every agent of a lab, a service map above a live
//! flow table.
//!
//! Nothing is built or fetched at run time: the page, its script and its style sheet are compiled
//! into the binary and served by hyper next to a small JSON API the script polls:
//! - `GET /api/flows?last=N&KEY=VALUE…`: `{"flows": [FlowRecord…], "agents", "unreachable",
//!   "warnings"}`, the last N (default [`DEFAULT_LAST`]) matching flows of all agents, oldest
//!   first;
//! - `GET /api/map?KEY=VALUE…[&last=N]`: the [`ServiceMap`] of the matching flows (all the agents
//!   hold unless `last` is given), with the same agent report;
//! - `GET /api/info`: the lab and its agents.
//!
//! Filter keys are those [`Criterion::parse`](crate::flows::Criterion::parse) knows, read by
//! [`FlowsQuery::parse`] as on the agents' `/flows`: a key given more than once ORs its values,
//! different keys AND. Every request asks all agents at once over their admin Unix sockets, as
//! `strait observe` does; an agent that does not answer is listed in `unreachable`.

mod map;
#[cfg(test)]
mod tests;

pub use map::{MapEdge, MapNode, ServiceMap, WORLD, counts_in_map, node_id};

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;

use crate::admin::client::{self, AgentEndpoint, ClientError};
use crate::admin::{FlowsQuery, QueryError};
use crate::flows::{FlowEvent, FlowRecord};

/// Flows `/api/flows` answers when the query names no `last`.
pub const DEFAULT_LAST: usize = 200;

/// How long one agent may take to send its flows before it counts as unreachable.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(5);

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// Only the page's own files; no inline script or style, nothing from elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Why the UI server could not start.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error("ui listener {addr}: cannot bind")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("ui listener {addr}: cannot register with the runtime")]
    Register {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// An API query string the UI cannot use; answered with `400` and this message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApiError {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("`follow` is not supported here: the page polls")]
    Follow,
}

/// What the UI serves: the lab's name and where its agents are.
#[derive(Debug, Clone)]
pub struct UiState {
    /// Name of the lab, shown in the page title.
    pub lab: String,
    /// Every agent of every cluster of the lab.
    pub agents: Vec<AgentEndpoint>,
    /// How long one agent may take to answer.
    pub agent_timeout: Duration,
}

/// The UI's TCP listener, bound and not yet serving.
#[derive(Debug)]
pub struct BoundUi {
    listener: std::net::TcpListener,
    addr: SocketAddr,
}

/// An agent whose flows are missing from an answer, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentProblem {
    /// The agent, as `cluster/node`.
    pub agent: String,
    /// What went wrong, with its causes.
    pub error: String,
}

/// Flows of all agents merged in time order, and which agents could not be reached.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Collected {
    /// Matching flows, oldest first.
    pub flows: Vec<Arc<FlowRecord>>,
    /// How many agents were asked.
    pub agents: usize,
    /// Agents that did not answer.
    pub unreachable: Vec<AgentProblem>,
    /// Problems that did not cost a whole agent (a line that is not a flow).
    pub warnings: Vec<String>,
}

/// Body of `/api/map`.
#[derive(Debug, Serialize)]
struct MapAnswer {
    #[serde(flatten)]
    map: ServiceMap,
    /// Flows the map was made from (before counting each connection once).
    flows: usize,
    agents: usize,
    unreachable: Vec<AgentProblem>,
    warnings: Vec<String>,
}

/// Body of `/api/info`.
#[derive(Debug, Serialize)]
struct InfoAnswer<'a> {
    lab: &'a str,
    agents: Vec<String>,
    default_last: usize,
}

// === impl BoundUi ===

impl BoundUi {
    /// Binds `addr`; needs no runtime, serving does.
    pub fn bind(addr: SocketAddr) -> Result<Self, UiError> {
        let err = |source| UiError::Bind { addr, source };
        let listener = std::net::TcpListener::bind(addr).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        let addr = listener.local_addr().map_err(err)?;
        Ok(BoundUi { listener, addr })
    }

    /// The bound address, with the real port when bound to port 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until the future is dropped.
    pub async fn serve(self, state: UiState) -> Result<(), UiError> {
        let addr = self.addr;
        let listener = tokio::net::TcpListener::from_std(self.listener)
            .map_err(|source| UiError::Register { addr, source })?;
        let state = Arc::new(state);
        tracing::debug!(%addr, "ui listening");
        loop {
            match listener.accept().await {
                Ok((io, _)) => spawn_connection(io, state.clone()),
                Err(error) => {
                    tracing::warn!(%addr, %error, "ui cannot accept connections");
                    // Errors such as EMFILE repeat at once; pausing keeps the loop from spinning.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

fn spawn_connection(io: tokio::net::TcpStream, state: Arc<UiState>) {
    tokio::spawn(async move {
        let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
            let state = state.clone();
            // Only the method and URI matter; the body is never read.
            let (method, uri) = (req.method().clone(), req.uri().clone());
            async move { Ok::<_, Infallible>(route(&method, &uri, &state).await) }
        });
        if let Err(error) = http1::Builder::new()
            .serve_connection(TokioIo::new(io), svc)
            .await
        {
            tracing::debug!(%error, "ui connection ended with an error");
        }
    });
}

// === routes ===

/// Answers one request.
async fn route(method: &Method, uri: &Uri, state: &UiState) -> Response<Full<Bytes>> {
    let path = uri.path();
    let known = matches!(
        path,
        "/" | "/index.html" | "/app.js" | "/app.css" | "/api/info" | "/api/flows" | "/api/map"
    );
    if !known {
        return error(StatusCode::NOT_FOUND, &format!("no route for {path}"));
    }
    if method != Method::GET {
        let mut rsp = error(StatusCode::METHOD_NOT_ALLOWED, "only GET is allowed");
        rsp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return rsp;
    }
    let query = uri.query();
    match path {
        "/" | "/index.html" => asset(INDEX_HTML, "text/html; charset=utf-8"),
        "/app.js" => asset(APP_JS, "text/javascript; charset=utf-8"),
        "/app.css" => asset(APP_CSS, "text/css; charset=utf-8"),
        "/api/info" => json(&InfoAnswer {
            lab: &state.lab,
            agents: state.agents.iter().map(ToString::to_string).collect(),
            default_last: DEFAULT_LAST,
        }),
        "/api/flows" => match api_query(query, Some(DEFAULT_LAST)) {
            Ok(q) => json(&collect(&state.agents, &q, state.agent_timeout).await),
            Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        },
        // `/api/map`, the last known route.
        _ => match api_query(query, None) {
            Ok(q) => {
                let c = collect(&state.agents, &q, state.agent_timeout).await;
                json(&MapAnswer {
                    map: ServiceMap::from_flows(c.flows.iter().map(|f| &**f)),
                    flows: c.flows.len(),
                    agents: c.agents,
                    unreachable: c.unreachable,
                    warnings: c.warnings,
                })
            }
            Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        },
    }
}

/// The agents' `/flows` query for an API query string; `last` defaults to `default_last`.
pub fn api_query(query: Option<&str>, default_last: Option<usize>) -> Result<FlowsQuery, ApiError> {
    let mut q = FlowsQuery::parse(query)?;
    if q.follow {
        return Err(ApiError::Follow);
    }
    q.last = q.last.or(default_last);
    Ok(q)
}

fn asset(body: &'static str, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut rsp = respond(
        StatusCode::OK,
        content_type,
        Bytes::from_static(body.as_bytes()),
    );
    rsp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    rsp
}

fn json<T: Serialize>(value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec(value) {
        Ok(body) => respond(StatusCode::OK, "application/json", body.into()),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode the answer: {e}"),
        ),
    }
}

/// A JSON error, `{"error": "…"}`, which the page shows as it is.
fn error(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": msg }).to_string();
    respond(status, "application/json", body.into())
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(body));
    *rsp.status_mut() = status;
    let h = rsp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    rsp
}

// === collecting flows ===

/// Asks every agent for the flows `query` selects (at once, each within `timeout`) and merges
/// them: time order, the last `query.last` overall.
pub async fn collect(agents: &[AgentEndpoint], query: &FlowsQuery, timeout: Duration) -> Collected {
    let fetches = agents.iter().map(|agent| async move {
        let res = tokio::time::timeout(timeout, fetch(agent, query)).await;
        (agent, res)
    });
    let mut out = Collected {
        agents: agents.len(),
        ..Collected::default()
    };
    for (agent, res) in futures::future::join_all(fetches).await {
        let problem = |error: String| AgentProblem {
            agent: agent.to_string(),
            error,
        };
        match res {
            Ok(Ok((flows, warnings))) => {
                out.flows.extend(flows);
                out.warnings.extend(warnings);
            }
            Ok(Err(e)) => out.unreachable.push(problem(crate::errors::chain(&e))),
            Err(_) => out.unreachable.push(problem(format!(
                "agent {agent}: no answer within {}",
                humantime::format_duration(timeout)
            ))),
        }
    }
    out.flows = merge_last(std::mem::take(&mut out.flows), query.last);
    out
}

/// One agent's flows, and the lines it sent that were not flows.
async fn fetch(
    agent: &AgentEndpoint,
    query: &FlowsQuery,
) -> Result<(Vec<Arc<FlowRecord>>, Vec<String>), ClientError> {
    let mut stream = client::flows(agent, query).await?;
    let mut flows = Vec::new();
    let mut warnings = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(FlowEvent::Flow(f)) => flows.push(f),
            Ok(FlowEvent::Lost(n)) => warnings.push(format!("agent {agent}: {n} flows lost")),
            Err(e) => warnings.push(crate::errors::chain(&e)),
        }
    }
    Ok((flows, warnings))
}

/// Flows of several agents in time order (stable: equal times keep each agent's order), cut to
/// the last `last`.
pub fn merge_last(mut flows: Vec<Arc<FlowRecord>>, last: Option<usize>) -> Vec<Arc<FlowRecord>> {
    flows.sort_by_key(|f| f.unix_nanos());
    let skip = last.map_or(0, |n| flows.len().saturating_sub(n));
    flows.split_off(skip)
}
