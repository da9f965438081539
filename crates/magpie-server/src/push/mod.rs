//! Offline push: when an event is stored for a user with no online device, a notification is
//! handed to a [`PushProvider`] (a webhook is built in; APNs/FCM can follow behind the trait).
//!
//! Push is best-effort by design and must never slow message delivery: the commit path only
//! `try_send`s into a bounded queue (a full queue drops the push and counts it). A dispatcher
//! task coalesces notifications per user over a short window (a burst from one chat becomes one
//! push carrying the latest message and unread count) and delivers with bounded concurrency and
//! retries with exponential backoff.

mod dispatcher;
mod webhook;

use async_trait::async_trait;
use magpie_core::{ConversationId, Seq, UserId};

pub use dispatcher::{IsOnline, PushConfig, PushQueue, CONVERSATIONS_PER_WINDOW_MAX};

/// What the commit path hands over: cheap to build, no store reads. The dispatcher adds the
/// sender's name and the unread count, and skips muted conversations, when it flushes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushCandidate {
    /// The recipient (who has no online device).
    pub user_id: UserId,
    /// Where the message is.
    pub conversation_id: ConversationId,
    /// Its seq.
    pub seq: Seq,
    /// Who sent it.
    pub sender_id: UserId,
    /// The first `PREVIEW_CHARS_MAX` characters.
    pub preview: String,
}
pub use webhook::{sign, WebhookProvider, SIGNATURE_HEADER, TIMESTAMP_HEADER};

/// Characters of message text carried in a push preview.
pub const PREVIEW_CHARS_MAX: usize = 100;

/// What a push says: `{"user_id","conversation_id","seq","sender_id","sender_name","preview","unread_count"}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PushNotification {
    /// The recipient.
    #[serde(with = "magpie_protocol::id_string")]
    pub user_id: UserId,
    /// Where the newest message is.
    #[serde(with = "magpie_protocol::id_string")]
    pub conversation_id: ConversationId,
    /// Its seq.
    #[serde(serialize_with = "ser_seq")]
    pub seq: Seq,
    /// Who sent it.
    #[serde(with = "magpie_protocol::id_string")]
    pub sender_id: UserId,
    /// The sender's username.
    pub sender_name: String,
    /// The first `PREVIEW_CHARS_MAX` characters of the text.
    pub preview: String,
    /// The recipient's unread messages in that conversation.
    pub unread_count: u64,
}

fn ser_seq<S: serde::Serializer>(seq: &Seq, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(seq.0)
}

/// The first `PREVIEW_CHARS_MAX` characters of `text`.
pub fn preview(text: &str) -> String {
    text.chars().take(PREVIEW_CHARS_MAX).collect()
}

/// Why one delivery attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// Worth retrying (network error, 5xx, 429).
    #[error("transient push failure: {0}")]
    Transient(String),
    /// Not worth retrying (4xx other than 429, bad configuration).
    #[error("permanent push failure: {0}")]
    Permanent(String),
}

/// A push service (webhook, APNs, FCM, …).
#[async_trait]
pub trait PushProvider: Send + Sync + 'static {
    /// Delivers one notification; the dispatcher handles retries.
    async fn deliver(&self, n: &PushNotification) -> Result<(), PushError>;
}
