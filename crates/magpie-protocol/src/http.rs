//! Request and response bodies of the HTTP API.

use magpie_core::{ConversationId, DeviceId, UserId};
use serde::{Deserialize, Serialize};

use crate::ws::{WireEvent, WireMessage};

/// `POST /v1/accounts` and `POST /v1/sessions` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// Only read by `POST /v1/sessions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
}

/// `POST /v1/accounts` response, `GET /v1/users/...` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    #[serde(with = "crate::id_string")]
    pub user_id: UserId,
    pub username: String,
}

/// `POST /v1/sessions` response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionCreated {
    pub token: String,
    #[serde(with = "crate::id_string")]
    pub user_id: UserId,
    #[serde(with = "crate::id_string")]
    pub device_id: DeviceId,
}

/// `POST /v1/conversations/direct` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DirectRequest {
    #[serde(with = "crate::id_string")]
    pub peer_id: UserId,
}

/// A conversation as returned by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationInfo {
    #[serde(with = "crate::id_string")]
    pub conversation_id: ConversationId,
    pub kind: String,
    pub members: Vec<String>,
}

/// `GET /v1/conversations/{id}/messages` response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessagesPage {
    pub messages: Vec<WireMessage>,
    /// The page stopped at [`crate::page::PAGE_BYTES_MAX`] before `limit`: more messages
    /// follow in the direction read. Absent (false) otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// `POST /v1/conversations/{id}/messages` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendRequest {
    pub client_msg_id: String,
    pub text: String,
}

/// `POST /v1/conversations/{id}/messages` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendResult {
    #[serde(with = "crate::id_string")]
    pub conversation_id: ConversationId,
    pub seq: u64,
    pub ts_ms: u64,
    pub duplicate: bool,
}

/// `GET /v1/sync` response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncPage {
    pub events: Vec<WireEvent>,
    pub next_cursor: u64,
}
