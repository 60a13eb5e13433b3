//! The cluster mesh under failure, from issue 12: `kill -9` of agents and of a mesh endpoint
//! while a client in c1 keeps calling a global service whose backends run only in c2. No request
//! fails for longer than the TTL, a restarted c1 agent keeps c2's backends in its kernel maps
//! (it serves the state it persisted), c2's endpoints deleted while its endpoint was down leave
//! c1 when the channel returns, and a remote unreachable for longer than the TTL is withdrawn,
//! then comes back. Real lab, real kernel maps (read with bpftool); needs root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// The mesh TTL of c1's agents in these labs: short, so the TTL is seen within a test.
const TTL: Duration = Duration::from_secs(6);

/// The default topology with c1's agents' TTL shortened.
const TOPOLOGY: &str = "clusters:
  - name: c1
    id: 1
    podCIDR: 198.18.16.0/20
    serviceCIDR: 198.19.1.0/24
    nodes: 2
    meshTTLSecs: 6
  - name: c2
    id: 2
    podCIDR: 198.18.32.0/20
    serviceCIDR: 198.19.2.0/24
    nodes: 2
";

/// A global `store` Service in namespace `shop` over a Deployment of `replicas`; in c1 also the
/// `shopper` client, on node-1.
fn app(replicas: u32, with_client: bool) -> String {
    let client = if with_client {
        "---
apiVersion: v1
kind: Pod
metadata: {name: shopper, namespace: shop, labels: {app: shopper}}
spec:
  nodeName: node-1
  containers: [{name: echo}]
"
    } else {
        ""
    };
    format!(
        "apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: store, namespace: shop}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: store}}}}
  template:
    metadata: {{labels: {{app: store}}}}
    spec:
      containers: [{{name: echo, ports: [{{name: api, containerPort: 7070}}]}}]
---
apiVersion: v1
kind: Service
metadata:
  name: store
  namespace: shop
  annotations: {{service.cilium.io/global: \"true\"}}
spec:
  selector: {{app: store}}
  ports: [{{name: api, port: 80, targetPort: api}}]
{client}"
    )
}

/// A lab with c1 and c2 meshed, `store` served only by c2 (two pods), answering c1's shopper.
fn meshed(test: &str) -> TestLab {
    let lab = TestLab::up(test, TOPOLOGY);
    lab.apply_ok("c1", &app(0, true));
    lab.apply_ok("c2", &app(2, false));
    lab.mesh_connect("c1", "c2");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !one_request(&lab).contains("c2") {
        assert!(Instant::now() < deadline, "c1's shopper never reached c2");
        std::thread::sleep(Duration::from_millis(200));
    }
    lab
}

/// One request from c1's shopper to the store: the answering cluster, or the error.
fn one_request(lab: &TestLab) -> String {
    let out = lab.exec(
        "c1/shop/shopper",
        &[
            "curl",
            "-sS",
            "--max-time",
            "2",
            "http://store.shop.svc.cluster.local/",
        ],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["cluster"]
        .as_str()
        .map_or_else(|| text(&out), str::to_string)
}

// === the request loop ===

/// Requests from c1's shopper every 100 ms until stopped, each recorded with its time.
struct Requests {
    child: Child,
    stop: PathBuf,
}

/// What the loop saw.
#[derive(Debug)]
struct Seen {
    ok: usize,
    failed: usize,
    /// Longest time from a failed request to the next success (or the end).
    longest_outage: Duration,
    /// Clusters that answered.
    clusters: BTreeSet<String>,
}

impl Requests {
    fn start(lab: &TestLab) -> Self {
        let stop = lab.dir.join(format!("stop-{}", rand_suffix()));
        // The name is resolved once: the loop must not depend on the agent's DNS server, which
        // goes down with the agent.
        let script = format!(
            "import socket, time, json, os\n\
             ip = socket.gethostbyname('store.shop.svc.cluster.local')\n\
             end = time.time() + 240\n\
             while time.time() < end and not os.path.exists('{stop}'):\n\
             \x20   t = time.time()\n\
             \x20   try:\n\
             \x20       s = socket.create_connection((ip, 80), timeout=1)\n\
             \x20       s.settimeout(1)\n\
             \x20       s.sendall(b'GET / HTTP/1.1\\r\\nHost: store\\r\\nConnection: close\\r\\n\\r\\n')\n\
             \x20       data = b''\n\
             \x20       while True:\n\
             \x20           chunk = s.recv(65536)\n\
             \x20           if not chunk: break\n\
             \x20           data += chunk\n\
             \x20       s.close()\n\
             \x20       print('%.3f ok %s' % (t, json.loads(data.split(b'\\r\\n\\r\\n', 1)[1])['cluster']), flush=True)\n\
             \x20   except Exception as e:\n\
             \x20       print('%.3f err %s' % (t, type(e).__name__), flush=True)\n\
             \x20   time.sleep(0.1)\n",
            stop = stop.display()
        );
        let child = Command::new(STRAIT)
            .args([
                "lab",
                "exec",
                "c1/shop/shopper",
                "--",
                "python3",
                "-c",
                &script,
            ])
            .env("STRAIT_LAB", &lab.name)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Let the first requests go out before anything breaks.
        std::thread::sleep(Duration::from_secs(1));
        Requests { child, stop }
    }

    fn finish(self) -> Seen {
        std::fs::write(&self.stop, b"").unwrap();
        let out = self.child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let mut seen = Seen {
            ok: 0,
            failed: 0,
            longest_outage: Duration::ZERO,
            clusters: BTreeSet::new(),
        };
        let mut down_since: Option<f64> = None;
        let mut last = 0.0;
        for line in stdout.lines() {
            let mut f = line.split_whitespace();
            let (Some(t), Some(what)) = (f.next().and_then(|t| t.parse::<f64>().ok()), f.next())
            else {
                continue;
            };
            last = t;
            if what == "ok" {
                seen.ok += 1;
                seen.clusters.extend(f.next().map(str::to_string));
                if let Some(d) = down_since.take() {
                    let outage = Duration::from_secs_f64(t - d);
                    seen.longest_outage = seen.longest_outage.max(outage);
                }
            } else {
                seen.failed += 1;
                down_since.get_or_insert(t);
            }
        }
        if let Some(d) = down_since {
            seen.longest_outage = seen
                .longest_outage
                .max(Duration::from_secs_f64(last - d + 1.0));
        }
        assert!(seen.ok > 0, "the loop made no request: {}", text(&out));
        seen
    }
}

// === kernel maps ===

/// What one node's kernel maps hold: pod addresses in the ipcache and the backends of every
/// service frontend.
#[derive(Debug, Default)]
struct Maps {
    ipcache: BTreeSet<String>,
    backends: BTreeSet<String>,
}

fn pin_dir(lab: &TestLab, cluster: &str, node: &str) -> PathBuf {
    let cfg = format!(
        "/run/strait/labs/{}/nodes/{cluster}-{node}/agent.json",
        lab.name
    );
    let v: Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    PathBuf::from(v["bpf_pin_dir"].as_str().unwrap())
}

/// The raw bytes of every entry of a pinned map, as bpftool dumps them.
fn dump(pin: &std::path::Path, map: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let out = Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(pin.join(map))
        .output()
        .unwrap();
    assert!(out.status.success(), "bpftool {map}: {}", text(&out));
    let bytes = |v: &Value| -> Vec<u8> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
            .collect()
    };
    let entries: Value = serde_json::from_slice(&out.stdout).unwrap();
    entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (bytes(&e["key"]), bytes(&e["value"])))
        .collect()
}

fn ip(b: &[u8]) -> String {
    format!("{}.{}.{}.{}", b[0], b[1], b[2], b[3])
}

fn maps(lab: &TestLab, cluster: &str, node: &str) -> Maps {
    let pin = pin_dir(lab, cluster, node);
    let mut m = Maps::default();
    for (k, _) in dump(&pin, "strait_ipcache") {
        // struct strait_ipcache_key: prefixlen (host order), then the address.
        if k[..4] == 32u32.to_ne_bytes() {
            m.ipcache.insert(ip(&k[4..8]));
        }
    }
    for (_, v) in dump(&pin, "strait_svc_ids") {
        // struct strait_svc_entry: count, then 12-byte backends starting with the address.
        let count = u32::from_ne_bytes(v[..4].try_into().unwrap()) as usize;
        for b in v[4..].chunks(12).take(count.min(64)) {
            m.backends.insert(ip(&b[..4]));
        }
    }
    m
}

/// Pod addresses of the `store` pods of `cluster`.
fn store_ips(lab: &TestLab, cluster: &str) -> BTreeSet<String> {
    lab.status()["pods"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["cluster"] == cluster
                && p["namespace"] == "shop"
                && p["name"].as_str().unwrap().starts_with("store")
        })
        .map(|p| p["ip"].as_str().unwrap().to_string())
        .collect()
}

