//! The Timeline model's records: users, devices, conversations, messages and inbox events.

use std::sync::Arc;

use crate::{ClientMsgId, ConversationId, Cursor, DeviceId, RequestId, Seq, UserId};

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
    /// A named group of up to `group_members_max` members with an owner and admins.
    Group,
}

/// A conversation. Its members live in their own records ([`Member`]) because a group may
/// have 10,000 of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// Server-assigned, never reused.
    pub id: ConversationId,
    /// Direct or group.
    pub kind: ConversationKind,
    /// Group name; empty for direct conversations.
    pub name: String,
    /// The group's owner; `None` for direct conversations (and for a group everyone left).
    pub owner: Option<UserId>,
    /// Current number of members.
    pub member_count: u32,
    /// For direct conversations the two members, sorted; empty for groups.
    ///
    /// Invariant: a direct conversation's members never change (only groups add and remove
    /// members), so this list answers "is this user a member?" on its own. The `typing` relay
    /// relies on it; a feature that removes users from direct conversations (account
    /// deletion, say) must revisit that check.
    pub members: Vec<UserId>,
    /// When the conversation was created.
    pub created_ms: u64,
}

/// A member's role in a group. Direct conversations have only `Member`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// May add and remove members; may not change roles.
    Admin,
    /// Everything admins may, plus changing roles; exactly one per group.
    Owner,
    /// May send, read, and leave.
    Member,
}

/// One user's membership in one conversation, with their per-conversation state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The conversation.
    pub conversation_id: ConversationId,
    /// The member.
    pub user_id: UserId,
    /// Owner, admin or member.
    pub role: Role,
    /// The seq of the system message that announced the join (1 for creators and direct
    /// members). The member reads history from this seq on.
    pub joined_seq: Seq,
    /// The highest seq the user has read; only moves forward.
    pub read_seq: Seq,
    /// Pushes for this conversation are suppressed.
    pub muted: bool,
}

/// What a system message says happened; stored in the conversation timeline so that every
/// member sees membership changes in order with the messages around them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemEvent {
    /// The group was created by `actor` with `members` (the actor included).
    GroupCreated {
        actor: UserId,
        name: String,
        members: Vec<UserId>,
    },
    /// `actor` added `users`.
    MembersAdded { actor: UserId, users: Vec<UserId> },
    /// `actor` removed `user`.
    MemberRemoved { actor: UserId, user: UserId },
    /// `user` left by themselves.
    MemberLeft { user: UserId },
    /// `actor` (the owner) set `user`'s role.
    RoleChanged {
        actor: UserId,
        user: UserId,
        role: Role,
    },
    /// `actor` renamed the group.
    Renamed { actor: UserId, name: String },
    /// Ownership passed to `user` because the owner left.
    OwnerChanged { user: UserId },
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
    /// 1 to `MESSAGE_CHARS_MAX` characters; empty for system messages.
    pub text: String,
    /// Set for system messages (membership changes); `None` for user text.
    pub system: Option<SystemEvent>,
    /// Server time when the message was stored.
    pub ts_ms: u64,
}

/// A pending or decided friend request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FriendRequest {
    /// Server-assigned, never reused.
    pub id: RequestId,
    /// Who asks.
    pub from: UserId,
    /// Who is asked.
    pub to: UserId,
    /// Free text from the requester (bounded by `FRIEND_MESSAGE_CHARS_MAX`).
    pub message: String,
    /// When it was made.
    pub ts_ms: u64,
}

/// What an inbox event carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventPayload {
    /// A new message in one of the user's conversations (direct or write-fan-out group).
    /// Shared, because write fan-out puts the same message into every member's inbox.
    Message(Arc<Message>),
    /// Someone asked the user to be friends.
    FriendRequest(FriendRequest),
    /// The user and `user_id` are now friends; `conversation_id` is their direct conversation.
    FriendAdded {
        user_id: UserId,
        conversation_id: ConversationId,
    },
    /// The user was added to a group (or created it).
    GroupJoined { conversation_id: ConversationId },
    /// The user left or was removed from a group.
    GroupLeft { conversation_id: ConversationId },
    /// The user (on some device) read `conversation_id` up to `read_seq`.
    Read {
        conversation_id: ConversationId,
        read_seq: Seq,
    },
    /// Another member, `user_id`, read `conversation_id` up to `read_seq`.
    Receipt {
        conversation_id: ConversationId,
        user_id: UserId,
        read_seq: Seq,
    },
}

/// One entry of a user's sync timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Its gap-free position in the user's inbox.
    pub cursor: Cursor,
    /// What happened.
    pub payload: EventPayload,
}

impl Event {
    /// Bytes of user-written text the event carries (a message's text, a friend request's
    /// note), for bounding pages (`limits::PageText`).
    pub fn text_bytes(&self) -> usize {
        match &self.payload {
            EventPayload::Message(m) => m.text.len(),
            EventPayload::FriendRequest(r) => r.message.len(),
            _ => 0,
        }
    }
}

/// An event together with the inbox it was appended to; what the store announces on commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEvent {
    /// The inbox owner.
    pub user_id: UserId,
    /// The event at its cursor.
    pub event: Event,
}
