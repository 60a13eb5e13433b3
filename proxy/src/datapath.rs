//! Installs compiled state into the kernel: the policy image (maps) and the tc programs on this
//! node's pod interfaces. The only writer of the eBPF maps.

use std::collections::BTreeSet;
use std::sync::Arc;

use parking_lot::Mutex;
use strait_ebpf::{ApplyStats, Datapath, PolicyImage};
use tracing::{info, warn};

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

/// Keeps the kernel in step with the compiled state.
pub struct Installer {
    datapath: Arc<Datapath>,
    attached: Mutex<BTreeSet<String>>,
}

impl Installer {
    /// An installer for `datapath`; interfaces a previous agent attached are adopted.
    pub fn new(datapath: Arc<Datapath>) -> Self {
        let attached = datapath.pod_interfaces().into_iter().collect();
        Self {
            datapath,
            attached: Mutex::new(attached),
        }
    }

    /// Installs one revision: tc on new pod interfaces first (so a pod is never unenforced once
    /// its policy is in the maps), then the maps, then detaches interfaces that went away.
    pub fn install(
        &self,
        image: &PolicyImage,
        interfaces: &BTreeSet<String>,
    ) -> Result<ApplyStats, InstallError> {
        let mut attached = self.attached.lock();
        for ifname in interfaces.difference(&attached.clone()) {
            self.datapath
                .attach_pod_interface(ifname)
                .map_err(|source| InstallError::Attach {
                    ifname: ifname.clone(),
                    source: Box::new(source),
                })?;
            attached.insert(ifname.clone());
        }
        let stats = self
            .datapath
            .apply_policy(image)
            .map_err(|e| InstallError::Maps(Box::new(e)))?;
        let gone: Vec<String> = attached.difference(interfaces).cloned().collect();
        for ifname in gone {
            // The interface usually vanished with its pod; a failure here leaves nothing behind.
            if let Err(e) = self.datapath.detach_pod_interface(&ifname) {
                warn!(%ifname, error = %crate::errors::chain(&e), "detach tc programs");
            }
            attached.remove(&ifname);
        }
        info!(interfaces = attached.len(), "kernel state installed");
        Ok(stats)
    }

    /// The interfaces with tc programs attached.
    pub fn interfaces(&self) -> Vec<String> {
        self.attached.lock().iter().cloned().collect()
    }
}