/// Polls until `pred` holds on both c1 nodes' maps; returns how long it took.
fn wait_maps(lab: &TestLab, what: &str, limit: Duration, pred: impl Fn(&Maps) -> bool) -> Duration {
    let t0 = Instant::now();
    loop {
        let all = ["node-1", "node-2"].map(|n| maps(lab, "c1", n));
        if all.iter().all(&pred) {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < limit, "{what} within {limit:?}: {all:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

// === processes ===

fn kill9(pid: i32) {
    let ok = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success(), "kill -9 {pid}");
}

fn lab_state(lab: &TestLab) -> Value {
    let f = format!("/run/strait/labs/{}/lab.json", lab.name);
    serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap()
}

fn endpoint_pid(lab: &TestLab, cluster: &str) -> i32 {
    lab_state(lab)["mesh"][cluster]["pid"].as_i64().unwrap() as i32
}

fn lab_up(lab: &TestLab) -> Command {
    let mut c = Command::new(STRAIT);
    c.args([
        "lab",
        "up",
        "-f",
        lab.dir.join("topology.yaml").to_str().unwrap(),
    ])
    .env("STRAIT_LAB", &lab.name);
    c
}

fn lab_up_ok(lab: &TestLab) {
    let out = lab_up(lab).output().unwrap();
    assert!(out.status.success(), "lab up: {}", text(&out));
}

/// c1's view of c2 in `clustermesh status -o json`.
fn c2_in_c1(lab: &TestLab) -> Value {
    let out = lab.strait(&["clustermesh", "status", "--cluster", "c1", "-o", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["remotes"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["cluster"] == "c2").cloned())
        .unwrap_or_else(|| panic!("no c2 in c1's mesh status: {}", text(&out)))
}

fn wait_c2_ready_in_c1(lab: &TestLab) {
    lab.clustermesh_ok(&[
        "status",
        "--cluster",
        "c1",
        "--wait",
        "--wait-duration",
        "20s",
    ]);
    assert_eq!(c2_in_c1(lab)["ready"], 2, "both c1 agents synced with c2");
}

#[test]
fn agent_restarts_keep_c1_serving_c2s_backends() {
    let lab = meshed("mesh_failover_agents");
    let c2_stores = store_ips(&lab, "c2");
    assert_eq!(c2_stores.len(), 2);
    wait_maps(
        &lab,
        "c2's stores in c1's maps",
        Duration::from_secs(5),
        |m| c2_stores.is_subset(&m.backends) && c2_stores.is_subset(&m.ipcache),
    );
    let persisted = |node: &str| {
        PathBuf::from(format!(
            "/run/strait/labs/{}/nodes/c1-{node}/mesh/c2.json",
            lab.name
        ))
    };
    // Written at most 200 ms after the state changed: wait for both nodes' files.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(persisted("node-1").exists() && persisted("node-2").exists()) {
        assert!(
            Instant::now() < deadline,
            "c1's agents never persisted c2's state"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let requests = Requests::start(&lab);
    // c2's agents die and come back: c2's kernel keeps serving, c1 does not notice.
    for node in ["node-1", "node-2"] {
        kill9(lab.agent_pid("c2", node));
    }
    std::thread::sleep(Duration::from_secs(1));
    lab_up_ok(&lab);

    // c1's shopper's own agent dies: the kernel path lives on; the restarted agent compiles
    // from the state it persisted, so the maps never lose c2's backends, not for one poll.
    let old = lab.agent_pid("c1", "node-1");
    kill9(old);
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let mut up = lab_up(&lab)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut polls = 0;
    let status = loop {
        let m = maps(&lab, "c1", "node-1");
        polls += 1;
        assert!(
            c2_stores.is_subset(&m.backends) && c2_stores.is_subset(&m.ipcache),
            "c1/node-1's maps lost c2's stores {:?} after {:?} of the restart: {m:#?}",
            c2_stores,
            t0.elapsed()
        );
        if let Some(s) = up.try_wait().unwrap() {
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "lab up after kill -9 of c1's agent");
    let restart = t0.elapsed();
    assert_ne!(lab.agent_pid("c1", "node-1"), old);
    let log = std::fs::read_to_string(format!(
        "/run/strait/labs/{}/nodes/c1-node-1/agent.log",
        lab.name
    ))
    .unwrap();
    assert!(
        log.contains("serving the persisted state of a mesh peer"),
        "the restarted agent served the persisted state: {log}"
    );
    // And after the new sync completes, for a while more.
    wait_c2_ready_in_c1(&lab);
    for _ in 0..10 {
        let m = maps(&lab, "c1", "node-1");
        assert!(c2_stores.is_subset(&m.backends), "{m:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = c2_in_c1(&lab);
    assert_eq!(
        (st["connected"].as_u64(), st["ready"].as_u64()),
        (Some(2), Some(2)),
        "{st}"
    );
    let seen = requests.finish();
    eprintln!(
        "agent restarts: {seen:?}; c1 agent restart took {restart:?}, maps polled {polls} times"
    );
    assert_eq!(seen.clusters, BTreeSet::from(["c2".to_string()]));
    assert!(
        seen.longest_outage < TTL,
        "no request fails for longer than the TTL: {seen:?}"
    );
}

#[test]
fn a_mesh_endpoint_outage_serves_c2_within_the_ttl_and_withdraws_it_after() {
    let lab = meshed("mesh_failover_endpoint");
    let c2_stores = store_ips(&lab, "c2");
    wait_maps(
        &lab,
        "c2's stores in c1's maps",
        Duration::from_secs(5),
        |m| c2_stores.is_subset(&m.backends) && c2_stores.is_subset(&m.ipcache),
    );

    // c2's endpoint dies: c1 serves c2's last state, requests keep succeeding.
    let requests = Requests::start(&lab);
    let killed = Instant::now();
    kill9(endpoint_pid(&lab, "c2"));
    std::thread::sleep(TTL - Duration::from_secs(2));
    let st = c2_in_c1(&lab);
    assert_eq!(st["connected"], 0, "the channel is down: {st}");
    let m = maps(&lab, "c1", "node-1");
    assert!(
        c2_stores.is_subset(&m.backends),
        "served within the TTL: {m:#?}"
    );
    let seen = requests.finish();
    assert_eq!(
        seen.failed, 0,
        "c2's pods keep answering within the TTL: {seen:?}"
    );

    // While it is down, c2's backends go; the endpoint comes back (`lab up` restarts it as
    // Kubernetes restarts the clustermesh-apiserver): they leave c1 at once.
    lab.apply_ok("c2", &app(0, false));
    let m = maps(&lab, "c1", "node-2");
    if killed.elapsed() < TTL {
        // Never withdrawn before the TTL: c1 still holds the (now stale) c2 backends, which
        // only the channel's return can remove.
        assert!(c2_stores.is_subset(&m.backends), "{m:#?}");
    }
    lab_up_ok(&lab);
    let t = wait_maps(&lab, "c2's deleted stores gone from c1", TTL, |m| {
        m.backends.is_disjoint(&c2_stores) && m.ipcache.is_disjoint(&c2_stores)
    });
    eprintln!("deleted endpoints left c1 {t:?} after the endpoint returned");
    wait_c2_ready_in_c1(&lab);
    let st = c2_in_c1(&lab);
    assert_eq!(
        (
            st["nodes"].as_u64(),
            st["endpoints"].as_u64(),
            st["services"].as_u64()
        ),
        (Some(2), Some(0), Some(1)),
        "nothing stale in c1's status: {st}"
    );
    for node in ["node-1", "node-2"] {
        let m = maps(&lab, "c1", node);
        assert!(
            m.backends.is_empty(),
            "no backend left in c1/{node}: {m:#?}"
        );
    }

    // c2 serves again; then its endpoint stays down past the TTL: withdrawn, never before.
    lab.apply_ok("c2", &app(2, false));
    let c2_stores = store_ips(&lab, "c2");
    wait_maps(
        &lab,
        "c2's new stores in c1's maps",
        Duration::from_secs(10),
        |m| c2_stores.is_subset(&m.backends) && c2_stores.is_subset(&m.ipcache),
    );
    let killed = Instant::now();
    kill9(endpoint_pid(&lab, "c2"));
    let withdrawn = wait_maps(&lab, "c2 withdrawn from c1 after the TTL", TTL * 3, |m| {
        m.ipcache.is_disjoint(&c2_stores) && m.backends.is_disjoint(&c2_stores)
    });
    let after = killed.elapsed();
    eprintln!("c2 withdrawn {after:?} after its endpoint died (TTL {TTL:?})");
    assert!(
        after >= TTL && withdrawn >= TTL,
        "never before the TTL: {after:?}"
    );
    let st = c2_in_c1(&lab);
    assert_eq!(
        (st["connected"].as_u64(), st["endpoints"].as_u64()),
        (Some(0), Some(0)),
        "{st}"
    );
    assert!(
        one_request(&lab) != "c2",
        "c1 no longer reaches c2's withdrawn backends"
    );

    // The endpoint returns: c2 is back in c1's maps and answers.
    lab_up_ok(&lab);
    wait_maps(&lab, "c2 back in c1's maps", Duration::from_secs(10), |m| {
        c2_stores.is_subset(&m.backends) && c2_stores.is_subset(&m.ipcache)
    });
    wait_c2_ready_in_c1(&lab);
    assert_eq!(one_request(&lab), "c2");
}
