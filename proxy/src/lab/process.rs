//! Starting processes inside a lab namespace and cgroup, and stopping them.

use std::fs::File;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A process that could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot start {what}")]
pub struct SpawnError {
    what: String,
    #[source]
    source: std::io::Error,
}

/// How a process enters a lab namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enter {
    /// `ip netns exec`: a private mount namespace with /etc/netns/NAME/* (the pod's resolv.conf
    /// and hosts) bind-mounted over /etc, as pods need.
    Pod,
    /// `nsenter --net`: the network namespace only, so the process keeps the machine's mounts
    /// (cgroup2, bpffs), as the agent needs: pins it made in a private bpffs would vanish with it.
    NetworkOnly,
}

/// Joins the cgroup (if any) first so the program and everything it forks is inside it from its
/// first instruction, then enters the namespace. Strait's own processes (network-only) run with
/// glibc's allocator held to two arenas and fixed trim/mmap thresholds, so memory freed after a
/// burst goes back to the system (a Kubernetes DaemonSet sets the same in its environment).
const ENTER: &str = r#"cg=$1; ns=$2; how=$3; shift 3
if [ -n "$cg" ]; then echo $$ > "$cg/cgroup.procs" || exit 126; fi
if [ "$how" = net ]; then
  export GLIBC_TUNABLES="${GLIBC_TUNABLES:-glibc.malloc.arena_max=2:glibc.malloc.trim_threshold=131072:glibc.malloc.mmap_threshold=131072}"
  exec nsenter --net="/run/netns/$ns" -- "$@"
fi
exec ip netns exec "$ns" "$@""#;

fn command(netns: &str, cgroup: Option<&Path>, enter: Enter, argv: &[String]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(ENTER)
        .arg("strait-enter")
        .arg(cgroup.map(|p| p.as_os_str()).unwrap_or_default())
        .arg(netns)
        .arg(match enter {
            Enter::Pod => "pod",
            Enter::NetworkOnly => "net",
        })
        .args(argv);
    cmd
}

/// Starts `argv` detached (own process group, no stdin, output to `log`) and returns its PID.
pub fn spawn_detached(
    netns: &str,
    cgroup: Option<&Path>,
    enter: Enter,
    argv: &[String],
    log: &Path,
) -> Result<i32, SpawnError> {
    let what = format!("{} in {netns}", argv.join(" "));
    let err = |source| SpawnError {
        what: what.clone(),
        source,
    };
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(err)?;
    let errf = out.try_clone().map_err(err)?;
    let child = {
        use std::os::unix::process::CommandExt;
        command(netns, cgroup, enter, argv)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(errf)
            .process_group(0)
            .spawn()
            .map_err(err)?
    };
    let pid = i32::try_from(child.id()).map_err(|_| err(std::io::Error::other("pid overflow")))?;
    // The child outlives us on purpose: dropping `Child` neither waits nor kills, and init reaps
    // it once we exit.
    drop(child);
    Ok(pid)
}

/// Runs `argv` in the namespace and cgroup with our stdin/stdout/stderr, like `kubectl exec`.
pub fn run_attached(
    netns: &str,
    cgroup: Option<&Path>,
    argv: &[String],
) -> Result<ExitStatus, SpawnError> {
    command(netns, cgroup, Enter::Pod, argv)
        .status()
        .map_err(|source| SpawnError {
            what: format!("{} in {netns}", argv.join(" ")),
            source,
        })
}

/// Whether a process with this PID exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Sends SIGKILL to `pid` and its process group; missing processes are fine.
pub fn kill_group(pid: i32) {
    let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
}

/// Sends SIGKILL to `pid` only.
pub fn kill_one(pid: i32) {
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
}
