//! Loads, attaches, pins and detaches Strait's eBPF programs. Nothing else.
//!
//! Layout of a node's pin directory (`/sys/fs/bpf/strait/<lab>/<cluster>-<node>`):
//! - one file per map of `maps.h`, named after the map (pinned by name when loading);
//! - `link_<program>` for each attached program: the link keeps the program attached after the
//!   agent exits, until the pin is removed;
//! - `tc_<ifname>_in` and `tc_<ifname>_eg` for each pod interface: the TCX links of the tc
//!   programs on its host-side veth (ingress = from the pod, egress = to the pod).
//!
//! Restart without a gap: a new agent attaches its links next to the old ones (cgroup BPF links
//! always run in multi mode), pins each at `link_new_<program>` and renames that over
//! `link_<program>`. The rename drops the last reference to the old link, which detaches it, only
//! once its replacement runs. Both generations share the pinned maps meanwhile, and connect4
//! leaves connects to the proxy itself alone, so running twice is harmless. tc links are replaced
//! the same way (`tcnew_<ifname>_<dir>` renamed over `tc_<ifname>_<dir>`): TCX also runs several
//! programs per hook, and the first one to pass a packet ends the chain.

use std::{
    fs::{self, File},
    io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{MapError, MapInfo},
    programs::{
        CgroupAttachMode, CgroupSockAddr, LinkOrder, ProgramError, SchedClassifier, SockOps,
        TcAttachType,
        links::{FdLink, LinkError, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
    },
};

use crate::maps::{self, MapSpec};

static SOCK_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sock.bpf.o"));
static SOCKOPS_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sockops.bpf.o"));
static TC_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tc.bpf.o"));

/// An object file built from one `bpf/*.bpf.c`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Object {
    Sock,
    SockOps,
    Tc,
}

impl Object {
    #[cfg(test)]
    pub(crate) const ALL: [Object; 3] = [Object::Sock, Object::SockOps, Object::Tc];

    pub(crate) const fn file(self) -> &'static str {
        match self {
            Object::Sock => "sock.bpf.o",
            Object::SockOps => "sockops.bpf.o",
            Object::Tc => "tc.bpf.o",
        }
    }

    fn bytes(self) -> &'static [u8] {
        match self {
            Object::Sock => SOCK_OBJ,
            Object::SockOps => SOCKOPS_OBJ,
            Object::Tc => TC_OBJ,
        }
    }
}

/// How a program attaches to the node cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AttachKind {
    /// `cgroup/connect4`, `cgroup/getpeername4`, ... (the section names the attach type).
    CgroupSockAddr,
    /// `sockops`.
    SockOps,
}

/// One program: its C function name, its hook (= ELF section) and where it comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProgramSpec {
    pub name: &'static str,
    pub hook: &'static str,
    pub object: Object,
    pub kind: AttachKind,
}

/// Every program Strait attaches to a node cgroup, in attach order.
pub(crate) const PROGRAMS: [ProgramSpec; 6] = [
    ProgramSpec {
        name: "strait_connect4",
        hook: "cgroup/connect4",
        object: Object::Sock,
        kind: AttachKind::CgroupSockAddr,
    },
    ProgramSpec {
        name: "strait_getpeername4",
        hook: "cgroup/getpeername4",
        object: Object::Sock,
        kind: AttachKind::CgroupSockAddr,
    },
    ProgramSpec {
        name: "strait_sendmsg4",
        hook: "cgroup/sendmsg4",
        object: Object::Sock,
        kind: AttachKind::CgroupSockAddr,
    },
    ProgramSpec {
        name: "strait_recvmsg4",
        hook: "cgroup/recvmsg4",
        object: Object::Sock,
        kind: AttachKind::CgroupSockAddr,
    },
    ProgramSpec {
        name: "strait_connect6",
        hook: "cgroup/connect6",
        object: Object::Sock,
        kind: AttachKind::CgroupSockAddr,
    },
    ProgramSpec {
        name: "strait_sockops",
        hook: "sockops",
        object: Object::SockOps,
        kind: AttachKind::SockOps,
    },
];

/// One tc program and the side of a pod's host-side veth it attaches to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TcProgramSpec {
    pub name: &'static str,
    pub hook: &'static str,
    pub attach: TcAttachType,
    /// Suffix of its link pins.
    pub dir: &'static str,
}

