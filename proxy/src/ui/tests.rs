//! Routes against real admin servers on temporary Unix sockets, and the merge.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::BodyExt;

use super::*;
use crate::admin::{Admin, AdminState};
use crate::flows::{FlowPeer, FlowRing, Verdict, test_flow};

/// A directory removed on drop, short enough for Unix socket paths.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("strait-ui-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pod(ns: &str, name: &str, workload: &str, port: u16) -> FlowPeer {
    FlowPeer {
        port,
        cluster: "c1".into(),
        namespace: ns.into(),
        pod: name.into(),
        workload: Some(workload.into()),
        ..FlowPeer::default()
    }
}

fn flow(secs: u64, node: &str, src: &str, verdict: Verdict) -> FlowRecord {
    let mut f = test_flow(secs, 40000 + u16::try_from(secs).expect("small"));
    f.node = node.into();
    f.source = pod("demo", &format!("{src}-0"), src, f.source.port);
    f.destination = pod("demo", "backend-0", "backend", 8080);
    f.verdict = verdict;
    f
}

/// Starts an admin server holding `flows` on a socket in `dir`; it stops with the test runtime.
fn agent(dir: &TempDir, node: &str, flows: Vec<FlowRecord>) -> AgentEndpoint {
    let ring = Arc::new(FlowRing::new(64));
    for f in flows {
        ring.record(f);
    }
    let socket = dir.0.join(format!("{node}.sock"));
    let bound = Admin::bind(&socket, None).expect("bind admin");
    bound.spawn(AdminState {
        flows: ring,
        status: Arc::new(|| serde_json::json!({})),
        metrics: Arc::new(String::new),
    });
    AgentEndpoint {
        cluster: "c1".into(),
        node: node.into(),
        socket,
    }
}

fn state(agents: Vec<AgentEndpoint>) -> UiState {
    UiState {
        lab: "test".into(),
        agents,
        agent_timeout: Duration::from_secs(5),
    }
}

async fn get(state: &UiState, uri: &str) -> (StatusCode, String, String) {
    let uri: Uri = uri.parse().expect("uri");
    let rsp = route(&Method::GET, &uri, state).await;
    let status = rsp.status();
    let ctype = rsp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = rsp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        ctype,
        String::from_utf8(body.to_vec()).expect("utf-8"),
    )
}

async fn get_json(state: &UiState, uri: &str) -> serde_json::Value {
    let (status, _, body) = get(state, uri).await;
    assert_eq!(status, StatusCode::OK, "{uri}: {body}");
    serde_json::from_str(&body).expect("json")
}

