//! A throwaway node with two pods, removed on drop: a "node" network namespace and two "pod"
//! namespaces, each pod joined to the node by a veth pair (`lxca`/`lxcb` on the node side,
//! `eth0` in the pod), as a CNI would. This kernel has no dummy interfaces; veths it has.
//!
//! The node gateway [`GW`] sits on the node's `lo`; pods route everything to it and the node
//! forwards between the pods. Pod A's processes run in their own cgroup below the node cgroup
//! (the one the data path attaches to), so connect4 sees them as that pod.

#![allow(clippy::unwrap_used, dead_code)]

use std::{
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddrV4},
    os::unix::fs::MetadataExt,
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    time::Duration,
};

use super::{Listener, run, spawn_listener};

pub const GW: Ipv4Addr = Ipv4Addr::new(198, 18, 251, 1);
pub const POD_A: Ipv4Addr = Ipv4Addr::new(198, 18, 251, 10);
pub const POD_B: Ipv4Addr = Ipv4Addr::new(198, 18, 251, 20);
pub const LXC_A: &str = "lxca";
pub const LXC_B: &str = "lxcb";

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct Pods {
    pub node: String,
    pub pod_a: String,
    pub pod_b: String,
    /// The node cgroup (the data path attaches here).
    pub cgroup: PathBuf,
    /// Pod A's cgroup, below the node cgroup.
    pub cgroup_a: PathBuf,
    pub pin_dir: PathBuf,
    children: Vec<Child>,
}

impl Pods {
    pub fn new(test: &str) -> Pods {
        super::require_root();
        let unique = format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let cgroup = strait_ebpf::sys::cgroup2_root()
            .unwrap()
            .join(format!("strait-test-{test}-{unique}"));
        let pods = Pods {
            node: format!("strait-{test}-{unique}-node"),
            pod_a: format!("strait-{test}-{unique}-a"),
            pod_b: format!("strait-{test}-{unique}-b"),
            cgroup_a: cgroup.join("pod-a"),
            cgroup,
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/strait-test-{test}-{unique}")),
            children: Vec::new(),
        };
        let node = pods.node.as_str();
        for ns in [node, &pods.pod_a, &pods.pod_b] {
            run("ip", &["netns", "add", ns]);
            run("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        run(
            "ip",
            &["-n", node, "addr", "add", &format!("{GW}/32"), "dev", "lo"],
        );
        run(
            "ip",
            &[
                "netns",
                "exec",
                node,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        );
        for (pod, lxc, ip) in [(&pods.pod_a, LXC_A, POD_A), (&pods.pod_b, LXC_B, POD_B)] {
            run(
                "ip",
                &[
                    "-n", node, "link", "add", lxc, "type", "veth", "peer", "name", "eth0",
                    "netns", pod,
                ],
            );
            run("ip", &["-n", node, "link", "set", lxc, "up"]);
            run(
                "ip",
                &["-n", node, "route", "add", &format!("{ip}/32"), "dev", lxc],
            );
            run(
                "ip",
                &["-n", pod, "addr", "add", &format!("{ip}/32"), "dev", "eth0"],
            );
            run("ip", &["-n", pod, "link", "set", "eth0", "up"]);
            run(
                "ip",
                &[
                    "-n",
                    pod,
                    "route",
                    "add",
                    &GW.to_string(),
                    "dev",
                    "eth0",
                    "scope",
                    "link",
                ],
            );
            run(
                "ip",
                &["-n", pod, "route", "add", "default", "via", &GW.to_string()],
            );
        }
        std::fs::create_dir(&pods.cgroup).unwrap();
        std::fs::create_dir(&pods.cgroup_a).unwrap();
        pods
    }

    pub fn config(&self, proxy_port: u16) -> strait_ebpf::DatapathConfig {
        strait_ebpf::DatapathConfig {
            pin_dir: self.pin_dir.clone(),
            cgroup: self.cgroup.clone(),
            proxy: SocketAddrV4::new(GW, proxy_port),
            bypass: vec![GW],
        }
    }

    /// Pod A's cgroup id, as `bpf_get_current_cgroup_id` returns it.
    pub fn cgroup_id_a(&self) -> u64 {
        std::fs::metadata(&self.cgroup_a).unwrap().ino()
    }

    /// Runs `f` on a thread inside the node's network namespace (where the agent runs).
    pub fn in_node<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        super::in_netns(&self.node, f)
    }

    /// The ifindex of `ifname` in the node namespace.
    pub fn node_ifindex(&self, ifname: &str) -> u32 {
        let name = ifname.to_owned();
        self.in_node(move || nix::net::if_::if_nametoindex(name.as_str()).unwrap())
    }

    /// A TCP listener in the node namespace (like the proxy), see [`super::Fixture::listen`].
    pub fn listen_node(&mut self, addr: SocketAddrV4, tag: &str) -> Listener {
        let (child, listener) = spawn_listener(&self.node, addr, tag);
        self.children.push(child);
        listener
    }

    /// A UDP echo server in pod B.
    pub fn udp_echo_b(&mut self, port: u16) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.pod_b, "python3", "-c", UDP_ECHO])
            .args([POD_B.to_string(), port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "READY");
        self.children.push(child);
    }

    /// A TCP connect from pod A (its namespace and cgroup).
    pub fn connect_a(&self, addr: SocketAddrV4) -> Result<(String, String), String> {
        super::connect_in(
            &self.pod_a,
            &self.cgroup_a,
            &addr.ip().to_string(),
            addr.port(),
        )
    }

    /// An interactive UDP client in pod A that keeps its sockets between requests.
    pub fn udp_client_a(&mut self) -> UdpClient {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.pod_a, "python3", "-c", UDP_CLIENT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
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
        self.children.push(child);
        UdpClient { stdin, lines: rx }
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Err(e) = strait_ebpf::remove_pins(&self.pin_dir) {
            eprintln!("cleanup: removing pins {}: {e}", self.pin_dir.display());
        }
        for ns in [&self.pod_a, &self.pod_b, &self.node] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        for cgroup in [&self.cgroup_a, &self.cgroup] {
            if let Err(e) = std::fs::remove_dir(cgroup) {
                eprintln!("cleanup: removing cgroup {}: {e}", cgroup.display());
            }
        }
    }
}

pub struct UdpClient {
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl UdpClient {
    /// Sends a datagram to `to` from the client's socket named `socket` (created on first use,
    /// then reused: same source port) and returns the reply, or `None` after a timeout.
    pub fn ask(&mut self, socket: &str, to: SocketAddrV4) -> Option<String> {
        writeln!(self.stdin, "{socket} {} {}", to.ip(), to.port()).unwrap();
        self.stdin.flush().unwrap();
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(10))
            .expect("udp client answers");
        line.strip_prefix("REPLY ").map(str::to_owned)
    }
}

const UDP_ECHO: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("READY", flush=True)
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
"#;

const UDP_CLIENT: &str = r#"
import socket, sys
socks = {}
for line in sys.stdin:
    name, host, port = line.split()
    s = socks.get(name)
    if s is None:
        s = socks[name] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(1.0)
    s.sendto(name.encode(), (host, int(port)))
    try:
        data, _ = s.recvfrom(2048)
        print("REPLY " + data.decode(), flush=True)
    except socket.timeout:
        print("TIMEOUT", flush=True)
"#;