/// The tc programs attached to every pod interface, in attach order.
pub(crate) const TC_PROGRAMS: [TcProgramSpec; 2] = [
    TcProgramSpec {
        name: "strait_tc_from_pod",
        hook: "tc ingress",
        attach: TcAttachType::Ingress,
        dir: "in",
    },
    TcProgramSpec {
        name: "strait_tc_to_pod",
        hook: "tc egress",
        attach: TcAttachType::Egress,
        dir: "eg",
    },
];

const LINK_PREFIX: &str = "link_";
const TC_LINK_PREFIX: &str = "tc_";
const TC_STAGING_PREFIX: &str = "tcnew_";

impl TcProgramSpec {
    pub(crate) fn link_pin(&self, pin_dir: &Path, ifname: &str) -> PathBuf {
        pin_dir.join(format!("{TC_LINK_PREFIX}{ifname}_{}", self.dir))
    }

    fn staging_link_pin(&self, pin_dir: &Path, ifname: &str) -> PathBuf {
        pin_dir.join(format!("{TC_STAGING_PREFIX}{ifname}_{}", self.dir))
    }
}

/// Interface names that can be pinned: what the kernel accepts (1..=15 bytes, no `/`, no
/// whitespace, not `.` or `..`) minus dots, which bpffs refuses in names.
pub(crate) fn check_ifname(ifname: &str) -> Result<(), Error> {
    let ok = !ifname.is_empty()
        && ifname.len() <= 15
        && !ifname
            .bytes()
            .any(|b| b == b'/' || b == b'.' || b == 0 || b.is_ascii_whitespace() || b == b':');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInterface {
            ifname: ifname.to_owned(),
        })
    }
}

impl ProgramSpec {
    pub(crate) fn link_pin(&self, pin_dir: &Path) -> PathBuf {
        pin_dir.join(format!("{LINK_PREFIX}{}", self.name))
    }