#[tokio::test]
async fn serves_the_page_and_its_files() {
    let st = state(Vec::new());
    let (status, ctype, html) = get(&st, "/").await;
    assert_eq!(
        (status, ctype.as_str()),
        (StatusCode::OK, "text/html; charset=utf-8")
    );
    assert!(
        html.contains(r#"src="app.js""#) && html.contains(r#"href="app.css""#),
        "{html}"
    );
    let (status, ctype, js) = get(&st, "/app.js").await;
    assert_eq!(
        (status, ctype.as_str()),
        (StatusCode::OK, "text/javascript; charset=utf-8")
    );
    assert!(js.contains("dataset.ready"));
    let (status, ctype, _) = get(&st, "/app.css").await;
    assert_eq!(
        (status, ctype.as_str()),
        (StatusCode::OK, "text/css; charset=utf-8")
    );
    let info = get_json(&st, "/api/info").await;
    assert_eq!(info["lab"], "test");
}

#[tokio::test]
async fn refuses_unknown_routes_methods_and_filters() {
    let st = state(Vec::new());
    let (status, _, body) = get(&st, "/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let rsp = route(&Method::POST, &"/api/flows".parse().expect("uri"), &st).await;
    assert_eq!(rsp.status(), StatusCode::METHOD_NOT_ALLOWED);
    let (status, _, body) = get(&st, "/api/flows?colour=red").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["error"], "unknown flow filter `colour`");
    let (status, _, body) = get(&st, "/api/map?verdict=maybe").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _, body) = get(&st, "/api/flows?follow=true").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _, body) = get(&st, "/api/flows?last=many").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn merges_agents_in_time_order_and_names_the_unreachable() {
    let dir = TempDir::new();
    let a = agent(
        &dir,
        "node-1",
        vec![
            flow(1, "node-1", "frontend", Verdict::Forwarded),
            flow(4, "node-1", "intruder", Verdict::Dropped),
        ],
    );
    let b = agent(
        &dir,
        "node-2",
        vec![
            flow(2, "node-2", "frontend", Verdict::Forwarded),
            flow(3, "node-2", "intruder", Verdict::Dropped),
            flow(5, "node-2", "frontend", Verdict::Forwarded),
        ],
    );
    let gone = AgentEndpoint {
        cluster: "c1".into(),
        node: "node-3".into(),
        socket: dir.0.join("missing.sock"),
    };
    let st = state(vec![a, b, gone]);

    let v = get_json(&st, "/api/flows").await;
    let ports: Vec<u64> = v["flows"]
        .as_array()
        .expect("flows")
        .iter()
        .map(|f| f["source"]["port"].as_u64().expect("port"))
        .collect();
    assert_eq!(ports, [40001, 40002, 40003, 40004, 40005]);
    assert_eq!(v["agents"], 3);
    assert_eq!(v["unreachable"][0]["agent"], "c1/node-3");
    assert!(
        v["unreachable"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("missing.sock")),
        "{v}"
    );

    // `last` counts across agents; filters go to the agents as they are.
    let v = get_json(&st, "/api/flows?last=2").await;
    assert_eq!(v["flows"].as_array().map(Vec::len), Some(2));
    assert_eq!(v["flows"][0]["source"]["port"], 40004);
    let v = get_json(&st, "/api/flows?verdict=DROPPED").await;
    let verdicts: Vec<&str> = v["flows"]
        .as_array()
        .expect("flows")
        .iter()
        .filter_map(|f| f["verdict"].as_str())
        .collect();
    assert_eq!(verdicts, ["DROPPED", "DROPPED"]);
    // Repeated keys OR.
    let v = get_json(&st, "/api/flows?pod=demo%2Fintruder&pod=nothing").await;
    assert_eq!(v["flows"].as_array().map(Vec::len), Some(2));

    let m = get_json(&st, "/api/map").await;
    assert_eq!(m["flows"], 5);
    let edge = |from: &str| {
        m["edges"]
            .as_array()
            .expect("edges")
            .iter()
            .find(|e| e["from"] == from)
            .unwrap_or_else(|| panic!("no edge from {from}: {m}"))
            .clone()
    };
    let allowed = edge("c1/demo/frontend");
    assert_eq!(
        (&allowed["to"], &allowed["forwarded"], &allowed["dropped"]),
        (&"c1/demo/backend".into(), &3.into(), &0.into())
    );
    let denied = edge("c1/demo/intruder");
    assert_eq!(
        (&denied["forwarded"], &denied["dropped"]),
        (&0.into(), &2.into())
    );
    assert_eq!(m["unreachable"][0]["agent"], "c1/node-3");

    let m = get_json(&st, "/api/map?verdict=FORWARDED").await;
    assert_eq!(m["edges"].as_array().map(Vec::len), Some(1), "{m}");
}

#[test]
fn api_queries_default_last_and_refuse_follow() {
    let q = api_query(Some("verdict=DROPPED&verdict=ERROR"), Some(200)).expect("parses");
    assert_eq!(q.last, Some(200));
    assert_eq!(q.filter.criteria().len(), 2);
    assert_eq!(
        api_query(Some("last=7"), Some(200)).map(|q| q.last),
        Ok(Some(7))
    );
    assert_eq!(api_query(None, None).map(|q| q.last), Ok(None));
    assert_eq!(api_query(Some("follow=true"), None), Err(ApiError::Follow));
    assert!(matches!(
        api_query(Some("colour=red"), None),
        Err(ApiError::Query(_))
    ));
}

#[test]
fn merge_keeps_the_last_in_time_order() {
    let f = |secs| Arc::new(flow(secs, "node-1", "frontend", Verdict::Forwarded));
    let merged = merge_last(vec![f(3), f(1), f(2)], Some(2));
    let secs: Vec<u16> = merged.iter().map(|f| f.source.port - 40000).collect();
    assert_eq!(secs, [2, 3]);
    assert_eq!(merge_last(vec![f(2), f(1)], None).len(), 2);
    assert!(merge_last(vec![f(1)], Some(0)).is_empty());
}
