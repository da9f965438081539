//! The HTTP half of the SDK: accounts, sessions, users, conversations, history and polling sync.

use std::time::Duration;

use magpie_core::{ConversationId, RequestId, UserId};
use magpie_protocol::http::{
    ConversationInfo, Credentials, DirectRequest, MessagesPage, SendRequest, SendResult,
    SessionCreated, SyncPage, UserInfo,
};
use magpie_protocol::social::{
    ConversationList, ConversationRow, ConversationSettings, FriendAccepted, FriendList,
    FriendRequestCreate, FriendRequestCreated, FriendRequests, GroupCreate, GroupInfo, GroupPatch,
    MemberPage, MembersAdd, PresenceList, ReadRequest, ReadState, Receipts, RoleSet, WireFriend,
    WireMember, WirePresence,
};
use magpie_protocol::ErrorBody;
use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use url::Url;

use crate::error::{code_for_status, Result, SdkError};
use crate::sequencer::Inbound;

/// `GET /v1/sync` with events left undecoded, so that unknown kinds do not fail the page.
#[derive(serde::Deserialize)]
struct RawSyncPage {
    events: Vec<serde_json::Value>,
    next_cursor: u64,
}

/// How long establishing a TCP connection may take.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// How long an idle pooled HTTP connection is kept. The server closes idle keep-alive
/// connections after 30 s (its header read timeout); reusing one just as it closes fails a
/// request that reqwest does not retry (a POST), so the client lets them go first.
const POOL_IDLE_MS: u64 = 20_000;
/// How long an ordinary (non-long-poll) request may take in total.
pub const REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Extra time granted to a long-poll `sync` beyond its `wait_ms`, so the server answers first.
pub const LONG_POLL_SLACK_MS: u64 = 10_000;
/// The largest error body read into an error message, in bytes; protects against huge pages.
const ERROR_BODY_BYTES_MAX: usize = 4_096;

/// Which part of a conversation's history `Client::messages` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HistoryRange {
    /// The newest messages.
    #[default]
    Latest,
    /// Messages with `seq` greater than this one (reading forward).
    After(u64),
    /// Messages with `seq` less than this one (paging backwards).
    Before(u64),
}

/// A role that can be given to a group member with [`Client::set_member_role`] (ownership
/// only changes hands when the owner leaves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberRole {
    /// May add and remove (non-admin) members and rename the group.
    Admin,
    /// May send, read and leave.
    Member,
}

impl MemberRole {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Admin => "admin",
            MemberRole::Member => "member",
        }
    }
}

/// An HTTP client for one Magpie server, optionally authenticated with a bearer token.
///
/// Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct Client {
    /// Shared pool; reqwest clients are reference-counted internally.
    http: reqwest::Client,
    /// `http://host:port` (any path prefix kept, no trailing slash).
    base: Url,
    /// The bearer token sent with every request, once logged in.
    token: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("authenticated", &self.token.is_some())
            .finish()
    }
}

