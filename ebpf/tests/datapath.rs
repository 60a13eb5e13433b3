//! The data path against the real kernel: a pod (a process in the test cgroup, inside a
//! throwaway network namespace) connects to a target and lands on the proxy, which recovers the
//! original destination. Needs root; fails (does not skip) without it.

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddrV4;

use strait_ebpf::{Datapath, remove_pins};
use support::{Fixture, PROXY_IP, TARGET, TARGET_IP};

const PROXY_PORT: u16 = 15001;

/// Connects a pod to TARGET and checks the proxy got it and can recover TARGET.
fn assert_redirected(fx: &Fixture, datapath: &Datapath, proxy: &support::Listener) {
    let (peer, reply) = fx.connect(&TARGET_IP.to_string(), TARGET.port()).unwrap();
    assert_eq!(reply, "proxy", "the connection must reach the proxy");
    assert_eq!(
        peer,
        TARGET.to_string(),
        "getpeername() must show the address dialed"
    );
    let client = proxy.accepted();
    assert_eq!(datapath.take_original_dst(client).unwrap(), Some(TARGET));
    assert_eq!(
        datapath.take_original_dst(client).unwrap(),
        None,
        "taken twice"
    );
}

#[test]
fn redirects_to_proxy_and_survives_agent_restart() {
    let mut fx = Fixture::new("redirect");
    let datapath = Datapath::load_and_attach(&fx.config(PROXY_PORT)).unwrap();
    assert!(
        datapath.programs().iter().all(|p| p.attached),
        "{:?}",
        datapath.programs()
    );
    assert_eq!(fx.attached_programs(), 6);

    // A pod connect to the target lands on the proxy.
    let proxy = fx.listen(SocketAddrV4::new(PROXY_IP, PROXY_PORT), "proxy");
    assert_redirected(&fx, &datapath, &proxy);

    // Loopback stays inside the pod.
    let lines = fx.client(&["loopback"]);
    assert_eq!(
        lines.last().map(String::as_str),
        Some("DATA loopback"),
        "{lines:?}"
    );
    proxy.assert_idle();

    // A connection the agent has not looked up yet when it dies.
    fx.connect(&TARGET_IP.to_string(), TARGET.port()).unwrap();
    let pending = proxy.accepted();

    // The agent dies: the pinned links keep redirecting; with nothing listening at the proxy
    // address, connects fail instead of reaching the target.
    drop(datapath);
    fx.stop(proxy);
    let target = fx.listen(TARGET, "target");
    assert_eq!(
        fx.connect(&TARGET_IP.to_string(), TARGET.port()),
        Err("ECONNREFUSED".into())
    );
    target.assert_idle();
    assert_eq!(fx.attached_programs(), 6);
    assert!(
        strait_ebpf::program_status(&fx.pin_dir)
            .iter()
            .all(|p| p.attached)
    );

    // The agent restarts on the same pins: new links replace the old ones (not added to them).
    let datapath = Datapath::load_and_attach(&fx.config(PROXY_PORT)).unwrap();
    assert_eq!(
        fx.attached_programs(),
        6,
        "the previous agent's links must be detached"
    );
    // ... and reuses the pinned maps: the pending connection is still known.
    assert_eq!(datapath.take_original_dst(pending).unwrap(), Some(TARGET));
    let proxy = fx.listen(SocketAddrV4::new(PROXY_IP, PROXY_PORT), "proxy");
    assert_redirected(&fx, &datapath, &proxy);
    target.assert_idle();

    // Closed sockets leave no socket-cookie records behind (sockops, on TCP_CLOSE).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while !fx.map_is_empty("strait_orig_ck") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(fx.map_is_empty("strait_orig_ck"));
    assert!(
        !fx.map_is_empty("strait_orig_tp"),
        "the refused connect's record stays (LRU)"
    );

    // `lab down`: everything detached, pods reach the target directly.
    drop(datapath);
    remove_pins(&fx.pin_dir).unwrap();
    assert!(!fx.pin_dir.exists());
    // The kernel releases a link when its last reference goes, which it may defer a little
    // under load: wait up to a second for the programs to leave the cgroup.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while fx.attached_programs() != 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(fx.attached_programs(), 0);
    let (peer, reply) = fx.connect(&TARGET_IP.to_string(), TARGET.port()).unwrap();
    assert_eq!(
        (peer.as_str(), reply.as_str()),
        ("198.18.250.2:8080", "target")
    );
    target.accepted();
    proxy.assert_idle();
    remove_pins(&fx.pin_dir).unwrap(); // idempotent
}

