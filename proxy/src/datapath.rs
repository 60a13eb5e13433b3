//! Installs compiled state: the kernel image (eBPF maps) and the tc programs on this node's pod
//! interfaces, then the proxy tables and the DNS table, then reports the revision. The only
//! writer of any of them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use strait_ebpf::{ApplyStats, PodAddress, PolicyDelta, PolicyImage, ViaProxyKey};
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
    /// Attaches the tc programs to a pod interface, recording `pod` as the pod behind it (also
    /// how a pod's new address or identity reaches tc).
    fn attach(&self, ifname: &str, pod: PodAddress) -> Result<(), strait_ebpf::Error>;
    /// Detaches them and forgets the pod.
    fn detach(&self, ifname: &str) -> Result<(), strait_ebpf::Error>;
    /// Interfaces with tc programs attached (by this agent or an earlier one).
    fn attached(&self) -> Vec<String>;
    /// Makes the via-proxy set (other clusters' L7 ports) exactly `keys`.
    fn set_via_proxy(&self, keys: &BTreeSet<ViaProxyKey>) -> Result<(), strait_ebpf::Error>;
}

impl Kernel for strait_ebpf::Datapath {
    fn apply_full(&self, image: &PolicyImage) -> Result<ApplyStats, strait_ebpf::Error> {
        self.apply_policy(image)
    }

    fn apply_delta(&self, delta: &PolicyDelta) -> Result<ApplyStats, strait_ebpf::Error> {
        self.apply_policy_delta(delta)
    }

    fn attach(&self, ifname: &str, pod: PodAddress) -> Result<(), strait_ebpf::Error> {
        self.attach_pod_interface(ifname, pod)
    }

    fn detach(&self, ifname: &str) -> Result<(), strait_ebpf::Error> {
        self.detach_pod_interface(ifname)
    }

    fn attached(&self) -> Vec<String> {
        self.pod_interfaces()
    }

    fn set_via_proxy(&self, keys: &BTreeSet<ViaProxyKey>) -> Result<(), strait_ebpf::Error> {
        strait_ebpf::Datapath::set_via_proxy(self, keys).map(|_| ())
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
    /// Interfaces with tc attached and the pod recorded behind each; `None` for those adopted
    /// from an earlier agent, whose record this one has not written yet.
    attached: Mutex<BTreeMap<String, Option<PodAddress>>>,
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
        let attached = kernel.attached().into_iter().map(|i| (i, None)).collect();
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

    /// Installs one revision. Kernel first (tc on new pod interfaces, and the pod address of
    /// those whose pod changed, so a pod is never unenforced once its policy is in the maps;
    /// then the maps; then detaching interfaces that went away), then the proxy and DNS tables:
    /// a revision is reported only once all of it is in force. On error the previous revision
    /// stays reported.
    pub fn apply(&self, state: &CompiledState) -> Result<Installed, InstallError> {
        let mut attached = self.attached.lock();
        let changed: Vec<(String, PodAddress)> = state
            .interfaces
            .iter()
            .filter(|(ifname, pod)| attached.get(*ifname) != Some(&Some(**pod)))
            .map(|(ifname, pod)| (ifname.clone(), *pod))
            .collect();
        for (ifname, pod) in changed {
            self.kernel
                .attach(&ifname, pod)
                .map_err(|source| InstallError::Attach {
                    ifname: ifname.clone(),
                    source: Box::new(source),
                })?;
            attached.insert(ifname, Some(pod));
        }
        let mut installed = self.installed.lock();
        let old = installed.take();
        let (result, full) = match &old {
            Some(old) => {
                let delta = state.kernel.delta_from(old);
                // Revisions that touch only proxy tables or DNS leave the maps alone.
                let stats = if delta.is_empty() {
                    Ok(ApplyStats::default())
                } else {
                    self.kernel.apply_delta(&delta)
                };
                (stats, false)
            }
            None => (self.kernel.apply_full(&state.kernel.to_image()), true),
        };
        // After a failure `installed` stays unknown: the next apply compares everything.
        let stats = result.map_err(|e| InstallError::Maps(Box::new(e)))?;
        let mut via_changes = 0;
        let via_before = old.as_ref().map(|o| &o.via_proxy);
        if via_before != Some(&state.kernel.via_proxy) {
            // Not worth failing the revision for: a key missing sends its connections the kernel
            // path, where the remote node drops them (fail closed).
            if let Err(e) = self.kernel.set_via_proxy(&state.kernel.via_proxy) {
                warn!(error = %crate::errors::chain(&e), "via-proxy map not updated");
            }
            // Counted as map changes: kernel-path sockets to such ports are judged again.
            let before = via_before.cloned().unwrap_or_default();
            via_changes = before.symmetric_difference(&state.kernel.via_proxy).count();
        }
        *installed = Some(state.kernel.clone());
        let gone: Vec<String> = attached
            .keys()
            .filter(|i| !state.interfaces.contains_key(*i))
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
            changes = stats.changes() + via_changes,
            full,
            "kernel state installed"
        );
        Ok(Installed {
            revision: state.revision,
            map_changes: stats.changes() + via_changes,
            full,
        })
    }

