//! The [`Store`] trait and the values that cross it.

use std::sync::Arc;

use async_trait::async_trait;
use magpie_core::{
    ClientMsgId, Conversation, ConversationId, Cursor, Device, DeviceId, Event, Message, Seq, User,
    UserEvent, UserId,
};

use crate::{AppendError, StoreError};

/// One message to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendRequest {
    /// The target timeline.
    pub conversation_id: ConversationId,
    /// Must be a member; checked by the store atomically with the append.
    pub sender_id: UserId,
    /// With `sender_id`, the idempotency key.
    pub client_msg_id: ClientMsgId,
    /// Already validated by the caller.
    pub text: String,
}

/// The outcome of one stored (or deduplicated) message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The message as stored. For a duplicate, the original.
    pub message: Arc<Message>,
    /// True when `(sender, client_msg_id)` was already stored; nothing new was written.
    pub duplicate: bool,
}

/// Which part of a storage timeline to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageRange {
    /// The oldest `limit` messages with seq > N.
    After(Seq),
    /// The newest `limit` messages with seq < N.
    Before(Seq),
    /// The newest `limit` messages.
    Latest,
}

/// Receives every inbox event once it is durable, in cursor order per user.
///
/// Called synchronously by the backend right after a commit; implementations must not block
/// (the router only enqueues into bounded per-device queues).
pub trait CommitSink: Send + Sync + 'static {
    /// New events, durable and readable, in commit order.
    fn committed(&self, events: &[UserEvent]);
}

/// A sink that ignores events, for tools and tests that only read.
pub struct NoopSink;

impl CommitSink for NoopSink {
    fn committed(&self, _events: &[UserEvent]) {}
}

/// Durable storage for Magpie, shaped by the Timeline model.
///
/// Invariants every backend upholds (checked by [`crate::conformance`]):
/// - seqs of a conversation are 1, 2, 3, … without gaps; cursors of an inbox likewise;
/// - `append` returns only after the batch is durable; a crash never loses an acknowledged
///   message nor keeps half of one (message, dedup key and inbox entries commit together);
/// - `(sender, client_msg_id)` maps to one message forever; a repeat returns it as duplicate
///   and writes nothing;
/// - the order of requests in one `append` call is the order of their seqs.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates an account; `StoreError::UsernameTaken` if the name exists.
    async fn create_user(
        &self,
        username: String,
        password_hash: String,
    ) -> Result<User, StoreError>;
    /// Looks an account up by id.
    async fn user_by_id(&self, id: UserId) -> Result<Option<User>, StoreError>;
    /// Looks an account up by username.
    async fn user_by_name(&self, username: &str) -> Result<Option<User>, StoreError>;

    /// Creates a device (one login) for `user` whose token hashes to `token_hash`.
    async fn create_device(
        &self,
        user: UserId,
        name: String,
        token_hash: [u8; 32],
    ) -> Result<Device, StoreError>;
    /// The unrevoked device whose token hashes to `token_hash`.
    async fn device_by_token(&self, token_hash: [u8; 32]) -> Result<Option<Device>, StoreError>;
    /// Looks a device up by id (revoked ones included).
    async fn device(&self, id: DeviceId) -> Result<Option<Device>, StoreError>;
    /// Revokes the device: its token stops authenticating.
    async fn revoke_device(&self, id: DeviceId) -> Result<(), StoreError>;
    /// Records the device's acknowledged cursor; the stored value only moves forward.
    async fn ack_cursor(&self, id: DeviceId, cursor: Cursor) -> Result<(), StoreError>;

    /// The direct conversation of two distinct users, created on first use.
    async fn direct_conversation(&self, a: UserId, b: UserId) -> Result<Conversation, StoreError>;
    /// Looks a conversation up by id.
    async fn conversation(&self, id: ConversationId) -> Result<Option<Conversation>, StoreError>;

    /// Stores a batch of messages with their inbox entries, durably, in order.
    /// The outer error fails the whole batch; inner errors refuse single messages.
    async fn append(
        &self,
        batch: Vec<AppendRequest>,
    ) -> Result<Vec<Result<Appended, AppendError>>, StoreError>;
    /// Reads part of a storage timeline, ascending by seq, at most `limit` messages.
    async fn messages(
        &self,
        conversation: ConversationId,
        range: MessageRange,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError>;
    /// Reads inbox events with cursor > `after`, ascending, at most `limit`.
    async fn events(
        &self,
        user: UserId,
        after: Cursor,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError>;
    /// The newest cursor of the user's inbox (0 if empty).
    async fn inbox_head(&self, user: UserId) -> Result<Cursor, StoreError>;
}
