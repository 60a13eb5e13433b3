//! The socket iterator on the real kernel: `Datapath::rejudge_sockets` ends the live TCP
//! connections whose socket storage the current policy and service maps no longer allow, with
//! the reason in the storage, and leaves every other socket alone, including those of other
//! network namespaces. Needs root and kernel 6.5+ (bpf_sock_destroy).

#![allow(clippy::unwrap_used)]

mod support;

use std::{
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    os::unix::fs::MetadataExt,
    path::PathBuf,
    time::Duration,
};

use aya::maps::{Map, MapData, SkStorage};
use strait_ebpf::{
    Datapath, DropReason, PolicyAction, PolicyImage, PolicyKey, Rejudged, ServiceBackend,
    abi::{self, SockState},
};
use support::{Fixture, TARGET_IP};

/// The client pod and the server pods the sockets' storage names (nothing listens there:
/// the iterator judges the storage, not the socket's addresses).
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
const SERVER_2: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 3);
/// Was CLIENT's identity when its socket was allowed; relabelled since.
const RELABELLED: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 4);
const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 1), 80);
/// A frontend the policy change deletes.
const VIP_GONE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 2), 80);
/// A frontend without ready backends.
const VIP_EMPTY: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 3), 80);
const ID_CLIENT: u32 = 1001;
const ID_SERVER: u32 = 1002;
const ID_OTHER: u32 = 1003;
const PORT_L4: u16 = 80;
const PORT_DENIED: u16 = 81;
const PORT_L7: u16 = 8080;

/// Both ends of one TCP connection inside a test namespace.
struct Conn {
    client: TcpStream,
    server: TcpStream,
}

/// `n` connections to a listener on `TARGET_IP:port`, made inside `netns`.
fn connections(netns: &str, port: u16, n: usize) -> Vec<Conn> {
    support::in_netns(netns, || {
        let listener = TcpListener::bind(SocketAddrV4::new(TARGET_IP, port)).unwrap();
        (0..n)
            .map(|_| {
                let client = TcpStream::connect(SocketAddrV4::new(TARGET_IP, port)).unwrap();
                let (server, _) = listener.accept().unwrap();
                for s in [&client, &server] {
                    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                }
                Conn { client, server }
            })
            .collect()
    })
}

fn netns_path(netns: &str) -> PathBuf {
    PathBuf::from(format!("/var/run/netns/{netns}"))
}

/// Storage of a kernel-path client socket from CLIENT to `dst:dport`, through `svc` if any.
fn state(src: Ipv4Addr, dst: Ipv4Addr, dport: u16, svc: Option<SocketAddrV4>) -> SockState {
    SockState {
        start_ns: 1,
        src_ip4: abi::ip_to_net(src),
        dst_ip4: abi::ip_to_net(dst),
        svc_ip4: svc.map_or(0, |s| abi::ip_to_net(*s.ip())),
        svc_port: svc.map_or(0, |s| s.port().to_be()),
        sport: 40000u16.to_be(),
        dport: dport.to_be(),
        role: abi::SOCK_CLIENT,
        protocol: abi::IPPROTO_TCP,
        src_identity: ID_CLIENT,
        dst_identity: ID_SERVER,
        close_reason: 0,
        pad: 0,
    }
}

fn storage(fixture: &Fixture) -> SkStorage<MapData, SockState> {
    let data = MapData::from_pin(fixture.pin_dir.join("strait_sock")).unwrap();
    SkStorage::try_from(Map::from_map_data(data).unwrap()).unwrap()
}

