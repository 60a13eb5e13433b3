//! The host side of the data path: where cgroup v2 and bpffs are mounted, whether this kernel
//! and this process can load eBPF at all. Errors say what to install, enable or run.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// Where bpffs is mounted when we have to mount it ourselves.
pub const BPFFS_DIR: &str = "/sys/fs/bpf";
const MOUNTS: &str = "/proc/mounts";
/// Exists exactly when the kernel has the BPF syscall (CONFIG_BPF_SYSCALL).
const BPF_SYSCTL: &str = "/proc/sys/kernel/unprivileged_bpf_disabled";
const STATUS: &str = "/proc/self/status";

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "no cgroup v2 hierarchy is mounted (no `cgroup2` line in {MOUNTS}); mount one with \
         `mount -t cgroup2 none /sys/fs/cgroup/unified`, or boot with \
         systemd.unified_cgroup_hierarchy=1"
    )]
    Cgroup2Missing,
    #[error(
        "{path} is not a directory on a cgroup v2 filesystem (cgroup2 is mounted at {roots:?})"
    )]
    NotCgroup2 { path: PathBuf, roots: Vec<PathBuf> },
    #[error("creating {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mounting bpffs at {path} (`mount -t bpf bpf {path}`; needs root or CAP_SYS_ADMIN)")]
    MountBpffs {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{path} is not on a bpf filesystem (mount one: `mount -t bpf bpf {BPFFS_DIR}`)")]
    NotOnBpffs { path: PathBuf },
    #[error(
        "this kernel has no BPF syscall ({BPF_SYSCTL} is missing): use a kernel built with \
         CONFIG_BPF_SYSCALL, CONFIG_CGROUP_BPF and CONFIG_BPF_JIT"
    )]
    BpfUnavailable,
    #[error(
        "loading and attaching eBPF programs needs root (or CAP_SYS_ADMIN, or CAP_BPF with \
         CAP_NET_ADMIN); this process has effective capabilities {cap_eff:#x}"
    )]
    NotPrivileged { cap_eff: u64 },
}

/// One line of /proc/mounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub target: PathBuf,
    pub fstype: String,
}

/// The mounts of this process's mount namespace.
pub fn mounts() -> Result<Vec<Mount>, Error> {
    let text = fs::read_to_string(MOUNTS).map_err(|source| Error::Read {
        path: MOUNTS.into(),
        source,
    })?;
    Ok(parse_mounts(&text))
}

fn parse_mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _source = fields.next()?;
            let target = unescape_octal(fields.next()?);
            let fstype = fields.next()?.to_owned();
            Some(Mount {
                target: PathBuf::from(target),
                fstype,
            })
        })
        .collect()
}

/// /proc/mounts writes space, tab, newline and backslash in paths as `\ooo`.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal.and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The filesystem type `path` lives on: that of the longest mount target containing it
/// (the last one, when several are stacked on the same target).
pub fn fstype_of(path: &Path) -> Result<Option<String>, Error> {
    let path = fs::canonicalize(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(fstype_in(&mounts()?, &path))
}

fn fstype_in(mounts: &[Mount], path: &Path) -> Option<String> {
    mounts
        .iter()
        .filter(|m| path.starts_with(&m.target))
        .max_by_key(|m| m.target.components().count())
        .and_then(|longest| {
            mounts
                .iter()
                .rev()
                .find(|m| m.target == longest.target)
                .map(|m| m.fstype.clone())
        })
}

/// The root of the cgroup v2 hierarchy, found in /proc/mounts (`/sys/fs/cgroup` on unified
/// hosts, `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_root() -> Result<PathBuf, Error> {
    cgroup2_roots(&mounts()?)
        .into_iter()
        .next()
        .ok_or(Error::Cgroup2Missing)
}

fn cgroup2_roots(mounts: &[Mount]) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = mounts
        .iter()
        .filter(|m| m.fstype == "cgroup2")
        .map(|m| m.target.clone())
        .collect();
    // Prefer the conventional places when a hierarchy is mounted more than once.
    roots.sort_by_key(|r| match r.to_str() {
        Some("/sys/fs/cgroup") => 0,
        Some("/sys/fs/cgroup/unified") => 1,
        _ => 2,
    });
    roots
}

/// Fails unless `path` is an existing directory on cgroup v2.
pub fn require_cgroup2_dir(path: &Path) -> Result<(), Error> {
    let mounts = mounts()?;
    let roots = cgroup2_roots(&mounts);
    if roots.is_empty() {
        return Err(Error::Cgroup2Missing);
    }
    let on_cgroup2 = fs::canonicalize(path)
        .ok()
        .filter(|p| p.is_dir())
        .and_then(|p| fstype_in(&mounts, &p))
        .is_some_and(|t| t == "cgroup2");
    if on_cgroup2 {
        Ok(())
    } else {
        Err(Error::NotCgroup2 {
            path: path.to_owned(),
            roots,
        })
    }
}

