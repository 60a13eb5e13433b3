//! Flow records: what each agent saw, kept in a bounded ring and streamed to `strait observe`.

mod record;

pub use record::{Direction, FlowPeer, FlowRecord, ServiceRef, Verdict};
