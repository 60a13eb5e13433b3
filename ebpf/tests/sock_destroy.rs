//! The socket iterator on the real kernel: `Datapath::rejudge_sockets` ends the live TCP
//! connections whose socket storage the current policy and service maps no longer allow, with
//! the reason in the storage, and leaves every other socket alone, including those of other
//! network namespaces. Needs root and kernel 6.5+ (bpf_sock_destroy).

#![allow(clippy::unwrap_used)]

mod support;

use std::{
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
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
        services: vec![(
            VIP,
            vec![ServiceBackend {
                ip: SERVER,
                identity: ID_SERVER,
                port: PORT_L4,
            }],
        )],
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

/// The client's socket was aborted (ECONNABORTED) and the server got a reset.
fn assert_destroyed(conn: &mut Conn, what: &str) {
    let mut buf = [0u8; 4];
    let client = conn.client.read(&mut buf);
    assert_eq!(
        client.as_ref().map_err(|e| e.kind()).err(),
        Some(ErrorKind::ConnectionAborted),
        "{what}: client read gave {client:?}"
    );
    let server = conn.server.read(&mut buf);
    assert_eq!(
        server.as_ref().map_err(|e| e.kind()).err(),
        Some(ErrorKind::ConnectionReset),
        "{what}: server read gave {server:?}"
    );
}

fn close_reason(map: &SkStorage<MapData, SockState>, conn: &Conn) -> u16 {
    map.get(&conn.client, 0).unwrap().close_reason
}

#[test]
fn policy_and_service_changes_end_the_connections_they_no_longer_allow() {
    let fixture = Fixture::new("sockdestroy");
    let other = Fixture::new("sockdestroy-other");
    let datapath = Datapath::load_and_attach(&fixture.config(15001)).unwrap();
    datapath.apply_policy(&image()).unwrap();
    let mut map = storage(&fixture);

    let mut conns = connections(&fixture.netns, 9000, 7);
    let cases = [
        ("allowed", Some(state(CLIENT, SERVER, PORT_L4, None))),
        (
            "denied port",
            Some(state(CLIENT, SERVER, PORT_DENIED, None)),
        ),
        ("L7 port", Some(state(CLIENT, SERVER, PORT_L7, None))),
        (
            "service backend kept",
            Some(state(CLIENT, SERVER, PORT_L4, Some(VIP))),
        ),
        (
            "service backend removed",
            Some(state(CLIENT, SERVER_2, PORT_L4, Some(VIP))),
        ),
        (
            "source relabelled",
            Some(state(RELABELLED, SERVER, PORT_L4, None)),
        ),
        ("no storage", None),
    ];
    for (conn, (_, st)) in conns.iter().zip(&cases) {
        if let Some(st) = st {
            map.insert(&conn.client, st, 0).unwrap();
        }
    }
    let mut elsewhere = connections(&other.netns, 9000, 1);
    map.insert(
        &elsewhere[0].client,
        state(CLIENT, SERVER, PORT_DENIED, None),
        0,
    )
    .unwrap();

    let rejudged = datapath
        .rejudge_sockets(&netns_path(&fixture.netns))
        .unwrap();
    assert_eq!(
        rejudged,
        Rejudged {
            policy_denied: 2,
            proxy_required: 1,
            backend_removed: 1,
            failed: 0,
        }
    );

    let expect = [
        None,
        Some(DropReason::PolicyDenied),
        Some(DropReason::ProxyRequired),
        None,
        Some(DropReason::BackendRemoved),
        Some(DropReason::PolicyDenied),
        None,
    ];
    for ((conn, (what, st)), reason) in conns.iter_mut().zip(&cases).zip(expect) {
        match reason {
            Some(reason) => {
                assert_eq!(close_reason(&map, conn), reason as u16, "{what}");
                assert_destroyed(conn, what);
            }
            None => {
                if st.is_some() {
                    assert_eq!(close_reason(&map, conn), 0, "{what}");
                }
                assert_alive(conn, what);
            }
        }
    }
    // Another namespace's sockets are not walked...
    assert_alive(&mut elsewhere[0], "denied, in another namespace");
    // ...until the iterator runs there.
    let there = datapath.rejudge_sockets(&netns_path(&other.netns)).unwrap();
    assert_eq!(there.policy_denied, 1);
    assert_destroyed(&mut elsewhere[0], "denied, in another namespace");

    // Nothing left to end: a second run is a no-op.
    let again = datapath
        .rejudge_sockets(&netns_path(&fixture.netns))
        .unwrap();
    assert_eq!(again, Rejudged::default());
}

#[test]
fn a_pod_cgroup_leads_to_its_network_namespace() {
    let fixture = Fixture::new("sockdestroy-cg");
    assert!(matches!(
        strait_ebpf::cgroup_netns(&fixture.cgroup),
        Err(strait_ebpf::SockIterError::EmptyCgroup { .. })
    ));
    let pod = fixture.cgroup.join("pod");
    std::fs::create_dir(&pod).unwrap();
    let mut child = std::process::Command::new("sh")
        .args([
            "-c",
            r#"echo $$ > "$1" && exec ip netns exec "$2" sleep 30"#,
            "sh",
        ])
        .arg(pod.join("cgroup.procs"))
        .arg(&fixture.netns)
        .spawn()
        .unwrap();
    let found = (0..50).find_map(|_| {
        std::thread::sleep(Duration::from_millis(20));
        let path = strait_ebpf::cgroup_netns(&fixture.cgroup).ok()?;
        let ns = std::fs::metadata(&path).ok()?;
        let want = std::fs::metadata(netns_path(&fixture.netns)).unwrap();
        use std::os::unix::fs::MetadataExt;
        (ns.ino() == want.ino()).then_some(path)
    });
    let _ = child.kill();
    let _ = child.wait();
    std::fs::remove_dir(&pod).unwrap();
    assert!(
        found.is_some(),
        "the pod's process is in the test namespace"
    );
}
