//! Flow records: what each agent saw, kept in a bounded ring and streamed to `strait observe`.

//!
//! This module depends on nothing of the proxy, metrics or admin API: the proxy and the kernel
//! adapter (`proxy::drops`) hand it finished records, and metrics subscribe as a
//! [`FlowObserver`].

mod filter;
mod query;
mod record;
mod ring;

pub use filter::{Criterion, FilterError, FlowFilter, PodSelector, VERDICTS, verdict_name};
pub use query::{FlowsQuery, QueryError};
pub use record::{
    DecidedBy, Direction, FlowPeer, FlowRecord, HttpFlow, ServiceRef, SharedLabels, Verdict,
};
pub use ring::{
    DEFAULT_FEED_CAPACITY, FlowEvent, FlowObserver, FlowRing, FlowSubscription, RingStats,
};
/// Why a flow was dropped: the one list in `strait_abi.h`, shared with the kernel.
pub use strait_ebpf::DropReason;

#[cfg(test)]
pub(crate) use ring::tests::flow as test_flow;