fn image() -> PolicyImage {
    let backend = ServiceBackend {
        ip: SERVER,
        identity: ID_SERVER,
        port: PORT_L4,
    };
    let rule = |dport: u16, action: PolicyAction| {
        (
            PolicyKey {
                src_identity: ID_CLIENT,
                dst_identity: ID_SERVER,
                protocol: abi::IPPROTO_TCP,
                dport,
                dport_prefix_len: 16,
            },
            action,
        )
    };
    PolicyImage {
        ipcache: vec![
            (format!("{CLIENT}/32").parse().unwrap(), ID_CLIENT),
            (format!("{SERVER}/32").parse().unwrap(), ID_SERVER),
            (format!("{SERVER_2}/32").parse().unwrap(), ID_SERVER),
            (format!("{RELABELLED}/32").parse().unwrap(), ID_OTHER),
        ],
        endpoints: vec![],
        policed: vec![(ID_SERVER, true, false)],
        rules: vec![
            rule(PORT_L4, PolicyAction::Allow),
            rule(PORT_L7, PolicyAction::Proxy),
        ],
        services: vec![
            (VIP.into(), vec![backend]),
            (VIP_GONE.into(), vec![backend]),
            (VIP_EMPTY.into(), vec![]),
        ],
    }
}

/// Data still flows both ways.
fn assert_alive(conn: &mut Conn, what: &str) {
    conn.client.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    conn.server
        .read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("{what}: server read: {e}"));
    conn.server.write_all(b"pong").unwrap();
    conn.client
        .read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("{what}: client read: {e}"));
    assert_eq!(&buf, b"pong", "{what}");
}

/// The socket with the storage was aborted (ECONNABORTED) and its peer got a reset.
fn assert_destroyed(conn: &mut Conn, side: Side, what: &str) {
    let (destroyed, peer) = match side {
        Side::Client => (&mut conn.client, &mut conn.server),
        Side::Server => (&mut conn.server, &mut conn.client),
    };
    let mut buf = [0u8; 4];
    let mine = destroyed.read(&mut buf);
    assert_eq!(
        mine.as_ref().map_err(|e| e.kind()).err(),
        Some(ErrorKind::ConnectionAborted),
        "{what}: read on the destroyed socket gave {mine:?}"
    );
    let theirs = peer.read(&mut buf);
    assert_eq!(
        theirs.as_ref().map_err(|e| e.kind()).err(),
        Some(ErrorKind::ConnectionReset),
        "{what}: read on its peer gave {theirs:?}"
    );
}

/// Which end of a connection is the kernel-path socket with storage.
#[derive(Clone, Copy, Debug)]
enum Side {
    Client,
    Server,
}

struct Case {
    what: &'static str,
    storage: Option<(Side, SockState)>,
    /// Why the first run ends it, if it does.
    first: Option<DropReason>,
    /// Why the run after the policy change ends it, if it does (and the first did not).
    after_change: Option<DropReason>,
}

fn case(
    what: &'static str,
    storage: Option<(Side, SockState)>,
    first: Option<DropReason>,
    after_change: Option<DropReason>,
) -> Case {
    Case {
        what,
        storage,
        first,
        after_change,
    }
}

fn cases() -> Vec<Case> {
    use DropReason::{BackendRemoved, PolicyDenied, ProxyRequired};
    let client = |src, dst, dport, svc| Some((Side::Client, state(src, dst, dport, svc)));
    let mut server_side = state(CLIENT, SERVER, PORT_DENIED, None);
    server_side.role = abi::SOCK_SERVER;
    vec![
        case("allowed", client(CLIENT, SERVER, PORT_L4, None), None, None),
        case(
            "denied port",
            client(CLIENT, SERVER, PORT_DENIED, None),
            Some(PolicyDenied),
            None,
        ),
        case(
            "L7 port",
            client(CLIENT, SERVER, PORT_L7, None),
            Some(ProxyRequired),
            None,
        ),
        case(
            "service backend kept, then removed",
            client(CLIENT, SERVER, PORT_L4, Some(VIP)),
            None,
            Some(BackendRemoved),
        ),
        case(
            "service backend removed",
            client(CLIENT, SERVER_2, PORT_L4, Some(VIP)),
            Some(BackendRemoved),
            None,
        ),
        case(
            "service frontend deleted",
            client(CLIENT, SERVER, PORT_L4, Some(VIP_GONE)),
            None,
            Some(BackendRemoved),
        ),
        case(
            "service without ready backends left",
            client(CLIENT, SERVER, PORT_L4, Some(VIP_EMPTY)),
            Some(BackendRemoved),
            None,
        ),
        case(
            "source relabelled",
            client(RELABELLED, SERVER, PORT_L4, None),
            Some(PolicyDenied),
            None,
        ),
        case(
            "destination not policed",
            client(CLIENT, RELABELLED, PORT_DENIED, None),
            None,
            None,
        ),
        case(
            "server side, denied",
            Some((Side::Server, server_side)),
            Some(PolicyDenied),
            None,
        ),
        case("no storage", None, None, None),
    ]
}

