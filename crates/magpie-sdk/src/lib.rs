//! Magpie client SDK.
//!
//! * [`Client`]: the HTTP API (accounts, sessions, users, conversations, history, polling sync).
//! * [`Client`]: also friends, groups, the conversation list, read receipts and presence.
//! * [`Session`]: a WebSocket session for chat apps. It reconnects with jittered exponential
//!   backoff, resumes the inbox from a persisted cursor ([`CursorStore`]), delivers every
//!   event exactly once in cursor order (filling gaps over HTTP), re-sends unanswered messages
//!   with their original `client_msg_id`, keeps the socket alive with pings and acks progress.
//! * One ordered message stream: [`SessionEvent::Message`] hides the two fan-out paths (inbox
//!   events for direct chats and small groups; `notify` + `pull` for large groups) behind a
//!   [`ConversationTracker`], which delivers each conversation's messages exactly once and in
//!   `seq` order, pulls what is missing (gaps, notifies, what the conversation list shows
//!   after a reconnect) and survives a group switching modes mid-stream.
//!
//! ```no_run
//! # async fn demo() -> Result<(), magpie_sdk::SdkError> {
//! use std::sync::Arc;
//! use magpie_sdk::{Client, FileCursorStore, Session, SessionConfig, SessionEvent};
//!
//! let anon = Client::new("http://127.0.0.1:8080")?;
//! let creds = anon.login("alice", "correct horse", Some("laptop")).await?;
//! let client = anon.with_token(creds.token);
//! let store = Arc::new(FileCursorStore::new("/tmp/alice.cursor"));
//! let (session, mut events) = Session::start(client, store, SessionConfig::default())?;
//! while let Some(event) = events.recv().await {
//!     match event {
//!         SessionEvent::Message(m) => println!("#{} in {}: {}", m.seq, m.conversation_id, m.text),
//!         SessionEvent::Event(e) => println!("{e:?}"),
//!         _ => {}
//!     }
//! }
//! # drop(session);
//! # Ok(()) }
//! ```

mod acker;
mod backoff;
mod client;
mod cursor;
mod error;
mod outbox;
mod progress;
mod sequencer;
mod session;
mod tracker;

pub use acker::{AckTracker, ACK_BATCH_MAX_DEFAULT, ACK_DEBOUNCE_MS_DEFAULT};
pub use backoff::{Backoff, BACKOFF_BASE_MS, BACKOFF_CAP_MS, STABLE_CONNECTION_MS};
pub use client::{Client, HistoryRange, MemberRole, CONNECT_TIMEOUT_MS, REQUEST_TIMEOUT_MS};
pub use cursor::{CursorStore, FileCursorStore, MemoryCursorStore, SEQ_ENTRIES_MAX};
pub use error::{Result, SdkError};
pub use outbox::{Outbox, PendingSend, OUTBOX_CAPACITY_DEFAULT};
pub use progress::{InboxItem, InboxProgress, UNSETTLED_EVENTS_MAX_DEFAULT};
pub use sequencer::{Sequencer, Verdict};
pub use session::{
    new_client_msg_id, AckMode, Session, SessionConfig, SessionEvent, CONTROL_QUEUE_MAX,
    EVENT_BUFFER_DEFAULT, SEND_REFUSALS_MAX_DEFAULT, SEND_RETRY_BASE_MS_DEFAULT,
    WS_CONNECT_TIMEOUT_MS_DEFAULT,
};
pub use tracker::{
    CatchUpRow, ConversationTracker, Effects, Fanout, PullRequest, SkippedRange, TrackerLimits,
    PENDING_PER_CONVERSATION_DEFAULT, PULL_ATTEMPTS_MAX, PULL_PAGE_DEFAULT,
    PULL_TIMEOUT_MS_DEFAULT, TRACKED_CONVERSATIONS_DEFAULT,
};

/// Re-exported wire types the SDK's API is made of.
pub use magpie_core::{ConversationId, DeviceId, RequestId, UserId};
pub use magpie_protocol::http::{
    ConversationInfo, MessagesPage, SendResult, SessionCreated, SyncPage, UserInfo,
};
pub use magpie_protocol::social::{
    ConversationRow, FriendRequests, GroupInfo, MemberPage, Receipts, WireFriend,
    WireFriendRequest, WireMember, WirePresence,
};
pub use magpie_protocol::ws::{EventBody, WireEvent, WireMessage, WireSystem};
pub use magpie_protocol::ErrorCode;