    /// Where a new link is pinned before it is renamed over [`Self::link_pin`]. (bpffs refuses
    /// names containing a dot, with EPERM, so no `.new` suffix.)
    fn staging_link_pin(&self, pin_dir: &Path) -> PathBuf {
        pin_dir.join(format!("{LINK_PREFIX}new_{}", self.name))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading eBPF object {object} (maps pinned under {pin_dir})")]
    Object {
        object: &'static str,
        pin_dir: PathBuf,
        #[source]
        source: Box<EbpfError>,
    },
    #[error("eBPF object {object} has no program `{program}`")]
    ProgramMissing {
        object: &'static str,
        program: &'static str,
    },
    #[error("program `{program}` is not a {hook} program")]
    ProgramType {
        program: &'static str,
        hook: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("loading program `{program}` ({hook}) into the kernel")]
    Load {
        program: &'static str,
        hook: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("attaching program `{program}` ({hook}) to cgroup {cgroup}")]
    Attach {
        program: &'static str,
        hook: &'static str,
        cgroup: PathBuf,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("the link of program `{program}` cannot be pinned (kernel without BPF links, < 5.7?)")]
    LinkNotPinnable {
        program: &'static str,
        #[source]
        source: LinkError,
    },
    #[error("pinning the link of program `{program}` at {path}")]
    PinLink {
        program: &'static str,
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("replacing the pinned link of program `{program}` at {path}")]
    ReplaceLink {
        program: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("opening cgroup {path}")]
    OpenCgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("inspecting pinned map `{map}` at {path}")]
    InspectMap {
        map: &'static str,
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error(
        "interface name {ifname:?} cannot carry Strait's tc programs (1 to 15 bytes; no `/`, \
         `.`, `:` or whitespace)"
    )]
    InvalidInterface { ifname: String },
    #[error(
        "attaching program `{program}` ({hook}) to interface {ifname} (TCX links need Linux >= \
         6.6; the agent must run in the node's network namespace)"
    )]
    AttachTc {
        program: &'static str,
        hook: &'static str,
        ifname: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("{op} {path}")]
    Fs {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Loads one object; its maps are created and pinned under `pin_dir`, or reused from there.
pub(crate) fn load_object(object: Object, pin_dir: &Path) -> Result<Ebpf, Error> {
    EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .load(object.bytes())
        .map_err(|source| Error::Object {
            object: object.file(),
            pin_dir: pin_dir.to_owned(),
            source: Box::new(source),
        })
}

/// Unpins maps left by an earlier agent whose type or sizes differ from what this build defines
/// (aya reuses a pinned map without comparing it, unlike libbpf). The next load creates fresh
/// ones; programs still attached from the old pins keep their old maps until replaced.
pub(crate) fn unpin_incompatible_maps(pin_dir: &Path) -> Result<(), Error> {
    for spec in maps::ALL {
        let path = pin_dir.join(spec.name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|source| Error::InspectMap {
            map: spec.name,
            path: path.clone(),
            source,
        })?;
        let found = MapSpec {
            name: spec.name,
            map_type: info.map_type().unwrap_or(aya::maps::MapType::Unspecified),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
        };
        if found != spec {
            tracing::warn!(map = spec.name, path = %path.display(), ?found, expected = ?spec,
                "pinned map does not match this build; replacing it");
            fs::remove_file(&path).map_err(|source| Error::Fs {
                op: "removing",
                path: path.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

pub(crate) fn open_cgroup(path: &Path) -> Result<File, Error> {
    File::open(path).map_err(|source| Error::OpenCgroup {
        path: path.to_owned(),
        source,
    })
}

/// Loads `spec`'s program from `ebpf`, attaches it to `cgroup` and pins the link at
/// [`ProgramSpec::link_pin`], replacing (and so detaching) a link pinned there before.
pub(crate) fn attach_and_pin(
    ebpf: &mut Ebpf,
    spec: &ProgramSpec,
    cgroup: &File,
    cgroup_path: &Path,
    pin_dir: &Path,
) -> Result<(), Error> {
    let program = ebpf.program_mut(spec.name).ok_or(Error::ProgramMissing {
        object: spec.object.file(),
        program: spec.name,
    })?;
    let type_err = |source| Error::ProgramType {
        program: spec.name,
        hook: spec.hook,
        source: Box::new(source),
    };
    let load_err = |source| Error::Load {
        program: spec.name,
        hook: spec.hook,
        source: Box::new(source),
    };
    let attach_err = |source| Error::Attach {
        program: spec.name,
        hook: spec.hook,
        cgroup: cgroup_path.to_owned(),
        source: Box::new(source),
    };
    let pinnable_err = |source| Error::LinkNotPinnable {
        program: spec.name,
        source,
    };
    // On kernels with BPF links (>= 5.7; aya uses them there) a cgroup link is always attached
    // in multi mode, next to the previous agent's links, and the kernel rejects any mode flag
    // in BPF_LINK_CREATE (`AllowMultiple` fails with EINVAL). So `Single`, which sends no flag.
    let mode = CgroupAttachMode::Single;
    let link: FdLink = match spec.kind {
        AttachKind::CgroupSockAddr => {
            let program: &mut CgroupSockAddr = program.try_into().map_err(type_err)?;
            program.load().map_err(load_err)?;
            let id = program.attach(cgroup, mode).map_err(attach_err)?;
            let link = program.take_link(id).map_err(attach_err)?;
            link.try_into().map_err(pinnable_err)?
        }
        AttachKind::SockOps => {
            let program: &mut SockOps = program.try_into().map_err(type_err)?;
            program.load().map_err(load_err)?;
            let id = program.attach(cgroup, mode).map_err(attach_err)?;
            let link = program.take_link(id).map_err(attach_err)?;
            link.try_into().map_err(pinnable_err)?
        }
    };
    replace_pinned_link(spec, link, pin_dir)
}

fn replace_pinned_link(spec: &ProgramSpec, link: FdLink, pin_dir: &Path) -> Result<(), Error> {
    let path = spec.link_pin(pin_dir);
    pin_replacing(spec.name, link, &spec.staging_link_pin(pin_dir), &path)?;
    tracing::debug!(program = spec.name, hook = spec.hook, pin = %path.display(), "attached");
    Ok(())
}

/// Pins `link` at `staging`, then renames it over `path`: a link pinned there before loses its
/// last reference (and detaches) only now that its replacement is attached.
fn pin_replacing(
    program: &'static str,
    link: FdLink,
    staging: &Path,
    path: &Path,
) -> Result<(), Error> {
    remove_if_present(staging)?;
    let pinned = link.pin(staging).map_err(|source| Error::PinLink {
        program,
        path: staging.to_owned(),
        source,
    })?;
    fs::rename(staging, path).map_err(|source| Error::ReplaceLink {
        program,
        path: path.to_owned(),
        source,
    })?;
    // Closing our descriptor leaves the pin as the link's only reference.
    drop(pinned);
    Ok(())
}

/// Loads the tc programs of `ebpf` (an [`Object::Tc`]) into the kernel, ready to attach.
pub(crate) fn load_tc_programs(ebpf: &mut Ebpf) -> Result<(), Error> {
    for spec in &TC_PROGRAMS {
        tc_program(ebpf, spec)?
            .load()
            .map_err(|source| Error::Load {
                program: spec.name,
                hook: spec.hook,
                source: Box::new(source),
            })?;
    }
    Ok(())
}

fn tc_program<'a>(
    ebpf: &'a mut Ebpf,
    spec: &TcProgramSpec,
) -> Result<&'a mut SchedClassifier, Error> {
    ebpf.program_mut(spec.name)
        .ok_or(Error::ProgramMissing {
            object: Object::Tc.file(),
            program: spec.name,
        })?
        .try_into()
        .map_err(|source| Error::ProgramType {
            program: spec.name,
            hook: spec.hook,
            source: Box::new(source),
        })
}

/// Attaches both tc programs to `ifname` (resolved in this thread's network namespace) with
/// TCX links pinned at [`TcProgramSpec::link_pin`].
///
/// A link pinned there already (by this agent or a previous one) is switched to our program in
/// place (`BPF_LINK_UPDATE`: atomic, and the same link stays attached, so attaching twice is a
/// no-op; TCX refuses the same program twice on one hook anyway). If that link cannot be
/// reused (its interface was deleted and re-created, say), a new link is attached and renamed
/// over the old pin, which detaches the old link only once the new one runs.
pub(crate) fn attach_tc(ebpf: &mut Ebpf, ifname: &str, pin_dir: &Path) -> Result<(), Error> {
    check_ifname(ifname)?;
    for spec in &TC_PROGRAMS {
        let program = tc_program(ebpf, spec)?;
        let path = spec.link_pin(pin_dir, ifname);
        if path.exists() {
            match update_pinned_tc_link(program, &path) {
                Ok(()) => {
                    tracing::debug!(program = spec.name, ifname, pin = %path.display(),
                        "replaced the program of the pinned link");
                    continue;
                }
                Err(error) => tracing::debug!(program = spec.name, ifname, %error,
                    "pinned link not reusable; attaching a new one"),
            }
        }
        let attach_err = |source| Error::AttachTc {
            program: spec.name,
            hook: spec.hook,
            ifname: ifname.to_owned(),
            source: Box::new(source),
        };
        let id = program
            .attach_with_options(
                ifname,
                spec.attach,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(attach_err)?;
        let link: FdLink = program
            .take_link(id)
            .map_err(attach_err)?
            .try_into()
            .map_err(|source| Error::LinkNotPinnable {
                program: spec.name,
                source,
            })?;
        let staging = spec.staging_link_pin(pin_dir, ifname);
        pin_replacing(spec.name, link, &staging, &path)?;
        tracing::debug!(program = spec.name, ifname, pin = %path.display(), "attached");
    }
    Ok(())
}

/// Points the TCX link pinned at `path` to `program`.
fn update_pinned_tc_link(
    program: &mut SchedClassifier,
    path: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let link = SchedClassifierLink::try_from(FdLink::from(PinnedLink::from_pin(path)?))?;
    let id = program.attach_to_link(link)?;
    // Closing our descriptor leaves the pin as the link's only reference.
    drop(program.take_link(id)?);
    Ok(())
}

/// Removes the tc link pins of `ifname`, detaching the programs. Missing pins are fine.
pub(crate) fn detach_tc(ifname: &str, pin_dir: &Path) -> Result<(), Error> {
    check_ifname(ifname)?;
    for spec in &TC_PROGRAMS {
        remove_if_present(&spec.staging_link_pin(pin_dir, ifname))?;
        remove_if_present(&spec.link_pin(pin_dir, ifname))?;
    }
    Ok(())
}

/// Interfaces with tc links pinned under `pin_dir`, sorted.
pub(crate) fn tc_interfaces(pin_dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(pin_dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| {
            let rest = n.strip_prefix(TC_LINK_PREFIX)?;
            TC_PROGRAMS
                .iter()
                .find_map(|spec| rest.strip_suffix(&format!("_{}", spec.dir)))
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Whether the link pinned for `spec` exists (and so keeps the program attached).
pub(crate) fn is_attached(spec: &ProgramSpec, pin_dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;

    let path = spec.link_pin(pin_dir);
    // aya's `PinnedLink::from_pin` panics on a path with a NUL byte.
    !path.as_os_str().as_bytes().contains(&0)
        && path.exists()
        && PinnedLink::from_pin(&path).is_ok()
}

/// Removes everything under `pin_dir` and the directory: links first (detaching the programs),
/// then maps. A missing directory is fine.
pub(crate) fn remove_pins(pin_dir: &Path) -> Result<(), Error> {
    let entries = match fs::read_dir(pin_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(Error::Fs {
                op: "reading",
                path: pin_dir.to_owned(),
                source,
            });
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(|source| Error::Fs {
            op: "reading",
            path: pin_dir.to_owned(),
            source,
        })?;
    let is_link = |p: &PathBuf| {
        p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
            [LINK_PREFIX, TC_LINK_PREFIX, TC_STAGING_PREFIX]
                .iter()
                .any(|prefix| n.starts_with(prefix))
        })
    };
    paths.sort_by_key(|p| !is_link(p));
    for path in paths {
        if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        }
        .map_err(|source| Error::Fs {
            op: "removing",
            path: path.clone(),
            source,
        })?;
    }
    fs::remove_dir(pin_dir).map_err(|source| Error::Fs {
        op: "removing",
        path: pin_dir.to_owned(),
        source,
    })
}

fn remove_if_present(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::Fs {
            op: "removing",
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_is_in_its_object() {
        for spec in PROGRAMS {
            let ebpf_obj = spec.object.bytes();
            let has = |needle: &str| {
                ebpf_obj
                    .windows(needle.len())
                    .any(|w| w == needle.as_bytes())
            };
            assert!(
                has(spec.name),
                "{} not in {}",
                spec.name,
                spec.object.file()
            );
            assert!(
                has(spec.hook),
                "{} not in {}",
                spec.hook,
                spec.object.file()
            );
        }
        for spec in TC_PROGRAMS {
            let has = |needle: &str| TC_OBJ.windows(needle.len()).any(|w| w == needle.as_bytes());
            assert!(has(spec.name), "{} not in tc.bpf.o", spec.name);
        }
        for object in Object::ALL {
            assert!(
                PROGRAMS.iter().any(|p| p.object == object) || object == Object::Tc,
                "{object:?} unused"
            );
        }
    }

    #[test]
    fn tc_pins_are_per_interface_and_recognised() {
        let dir = Path::new("/sys/fs/bpf/x");
        let pins: Vec<PathBuf> = TC_PROGRAMS
            .iter()
            .flat_map(|s| {
                [
                    s.link_pin(dir, "lxc1234"),
                    s.staging_link_pin(dir, "lxc1234"),
                ]
            })
            .collect();
        assert_eq!(
            pins,
            [
                dir.join("tc_lxc1234_in"),
                dir.join("tcnew_lxc1234_in"),
                dir.join("tc_lxc1234_eg"),
                dir.join("tcnew_lxc1234_eg"),
            ]
        );
        for pin in &pins {
            assert!(maps::ALL.iter().all(|m| dir.join(m.name) != *pin));
            assert!(PROGRAMS.iter().all(|p| p.link_pin(dir) != *pin));
        }
        for ok in ["lxc0", "veth-a_b", "a", "eth012345678901"] {
            assert!(check_ifname(ok).is_ok(), "{ok}");
        }
        for bad in ["", "eth0.100", "a/b", "a b", "eth0123456789012", ".", "a:1"] {
            assert!(check_ifname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn link_pins_do_not_collide_with_map_pins() {
        let dir = Path::new("/sys/fs/bpf/x");
        for spec in PROGRAMS {
            for pin in [spec.link_pin(dir), spec.staging_link_pin(dir)] {
                assert!(maps::ALL.iter().all(|m| dir.join(m.name) != pin));
                let name = pin.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                assert!(
                    !name.contains('.') && name.starts_with(LINK_PREFIX),
                    "{name}"
                );
            }
            assert_ne!(spec.link_pin(dir), spec.staging_link_pin(dir));
        }
        for m in maps::ALL {
            assert!(m.name.len() <= 15, "map name {} too long", m.name);
        }
    }
}