fn storage_socket(conn: &Conn, side: Side) -> &TcpStream {
    match side {
        Side::Client => &conn.client,
        Side::Server => &conn.server,
    }
}

/// Checks each live connection after a run: ended with `reason` (then `ended` records it) or
/// still carrying data with no close reason.
fn check(
    map: &SkStorage<MapData, SockState>,
    conns: &mut [Conn],
    cases: &[Case],
    ended: &mut [bool],
    reason_of: impl Fn(&Case) -> Option<DropReason>,
) {
    for ((conn, case), ended) in conns.iter_mut().zip(cases).zip(ended.iter_mut()) {
        if *ended {
            continue;
        }
        let what = case.what;
        let stored = case
            .storage
            .map(|(side, _)| (side, map.get(storage_socket(conn, side), 0).unwrap()));
        match reason_of(case) {
            Some(reason) => {
                let (side, st) = stored.unwrap();
                assert_eq!(st.close_reason, reason as u16, "{what}");
                assert_destroyed(conn, side, what);
                *ended = true;
            }
            None => {
                if let Some((_, st)) = stored {
                    assert_eq!(st.close_reason, 0, "{what}");
                }
                assert_alive(conn, what);
            }
        }
    }
}

#[test]
fn policy_and_service_changes_end_the_connections_they_no_longer_allow() {
    let fixture = Fixture::new("sockdestroy");
    let other = Fixture::new("sockdestroy-other");
    let datapath = Datapath::load_and_attach(&fixture.config(15001)).unwrap();
    datapath.apply_policy(&image()).unwrap();
    let mut map = storage(&fixture);

    let cases = cases();
    let mut conns = connections(&fixture.netns, 9000, cases.len());
    for (conn, case) in conns.iter().zip(&cases) {
        if let Some((side, st)) = case.storage {
            map.insert(storage_socket(conn, side), st, 0).unwrap();
        }
    }
    let mut elsewhere = connections(&other.netns, 9000, 1);
    map.insert(
        &elsewhere[0].client,
        state(CLIENT, SERVER, PORT_DENIED, None),
        0,
    )
    .unwrap();

    let here = netns_path(&fixture.netns);
    let rejudged = datapath.rejudge_sockets(&here).unwrap();
    assert_eq!(
        rejudged,
        Rejudged {
            policy_denied: 3,
            proxy_required: 1,
            // The removed backend and the service left without a ready backend.
            backend_removed: 2,
            failed: 0,
        }
    );
    let mut ended = vec![false; cases.len()];
    check(&map, &mut conns, &cases, &mut ended, |c| c.first);

    // Another namespace's sockets are not walked...
    assert_alive(&mut elsewhere[0], "denied, in another namespace");
    // ...until the iterator runs there.
    let there = datapath.rejudge_sockets(&netns_path(&other.netns)).unwrap();
    assert_eq!(there.policy_denied, 1);
    assert_destroyed(
        &mut elsewhere[0],
        Side::Client,
        "denied, in another namespace",
    );

    // Nothing changed, nothing more to end.
    assert_eq!(
        datapath.rejudge_sockets(&here).unwrap(),
        Rejudged::default()
    );

    // A service change: the frontend's backend moves, another frontend is deleted.
    let mut changed = image();
    changed.services = vec![
        (
            VIP.into(),
            vec![ServiceBackend {
                ip: SERVER_2,
                identity: ID_SERVER,
                port: PORT_L4,
            }],
        ),
        (VIP_EMPTY.into(), vec![]),
    ];
    datapath.apply_policy(&changed).unwrap();
    let rejudged = datapath.rejudge_sockets(&here).unwrap();
    assert_eq!(
        rejudged,
        Rejudged {
            backend_removed: 2,
            ..Rejudged::default()
        }
    );
    check(&map, &mut conns, &cases, &mut ended, |c| c.after_change);
}

