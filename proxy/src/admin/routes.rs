//! Admin routes. Each handler builds its response without waiting: `/flows?follow=true` returns a
//! body that streams from the ring's feed.
//!
//! `/flows` answers NDJSON, one JSON object per line:
//! - a [`FlowRecord`] as serialized by serde, or
//! - `{"lost":N}` in follow mode when this follower fell behind the feed and N flows (counted
//!   before filtering) were skipped.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;

use super::{Access, AdminState, FlowsQuery};
use crate::flows::{FlowEvent, FlowFilter, FlowRecord, FlowSubscription};

/// Response body of every admin route.
pub(super) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Media type of `/flows` responses.
pub(crate) const NDJSON: &str = "application/x-ndjson";

/// Paths served to anyone who reaches the TCP listener: health checks and Prometheus. Every
/// other path, including routes added later, needs [`Access::Authenticated`] at least.
const PUBLIC: &[&str] = &["/healthz", "/metrics"];

/// Answers one admin request that came in with `access`.
pub(super) fn route<B>(req: &Request<B>, state: &AdminState, access: Access) -> Response<Body> {
    let path = req.uri().path();
    // Checked before the route exists, so an unauthenticated caller learns nothing of the others.
    if access == Access::Public && !PUBLIC.contains(&path) {
        return text(
            StatusCode::FORBIDDEN,
            format!("{path} needs the agent's Unix socket or a client certificate\n"),
        );
    }
    if !matches!(path, "/healthz" | "/status" | "/flows" | "/metrics") {
        return text(StatusCode::NOT_FOUND, format!("no route for {path}\n"));
    }
    if req.method() != Method::GET {
        let mut rsp = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is allowed\n".into(),
        );
        rsp.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        return rsp;
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok".into()),
        "/status" => status(state),
        "/metrics" => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            full((state.metrics)().into_bytes()),
        ),
        _ => flows(req.uri().query(), state),
    }
}

fn status(state: &AdminState) -> Response<Body> {
    match serde_json::to_vec(&(state.status)()) {
        Ok(mut body) => {
            body.push(b'\n');
            respond(StatusCode::OK, "application/json", full(body))
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode status: {e}\n"),
        ),
    }
}

fn flows(query: Option<&str>, state: &AdminState) -> Response<Body> {
    let q = match FlowsQuery::parse(query) {
        Ok(q) => q,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    // Without a filter the ring can cut the window itself and skip cloning the rest.
    let window = if q.filter.is_empty() { q.last } else { None };
    let (recent, feed) = if q.follow {
        let (recent, feed) = state.flows.follow(window);
        (recent, Some(feed))
    } else {
        (state.flows.recent(window), None)
    };
    let backlog = encode_backlog(&recent, &q.filter, q.last);
    let body = match feed {
        None => full(backlog),
        Some(feed) => {
            let head = futures::stream::once(async move { Ok(Frame::data(Bytes::from(backlog))) });
            let live = live_lines(feed, q.filter).map(|line| Ok(Frame::data(line)));
            StreamBody::new(head.chain(live)).boxed_unsync()
        }
    };
    respond(StatusCode::OK, NDJSON, body)
}

/// The last `last` flows passing `filter`, one JSON line each.
fn encode_backlog(recent: &[Arc<FlowRecord>], filter: &FlowFilter, last: Option<usize>) -> Vec<u8> {
    let matching: Vec<&Arc<FlowRecord>> = recent.iter().filter(|f| filter.matches(f)).collect();
    let skip = last.map_or(0, |n| matching.len().saturating_sub(n));
    let mut out = Vec::new();
    for flow in &matching[skip..] {
        if let Some(line) = encode_flow(flow) {
            out.extend_from_slice(&line);
        }
    }
    out
}

pub(super) fn live_lines(
    feed: FlowSubscription,
    filter: FlowFilter,
) -> impl futures::Stream<Item = Bytes> + Send {
    futures::stream::unfold((feed, filter), |(mut feed, filter)| async move {
        loop {
            let line = match feed.recv().await? {
                FlowEvent::Flow(f) if !filter.matches(&f) => continue,
                ev => encode_event(&ev),
            };
            if let Some(line) = line {
                return Some((line, (feed, filter)));
            }
        }
    })
}

/// One NDJSON line for a feed event; `None` (logged) if a flow cannot be serialized.
pub(crate) fn encode_event(ev: &FlowEvent) -> Option<Bytes> {
    match ev {
        FlowEvent::Flow(f) => encode_flow(f),
        FlowEvent::Lost(n) => Some(Bytes::from(format!("{{\"lost\":{n}}}\n"))),
    }
}

fn encode_flow(f: &FlowRecord) -> Option<Bytes> {
    match serde_json::to_vec(f) {
        Ok(mut line) => {
            line.push(b'\n');
            Some(line.into())
        }
        Err(error) => {
            tracing::debug!(%error, "skipping a flow that cannot be encoded");
            None
        }
    }
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed_unsync()
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    respond(status, "text/plain; charset=utf-8", full(body))
}

fn respond(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut rsp = Response::new(body);
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    rsp
}
