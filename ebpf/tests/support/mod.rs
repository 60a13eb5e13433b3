//! A throwaway network namespace, cgroup and pin directory per test, removed on drop.
//!
//! The namespace's `lo` carries [`PROXY_IP`] (the "node gateway", where the proxy listens) and
//! [`TARGET_IP`] (what pods dial). Processes run inside it through
//! `ip netns exec`; clients also join the test cgroup (via `sh`, writing their own pid to
//! `cgroup.procs` before exec), so no unsafe `setns`/`pre_exec` is needed here.

#![allow(clippy::unwrap_used, dead_code)]

pub mod pods;

use std::{
    io::{BufRead, BufReader},
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    time::Duration,
};

pub const PROXY_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 1);
pub const TARGET_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 2);
pub const TARGET: SocketAddrV4 = SocketAddrV4::new(TARGET_IP, 8080);

const TIMEOUT: Duration = Duration::from_secs(10);

/// Fails (never skips) when not root: a skipped kernel test looks like a pass.
pub fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let euid = uid_line.split_whitespace().nth(2).unwrap();
    assert_eq!(
        euid, "0",
        "this test loads eBPF programs and creates network namespaces and cgroups: it must run \
         as root (e.g. `sudo -E cargo test -p strait-ebpf`)"
    );
}