/// Makes sure bpffs is mounted at [`BPFFS_DIR`], mounting it if needed; returns that path.
pub fn ensure_bpffs() -> Result<PathBuf, Error> {
    let dir = PathBuf::from(BPFFS_DIR);
    let mounted = mounts()?
        .iter()
        .rev()
        .find(|m| m.target == dir)
        .is_some_and(|m| m.fstype == "bpf");
    if mounted {
        return Ok(dir);
    }
    fs::create_dir_all(&dir).map_err(|source| Error::CreateDir {
        path: dir.clone(),
        source,
    })?;
    nix::mount::mount(
        Some("bpf"),
        &dir,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| Error::MountBpffs {
        path: dir.clone(),
        source,
    })?;
    tracing::info!(path = %dir.display(), "mounted bpffs");
    Ok(dir)
}

/// Fails unless `path` (which must exist) is on a bpf filesystem.
pub fn require_bpffs(path: &Path) -> Result<(), Error> {
    if fstype_of(path)?.as_deref() == Some("bpf") {
        Ok(())
    } else {
        Err(Error::NotOnBpffs {
            path: path.to_owned(),
        })
    }
}

/// Checks that the kernel has the BPF syscall and this process may load and attach programs.
pub fn check_bpf() -> Result<(), Error> {
    if !Path::new(BPF_SYSCTL).exists() {
        return Err(Error::BpfUnavailable);
    }
    let status = fs::read_to_string(STATUS).map_err(|source| Error::Read {
        path: STATUS.into(),
        source,
    })?;
    let cap_eff = effective_caps(&status).unwrap_or(0);
    if may_load_bpf(cap_eff) {
        Ok(())
    } else {
        Err(Error::NotPrivileged { cap_eff })
    }
}

fn effective_caps(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

fn may_load_bpf(cap_eff: u64) -> bool {
    let has = |cap: u32| cap_eff & (1u64 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_NET_ADMIN))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const HYBRID: &str = "\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs ro,nosuid,nodev,noexec,mode=755 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0
none /sys/fs/bpf bpf rw,relatime 0 0
tmpfs /tmp/with\\040space tmpfs rw 0 0
";

    #[test]
    fn finds_cgroup2_on_a_hybrid_host() {
        let mounts = parse_mounts(HYBRID);
        assert_eq!(
            cgroup2_roots(&mounts),
            vec![PathBuf::from("/sys/fs/cgroup/unified")]
        );
        assert_eq!(
            fstype_in(&mounts, Path::new("/sys/fs/cgroup/unified/strait/lab")).as_deref(),
            Some("cgroup2")
        );
        assert_eq!(
            fstype_in(&mounts, Path::new("/sys/fs/cgroup/memory/x")).as_deref(),
            Some("cgroup")
        );
        assert_eq!(
            fstype_in(&mounts, Path::new("/sys/fs/bpf/strait")).as_deref(),
            Some("bpf")
        );
        assert_eq!(
            fstype_in(&mounts, Path::new("/sys/fs/bpfx")).as_deref(),
            Some("sysfs")
        );
        assert_eq!(fstype_in(&mounts, Path::new("/etc")), None);
    }

    #[test]
    fn prefers_the_unified_location_and_sees_stacked_mounts() {
        let text = "cgroup2 /mnt/cg cgroup2 rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n\
                    tmpfs /sys/fs/bpf tmpfs rw 0 0\nbpf /sys/fs/bpf bpf rw 0 0\n";
        let mounts = parse_mounts(text);
        assert_eq!(cgroup2_roots(&mounts)[0], PathBuf::from("/sys/fs/cgroup"));
        assert_eq!(
            fstype_in(&mounts, Path::new("/sys/fs/bpf/x")).as_deref(),
            Some("bpf")
        );
    }

    #[test]
    fn unescapes_mount_paths() {
        let mounts = parse_mounts(HYBRID);
        assert_eq!(mounts[5].target, PathBuf::from("/tmp/with space"));
        assert_eq!(unescape_octal(r"a\134b\0"), r"a\b\0");
    }

    #[test]
    fn capabilities() {
        let root = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert!(may_load_bpf(effective_caps(root).unwrap()));
        assert!(may_load_bpf((1 << CAP_BPF) | (1 << CAP_NET_ADMIN)));
        assert!(!may_load_bpf(1 << CAP_BPF));
        assert!(!may_load_bpf(
            effective_caps("CapEff:\t0000000000000000\n").unwrap()
        ));
    }
}
