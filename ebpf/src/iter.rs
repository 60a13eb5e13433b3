//! The TCP socket iterator (`bpf/iter.bpf.c`) that ends live kernel-path connections a policy
//! or service change no longer allows, and its loader.
//!
//! aya 0.14 cannot load it: the program calls the `bpf_sock_destroy` kfunc (kernel 6.5+), and aya
//! does not relocate kfunc calls. So this module does what libbpf does for such a program
//! (`bpf_object__relocate_data` / `bpf_program__attach_iter` in `src/libbpf.c`), for this one
//! object only: take the instructions of section `iter/tcp` from the ELF, point each map
//! reference (`ld_imm64` relocated against a `.maps` symbol) at the node's map pinned under the
//! same name (`BPF_PSEUDO_MAP_FD`), point the kfunc call at `bpf_sock_destroy`'s id in vmlinux
//! BTF (`BPF_PSEUDO_KFUNC_CALL`), load it as a `BPF_TRACE_ITER` tracing program for
//! `bpf_iter_tcp`, and create its link. Each run creates an iterator from the link, which walks
//! the TCP sockets of the network namespace of the thread that creates it; so a run enters the
//! pod's namespace on a short-lived thread of its own.

mod btf;
mod syscall;

use std::{
    ffi::CString,
    fs::File,
    io::{self, Read},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
};

use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget};

use crate::abi::DropReason;

static ITER_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/iter.bpf.o"));

/// The program's function and ELF section.
const PROGRAM: &str = "strait_iter_tcp";
const SECTION: &str = "iter/tcp";
/// The kfunc it calls and the kernel function its iterator target is declared as.
const KFUNC: &str = "bpf_sock_destroy";
const ITER_TARGET: &str = "bpf_iter_tcp";
/// `BPF_PSEUDO_MAP_FD` / `BPF_PSEUDO_KFUNC_CALL`: `src_reg` of an `ld_imm64` / `call`.
const PSEUDO_MAP_FD: u8 = 1;
const PSEUDO_KFUNC_CALL: u8 = 2;
const OP_LD_IMM64: u8 = 0x18;
const OP_CALL: u8 = 0x85;
const INSN_SIZE: usize = 8;
/// `struct strait_iter_record`.
const RECORD_SIZE: usize = 4;
/// Verifier log size when a load fails and is retried for its log.
const LOG_SIZE: usize = 1 << 20;

/// What can go wrong loading or running the socket iterator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("iter.bpf.o: {reason}")]
    Object { reason: String },
    #[error("opening the pinned map {path} for iter.bpf.o")]
    OpenMap {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "kernel BTF (/sys/kernel/btf/vmlinux) has no function `{name}`: the socket iterator needs \
         a kernel with BTF and bpf_sock_destroy (6.5 or later)"
    )]
    Btf {
        name: &'static str,
        #[source]
        source: Option<btf::BtfError>,
    },
    #[error("loading program {PROGRAM} ({SECTION}); verifier log ends: {log}")]
    Load {
        log: String,
        #[source]
        source: io::Error,
    },
    #[error("creating the iterator link of {PROGRAM}")]
    Link {
        #[source]
        source: io::Error,
    },
    #[error("opening network namespace {path}")]
    OpenNetns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("entering network namespace {path}")]
    Setns {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("running {PROGRAM} in network namespace {path}")]
    Run {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the thread running {PROGRAM} in {path} panicked")]
    ThreadPanicked { path: PathBuf },
    #[error("reading {path}")]
    ReadCgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no process in cgroup {path} or below it, so no network namespace to find")]
    EmptyCgroup { path: PathBuf },
}

/// Live kernel-path TCP connections one run of the socket iterator ended, per reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rejudged {
    /// Policy denies them now (`POLICY_DENIED`).
    pub policy_denied: usize,
    /// Their port has L7 rules now, which only the proxy applies (`PROXY_REQUIRED`).
    pub proxy_required: usize,
    /// Their Service backend was removed (`BACKEND_REMOVED`).
    pub backend_removed: usize,
    /// Judged to end, but `bpf_sock_destroy` failed (they stay open; counted here only).
    pub failed: usize,
}

impl Rejudged {
    /// Connections ended, all reasons together.
    pub fn destroyed(&self) -> usize {
        self.policy_denied + self.proxy_required + self.backend_removed
    }

    /// Adds the counts of `other` (another namespace's run).
    pub fn merge(&mut self, other: Rejudged) {
        self.policy_denied += other.policy_denied;
        self.proxy_required += other.proxy_required;
        self.backend_removed += other.backend_removed;
        self.failed += other.failed;
    }

