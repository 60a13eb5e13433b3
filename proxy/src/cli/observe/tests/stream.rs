use std::path::PathBuf;
use std::sync::Arc;

use super::*;
use crate::cli::observe::*;
use crate::flows::{Criterion, FlowFilter};

#[tokio::test]
async fn unreachable_agents_fail_the_run() {
    let agents = vec![AgentEndpoint {
        cluster: "c1".into(),
        node: "gone".into(),
        socket: "/nonexistent/strait-admin.sock".into(),
    }];
    let args = parse(&[]).expect("parses");
    let err = run(&args, agents.clone())
        .await
        .expect_err("no agent reachable");
    assert!(err.to_string().contains("none of the 1 agents"), "{err}");

    let (mut out, mut err_out) = (Vec::new(), Vec::new());
    let args = parse(&["-f"]).expect("parses");
    let err = observe(&args, &agents, false, &mut out, &mut err_out)
        .await
        .expect_err("no agent reachable");
    assert!(err.to_string().contains("none of the 1 agents"), "{err}");
    let stderr = String::from_utf8_lossy(&err_out);
    assert!(
        stderr.starts_with("strait observe: agent c1/gone: cannot connect to /nonexistent/"),
        "{stderr}"
    );
}

/// A socket path in a directory removed on drop.
struct TempSock(PathBuf);

impl TempSock {
    fn new(name: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("strait-obs-{}-{n}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    fn endpoint(&self, node: &str) -> AgentEndpoint {
        AgentEndpoint {
            cluster: "c1".into(),
            node: node.into(),
            socket: self.0.join("admin.sock"),
        }
    }
}

impl Drop for TempSock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A real admin server serving `ring`.
fn live_agent(dir: &TempSock, ring: &Arc<crate::flows::FlowRing>) -> AgentEndpoint {
    let state = crate::admin::AdminState {
        flows: ring.clone(),
        status: Arc::new(|| serde_json::json!({})),
        metrics: Arc::new(String::new),
    };
    let agent = dir.endpoint("node-1");
    // Serves until the test's runtime goes.
    drop(
        crate::admin::Admin::bind(&agent.socket, None)
            .expect("bind")
            .spawn(state),
    );
    agent
}

/// An agent answering one `/flows` request with the lines sent on the channel, until it is
/// dropped; the request line goes to the returned receiver.
fn scripted_agent(
    dir: &TempSock,
) -> (
    AgentEndpoint,
    tokio::sync::mpsc::UnboundedSender<String>,
    tokio::sync::oneshot::Receiver<String>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let agent = dir.endpoint("node-1");
    let listener = tokio::net::UnixListener::bind(&agent.socket).expect("bind");
    let (lines, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (req_tx, req_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut io, _) = listener.accept().await.expect("accept");
        let mut head = Vec::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut chunk = [0; 1024];
            let n = io.read(&mut chunk).await.expect("read");
            assert!(n > 0, "request cut short");
            head.extend_from_slice(&chunk[..n]);
        }
        let head = String::from_utf8_lossy(&head);
        let _ = req_tx.send(head.lines().next().unwrap_or_default().to_string());
        io.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n",
        )
        .await
        .expect("write head");
        while let Some(line) = rx.recv().await {
            io.write_all(line.as_bytes()).await.expect("write line");
        }
        // Closing ends the body, as an agent that stops does.
    });
    (agent, lines, req_rx)
}

fn gone() -> AgentEndpoint {
    AgentEndpoint {
        cluster: "c2".into(),
        node: "down".into(),
        socket: "/nonexistent/strait-admin.sock".into(),
    }
}

fn numbered(port: u16, verdict: Verdict) -> FlowRecord {
    let mut f = sample();
    f.time = t0() + Duration::from_secs(port.into());
    f.source.port = port;
    f.verdict = verdict;
    f
}