    /// The interfaces with tc programs attached.
    pub fn interfaces(&self) -> Vec<String> {
        self.attached.lock().keys().cloned().collect()
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::{ClusterInfo, ClusterState, Endpoint, Node};

    /// Records what the installer asks of the kernel.
    #[derive(Default)]
    struct FakeKernel {
        calls: Mutex<Vec<String>>,
    }

    impl Kernel for FakeKernel {
        fn apply_full(&self, _: &PolicyImage) -> Result<ApplyStats, strait_ebpf::Error> {
            Ok(ApplyStats::default())
        }

        fn apply_delta(&self, _: &PolicyDelta) -> Result<ApplyStats, strait_ebpf::Error> {
            Ok(ApplyStats::default())
        }

        fn attach(&self, ifname: &str, pod: PodAddress) -> Result<(), strait_ebpf::Error> {
            let call = format!("attach {ifname} {} {}", pod.ip, pod.identity);
            self.calls.lock().push(call);
            Ok(())
        }

        fn detach(&self, ifname: &str) -> Result<(), strait_ebpf::Error> {
            self.calls.lock().push(format!("detach {ifname}"));
            Ok(())
        }

        fn attached(&self) -> Vec<String> {
            vec!["lxcold".into(), "lxcgone".into()]
        }

        fn set_via_proxy(&self, keys: &BTreeSet<ViaProxyKey>) -> Result<(), strait_ebpf::Error> {
            if !keys.is_empty() {
                self.calls.lock().push(format!("via_proxy {}", keys.len()));
            }
            Ok(())
        }
    }

    fn pod(name: &str, ip: [u8; 4], identity: u32) -> Endpoint {
        Endpoint {
            namespace: "demo".into(),
            name: name.into(),
            node: "node-1".into(),
            ip: Ipv4Addr::from(ip),
            labels: [("app".to_string(), name.to_string())].into(),
            identity,
            workload: None,
            ports: vec![],
            ready: true,
            cgroup_id: None,
            host_ifname: Some(format!("lxc{name}")),
        }
    }

    fn compiled(revision: u64, endpoints: Vec<Endpoint>) -> CompiledState {
        let state = ClusterState {
            revision,
            cluster: ClusterInfo {
                name: "c1".into(),
                id: 1,
            },
            nodes: vec![Node {
                name: "node-1".into(),
                underlay_ip: Ipv4Addr::new(10, 9, 0, 1),
                pod_cidr: "10.0.1.0/24".parse().unwrap(),
                gateway: Ipv4Addr::new(10, 0, 1, 1),
            }],
            namespaces: vec![],
            endpoints,
            services: vec![],
            policies: vec![],
        };
        crate::compile::compile_state(state, "node-1").unwrap()
    }

    #[test]
    fn pod_addresses_reach_tc_when_attached_and_when_they_change() {
        let kernel = Arc::new(FakeKernel::default());
        let proxy = crate::proxy::conn::tests::proxy("frontend", false);
        let (dns, _) = watch::channel(Arc::new(DnsTable::default()));
        let installer = Installer::new(kernel.clone(), proxy, dns);
        let take = || std::mem::take(&mut *kernel.calls.lock());

        // An interface adopted from the previous agent gets its pod written once; one that
        // went away is detached.
        let a = pod("old", [10, 0, 1, 5], 1000);
        installer.apply(&compiled(1, vec![a.clone()])).unwrap();
        assert_eq!(take(), ["attach lxcold 10.0.1.5 1000", "detach lxcgone"]);
        installer.apply(&compiled(2, vec![a.clone()])).unwrap();
        assert_eq!(take(), Vec::<String>::new(), "nothing changed");

        // A new pod; then the old one gets another address and the new one another identity.
        let b = pod("new", [10, 0, 1, 6], 1001);
        installer
            .apply(&compiled(3, vec![a.clone(), b.clone()]))
            .unwrap();
        assert_eq!(take(), ["attach lxcnew 10.0.1.6 1001"]);
        let a2 = Endpoint {
            ip: Ipv4Addr::new(10, 0, 1, 7),
            ..a
        };
        let b2 = Endpoint {
            identity: 1002,
            ..b
        };
        installer.apply(&compiled(4, vec![a2, b2.clone()])).unwrap();
        assert_eq!(
            take(),
            ["attach lxcnew 10.0.1.6 1002", "attach lxcold 10.0.1.7 1000"]
        );
        installer.apply(&compiled(5, vec![b2])).unwrap();
        assert_eq!(take(), ["detach lxcold"]);
        assert_eq!(installer.interfaces(), ["lxcnew"]);
    }
}