    fn add(&mut self, record: [u8; RECORD_SIZE]) {
        let reason = u16::from_ne_bytes([record[0], record[1]]);
        let error = i16::from_ne_bytes([record[2], record[3]]);
        if error != 0 {
            self.failed += 1;
            return;
        }
        match DropReason::try_from(u32::from(reason)) {
            Ok(DropReason::PolicyDenied) => self.policy_denied += 1,
            Ok(DropReason::ProxyRequired) => self.proxy_required += 1,
            Ok(DropReason::BackendRemoved) => self.backend_removed += 1,
            // The program writes only the three above; anything else is a mismatched build.
            _ => self.failed += 1,
        }
    }
}

// === impl SockIter ===

/// The loaded iterator program and its link; dropping it unloads both.
#[derive(Debug)]
pub(crate) struct SockIter {
    link: OwnedFd,
    _program: OwnedFd,
}

impl SockIter {
    /// Loads the program against the maps pinned in `pin_dir` and creates its link.
    pub(crate) fn load(pin_dir: &Path) -> Result<SockIter, Error> {
        let ids = btf::kernel_func_ids(&[KFUNC, ITER_TARGET]).map_err(|source| Error::Btf {
            name: KFUNC,
            source: Some(source),
        })?;
        let btf_id = |name: &'static str| {
            ids.get(name)
                .copied()
                .ok_or(Error::Btf { name, source: None })
        };
        let kfunc_id = btf_id(KFUNC)?;
        let target_id = btf_id(ITER_TARGET)?;

        let program = Program::parse(ITER_OBJ)?;
        let mut insns = program.insns.clone();
        // Held until the program is loaded: the kernel takes its own references to the maps.
        let mut maps = Vec::new();
        for reloc in &program.relocations {
            match reloc {
                Relocation::Map { insn, name } => {
                    let path = pin_dir.join(name);
                    let fd = open_pinned(&path)?;
                    let imm = fd.as_raw_fd();
                    patch(&mut insns, *insn, OP_LD_IMM64, PSEUDO_MAP_FD, imm)?;
                    maps.push(fd);
                }
                Relocation::Kfunc { insn } => {
                    let imm = i32::try_from(kfunc_id).map_err(|_| Error::Object {
                        reason: format!("BTF id {kfunc_id} of {KFUNC} out of range"),
                    })?;
                    patch(&mut insns, *insn, OP_CALL, PSEUDO_KFUNC_CALL, imm)?;
                }
            }
        }

        let loaded = syscall::load_iter_program(PROGRAM, &insns, &program.license, target_id, None);
        let prog_fd = match loaded {
            Ok(fd) => fd,
            Err(_) => {
                // Load again for the verifier's log: that is what says why.
                let mut log = vec![0u8; LOG_SIZE];
                let again = syscall::load_iter_program(
                    PROGRAM,
                    &insns,
                    &program.license,
                    target_id,
                    Some(&mut log),
                );
                match again {
                    Ok(fd) => fd,
                    Err(source) => {
                        return Err(Error::Load {
                            log: log_tail(&log),
                            source,
                        });
                    }
                }
            }
        };
        drop(maps);
        let link = syscall::link_create_iter(&prog_fd).map_err(|source| Error::Link { source })?;
        Ok(SockIter {
            link,
            _program: prog_fd,
        })
    }

    /// Runs the iterator over the TCP sockets of the network namespace at `netns` (a
    /// `/proc/<pid>/ns/net` or `/run/netns/<name>` path), on a thread that enters it.
    pub(crate) fn run_in(&self, netns: &Path) -> Result<Rejudged, Error> {
        let ns = File::open(netns).map_err(|source| Error::OpenNetns {
            path: netns.to_owned(),
            source,
        })?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // This thread only: the caller's namespace stays as it was.
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|source| {
                    Error::Setns {
                        path: netns.to_owned(),
                        source,
                    }
                })?;
                self.run_here().map_err(|source| Error::Run {
                    path: netns.to_owned(),
                    source,
                })
            })
            .join()
            .unwrap_or_else(|_| {
                Err(Error::ThreadPanicked {
                    path: netns.to_owned(),
                })
            })
        })
    }

    /// One run in the calling thread's network namespace: read the iterator to its end.
    fn run_here(&self) -> io::Result<Rejudged> {
        let mut iter = File::from(syscall::iter_create(&self.link)?);
        let mut out = Vec::new();
        iter.read_to_end(&mut out)?;
        let mut rejudged = Rejudged::default();
        for chunk in out.chunks_exact(RECORD_SIZE) {
            let mut record = [0u8; RECORD_SIZE];
            record.copy_from_slice(chunk);
            rejudged.add(record);
        }
        Ok(rejudged)
    }
}