/// A "pod": a process in cgroup `cgroup` (created here) and network namespace `netns`.
struct PodProcess {
    child: std::process::Child,
    cgroup: PathBuf,
}

impl PodProcess {
    fn start(cgroup: PathBuf, netns: &str) -> PodProcess {
        std::fs::create_dir(&cgroup).unwrap();
        let child = std::process::Command::new("sh")
            .args([
                "-c",
                r#"echo $$ > "$1" && exec ip netns exec "$2" sleep 30"#,
                "sh",
            ])
            .arg(cgroup.join("cgroup.procs"))
            .arg(netns)
            .spawn()
            .unwrap();
        // Until `ip netns exec` has entered the namespace, the process is still in ours.
        let want = std::fs::metadata(netns_path(netns)).unwrap().ino();
        let entered = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            std::fs::metadata(format!("/proc/{}/ns/net", child.id())).is_ok_and(|m| m.ino() == want)
        });
        assert!(entered, "pod process did not enter {netns}");
        PodProcess { child, cgroup }
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

#[test]
fn pods_are_found_by_their_cgroups_and_judged_in_their_namespaces() {
    let fixture = Fixture::new("sockdestroy-cg");
    let other = Fixture::new("sockdestroy-cg2");
    assert!(matches!(
        strait_ebpf::cgroup_netns(&fixture.cgroup),
        Err(strait_ebpf::SockIterError::EmptyCgroup { .. })
    ));
    let datapath = Datapath::load_and_attach(&fixture.config(15001)).unwrap();
    datapath.apply_policy(&image()).unwrap();
    let mut map = storage(&fixture);

    // Two pods in one namespace, one in another, one without a process yet.
    let pods = [
        PodProcess::start(fixture.cgroup.join("pod-a"), &fixture.netns),
        PodProcess::start(fixture.cgroup.join("pod-b"), &fixture.netns),
        PodProcess::start(fixture.cgroup.join("pod-c"), &other.netns),
    ];
    let empty = fixture.cgroup.join("pod-d");
    std::fs::create_dir(&empty).unwrap();
    let found = strait_ebpf::cgroup_netns(&pods[2].cgroup).unwrap();
    assert_eq!(
        std::fs::metadata(&found).unwrap().ino(),
        std::fs::metadata(netns_path(&other.netns)).unwrap().ino(),
        "{}",
        found.display()
    );

    let mut conns = connections(&fixture.netns, 9000, 2);
    conns.extend(connections(&other.netns, 9000, 1));
    let denied = state(CLIENT, SERVER, PORT_DENIED, None);
    for conn in &conns {
        map.insert(&conn.client, denied, 0).unwrap();
    }
    // Both namespaces are walked (the shared one once), the empty pod skipped.
    let rejudged = datapath.rejudge_pods().unwrap();
    std::fs::remove_dir(&empty).unwrap();
    drop(pods);
    assert_eq!(
        rejudged,
        Rejudged {
            policy_denied: 3,
            ..Rejudged::default()
        }
    );
    for conn in &mut conns {
        assert_destroyed(conn, Side::Client, "denied, in a pod's namespace");
    }
}
