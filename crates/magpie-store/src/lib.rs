//! Magpie's storage layer, shaped by the Timeline model.
//!
//! A conversation owns a *storage timeline* (messages at gap-free `seq` 1, 2, 3, …); a user owns
//! a *sync timeline* (inbox events at gap-free `cursor` 1, 2, 3, …). [`Store::append`] stores a
//! batch of messages together with the inbox entries of write fan-out, durably, and only then
//! reports success and announces the new events to the [`CommitSink`]. Backends:
//!
//! - [`FjallStore`]: the embedded default on fjall: one writer thread stages batches, a commit
//!   thread applies and fsyncs them (group commit).
//! - [`MemoryStore`]: a simple model used by tests and by the conformance property tests.
//!
//! [`conformance`] holds the suite every backend must pass.

pub mod conformance;
mod error;
mod fjall;
mod memory;
mod types;

pub use crate::fjall::{
    FjallConfig, FjallStore, TimelineCompaction, BACKGROUND_NICE_DEFAULT, COMMIT_BUSY_OPS_MIN,
    COMMIT_INTERVAL_MAX, COMMIT_INTERVAL_MIN_DEFAULT, JOURNAL_BYTES_MIN,
};
pub use error::{AppendError, FriendError, GroupError, StoreError};
pub use memory::MemoryStore;
pub use types::{
    removes_members, AppendRequest, Appended, CommitSink, ConversationNotice, ConversationSummary,
    Friend, GroupPolicy, MessageRange, NoopSink, Store, LAST_SEEN_PER_WRITE_MAX,
};