#[tokio::test]
async fn one_agent_down_is_reported_and_the_rest_shown() {
    let dir = TempSock::new("oneshot");
    let ring = Arc::new(crate::flows::FlowRing::new(100));
    ring.record(numbered(1, Verdict::Forwarded));
    ring.record(numbered(2, Verdict::Dropped));
    ring.record(numbered(3, Verdict::Forwarded));
    let agents = [gone(), live_agent(&dir, &ring)];
    let args = parse(&["--verdict", "forwarded", "-o", "json"]).expect("parses");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    observe(&args, &agents, false, &mut out, &mut err)
        .await
        .expect("one agent answered");
    let ports: Vec<u16> = String::from_utf8_lossy(&out)
        .lines()
        .map(|l| {
            serde_json::from_str::<FlowRecord>(l)
                .expect("flow")
                .source
                .port
        })
        .collect();
    assert_eq!(ports, [1, 3]);
    let stderr = String::from_utf8_lossy(&err);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("strait observe: agent c2/down: cannot connect"),
        "{stderr}"
    );

    // Table output of the same, and a filter the agent applies to the time bound.
    let args = parse(&["-o", "table", "--since", "2024-11-25T06:01:04.123Z"]).expect("parses");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    observe(&args, &agents[1..], false, &mut out, &mut err)
        .await
        .expect("answered");
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.starts_with("TIME "), "{text}");
    assert!(text.contains("DROPPED"), "{text}");
    assert!(err.is_empty());
}

/// A `Write` the test can read while `observe` holds it.
#[derive(Clone, Default)]
struct Shared(Arc<parking_lot::Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }
}

#[tokio::test]
async fn follow_streams_from_the_agents_that_answer() {
    let dir = TempSock::new("follow");
    let (agent, lines, request) = scripted_agent(&dir);
    let agents = [agent, gone()];
    let args = parse(&["-f", "--verdict", "dropped"]).expect("parses");
    let (out, err) = (Shared::default(), Shared::default());
    let (mut o, mut e) = (out.clone(), err.clone());
    let task = tokio::spawn(async move { observe(&args, &agents, false, &mut o, &mut e).await });

    assert_eq!(
        request.await.expect("request"),
        "GET /flows?last=0&follow=true&verdict=DROPPED HTTP/1.1"
    );
    let line = |f: FlowRecord| json_line(&f).expect("json");
    // The agent filters, but what arrives is filtered again.
    lines
        .send(line(numbered(1, Verdict::Forwarded)))
        .expect("send");
    lines
        .send(line(numbered(2, Verdict::Dropped)))
        .expect("send");
    lines.send("{\"lost\":7}\n".into()).expect("send");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !err.text().contains("7 flows lost") {
        assert!(tokio::time::Instant::now() < deadline, "{}", err.text());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let text = out.text();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains(":2 (ID:65792)") && text.contains("DROPPED"),
        "{text}"
    );
    let stderr = err.text();
    assert!(
        stderr.starts_with("strait observe: agent c2/down: cannot connect"),
        "{stderr}"
    );
    assert!(
        stderr.contains("strait observe: agent c1/node-1: 7 flows lost"),
        "{stderr}"
    );

    // When the last agent that answered stops, observe fails.
    drop(lines);
    let res = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("observe ends")
        .expect("no panic");
    let e = res.expect_err("all streams ended");
    assert!(e.to_string().contains("all agents ended"), "{e}");
    assert!(
        err.text().contains("agent c1/node-1: flow stream ended"),
        "{}",
        err.text()
    );
}

#[test]
fn select_last_merges_in_time_order_after_filtering() {
    let at = |ms: u64, ns: &str| {
        let mut f = sample();
        f.time = UNIX_EPOCH + Duration::from_millis(ms);
        f.source.namespace = ns.into();
        f.destination.namespace = ns.into();
        Arc::new(f)
    };
    // Two agents' lists, concatenated as they arrive.
    let flows = vec![
        at(1, "a"),
        at(4, "b"),
        at(6, "a"),
        at(2, "a"),
        at(5, "a"),
        at(3, "b"),
    ];
    let filter = FlowFilter::new().with(Criterion::Namespace("a".into()));
    let got: Vec<u128> = select_last(flows.clone(), &filter, Some(3))
        .iter()
        .map(|f| f.unix_nanos() / 1_000_000)
        .collect();
    assert_eq!(got, [2, 5, 6]);
    assert_eq!(select_last(flows, &filter, None).len(), 4);
}