/// The network namespace of the processes of a pod cgroup: `/proc/<pid>/ns/net` of the first
/// process found in `cgroup` or, depth first, in the cgroups below it.
pub fn cgroup_netns(cgroup: &Path) -> Result<PathBuf, Error> {
    first_pid(cgroup)?
        .map(|pid| PathBuf::from(format!("/proc/{pid}/ns/net")))
        .ok_or_else(|| Error::EmptyCgroup {
            path: cgroup.to_owned(),
        })
}

/// The distinct network namespaces of the pods below `node_cgroup`: one per child cgroup that
/// has a process (pods sharing a namespace count once; an empty pod cgroup is skipped).
pub(crate) fn pod_namespaces(node_cgroup: &Path) -> Result<Vec<PathBuf>, Error> {
    let entries = std::fs::read_dir(node_cgroup).map_err(|source| Error::ReadCgroup {
        path: node_cgroup.to_owned(),
        source,
    })?;
    let mut pods: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    pods.sort();
    let mut seen = std::collections::BTreeSet::new();
    let mut namespaces = Vec::new();
    for pod in pods {
        let netns = match cgroup_netns(&pod) {
            Ok(netns) => netns,
            // A pod that has no process yet, or whose last one just exited.
            Err(Error::EmptyCgroup { .. } | Error::ReadCgroup { .. }) => continue,
            Err(e) => return Err(e),
        };
        let Ok(meta) = std::fs::metadata(&netns) else {
            continue;
        };
        if seen.insert((meta.dev(), meta.ino())) {
            namespaces.push(netns);
        }
    }
    Ok(namespaces)
}

fn first_pid(cgroup: &Path) -> Result<Option<u32>, Error> {
    let procs = cgroup.join("cgroup.procs");
    let text = std::fs::read_to_string(&procs).map_err(|source| Error::ReadCgroup {
        path: procs.clone(),
        source,
    })?;
    if let Some(pid) = text.lines().find_map(|l| l.trim().parse::<u32>().ok()) {
        return Ok(Some(pid));
    }
    let entries = std::fs::read_dir(cgroup).map_err(|source| Error::ReadCgroup {
        path: cgroup.to_owned(),
        source,
    })?;
    let mut children: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    children.sort();
    for child in children {
        if let Some(pid) = first_pid(&child)? {
            return Ok(Some(pid));
        }
    }
    Ok(None)
}

fn open_pinned(path: &Path) -> Result<OwnedFd, Error> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| Error::OpenMap {
        path: path.to_owned(),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })?;
    syscall::obj_get(&c_path).map_err(|source| Error::OpenMap {
        path: path.to_owned(),
        source,
    })
}

/// Sets `src_reg` and `imm` of instruction `index`, which must have opcode `op`.
fn patch(insns: &mut [u8], index: usize, op: u8, src_reg: u8, imm: i32) -> Result<(), Error> {
    let at = index * INSN_SIZE;
    let insn = insns
        .get_mut(at..at + INSN_SIZE)
        .ok_or_else(|| Error::Object {
            reason: format!("relocation at instruction {index}, past the end of {SECTION}"),
        })?;
    if insn[0] != op {
        return Err(Error::Object {
            reason: format!(
                "relocation at instruction {index} of {SECTION}: opcode {:#04x}, expected {op:#04x}",
                insn[0]
            ),
        });
    }
    // Byte 1 holds dst_reg in its low and src_reg in its high nibble (little-endian BPF).
    insn[1] = (insn[1] & 0x0f) | (src_reg << 4);
    if op == OP_CALL {
        // off = 0: the kfunc is in vmlinux, not in a module's BTF.
        insn[2..4].copy_from_slice(&0i16.to_ne_bytes());
    }
    insn[4..8].copy_from_slice(&imm.to_ne_bytes());
    Ok(())
}

fn log_tail(log: &[u8]) -> String {
    let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join(" | ")
}

// === impl Program ===

/// A reference in the program that the loader resolves.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Relocation {
    /// `ld_imm64` of the map called `name`.
    Map { insn: usize, name: String },
    /// `call` of the kfunc.
    Kfunc { insn: usize },
}

/// The program section of `iter.bpf.o`, its relocations and license.
#[derive(Clone, Debug)]
struct Program {
    insns: Vec<u8>,
    relocations: Vec<Relocation>,
    license: CString,
}

