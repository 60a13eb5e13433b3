//! Installs compiled state: the kernel image (eBPF maps) and the tc programs on this node's pod
//! interfaces, then the proxy tables and the DNS table, then reports the revision. The only
//! writer of any of them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use strait_ebpf::{ApplyStats, PolicyDelta, PolicyImage};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::compile::{CompiledState, KernelImage};
use crate::dns::DnsTable;
use crate::proxy::Proxy;

/// Something the kernel refused while installing a revision.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("install policy maps")]
    Maps(#[source] Box<strait_ebpf::Error>),
    #[error("attach tc programs to {ifname}")]
    Attach {
        ifname: String,
        #[source]
        source: Box<strait_ebpf::Error>,
    },
}

/// What the installer needs of the kernel data path (the eBPF maps and tc attachments).
pub trait Kernel: Send + Sync {
    /// Makes the maps hold exactly `image`.
    fn apply_full(&self, image: &PolicyImage) -> Result<ApplyStats, strait_ebpf::Error>;
    /// Applies what changed since the last apply.
    fn apply_delta(&self, delta: &PolicyDelta) -> Result<ApplyStats, strait_ebpf::Error>;
    /// Attaches the tc programs to a pod interface.
    fn attach(&self, ifname: &str) -> Result<(), strait_ebpf::Error>;
    /// Detaches them.
    fn detach(&self, ifname: &str) -> Result<(), strait_ebpf::Error>;
    /// Interfaces with tc programs attached (by this agent or an earlier one).
    fn attached(&self) -> Vec<String>;
}

impl Kernel for strait_ebpf::Datapath {
    fn apply_full(&self, image: &PolicyImage) -> Result<ApplyStats, strait_ebpf::Error> {
        self.apply_policy(image)
    }

    fn apply_delta(&self, delta: &PolicyDelta) -> Result<ApplyStats, strait_ebpf::Error> {
        self.apply_policy_delta(delta)
    }

    fn attach(&self, ifname: &str) -> Result<(), strait_ebpf::Error> {
        self.attach_pod_interface(ifname)
    }

    fn detach(&self, ifname: &str) -> Result<(), strait_ebpf::Error> {
        self.detach_pod_interface(ifname)
    }

    fn attached(&self) -> Vec<String> {
        self.pod_interfaces()
    }
}

/// What one install changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Installed {
    pub revision: u64,
    /// Map entries written or removed.
    pub map_changes: usize,
    /// Whether the whole image was compared with the maps (first install, or after a failure).
    pub full: bool,
}

/// Keeps the data path in step with the compiled state.
pub struct Installer {
    kernel: Arc<dyn Kernel>,
    proxy: Arc<Proxy>,
    dns: watch::Sender<Arc<DnsTable>>,
    attached: Mutex<BTreeSet<String>>,
    /// The image the maps hold, when known; the next install writes only the difference.
    installed: Mutex<Option<KernelImage>>,
    revision: AtomicU64,
    source_revision: AtomicU64,
}

impl Installer {
    /// An installer writing to `kernel`, `proxy` and the DNS table channel `dns`; interfaces a
    /// previous agent attached are adopted.
    pub fn new(
        kernel: Arc<dyn Kernel>,
        proxy: Arc<Proxy>,
        dns: watch::Sender<Arc<DnsTable>>,
    ) -> Self {
        let attached = kernel.attached().into_iter().collect();
        Self {
            kernel,
            proxy,
            dns,
            attached: Mutex::new(attached),
            installed: Mutex::new(None),
            revision: AtomicU64::new(0),
            source_revision: AtomicU64::new(0),
        }
    }

    /// Installs one revision. Kernel first (tc on new pod interfaces, so a pod is never
    /// unenforced once its policy is in the maps; then the maps; then detaching interfaces that
    /// went away), then the proxy and DNS tables: a revision is reported only once all of it is
    /// in force. On error the previous revision stays reported.
    pub fn apply(&self, state: &CompiledState) -> Result<Installed, InstallError> {
        let mut attached = self.attached.lock();
        let new: Vec<String> = state
            .interfaces
            .iter()
            .filter(|i| !attached.contains(*i))
            .cloned()
            .collect();
        for ifname in &new {
            self.kernel
                .attach(ifname)
                .map_err(|source| InstallError::Attach {
                    ifname: ifname.clone(),
                    source: Box::new(source),
                })?;
            attached.insert(ifname.clone());
        }
        let mut installed = self.installed.lock();
        let (result, full) = match installed.take() {
            Some(old) => (
                self.kernel.apply_delta(&state.kernel.delta_from(&old)),
                false,
            ),
            None => (self.kernel.apply_full(&state.kernel.to_image()), true),
        };
        // After a failure `installed` stays unknown: the next apply compares everything.
        let stats = result.map_err(|e| InstallError::Maps(Box::new(e)))?;
        *installed = Some(state.kernel.clone());
        let gone: Vec<String> = attached
            .iter()
            .filter(|i| !state.interfaces.contains(*i))
            .cloned()
            .collect();
        for ifname in gone {
            // The interface usually vanished with its pod; a failure here leaves nothing behind.
            if let Err(e) = self.kernel.detach(&ifname) {
                warn!(%ifname, error = %crate::errors::chain(&e), "detach tc programs");
            }
            attached.remove(&ifname);
        }
        self.proxy.swap_tables(state.proxy.clone());
        self.dns.send_replace(state.dns.clone());
        self.revision.store(state.revision, Ordering::SeqCst);
        self.source_revision
            .store(state.source_revision, Ordering::SeqCst);
        debug!(
            revision = state.revision,
            changes = stats.changes(),
            full,
            "kernel state installed"
        );
        Ok(Installed {
            revision: state.revision,
            map_changes: stats.changes(),
            full,
        })
    }

    /// The interfaces with tc programs attached.
    pub fn interfaces(&self) -> Vec<String> {
        self.attached.lock().iter().cloned().collect()
    }

    /// The source revision of the last installed state (0 before the first).
    pub fn source_revision(&self) -> u64 {
        self.source_revision.load(Ordering::SeqCst)
    }

    /// The store revision of the last installed state (0 before the first).
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::SeqCst)
    }
}
