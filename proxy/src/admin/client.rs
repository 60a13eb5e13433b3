//! Client side of the agent admin API: fetch flows and status over an agent's Unix socket.
//!
//! Each call opens its own HTTP/1.1 connection; `strait observe` talks to a handful of agents, so
//! pooling would buy nothing.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Deserialize;

use crate::flows::{FlowEvent, FlowRecord, FlowsQuery};

/// Longest NDJSON line accepted; a flow record is well under a kilobyte.
const MAX_LINE: usize = 1 << 20;

/// Where one agent's admin socket is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentEndpoint {
    pub cluster: String,
    pub node: String,
    pub socket: PathBuf,
}

impl fmt::Display for AgentEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.cluster, self.node)
    }
}

/// Flows from one agent: the backlog, then (in follow mode) live flows and loss notices.
pub type FlowStream = BoxStream<'static, Result<FlowEvent, ClientError>>;

/// A failed exchange with an agent; every variant names the agent as `cluster/node`.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("agent {agent}: cannot connect to {}", socket.display())]
    Connect {
        agent: String,
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("agent {agent}: HTTP handshake on {} failed", socket.display())]
    Handshake {
        agent: String,
        socket: PathBuf,
        #[source]
        source: hyper::Error,
    },
    #[error("agent {agent}: cannot build a request for {path}")]
    InvalidPath {
        agent: String,
        path: String,
        #[source]
        source: http::Error,
    },
    #[error("agent {agent}: GET {path} failed")]
    Request {
        agent: String,
        path: String,
        #[source]
        source: hyper::Error,
    },
    #[error("agent {agent}: GET {path} answered {status}: {body}")]
    Status {
        agent: String,
        path: String,
        status: StatusCode,
        body: String,
    },
    #[error("agent {agent}: reading {path} failed")]
    Body {
        agent: String,
        path: String,
        #[source]
        source: hyper::Error,
    },
    #[error("agent {agent}: {path} sent a line that is not a flow: {line}")]
    Decode {
        agent: String,
        path: String,
        line: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("agent {agent}: {path} sent a line longer than {MAX_LINE} bytes")]
    LineTooLong { agent: String, path: String },
    #[error("agent {agent}: no answer within {}", humantime::format_duration(*after))]
    Timeout { agent: String, after: Duration },
}

/// The agent's `/status` document.
pub async fn status(agent: &AgentEndpoint) -> Result<serde_json::Value, ClientError> {
    let path = "/status".to_string();
    let body = get(agent, &path)
        .await?
        .into_body()
        .collect()
        .await
        .map_err(|source| ClientError::Body {
            agent: agent.to_string(),
            path: path.clone(),
            source,
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|source| ClientError::Decode {
        agent: agent.to_string(),
        line: snippet(&body),
        path,
        source,
    })
}

/// Flows matching `query`; the stream ends with the response (never, when following).
pub async fn flows(agent: &AgentEndpoint, query: &FlowsQuery) -> Result<FlowStream, ClientError> {
    let path = format!("/flows?{}", query.to_query_string());
    let body = get(agent, &path).await?.into_body();
    let reader = LineReader {
        body,
        buf: BytesMut::new(),
        agent: agent.to_string(),
        path,
        state: ReadState::Reading,
    };
    Ok(Box::pin(futures::stream::unfold(
        reader,
        |mut r| async move {
            let item = r.next_event().await?;
            Some((item, r))
        },
    )))
}

/// Parses one line of the `/flows` NDJSON format (see `admin`).
pub fn decode_line(line: &[u8]) -> Result<FlowEvent, serde_json::Error> {
    #[derive(Deserialize)]
    struct Lost {
        lost: u64,
    }
    match serde_json::from_slice::<FlowRecord>(line) {
        Ok(flow) => Ok(FlowEvent::Flow(Arc::new(flow))),
        // Report why it is not a flow, the common case, if it is not a loss notice either.
        Err(e) => serde_json::from_slice::<Lost>(line)
            .map(|l| FlowEvent::Lost(l.lost))
            .map_err(|_| e),
    }
}

async fn get(agent: &AgentEndpoint, path: &str) -> Result<http::Response<Incoming>, ClientError> {
    let stream = tokio::net::UnixStream::connect(&agent.socket)
        .await
        .map_err(|source| ClientError::Connect {
            agent: agent.to_string(),
            socket: agent.socket.clone(),
            source,
        })?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ClientError::Handshake {
            agent: agent.to_string(),
            socket: agent.socket.clone(),
            source,
        })?;
    // The connection ends once the response body and `send` are dropped.
    tokio::spawn(async move {
        if let Err(error) = conn.await {
            tracing::debug!(%error, "agent admin connection ended with an error");
        }
    });
    let req_err = |source| ClientError::Request {
        agent: agent.to_string(),
        path: path.to_string(),
        source,
    };
    let req = Request::get(path)
        .header(header::HOST, "localhost")
        .body(Empty::<Bytes>::new());
    let req = req.map_err(|source| ClientError::InvalidPath {
        agent: agent.to_string(),
        path: path.to_string(),
        source,
    })?;
    let rsp = send.send_request(req).await.map_err(req_err)?;
    if rsp.status() != StatusCode::OK {
        let status = rsp.status();
        let body = rsp
            .into_body()
            .collect()
            .await
            .map(|b| snippet(&b.to_bytes()))
            .unwrap_or_default();
        return Err(ClientError::Status {
            agent: agent.to_string(),
            path: path.to_string(),
            status,
            body,
        });
    }
    Ok(rsp)
}