pub fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct Fixture {
    pub netns: String,
    pub cgroup: PathBuf,
    pub pin_dir: PathBuf,
    listeners: Vec<Child>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Fixture {
    pub fn new(test: &str) -> Fixture {
        require_root();
        let unique = format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let fixture = Fixture {
            netns: format!("strait-{test}-{unique}"),
            cgroup: strait_ebpf::sys::cgroup2_root()
                .unwrap()
                .join(format!("strait-test-{test}-{unique}")),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/strait-test-{test}-{unique}")),
            listeners: Vec::new(),
        };
        let ns = fixture.netns.as_str();
        run("ip", &["netns", "add", ns]);
        run("ip", &["-n", ns, "link", "set", "lo", "up"]);
        // On `lo`: this kernel has no dummy interfaces, and local is all the test needs.
        for ip in [PROXY_IP, TARGET_IP] {
            run(
                "ip",
                &["-n", ns, "addr", "add", &format!("{ip}/32"), "dev", "lo"],
            );
        }
        std::fs::create_dir(&fixture.cgroup).unwrap();
        fixture
    }

    pub fn config(&self, proxy_port: u16) -> strait_ebpf::DatapathConfig {
        strait_ebpf::DatapathConfig {
            pin_dir: self.pin_dir.clone(),
            cgroup: self.cgroup.clone(),
            proxy: SocketAddrV4::new(PROXY_IP, proxy_port),
            bypass: vec![PROXY_IP],
        }
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn in_ns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.netns, f)
    }

    /// Starts a TCP listener at `addr` inside the namespace (outside the cgroup, like the proxy).
    /// Each accepted connection is answered with `tag` and reported on the returned receiver.
    pub fn listen(&mut self, addr: SocketAddrV4, tag: &str) -> Listener {
        let (child, listener) = spawn_listener(&self.netns, addr, tag);
        self.listeners.push(child);
        listener
    }

    pub fn stop(&mut self, listener: Listener) {
        if let Some(i) = self.listeners.iter().position(|c| c.id() == listener.pid) {
            let mut child = self.listeners.swap_remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs the client script inside the namespace and the cgroup; returns its stdout lines.
    pub fn client(&self, args: &[&str]) -> Vec<String> {
        client_in(&self.netns, &self.cgroup, args)
    }

    /// Connects from a pod to `addr`: `Ok((peer the app saw, reply))` or `Err(errno name)`.
    pub fn connect(&self, addr: &str, port: u16) -> Result<(String, String), String> {
        connect_in(&self.netns, &self.cgroup, addr, port)
    }

    /// Number of Strait programs attached to the test cgroup, as bpftool sees them.
    pub fn attached_programs(&self) -> usize {
        let out = Command::new("bpftool")
            .args(["-j", "cgroup", "show"])
            .arg(&self.cgroup)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .matches("\"name\":\"strait_")
            .count()
    }
}

impl Fixture {
    /// Whether the map pinned as `name` in the pin directory is empty, as bpftool sees it.
    pub fn map_is_empty(&self, name: &str) -> bool {
        let out = Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(self.pin_dir.join(name))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim() == "[]"
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for child in &mut self.listeners {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Err(e) = strait_ebpf::remove_pins(&self.pin_dir) {
            eprintln!("cleanup: removing pins {}: {e}", self.pin_dir.display());
        }
        if let Err(e) = std::fs::remove_dir(&self.cgroup) {
            eprintln!("cleanup: removing cgroup {}: {e}", self.cgroup.display());
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// Runs `f` on a thread inside network namespace `netns`.
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> T {
    let ns = std::fs::File::open(format!("/var/run/netns/{netns}")).unwrap();
    std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    })
}

/// Starts the listener script in `netns` (see [`Fixture::listen`]).
pub fn spawn_listener(netns: &str, addr: SocketAddrV4, tag: &str) -> (Child, Listener) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, "python3", "-c", LISTENER])
        .args([
            addr.ip().to_string(),
            addr.port().to_string(),
            tag.to_owned(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let ready = rx.recv_timeout(TIMEOUT).unwrap();
    assert_eq!(ready, "READY", "listener at {addr}");
    let pid = child.id();
    (
        child,
        Listener {
            pid,
            lines: rx,
            addr,
        },
    )
}

/// Runs the client script in `netns`, as a process of `cgroup`; returns its stdout lines.
pub fn client_in(netns: &str, cgroup: &std::path::Path, args: &[&str]) -> Vec<String> {
    let procs = cgroup.join("cgroup.procs");
    let out = Command::new("sh")
        .args(["-c", r#"echo $$ > "$1" && shift && exec "$@""#, "sh"])
        .arg(&procs)
        .args(["ip", "netns", "exec", netns, "python3", "-c", CLIENT])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "client {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Connects from `netns` + `cgroup` to `addr`: `Ok((peer the app saw, reply))` or
/// `Err(errno name)`.
pub fn connect_in(
    netns: &str,
    cgroup: &std::path::Path,
    addr: &str,
    port: u16,
) -> Result<(String, String), String> {
    let lines = client_in(netns, cgroup, &["connect", addr, &port.to_string()]);
    match lines.as_slice() {
        [peer, data] => Ok((
            peer.strip_prefix("PEER ").unwrap().to_owned(),
            data.strip_prefix("DATA ").unwrap().to_owned(),
        )),
        [err] => Err(err.strip_prefix("ERR ").unwrap().to_owned()),
        other => panic!("unexpected client output {other:?}"),
    }
}

pub struct Listener {
    pid: u32,
    lines: mpsc::Receiver<String>,
    pub addr: SocketAddrV4,
}

impl Listener {
    /// The client address of the next accepted connection.
    pub fn accepted(&self) -> SocketAddrV4 {
        let line = self
            .lines
            .recv_timeout(TIMEOUT)
            .unwrap_or_else(|e| panic!("listener {} accepted nothing: {e}", self.addr));
        line.strip_prefix("PEER ").unwrap().parse().unwrap()
    }

    /// Asserts nothing was accepted (so far).
    pub fn assert_idle(&self) {
        if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            panic!(
                "listener {} should have accepted nothing, got {line}",
                self.addr
            );
        }
    }
}

const LISTENER: &str = r#"
import socket, sys
ip, port, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((ip, port))
s.listen(16)
print("READY", flush=True)
while True:
    c, peer = s.accept()
    print(f"PEER {peer[0]}:{peer[1]}", flush=True)
    c.sendall(tag.encode() + b"\n")
    c.close()
"#;

const CLIENT: &str = r#"
import errno, socket, sys
mode = sys.argv[1]
if mode == "connect":
    host, port = sys.argv[2], int(sys.argv[3])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect((host, port))
    except OSError as e:
        print("ERR " + errno.errorcode.get(e.errno, str(e.errno)), flush=True)
        sys.exit(0)
    peer = s.getpeername()
    print(f"PEER {peer[0]}:{peer[1]}", flush=True)
    print("DATA " + s.recv(100).decode().strip(), flush=True)
elif mode == "loopback":
    l = socket.socket()
    l.bind(("127.0.0.1", 0))
    l.listen(1)
    l.settimeout(5)
    port = l.getsockname()[1]
    c = socket.create_connection(("127.0.0.1", port), timeout=5)
    a, peer = l.accept()
    a.sendall(b"loopback\n")
    print(f"PEER {c.getpeername()[0]}:{c.getpeername()[1]}", flush=True)
    print("DATA " + c.recv(100).decode().strip(), flush=True)
"#;
