//! The [`Store`] trait and the values that cross it.

use std::sync::Arc;

use async_trait::async_trait;
use magpie_core::{
    ClientMsgId, Conversation, ConversationId, Cursor, Device, DeviceId, Event, EventPayload,
    FriendRequest, Member, Message, RequestId, Role, Seq, User, UserEvent, UserId,
};

use crate::{AppendError, FriendError, GroupError, StoreError};

/// Most last-seen times one [`Store::record_last_seen`] call may carry, so that one write
/// stays bounded (a shutdown records every online user, in chunks of this size).
pub const LAST_SEEN_PER_WRITE_MAX: usize = 10_000;

/// The [`LAST_SEEN_PER_WRITE_MAX`] check every backend makes before recording anything.
pub(crate) fn check_last_seen_len(seen: &[(UserId, u64)]) -> Result<(), StoreError> {
    if seen.len() > LAST_SEEN_PER_WRITE_MAX {
        return Err(StoreError::TooMany("last-seen times"));
    }
    Ok(())
}

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

/// Size and fan-out policy, fixed when a store is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupPolicy {
    /// Largest group, in members (`group_full` beyond).
    pub members_max: u32,
    /// Groups with at most this many members use write fan-out (one inbox event per member);
    /// larger groups use read fan-out (no inbox events; a [`ConversationNotice`] instead).
    /// Direct conversations always use write fan-out.
    pub fanout_write_max: u32,
    /// Groups with at most this many members (and write fan-out) push read receipts as
    /// `Receipt` events to the other members; larger groups only answer queries. Direct
    /// conversations always push them.
    pub receipt_events_max: u32,
}

impl Default for GroupPolicy {
    fn default() -> Self {
        Self {
            members_max: magpie_core::limits::GROUP_MEMBERS_MAX_DEFAULT,
            fanout_write_max: magpie_core::limits::FANOUT_WRITE_MAX_DEFAULT,
            receipt_events_max: magpie_core::limits::RECEIPT_EVENTS_MAX_DEFAULT,
        }
    }
}

impl GroupPolicy {
    /// Whether a conversation with `member_count` members uses write fan-out.
    pub fn writes_fanout(&self, member_count: u32) -> bool {
        member_count <= self.fanout_write_max
    }

    /// Whether a group with `member_count` members pushes read receipts as events.
    pub fn pushes_receipts(&self, member_count: u32) -> bool {
        self.writes_fanout(member_count) && member_count <= self.receipt_events_max
    }
}

/// Announced on commit for a read-fan-out conversation that got new messages: the newest seq
/// and who the members are, so the router can send light notifications to online members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationNotice {
    /// The conversation.
    pub conversation_id: ConversationId,
    /// Its newest seq after the commit.
    pub last_seq: Seq,
    /// Its members after the commit (shared: a group may have 10,000).
    pub members: Arc<[UserId]>,
}

/// Receives every inbox event once it is durable, in cursor order per user, and a notice per
/// read-fan-out conversation that grew.
///
/// Called synchronously by the backend right after a commit; implementations must not block
/// (the router only enqueues into bounded queues).
pub trait CommitSink: Send + Sync + 'static {
    /// New events and notices, durable and readable, in commit order.
    fn committed(&self, events: &[UserEvent], notices: &[ConversationNotice]);

    /// A commit removed members from groups (it carries `GroupLeft` events). Called after the
    /// commit is durable and *before* it becomes readable, while readers are held off, so a
    /// reader that sees the removal (or any later message) also sees what this call did. Must
    /// be quick and must not call the store.
    fn members_removed(&self) {}
}

/// True if `events` remove someone from a group.
pub fn removes_members(events: &[UserEvent]) -> bool {
    events
        .iter()
        .any(|ue| matches!(ue.event.payload, EventPayload::GroupLeft { .. }))
}

/// A sink that ignores events, for tools and tests that only read.
pub struct NoopSink;

impl CommitSink for NoopSink {
    fn committed(&self, _events: &[UserEvent], _notices: &[ConversationNotice]) {}
}

/// A friendship as seen from one side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Friend {
    /// The friend.
    pub user_id: UserId,
    /// The direct conversation of the two.
    pub conversation_id: ConversationId,
    /// When the friendship began.
    pub since_ms: u64,
}

