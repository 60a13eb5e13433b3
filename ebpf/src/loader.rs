//! Loads, attaches, pins and detaches Strait's eBPF programs. Nothing else.
//!
//! Layout of a node's pin directory (`/sys/fs/bpf/strait/<lab>/<cluster>-<node>`):
//! - one file per map of `maps.h`, named after the map (pinned by name when loading);
//! - `link_<program>` for each attached program: the link keeps the program attached after the
//!   agent exits, until the pin is removed.
//!
//! Restart without a gap: a new agent attaches its links next to the old ones (cgroup BPF links
//! always run in multi mode), pins each at `link_new_<program>` and renames that over
//! `link_<program>`. The rename drops the last reference to the old link, which detaches it, only
//! once its replacement runs. Both generations share the pinned maps meanwhile, and connect4
//! leaves connects to the proxy itself alone, so running twice is harmless.

use std::{
    fs::{self, File},
    io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{MapError, MapInfo},
    programs::{
        CgroupAttachMode, CgroupSockAddr, ProgramError, SockOps,
        links::{FdLink, LinkError, PinnedLink},
    },
};

use crate::maps::{self, MapSpec};

static SOCK_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sock.bpf.o"));
static SOCKOPS_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sockops.bpf.o"));

/// An object file built from one `bpf/*.bpf.c`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Object {
    Sock,
    SockOps,
}

impl Object {
    #[cfg(test)]
    pub(crate) const ALL: [Object; 2] = [Object::Sock, Object::SockOps];

    pub(crate) const fn file(self) -> &'static str {
        match self {
            Object::Sock => "sock.bpf.o",
            Object::SockOps => "sockops.bpf.o",
        }
    }

    fn bytes(self) -> &'static [u8] {
        match self {
            Object::Sock => SOCK_OBJ,
            Object::SockOps => SOCKOPS_OBJ,
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
pub(crate) const PROGRAMS: [ProgramSpec; 4] = [
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

const LINK_PREFIX: &str = "link_";

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
    let staging = spec.staging_link_pin(pin_dir);
    remove_if_present(&staging)?;
    let pinned = link.pin(&staging).map_err(|source| Error::PinLink {
        program: spec.name,
        path: staging.clone(),
        source,
    })?;
    fs::rename(&staging, &path).map_err(|source| Error::ReplaceLink {
        program: spec.name,
        path: path.clone(),
        source,
    })?;
    // Closing our descriptor leaves the pin as the link's only reference.
    drop(pinned);
    tracing::debug!(program = spec.name, hook = spec.hook, pin = %path.display(), "attached");
    Ok(())
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
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(LINK_PREFIX))
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
        for object in Object::ALL {
            assert!(
                PROGRAMS.iter().any(|p| p.object == object),
                "{object:?} unused"
            );
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
