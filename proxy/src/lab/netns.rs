//! Network namespaces, links and routes, through iproute2.
//!
//! The lab shells out to `ip` (batched: one process per namespace and step) because it is the
//! reference tool every operator already reads; errors carry the command and ip's own words.

use std::io::Write;
use std::process::{Command, Stdio};

/// A failed `ip` invocation.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot run `ip` (install iproute2: apt-get install iproute2)")]
    Spawn(#[source] std::io::Error),
    #[error("`ip {args}` failed: {stderr}")]
    Failed { args: String, stderr: String },
}

/// Runs `ip ARGS`, returning stdout.
pub fn ip(args: &[&str]) -> Result<String, NetError> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(NetError::Spawn)?;
    if !out.status.success() {
        return Err(NetError::Failed {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs several `ip` commands in one process, optionally inside network namespace `netns`.
pub fn ip_batch(netns: Option<&str>, commands: &[String]) -> Result<(), NetError> {
    if commands.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NetError::Spawn)?;
    let script = commands.join("\n") + "\n";
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(NetError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(NetError::Spawn)?;
    if !out.status.success() {
        return Err(NetError::Failed {
            args: format!(
                "{}-batch: {}",
                netns.map(|n| format!("-n {n} ")).unwrap_or_default(),
                commands.join("; ")
            ),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Names of all network namespaces on the machine.
pub fn list() -> Result<Vec<String>, NetError> {
    let out = ip(&["netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Whether network namespace `name` exists.
pub fn exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

/// Creates network namespace `name` with loopback up.
pub fn create(name: &str) -> Result<(), NetError> {
    ip(&["netns", "add", name])?;
    ip(&["-n", name, "link", "set", "lo", "up"])?;
    Ok(())
}

/// Deletes network namespace `name`; a missing one is fine.
pub fn delete(name: &str) -> Result<(), NetError> {
    if !exists(name) {
        return Ok(());
    }
    ip(&["netns", "del", name]).map(|_| ())
}

/// Process IDs of every process living in network namespace `name`.
pub fn pids(name: &str) -> Vec<i32> {
    ip(&["netns", "pids", name])
        .map(|out| out.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Sets a sysctl inside a namespace (`ip netns exec` gives the namespace its own /proc/sys/net).
pub fn sysctl(netns: &str, key: &str, value: &str) -> Result<(), NetError> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "sysctl", "-q", "-w"])
        .arg(format!("{key}={value}"))
        .stdin(Stdio::null())
        .output()
        .map_err(NetError::Spawn)?;
    if !out.status.success() {
        return Err(NetError::Failed {
            args: format!("netns exec {netns} sysctl -w {key}={value}"),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}