#[test]
fn runtime_config_bypass_switch_and_v4_mapped() {
    let mut fx = Fixture::new("config");
    let datapath = Datapath::load_and_attach(&fx.config(PROXY_PORT)).unwrap();
    let proxy = fx.listen(SocketAddrV4::new(PROXY_IP, PROXY_PORT), "proxy");
    let target = fx.listen(TARGET, "target");

    // A connect to the bypassed gateway itself (not the proxy port) is left alone.
    let gateway = fx.listen(SocketAddrV4::new(PROXY_IP, 53), "gateway");
    let (_, reply) = fx.connect(&PROXY_IP.to_string(), 53).unwrap();
    assert_eq!(reply, "gateway");
    gateway.accepted();

    // IPv4-mapped IPv6 would bypass connect4: rejected.
    let mapped = format!("::ffff:{TARGET_IP}");
    assert_eq!(fx.connect(&mapped, TARGET.port()), Err("EPERM".into()));
    // ... unless it goes somewhere connect4 would let pass anyway.
    let (_, reply) = fx.connect(&format!("::ffff:{PROXY_IP}"), 53).unwrap();
    assert_eq!(reply, "gateway");
    gateway.accepted();

    // Adding the target to the bypass set lets pods reach it directly.
    datapath
        .update_config(
            SocketAddrV4::new(PROXY_IP, PROXY_PORT),
            &[PROXY_IP, TARGET_IP],
        )
        .unwrap();
    let (_, reply) = fx.connect(&TARGET_IP.to_string(), TARGET.port()).unwrap();
    assert_eq!(reply, "target");
    target.accepted();
    let (_, reply) = fx.connect(&mapped, TARGET.port()).unwrap();
    assert_eq!(reply, "target");
    target.accepted();

    // Removing it again redirects again.
    datapath
        .update_config(SocketAddrV4::new(PROXY_IP, PROXY_PORT), &[PROXY_IP])
        .unwrap();
    let (proxy_addr, bypass, enabled) = datapath.current_config().unwrap();
    assert_eq!(
        (proxy_addr.port(), bypass, enabled),
        (PROXY_PORT, vec![PROXY_IP], true)
    );
    assert_redirected(&fx, &datapath, &proxy);

    // Switched off: connects pass unchanged; the switch survives a restart (pinned config).
    datapath.set_redirect_enabled(false).unwrap();
    drop(datapath);
    let datapath = Datapath::load_and_attach(&fx.config(PROXY_PORT)).unwrap();
    let (_, reply) = fx.connect(&TARGET_IP.to_string(), TARGET.port()).unwrap();
    assert_eq!(reply, "target");
    target.accepted();
    datapath.set_redirect_enabled(true).unwrap();
    assert_redirected(&fx, &datapath, &proxy);

    // A new proxy port is used at once.
    let proxy2 = fx.listen(SocketAddrV4::new(PROXY_IP, PROXY_PORT + 1), "proxy2");
    datapath
        .update_config(SocketAddrV4::new(PROXY_IP, PROXY_PORT + 1), &[PROXY_IP])
        .unwrap();
    let (peer, reply) = fx.connect(&TARGET_IP.to_string(), TARGET.port()).unwrap();
    assert_eq!((peer, reply.as_str()), (TARGET.to_string(), "proxy2"));
    assert_eq!(
        datapath.take_original_dst(proxy2.accepted()).unwrap(),
        Some(TARGET)
    );
    proxy.assert_idle();
    target.assert_idle();
}

#[test]
fn refuses_bad_inputs_with_clear_errors() {
    let fx = Fixture::new("errors");
    let mut cfg = fx.config(PROXY_PORT);
    cfg.cgroup = std::env::temp_dir();
    let err = Datapath::load_and_attach(&cfg).unwrap_err().to_string();
    assert!(err.contains("not a directory on a cgroup v2"), "{err}");

    let err = remove_pins(&std::env::temp_dir()).unwrap_err().to_string();
    assert!(err.contains("not on a bpf filesystem"), "{err}");
    assert!(std::env::temp_dir().exists());
}

#[test]
fn replaces_incompatible_pinned_maps() {
    // A map pinned by some older build under a name this build uses, with other sizes.
    let mut fx = Fixture::new("compat");
    std::fs::create_dir_all(&fx.pin_dir).unwrap();
    let stale = fx.pin_dir.join("strait_orig_tp");
    support::run(
        "bpftool",
        &[
            "map",
            "create",
            stale.to_str().unwrap(),
            "type",
            "hash",
            "key",
            "4",
            "value",
            "4",
            "entries",
            "16",
            "name",
            "strait_orig_tp",
        ],
    );
    let datapath = Datapath::load_and_attach(&fx.config(PROXY_PORT)).unwrap();
    let proxy = fx.listen(SocketAddrV4::new(PROXY_IP, PROXY_PORT), "proxy");
    assert_redirected(&fx, &datapath, &proxy);
}