impl Program {
    fn parse(elf: &[u8]) -> Result<Program, Error> {
        let bad = |reason: String| Error::Object { reason };
        let file = object::File::parse(elf).map_err(|e| bad(format!("not an ELF object: {e}")))?;
        let section = file
            .section_by_name(SECTION)
            .ok_or_else(|| bad(format!("no section {SECTION}")))?;
        let insns = section
            .data()
            .map_err(|e| bad(format!("section {SECTION}: {e}")))?
            .to_vec();
        if insns.len() % INSN_SIZE != 0 {
            return Err(bad(format!("section {SECTION} is not whole instructions")));
        }
        let maps_section = file.section_by_name(".maps").map(|s| s.index());
        let mut relocations = Vec::new();
        for (offset, reloc) in section.relocations() {
            let RelocationTarget::Symbol(index) = reloc.target() else {
                return Err(bad(format!(
                    "relocation at {offset:#x}: not against a symbol"
                )));
            };
            let symbol = file
                .symbol_by_index(index)
                .map_err(|e| bad(format!("relocation at {offset:#x}: {e}")))?;
            let name = symbol
                .name()
                .map_err(|e| bad(format!("relocation at {offset:#x}: {e}")))?;
            let insn = usize::try_from(offset).unwrap_or(usize::MAX) / INSN_SIZE;
            if symbol.is_undefined() && name == KFUNC {
                relocations.push(Relocation::Kfunc { insn });
            } else if maps_section.is_some() && symbol.section_index() == maps_section {
                relocations.push(Relocation::Map {
                    insn,
                    name: name.to_owned(),
                });
            } else {
                return Err(bad(format!(
                    "relocation at {offset:#x} against `{name}`, neither a map nor {KFUNC}"
                )));
            }
        }
        let license = file
            .section_by_name("license")
            .and_then(|s| s.data().ok())
            .and_then(|d| std::ffi::CStr::from_bytes_until_nul(d).ok())
            .map(|c| c.to_owned())
            .ok_or_else(|| bad("no NUL-terminated license section".to_owned()))?;
        Ok(Program {
            insns,
            relocations,
            license,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_object_references_the_judging_maps_and_the_kfunc() {
        let program = Program::parse(ITER_OBJ).unwrap_or_else(|e| panic!("{e}"));
        let mut maps: Vec<&str> = program
            .relocations
            .iter()
            .filter_map(|r| match r {
                Relocation::Map { name, .. } => Some(name.as_str()),
                Relocation::Kfunc { .. } => None,
            })
            .collect();
        maps.sort();
        maps.dedup();
        assert_eq!(
            maps,
            [
                "strait_ipcache",
                "strait_policed",
                "strait_policy",
                "strait_sock",
                "strait_svc_ids",
                "strait_viaproxy"
            ]
        );
        let kfuncs = program
            .relocations
            .iter()
            .filter(|r| matches!(r, Relocation::Kfunc { .. }))
            .count();
        assert_eq!(kfuncs, 1);
        // The kernel refuses kfunc calls from programs that are not GPL-compatible.
        assert!(program.license.to_string_lossy().contains("GPL"));
    }

    #[test]
    fn patching_sets_the_pseudo_source_and_checks_the_opcode() {
        let mut insns = vec![0u8; 3 * INSN_SIZE];
        insns[0] = OP_LD_IMM64;
        insns[1] = 0x01; // dst r1
        insns[2 * INSN_SIZE] = OP_CALL;
        patch(&mut insns, 0, OP_LD_IMM64, PSEUDO_MAP_FD, 7).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(insns[1], 0x11);
        assert_eq!(&insns[4..8], &7i32.to_ne_bytes());
        patch(&mut insns, 2, OP_CALL, PSEUDO_KFUNC_CALL, 1234).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(insns[2 * INSN_SIZE + 1], 0x20);
        assert!(patch(&mut insns, 1, OP_CALL, PSEUDO_KFUNC_CALL, 1).is_err());
        assert!(patch(&mut insns, 3, OP_CALL, PSEUDO_KFUNC_CALL, 1).is_err());
    }

    #[test]
    fn records_count_per_reason_and_failures_apart() {
        let record = |reason: DropReason, error: i16| {
            let mut r = [0u8; RECORD_SIZE];
            r[..2].copy_from_slice(&(reason as u16).to_ne_bytes());
            r[2..].copy_from_slice(&error.to_ne_bytes());
            r
        };
        let mut rejudged = Rejudged::default();
        rejudged.add(record(DropReason::PolicyDenied, 0));
        rejudged.add(record(DropReason::PolicyDenied, 0));
        rejudged.add(record(DropReason::ProxyRequired, 0));
        rejudged.add(record(DropReason::BackendRemoved, 0));
        rejudged.add(record(DropReason::PolicyDenied, -22));
        rejudged.add(record(DropReason::NoProxy, 0));
        assert_eq!(
            rejudged,
            Rejudged {
                policy_denied: 2,
                proxy_required: 1,
                backend_removed: 1,
                failed: 2,
            }
        );
        assert_eq!(rejudged.destroyed(), 4);
    }
}