/// The start of a possibly long, possibly binary payload, for error messages.
fn snippet(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(200)]);
    s.trim_end().to_string()
}

// === impl LineReader ===

/// Splits a streaming body into NDJSON lines.
struct LineReader {
    body: Incoming,
    buf: BytesMut,
    agent: String,
    path: String,
    state: ReadState,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ReadState {
    Reading,
    /// The body ended; drain what is buffered.
    Draining,
    Done,
}

impl LineReader {
    async fn next_event(&mut self) -> Option<Result<FlowEvent, ClientError>> {
        loop {
            if self.state == ReadState::Done {
                return None;
            }
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line = self.buf.split_to(pos + 1);
                if let Some(item) = self.decode(&line[..pos]) {
                    return Some(item);
                }
                continue;
            }
            if self.state == ReadState::Draining {
                self.state = ReadState::Done;
                let rest = self.buf.split();
                return self.decode(&rest);
            }
            if self.buf.len() > MAX_LINE {
                self.state = ReadState::Done;
                return Some(Err(ClientError::LineTooLong {
                    agent: self.agent.clone(),
                    path: self.path.clone(),
                }));
            }
            match self.body.frame().await {
                None => self.state = ReadState::Draining,
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(source)) => {
                    self.state = ReadState::Done;
                    return Some(Err(ClientError::Body {
                        agent: self.agent.clone(),
                        path: self.path.clone(),
                        source,
                    }));
                }
            }
        }
    }

    /// `None` for a blank line; a bad line is reported and reading goes on.
    fn decode(&self, line: &[u8]) -> Option<Result<FlowEvent, ClientError>> {
        let line = line.trim_ascii();
        if line.is_empty() {
            return None;
        }
        Some(decode_line(line).map_err(|source| ClientError::Decode {
            agent: self.agent.clone(),
            path: self.path.clone(),
            line: snippet(line),
            source,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::test_flow as flow;

    #[test]
    fn decodes_flows_and_loss_notices() {
        let f = flow(7, 4242);
        let line = serde_json::to_vec(&f).expect("encodes");
        assert_eq!(
            decode_line(&line).expect("flow"),
            FlowEvent::Flow(Arc::new(f))
        );
        assert_eq!(
            decode_line(br#"{"lost":12}"#).expect("lost"),
            FlowEvent::Lost(12)
        );
        let err = decode_line(br#"{"time":"x"}"#).expect_err("not a flow");
        assert!(err.to_string().contains("time"), "{err}");
    }

    #[test]
    fn agent_displays_as_cluster_slash_node() {
        let a = AgentEndpoint {
            cluster: "c1".into(),
            node: "node-1".into(),
            socket: "/run/strait/admin.sock".into(),
        };
        assert_eq!(a.to_string(), "c1/node-1");
        let e = ClientError::Timeout {
            agent: a.to_string(),
            after: Duration::from_secs(5),
        };
        assert_eq!(e.to_string(), "agent c1/node-1: no answer within 5s");
    }
}
