//! Magpie client SDK.
//!
//! * [`Client`]: the HTTP API (accounts, sessions, users, conversations, history, polling sync).
//! * [`Session`]: a WebSocket session for chat apps. It reconnects with jittered exponential
//!   backoff, resumes the inbox from a persisted cursor ([`CursorStore`]), delivers every
//!   event exactly once in cursor order (filling gaps over HTTP), re-sends unanswered messages
//!   with their original `client_msg_id`, keeps the socket alive with pings and acks progress.
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
//!     if let SessionEvent::Event(e) = event {
//!         println!("{e:?}");
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
mod sequencer;
mod session;

pub use acker::{AckTracker, ACK_BATCH_MAX_DEFAULT, ACK_DEBOUNCE_MS_DEFAULT};
pub use backoff::{Backoff, BACKOFF_BASE_MS, BACKOFF_CAP_MS, STABLE_CONNECTION_MS};
pub use client::{Client, HistoryRange, CONNECT_TIMEOUT_MS, REQUEST_TIMEOUT_MS};
pub use cursor::{CursorStore, FileCursorStore, MemoryCursorStore};
pub use error::{Result, SdkError};
pub use outbox::{Outbox, PendingSend, OUTBOX_CAPACITY_DEFAULT};
pub use sequencer::{Sequencer, Verdict};
pub use session::{
    new_client_msg_id, AckMode, Session, SessionConfig, SessionEvent, EVENT_BUFFER_DEFAULT,
    WS_CONNECT_TIMEOUT_MS_DEFAULT,
};

/// Re-exported wire types the SDK's API is made of.
pub use magpie_core::{ConversationId, DeviceId, UserId};
pub use magpie_protocol::http::{ConversationInfo, SendResult, SessionCreated, SyncPage, UserInfo};
pub use magpie_protocol::ws::{EventBody, WireEvent, WireMessage};
pub use magpie_protocol::ErrorCode;
