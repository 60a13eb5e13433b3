//! Test support (feature `testing`, never in the agent): the kernel's policy decision helper
//! `strait_policy_check` (`bpf/include/policy.h`), run through the test-only classifier
//! `bpf/test/policy_decide.bpf.c` with `BPF_PROG_TEST_RUN` on maps that
//! [`Datapath::apply_policy`] fills. Lets other crates check their compiled policy against the
//! real C lookup. Needs root.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions};

use crate::{ApplyStats, Datapath, DatapathConfig, PolicyImage};

static OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/test/policy_decide.bpf.o"));

const PROGRAM: &str = "strait_test_policy";

/// `enum strait_policy_match` (`bpf/include/policy.h`): the kernel's answer for one flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Match {
    /// Allowed: one side is the host.
    Host = 1,
    /// Allowed: neither side enforces this direction.
    Unpoliced = 2,
    /// Allowed by an ALLOW entry.
    Allow = 3,
    /// Allowed by a PROXY entry (the proxy judges L7).
    Proxy = 4,
    /// Allowed: a service the kernel cannot judge.
    Deferred = 5,
    /// Denied by a DENY entry.
    Deny = 6,
    /// Denied: enforced, and no entry matches.
    None = 7,
}

impl Match {
    const ALL: [Match; 7] = [
        Match::Host,
        Match::Unpoliced,
        Match::Allow,
        Match::Proxy,
        Match::Deferred,
        Match::Deny,
        Match::None,
    ];

    /// Whether the kernel lets the flow through.
    pub fn allows(self) -> bool {
        !matches!(self, Match::Deny | Match::None)
    }
}

/// What can go wrong setting up or running the decision helper.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "not root: loading eBPF programs and creating cgroups needs root (e.g. `sudo -E cargo test`)"
    )]
    NotRoot,
    #[error("creating test cgroup {path}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the data path for the decision helper")]
    Datapath(#[source] crate::Error),
    #[error("loading the test object policy_decide.bpf.o")]
    Object(#[source] aya::EbpfError),
    #[error("program {PROGRAM} of policy_decide.bpf.o")]
    Program(#[source] aya::programs::ProgramError),
    #[error("program {PROGRAM} missing from policy_decide.bpf.o")]
    MissingProgram,
    #[error("program {PROGRAM} returned {0}, not 0")]
    Wrapper(u32),
    #[error("program {PROGRAM} answered {0}, not an enum strait_policy_match")]
    UnknownMatch(u32),
}

/// A throwaway data path (its own cgroup and pin directory, removed on drop) with the decision
/// helper loaded on its maps.
pub struct PolicyDecider {
    datapath: Datapath,
    ebpf: aya::Ebpf,
    /// Last: fields drop in order, so the programs' descriptors close before the pins go.
    _cleanup: Cleanup,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl PolicyDecider {
    /// Loads a data path attached to a new, empty cgroup named after `test` (so it judges no
    /// real traffic) and the decision helper on its pin directory.
    pub fn new(test: &str) -> Result<Self, Error> {
        if !nix::unistd::geteuid().is_root() {
            return Err(Error::NotRoot);
        }
        let unique = format!(
            "{test}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let cgroup = crate::sys::cgroup2_root()
            .map_err(|e| Error::Datapath(e.into()))?
            .join(format!("strait-test-{unique}"));
        std::fs::create_dir(&cgroup).map_err(|source| Error::Cgroup {
            path: cgroup.clone(),
            source,
        })?;
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/strait-test-{unique}"));
        // From here on, an early return cleans up whatever was created.
        let cleanup = Cleanup {
            cgroup: cgroup.clone(),
            pin_dir: pin_dir.clone(),
        };
        let datapath = Datapath::load_and_attach(&DatapathConfig {
            pin_dir: pin_dir.clone(),
            cgroup: cgroup.clone(),
            // Never dialed: the cgroup holds no process.
            proxy: SocketAddrV4::new(Ipv4Addr::new(198, 18, 250, 1), 15001),
            bypass: vec![],
        })
        .map_err(Error::Datapath)?;
        let mut ebpf = aya::EbpfLoader::new()
            .default_map_pin_directory(&pin_dir)
            .load(OBJ)
            .map_err(Error::Object)?;
        let prog: &mut SchedClassifier = ebpf
            .program_mut(PROGRAM)
            .ok_or(Error::MissingProgram)?
            .try_into()
            .map_err(Error::Program)?;
        prog.load().map_err(Error::Program)?;
        Ok(PolicyDecider {
            datapath,
            ebpf,
            _cleanup: cleanup,
        })
    }

    /// Makes the policy maps hold exactly `image` ([`Datapath::apply_policy`]).
    pub fn apply(&self, image: &PolicyImage) -> Result<ApplyStats, Error> {
        self.datapath.apply_policy(image).map_err(Error::Datapath)
    }

    /// `strait_policy_check(src_id, dst_id, protocol, dport)` on the current maps.
    pub fn decide(
        &self,
        src_id: u32,
        dst_id: u32,
        protocol: u8,
        dport: u16,
    ) -> Result<Match, Error> {
        // `struct strait_policy_in` (48 bytes; mode 0 = CHECK), padded to a minimal packet.
        let mut data = [0u8; 64];
        data[4..8].copy_from_slice(&src_id.to_ne_bytes());
        data[8..12].copy_from_slice(&dst_id.to_ne_bytes());
        data[12] = protocol;
        data[14..16].copy_from_slice(&dport.to_be_bytes());
        let prog: &SchedClassifier = self
            .ebpf
            .program(PROGRAM)
            .ok_or(Error::MissingProgram)?
            .try_into()
            .map_err(Error::Program)?;
        let mut out = [0u8; 64];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(&data);
        opts.data_out = Some(&mut out);
        let result = prog.test_run(opts).map_err(Error::Program)?;
        if result.return_value != 0 {
            return Err(Error::Wrapper(result.return_value));
        }
        let raw = u32::from_ne_bytes([out[0], out[1], out[2], out[3]]);
        Match::ALL
            .into_iter()
            .find(|m| *m as u32 == raw)
            .ok_or(Error::UnknownMatch(raw))
    }
}

/// Removes a test data path's pins (detaching its programs) and cgroup when dropped.
struct Cleanup {
    cgroup: PathBuf,
    pin_dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Err(e) = crate::remove_pins(&self.pin_dir) {
            eprintln!("cleanup: removing pins {}: {e}", self.pin_dir.display());
        }
        if let Err(e) = std::fs::remove_dir(&self.cgroup) {
            eprintln!("cleanup: removing cgroup {}: {e}", self.cgroup.display());
        }
    }
}
