//! The Timeline model's records: users, devices, conversations, messages and inbox events.

use std::sync::Arc;

use crate::{ClientMsgId, ConversationId, Cursor, DeviceId, Seq, UserId};

/// A registered account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Server-assigned, never reused.
    pub id: UserId,
    /// Unique, `[a-z0-9_]{3,32}`.
    pub username: String,
    /// The Argon2id PHC string; never leaves the server.
    pub password_hash: String,
    /// When the account was created.
    pub created_ms: u64,
}

/// One login of a user. Each device has its own token and its own sync cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Server-assigned, never reused.
    pub id: DeviceId,
    /// The owner.
    pub user_id: UserId,
    /// Free text chosen by the client ("laptop", "cli"), bounded.
    pub name: String,
    /// SHA-256 of the bearer token; the token itself is never stored.
    pub token_hash: [u8; 32],
    /// The last inbox cursor this device acknowledged (0 if none).
    pub cursor: Cursor,
    /// Set on logout; a revoked device's token no longer authenticates.
    pub revoked: bool,
}

/// The kind of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversationKind {
    /// Exactly two members, created once per pair of users.
    Direct,
}

/// A conversation and its members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// Server-assigned, never reused.
    pub id: ConversationId,
    /// Direct for now; groups arrive with the social-graph issue.
    pub kind: ConversationKind,
    /// Sorted ascending, no duplicates.
    pub members: Vec<UserId>,
    /// When the conversation was created.
    pub created_ms: u64,
}

impl Conversation {
    /// Whether `user` may read and write this conversation.
    pub fn has_member(&self, user: UserId) -> bool {
        self.members.binary_search(&user).is_ok()
    }
}

/// One entry of a conversation's storage timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The timeline it belongs to.
    pub conversation_id: ConversationId,
    /// Its gap-free position in that timeline.
    pub seq: Seq,
    /// Who sent it.
    pub sender_id: UserId,
    /// The sender's idempotency key.
    pub client_msg_id: ClientMsgId,
    /// 1 to `MESSAGE_CHARS_MAX` characters.
    pub text: String,
    /// Server time when the message was stored.
    pub ts_ms: u64,
}

/// What an inbox event carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventPayload {
    /// A new message in one of the user's conversations. Shared, because write fan-out puts the
    /// same message into every member's inbox.
    Message(Arc<Message>),
}

/// One entry of a user's sync timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Its gap-free position in the user's inbox.
    pub cursor: Cursor,
    /// What happened.
    pub payload: EventPayload,
}

/// An event together with the inbox it was appended to; what the store announces on commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEvent {
    /// The inbox owner.
    pub user_id: UserId,
    /// The event at its cursor.
    pub event: Event,
}