impl Client {
    /// A client for the server at `base_url`, e.g. `http://127.0.0.1:8080`.
    pub fn new(base_url: &str) -> Result<Self> {
        let mut base = Url::parse(base_url)
            .map_err(|e| SdkError::Invalid(format!("server URL {base_url:?}: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(SdkError::Invalid(format!(
                "server URL {base_url:?} must start with http:// or https://"
            )));
        }
        base.set_query(None);
        base.set_fragment(None);
        let path = base.path().trim_end_matches('/').to_owned();
        base.set_path(&path);
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
            .pool_idle_timeout(Duration::from_millis(POOL_IDLE_MS))
            .build()?;
        Ok(Self {
            http,
            base,
            token: None,
        })
    }

    /// The same client authenticated with `token` (sharing the connection pool).
    pub fn with_token(&self, token: impl Into<String>) -> Self {
        Self {
            http: self.http.clone(),
            base: self.base.clone(),
            token: Some(token.into()),
        }
    }

    /// The bearer token, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// The WebSocket endpoint URL (`ws://…/v1/ws`, or `wss://` for an https base).
    pub fn ws_url(&self) -> Result<Url> {
        let mut url = self.base.clone();
        let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
        url.set_scheme(scheme).map_err(|()| {
            SdkError::Invalid(format!("cannot derive a ws URL from {}", self.base))
        })?;
        let path = format!(
            "{}{}",
            url.path().trim_end_matches('/'),
            magpie_protocol::WS_PATH
        );
        url.set_path(&path);
        Ok(url)
    }

    /// `POST /v1/accounts`: creates an account.
    pub async fn register(&self, username: &str, password: &str) -> Result<UserInfo> {
        let body = Credentials {
            username: username.to_owned(),
            password: password.to_owned(),
            device_name: None,
        };
        self.json(self.request(Method::POST, "/v1/accounts").json(&body))
            .await
    }

    /// `POST /v1/sessions`: logs in and creates a new device. Use the returned token with
    /// [`Client::with_token`].
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        device_name: Option<&str>,
    ) -> Result<SessionCreated> {
        let body = Credentials {
            username: username.to_owned(),
            password: password.to_owned(),
            device_name: device_name.map(str::to_owned),
        };
        self.json(self.request(Method::POST, "/v1/sessions").json(&body))
            .await
    }

    /// `DELETE /v1/sessions/current`: revokes this client's token (and its device).
    pub async fn logout(&self) -> Result<()> {
        let resp = self
            .request(Method::DELETE, "/v1/sessions/current")
            .send()
            .await?;
        check(resp).await.map(drop)
    }

    /// `GET /v1/users/{id}`.
    pub async fn user(&self, user_id: UserId) -> Result<UserInfo> {
        self.json(self.request(Method::GET, &format!("/v1/users/{user_id}")))
            .await
    }

    /// `GET /v1/users?username=NAME`.
    pub async fn user_by_name(&self, username: &str) -> Result<UserInfo> {
        self.json(
            self.request(Method::GET, "/v1/users")
                .query(&[("username", username)]),
        )
        .await
    }

    /// `POST /v1/conversations/direct`: the direct conversation with `peer` (created on first use).
    pub async fn open_direct(&self, peer: UserId) -> Result<ConversationInfo> {
        let body = DirectRequest { peer_id: peer };
        self.json(
            self.request(Method::POST, "/v1/conversations/direct")
                .json(&body),
        )
        .await
    }

    /// `GET /v1/conversations/{id}/messages`: a page of history in ascending `seq` order.
    /// `limit` defaults to the server's page size (50, at most 200). A page of huge messages
    /// may stop short at the server's byte budget; `truncated` then says that more follow in
    /// the direction read.
    pub async fn messages(
        &self,
        conversation: ConversationId,
        range: HistoryRange,
        limit: Option<u32>,
    ) -> Result<MessagesPage> {
        let mut query: Vec<(&str, u64)> = Vec::with_capacity(2);
        match range {
            HistoryRange::Latest => {}
            HistoryRange::After(seq) => query.push(("after_seq", seq)),
            HistoryRange::Before(seq) => query.push(("before_seq", seq)),
        }
        if let Some(limit) = limit {
            query.push(("limit", u64::from(limit)));
        }
        let path = format!("/v1/conversations/{conversation}/messages");
        self.json(self.request(Method::GET, &path).query(&query))
            .await
    }

    /// `POST /v1/conversations/{id}/messages`: sends one message over HTTP. Idempotent per
    /// `client_msg_id`: a repeat answers `duplicate: true` with the original `seq`.
    pub async fn send_http(
        &self,
        conversation: ConversationId,
        client_msg_id: &str,
        text: &str,
    ) -> Result<SendResult> {
        let body = SendRequest {
            client_msg_id: client_msg_id.to_owned(),
            text: text.to_owned(),
        };
        let path = format!("/v1/conversations/{conversation}/messages");
        self.json(self.request(Method::POST, &path).json(&body))
            .await
    }

    /// `GET /v1/sync`: events after `cursor`. With `wait_ms`, the server holds the request
    /// until an event arrives or the wait ends (long-poll). Events of kinds this SDK does not
    /// know are left out; `next_cursor` still moves past them.
    pub async fn sync(
        &self,
        cursor: u64,
        limit: Option<u32>,
        wait_ms: Option<u64>,
    ) -> Result<SyncPage> {
        let mut query: Vec<(&str, u64)> = vec![("cursor", cursor)];
        if let Some(limit) = limit {
            query.push(("limit", u64::from(limit)));
        }
        let mut req = self.request(Method::GET, "/v1/sync");
        if let Some(wait_ms) = wait_ms {
            query.push(("wait_ms", wait_ms));
            req = req.timeout(Duration::from_millis(
                wait_ms
                    .saturating_add(LONG_POLL_SLACK_MS)
                    .max(REQUEST_TIMEOUT_MS),
            ));
        }
        let raw: RawSyncPage = self.json(req.query(&query)).await?;
        let events = raw
            .events
            .into_iter()
            .filter_map(|v| match Inbound::from_value(v)? {
                Inbound::Event(e) => Some(e),
                Inbound::Unknown(_) => None,
            })
            .collect();
        Ok(SyncPage {
            events,
            next_cursor: raw.next_cursor,
        })
    }

    /// `GET /v1/sync` for the session's gap fills: like [`Client::sync`], but events of kinds
    /// this SDK does not know are kept as bare cursors so they can be stepped over.
    pub(crate) async fn sync_inbound(&self, cursor: u64, limit: u32) -> Result<Vec<Inbound>> {
        let query: [(&str, u64); 2] = [("cursor", cursor), ("limit", u64::from(limit))];
        let raw: RawSyncPage = self
            .json(self.request(Method::GET, "/v1/sync").query(&query))
            .await?;
        raw.events
            .into_iter()
            .map(|v| {
                Inbound::from_value(v)
                    .ok_or_else(|| SdkError::Protocol("sync event without a cursor".into()))
            })
            .collect()
    }

    // --- Friends ---------------------------------------------------------------------------

    /// `POST /v1/friends/requests`: asks `user` to become a friend, with an optional note.
    /// Errors: `already_friends` (409), `not_found` (404), `invalid_request` (e.g. yourself).
    pub async fn send_friend_request(
        &self,
        user: UserId,
        message: Option<&str>,
    ) -> Result<RequestId> {
        let body = FriendRequestCreate {
            user_id: user,
            message: message.map(str::to_owned),
        };
        let created: FriendRequestCreated = self
            .json(
                self.request(Method::POST, "/v1/friends/requests")
                    .json(&body),
            )
            .await?;
        Ok(created.request_id)
    }

    /// `GET /v1/friends/requests`: pending requests, incoming and outgoing.
    pub async fn friend_requests(&self) -> Result<FriendRequests> {
        self.json(self.request(Method::GET, "/v1/friends/requests"))
            .await
    }

    /// `POST /v1/friends/requests/{id}/accept`: returns the direct conversation with the new
    /// friend.
    pub async fn accept_friend_request(&self, request: RequestId) -> Result<ConversationId> {
        let path = format!("/v1/friends/requests/{request}/accept");
        let accepted: FriendAccepted = self.json(self.request(Method::POST, &path)).await?;
        Ok(accepted.conversation_id)
    }

    /// `POST /v1/friends/requests/{id}/decline`.
    pub async fn decline_friend_request(&self, request: RequestId) -> Result<()> {
        let path = format!("/v1/friends/requests/{request}/decline");
        self.empty(self.request(Method::POST, &path)).await
    }

    /// `GET /v1/friends`: friends with their presence.
    pub async fn friends(&self) -> Result<Vec<WireFriend>> {
        let list: FriendList = self.json(self.request(Method::GET, "/v1/friends")).await?;
        Ok(list.friends)
    }

    /// `DELETE /v1/friends/{user_id}`: ends the friendship (both directions; history stays).
    pub async fn remove_friend(&self, user: UserId) -> Result<()> {
        self.empty(self.request(Method::DELETE, &format!("/v1/friends/{user}")))
            .await
    }

    // --- Groups ----------------------------------------------------------------------------

    /// `POST /v1/groups`: creates a group owned by the caller with `members` (the caller is
    /// added if missing).
    pub async fn create_group(&self, name: &str, members: &[UserId]) -> Result<GroupInfo> {
        let body = GroupCreate {
            name: name.to_owned(),
            member_ids: members.iter().map(ToString::to_string).collect(),
        };
        self.json(self.request(Method::POST, "/v1/groups").json(&body))
            .await
    }

    /// `GET /v1/groups/{id}`: the group with its current fan-out mode.
    pub async fn group(&self, group: ConversationId) -> Result<GroupInfo> {
        self.json(self.request(Method::GET, &format!("/v1/groups/{group}")))
            .await
    }

    /// `GET /v1/groups/{id}/members`: one page of members ordered by user id, after `after`.
    /// Follow `next_after` for the next page.
    pub async fn group_members(
        &self,
        group: ConversationId,
        after: Option<UserId>,
        limit: Option<u32>,
    ) -> Result<MemberPage> {
        let mut query: Vec<(&str, String)> = Vec::with_capacity(2);
        if let Some(after) = after {
            query.push(("after", after.to_string()));
        }
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        let path = format!("/v1/groups/{group}/members");
        self.json(self.request(Method::GET, &path).query(&query))
            .await
    }

    /// `POST /v1/groups/{id}/members` (owner or admin): adds users; existing members are
    /// skipped. Returns the updated group.
    pub async fn add_group_members(
        &self,
        group: ConversationId,
        users: &[UserId],
    ) -> Result<GroupInfo> {
        let body = MembersAdd {
            user_ids: users.iter().map(ToString::to_string).collect(),
        };
        let path = format!("/v1/groups/{group}/members");
        self.json(self.request(Method::POST, &path).json(&body))
            .await
    }

    /// `DELETE /v1/groups/{id}/members/{user_id}`: removes `user` (owner or admin), or leaves
    /// the group when `user` is the caller.
    pub async fn remove_group_member(&self, group: ConversationId, user: UserId) -> Result<()> {
        let path = format!("/v1/groups/{group}/members/{user}");
        self.empty(self.request(Method::DELETE, &path)).await
    }

    /// `PUT /v1/groups/{id}/members/{user_id}` (owner): sets a member's role.
    pub async fn set_member_role(
        &self,
        group: ConversationId,
        user: UserId,
        role: MemberRole,
    ) -> Result<WireMember> {
        let body = RoleSet {
            role: role.as_str().to_owned(),
        };
        let path = format!("/v1/groups/{group}/members/{user}");
        self.json(self.request(Method::PUT, &path).json(&body))
            .await
    }

    /// `PATCH /v1/groups/{id}` (owner or admin): renames the group.
    pub async fn rename_group(&self, group: ConversationId, name: &str) -> Result<GroupInfo> {
        let body = GroupPatch {
            name: name.to_owned(),
        };
        let path = format!("/v1/groups/{group}");
        self.json(self.request(Method::PATCH, &path).json(&body))
            .await
    }

    // --- Conversation state ----------------------------------------------------------------

    /// `GET /v1/conversations`: the caller's conversations, most recent activity first, with
    /// last message, unread count and fan-out mode.
    pub async fn conversations(&self) -> Result<Vec<ConversationRow>> {
        let list: ConversationList = self
            .json(self.request(Method::GET, "/v1/conversations"))
            .await?;
        Ok(list.conversations)
    }

    /// `POST /v1/conversations/{id}/read`: marks the conversation read up to `seq` (the read
    /// position only moves forward). Returns the resulting position.
    pub async fn mark_read(&self, conversation: ConversationId, seq: u64) -> Result<u64> {
        let path = format!("/v1/conversations/{conversation}/read");
        let state: ReadState = self
            .json(self.request(Method::POST, &path).json(&ReadRequest { seq }))
            .await?;
        Ok(state.read_seq)
    }

    /// `GET /v1/conversations/{id}/receipts?seq=S`: who has and has not read message `seq`.
    pub async fn receipts(&self, conversation: ConversationId, seq: u64) -> Result<Receipts> {
        let path = format!("/v1/conversations/{conversation}/receipts");
        self.json(self.request(Method::GET, &path).query(&[("seq", seq)]))
            .await
    }

    /// `PUT /v1/conversations/{id}/settings`: mutes or unmutes offline pushes.
    pub async fn set_muted(&self, conversation: ConversationId, muted: bool) -> Result<bool> {
        let path = format!("/v1/conversations/{conversation}/settings");
        let settings: ConversationSettings = self
            .json(
                self.request(Method::PUT, &path)
                    .json(&ConversationSettings { muted }),
            )
            .await?;
        Ok(settings.muted)
    }

    /// `GET /v1/presence?user_ids=…`: presence of those of `users` who are friends (others
    /// are omitted by the server).
    pub async fn presence(&self, users: &[UserId]) -> Result<Vec<WirePresence>> {
        let ids = users
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let list: PresenceList = self
            .json(
                self.request(Method::GET, "/v1/presence")
                    .query(&[("user_ids", ids)]),
            )
            .await?;
        Ok(list.presence)
    }

    /// `GET /healthz`: whether the server is up.
    pub async fn health(&self) -> Result<()> {
        let resp = self.request(Method::GET, "/healthz").send().await?;
        check(resp).await.map(drop)
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let url = format!("{}{}", self.base.as_str().trim_end_matches('/'), path);
        let req = self
            .http
            .request(method, url)
            .timeout(Duration::from_millis(REQUEST_TIMEOUT_MS));
        match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    /// Sends a request whose success carries no body of interest (204 and the like).
    async fn empty(&self, req: RequestBuilder) -> Result<()> {
        check(req.send().await?).await.map(drop)
    }

    async fn json<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T> {
        let resp = check(req.send().await?).await?;
        let bytes = resp.bytes().await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| SdkError::Protocol(format!("unexpected response body: {e}")))
    }
}

