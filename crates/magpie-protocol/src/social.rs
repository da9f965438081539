//! Wire shapes of the social graph and groups: friends, friend requests, groups, members,
//! the conversation list, receipts and presence.

use magpie_core::{ConversationId, RequestId, UserId};
use serde::{Deserialize, Serialize};

use crate::ws::WireMessage;

/// A friend request: `{"request_id","from_id","to_id","message","ts_ms"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireFriendRequest {
    #[serde(with = "crate::id_string")]
    pub request_id: RequestId,
    #[serde(with = "crate::id_string")]
    pub from_id: UserId,
    #[serde(with = "crate::id_string")]
    pub to_id: UserId,
    pub message: String,
    pub ts_ms: u64,
}

/// `POST /v1/friends/requests` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FriendRequestCreate {
    #[serde(with = "crate::id_string")]
    pub user_id: UserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `POST /v1/friends/requests` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FriendRequestCreated {
    #[serde(with = "crate::id_string")]
    pub request_id: RequestId,
}

/// `GET /v1/friends/requests` response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FriendRequests {
    pub incoming: Vec<WireFriendRequest>,
    pub outgoing: Vec<WireFriendRequest>,
}

/// `POST /v1/friends/requests/{id}/accept` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FriendAccepted {
    #[serde(with = "crate::id_string")]
    pub conversation_id: ConversationId,
}

/// One friend with presence: `{"user_id","username","online","last_seen_ms"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireFriend {
    #[serde(with = "crate::id_string")]
    pub user_id: UserId,
    pub username: String,
    pub online: bool,
    pub last_seen_ms: u64,
}

/// `GET /v1/friends` response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FriendList {
    pub friends: Vec<WireFriend>,
}

/// `POST /v1/groups` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupCreate {
    pub name: String,
    #[serde(default)]
    pub member_ids: Vec<String>,
}

/// A group: `{"conversation_id","kind":"group","name","owner_id","member_count","fanout"?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    #[serde(with = "crate::id_string")]
    pub conversation_id: ConversationId,
    pub kind: String,
    pub name: String,
    /// `null` only for a group that everyone left.
    pub owner_id: Option<String>,
    pub member_count: u32,
    /// `"write"` or `"read"`; present on `GET /v1/groups/{id}` and membership changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fanout: Option<String>,
    /// `"events"` or `"query"` (as in the conversation list); present with `fanout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipts: Option<String>,
}

/// `PATCH /v1/groups/{id}` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupPatch {
    pub name: String,
}

/// `POST /v1/groups/{id}/members` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MembersAdd {
    pub user_ids: Vec<String>,
}

/// `PUT /v1/groups/{id}/members/{user_id}` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoleSet {
    pub role: String,
}

/// A member: `{"user_id","role","joined_seq"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireMember {
    #[serde(with = "crate::id_string")]
    pub user_id: UserId,
    pub role: String,
    pub joined_seq: u64,
}

/// `GET /v1/groups/{id}/members` response; `next_after` is set when more members follow.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberPage {
    pub members: Vec<WireMember>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// One row of `GET /v1/conversations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationRow {
    #[serde(with = "crate::id_string")]
    pub conversation_id: ConversationId,
    pub kind: String,
    pub name: String,
    /// The other member of a direct conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<String>,
    pub member_count: u32,
    pub fanout: String,
    /// `"events"`: reads by the other members arrive as `receipt` events; `"query"`: they do
    /// not (large groups), ask `GET /v1/conversations/{id}/receipts`. Empty from servers
    /// before this field: then `fanout` `"read"` means query.
    #[serde(default)]
    pub receipts: String,
    pub last_seq: u64,
    pub last_message: Option<WireMessage>,
    pub read_seq: u64,
    pub unread_count: u64,
    pub muted: bool,
}

/// `GET /v1/conversations` response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConversationList {
    pub conversations: Vec<ConversationRow>,
}

/// `POST /v1/conversations/{id}/read` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadRequest {
    pub seq: u64,
}

/// `POST /v1/conversations/{id}/read` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadState {
    #[serde(with = "crate::id_string")]
    pub conversation_id: ConversationId,
    pub read_seq: u64,
}

/// `GET /v1/conversations/{id}/receipts?seq=S` response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Receipts {
    pub seq: u64,
    pub read: Vec<String>,
    pub unread: Vec<String>,
    pub read_count: u64,
    pub unread_count: u64,
}

/// `PUT /v1/conversations/{id}/settings` request and response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationSettings {
    pub muted: bool,
}

/// One user's presence: `{"user_id","online","last_seen_ms"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WirePresence {
    #[serde(with = "crate::id_string")]
    pub user_id: UserId,
    pub online: bool,
    pub last_seen_ms: u64,
}

/// `GET /v1/presence` response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PresenceList {
    pub presence: Vec<WirePresence>,
}
