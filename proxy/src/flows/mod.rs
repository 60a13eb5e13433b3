//! Flow records: what each agent saw, kept in a bounded ring and streamed to `strait observe`.

mod filter;
pub mod kernel;
mod record;
mod ring;

pub use filter::{Criterion, FilterError, FlowFilter, PodSelector, VERDICTS, verdict_name};
pub use record::{Direction, FlowPeer, FlowRecord, HttpFlow, ServiceRef, Verdict};
pub use ring::{DEFAULT_FEED_CAPACITY, FlowEvent, FlowRing, FlowSubscription, RingStats};

#[cfg(test)]
pub(crate) use ring::tests::flow as test_flow;