/// Turns a non-2xx response into `SdkError::Api`.
async fn check(resp: Response) -> Result<Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let status = status.as_u16();
    let bytes = resp.bytes().await.unwrap_or_default();
    Err(api_error(status, &bytes))
}

/// Builds `SdkError::Api` from a status and whatever body came with it.
fn api_error(status: u16, body: &[u8]) -> SdkError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => SdkError::Api {
            status,
            code: b.error.code,
            message: b.error.message,
        },
        Err(_) => {
            let shown = &body[..body.len().min(ERROR_BODY_BYTES_MAX)];
            SdkError::Api {
                status,
                code: code_for_status(status),
                message: String::from_utf8_lossy(shown).trim().to_owned(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use magpie_protocol::ErrorCode;

    #[test]
    fn ws_url_follows_base() {
        let c = Client::new("http://127.0.0.1:8080/").unwrap();
        assert_eq!(c.ws_url().unwrap().as_str(), "ws://127.0.0.1:8080/v1/ws");
        let c = Client::new("https://chat.example/api").unwrap();
        assert_eq!(c.ws_url().unwrap().as_str(), "wss://chat.example/api/v1/ws");
        assert!(Client::new("ftp://x").is_err());
        assert!(Client::new("not a url").is_err());
    }

    #[test]
    fn api_errors_parse_v1_bodies_and_tolerate_others() {
        let e = api_error(
            409,
            br#"{"error":{"code":"username_taken","message":"taken"}}"#,
        );
        assert!(matches!(
            e,
            SdkError::Api {
                status: 409,
                code: ErrorCode::UsernameTaken,
                ..
            }
        ));
        let e = api_error(502, b"<html>bad gateway</html>");
        assert!(matches!(
            e,
            SdkError::Api {
                status: 502,
                code: ErrorCode::Unavailable,
                ..
            }
        ));
        assert!(api_error(401, b"").is_unauthorized());
    }

    #[test]
    fn debug_hides_token() {
        let c = Client::new("http://h:1").unwrap().with_token("secret");
        assert!(!format!("{c:?}").contains("secret"));
    }
}