/// One row of a user's conversation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationSummary {
    /// The conversation.
    pub conversation: Conversation,
    /// The user's membership (read_seq, muted, role).
    pub member: Member,
    /// The newest message, if any.
    pub last_message: Option<Arc<Message>>,
    /// Messages with seq > read_seq not sent by the user, capped at `UNREAD_COUNT_MAX`.
    pub unread_count: u64,
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
    /// Ok while the store takes writes. `Poisoned` after a failed durable write (the store then
    /// refuses every write until the process restarts), `Closed` once it is closed or its
    /// writer is gone. Cheap and synchronous, so that `/healthz` can ask it on every probe.
    fn health(&self) -> Result<(), StoreError>;

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
    ///
    /// Order across calls: a batch takes its place in line during one of its polls, usually
    /// the first (a full queue, or a spent cooperative budget in tokio, can defer that to a
    /// later poll), and its messages get seqs after those of every batch that took its place
    /// before. A caller that keeps several batches in flight and polls them only oldest-first
    /// (never a newer one without polling every older one just before it, in the same task
    /// poll) therefore gets seqs in the order it created them, whichever completes first.
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
    /// The newest seq of a conversation (0 if empty).
    async fn last_seq(&self, conversation: ConversationId) -> Result<Seq, StoreError>;
    /// The durable message `sender` sent with `client_msg_id`, if any: what a resend of it is
    /// answered with (`duplicate`), whatever access the sender has now. A message whose append
    /// has not yet returned may not be found.
    async fn sent_message(
        &self,
        sender: UserId,
        client_msg_id: &ClientMsgId,
    ) -> Result<Option<Message>, StoreError>;

    // --- Friends -------------------------------------------------------------------------

    /// Asks `to` to be friends. A pending request from `from` to `to` is returned as is (no new
    /// event). New requests append a `FriendRequest` event to `to`'s inbox.
    async fn request_friend(
        &self,
        from: UserId,
        to: UserId,
        message: String,
    ) -> Result<Result<FriendRequest, FriendError>, StoreError>;
    /// Pending requests: (incoming, outgoing), oldest first.
    async fn friend_requests(
        &self,
        user: UserId,
    ) -> Result<(Vec<FriendRequest>, Vec<FriendRequest>), StoreError>;
    /// The addressee accepts or declines a pending request. Accepting makes both friends,
    /// creates (or reuses) their direct conversation, appends `FriendAdded` to both inboxes,
    /// and also settles a pending request in the other direction. Returns the direct
    /// conversation on accept, `None` on decline.
    async fn answer_friend_request(
        &self,
        user: UserId,
        request: RequestId,
        accept: bool,
    ) -> Result<Result<Option<Conversation>, FriendError>, StoreError>;
    /// The user's friends, ordered by user id.
    async fn friends(&self, user: UserId) -> Result<Vec<Friend>, StoreError>;
    /// Whether the two are friends.
    async fn are_friends(&self, a: UserId, b: UserId) -> Result<bool, StoreError>;
    /// Ends a friendship in both directions; false if there was none. The direct conversation
    /// and its history stay.
    async fn remove_friend(&self, user: UserId, other: UserId) -> Result<bool, StoreError>;

    // --- Groups ----------------------------------------------------------------------------

    /// Creates a group owned by `owner` with `members` (the owner is added if missing,
    /// duplicates ignored). Seq 1 is a `GroupCreated` system message; every member gets a
    /// `GroupJoined` event. Unknown users → `GroupError::UnknownUser`; too many → `GroupFull`.
    async fn create_group(
        &self,
        owner: UserId,
        name: String,
        members: Vec<UserId>,
    ) -> Result<Result<Conversation, GroupError>, StoreError>;
    /// Adds users (owner or admin only). Existing members are skipped; if nobody is new, nothing
    /// is written and `None` is returned. Otherwise one `MembersAdded` system message whose seq
    /// is each new member's `joined_seq`, and a `GroupJoined` event per new member.
    async fn add_members(
        &self,
        actor: UserId,
        conversation: ConversationId,
        users: Vec<UserId>,
    ) -> Result<Result<Option<Arc<Message>>, GroupError>, StoreError>;
    /// Removes `user`: `actor == user` leaves (anyone), otherwise owner/admin removes (an admin
    /// cannot remove the owner or another admin). Appends `MemberRemoved`/`MemberLeft`, and
    /// `OwnerChanged` when the owner leaves (ownership passes to the longest-standing admin,
    /// else member). The user gets `GroupLeft` and loses access at once.
    async fn remove_member(
        &self,
        actor: UserId,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<Result<Vec<Arc<Message>>, GroupError>, StoreError>;
    /// The owner sets a member's role to `Admin` or `Member` (`Owner` is refused).
    async fn set_role(
        &self,
        actor: UserId,
        conversation: ConversationId,
        user: UserId,
        role: Role,
    ) -> Result<Result<Arc<Message>, GroupError>, StoreError>;
    /// Owner or admin renames the group.
    async fn rename_group(
        &self,
        actor: UserId,
        conversation: ConversationId,
        name: String,
    ) -> Result<Result<Arc<Message>, GroupError>, StoreError>;
    /// One membership (direct conversations have member records too).
    async fn member(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<Option<Member>, StoreError>;
    /// Members ordered by user id, starting after `after`, at most `limit`.
    async fn members(
        &self,
        conversation: ConversationId,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<Vec<Member>, StoreError>;

    // --- Per-user conversation state ------------------------------------------------------

    /// The user's conversations, most recent activity first (last message time, else creation).
    async fn conversations_of(&self, user: UserId) -> Result<Vec<ConversationSummary>, StoreError>;
    /// One row of [`Store::conversations_of`] (same unread count); `None` if `user` is not a
    /// member of `conversation`.
    async fn conversation_summary(
        &self,
        conversation: ConversationId,
        user: UserId,
    ) -> Result<Option<ConversationSummary>, StoreError>;
    /// Sets `read_seq = max(old, min(seq, last_seq))`. When it moves: a `Read` event to the
    /// user's own inbox (their other devices), and in direct and write-fan-out conversations
    /// one `Receipt` event to every other member. Returns the resulting read_seq.
    async fn mark_read(
        &self,
        user: UserId,
        conversation: ConversationId,
        seq: Seq,
    ) -> Result<Result<Seq, GroupError>, StoreError>;
    /// Mutes or unmutes pushes for one conversation.
    async fn set_muted(
        &self,
        user: UserId,
        conversation: ConversationId,
        muted: bool,
    ) -> Result<Result<(), GroupError>, StoreError>;

    // --- Presence ---

    /// Records when users were last connected, as `(user, unix ms)` pairs, so "last seen"
    /// survives restarts. A recorded time never moves backwards. At most
    /// [`LAST_SEEN_PER_WRITE_MAX`] pairs per call; more is refused with
    /// [`StoreError::TooMany`] and nothing is recorded.
    async fn record_last_seen(&self, seen: Vec<(UserId, u64)>) -> Result<(), StoreError>;
    /// When each of `users` was last connected, as recorded; 0 if never.
    async fn last_seen(&self, users: &[UserId]) -> Result<Vec<u64>, StoreError>;
}
