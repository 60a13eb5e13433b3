//! The single writer of the model: applies updates and publishes numbered snapshots.

use std::sync::Arc;

use tokio::sync::watch;

use super::{ClusterState, Update};

/// An immutable view of the model at one revision.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Store revision: increases by one per applied update.
    pub revision: u64,
    pub cluster: Arc<ClusterState>,
}

/// Holds the current model and lets consumers watch for new snapshots.
#[derive(Debug)]
pub struct Store {
    tx: watch::Sender<Option<Snapshot>>,
}

impl Store {
    /// An empty store; consumers see `None` until the first update.
    pub fn new() -> Self {
        let (tx, _) = watch::channel(None);
        Self { tx }
    }

    /// Applies an update and publishes the resulting snapshot.
    pub fn apply(&self, update: Update) -> u64 {
        let mut revision = 0;
        self.tx.send_modify(|cur| {
            revision = cur.as_ref().map_or(1, |s| s.revision + 1);
            match update {
                Update::ReplaceCluster(state) => {
                    *cur = Some(Snapshot {
                        revision,
                        cluster: Arc::new(state),
                    });
                }
            }
        });
        revision
    }

    /// A receiver that sees every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Option<Snapshot>> {
        self.tx.subscribe()
    }

    /// The current snapshot, if any.
    pub fn current(&self) -> Option<Snapshot> {
        self.tx.borrow().clone()
    }
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}
