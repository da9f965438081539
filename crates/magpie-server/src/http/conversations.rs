//! Direct conversations, history (roaming) and the HTTP send path.

use axum::extract::{Path, State};
use axum::Json;
use magpie_core::limits::{PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX};
use magpie_core::{Conversation, ConversationId, Seq};
use magpie_protocol::http::{
    ConversationInfo, DirectRequest, MessagesPage, SendRequest, SendResult,
};
use magpie_protocol::message_to_wire;
use magpie_store::MessageRange;
use serde::Deserialize;

use super::{parse_id, ApiJson, ApiQuery};
use crate::auth::Auth;
use crate::error::ApiError;
use crate::send::{append_error, build_request};
use crate::state::AppState;

fn info(c: &Conversation) -> ConversationInfo {
    ConversationInfo {
        conversation_id: c.id,
        kind: "direct".into(),
        members: c.members.iter().map(|m| m.to_string()).collect(),
    }
}

/// `POST /v1/conversations/direct`: the same conversation from either side.
pub async fn open_direct(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<DirectRequest>,
) -> Result<Json<ConversationInfo>, ApiError> {
    if body.peer_id == auth.user_id() {
        return Err(ApiError::invalid(
            "cannot open a direct conversation with yourself",
        ));
    }
    if state.store.user_by_id(body.peer_id).await?.is_none() {
        return Err(ApiError::not_found("user"));
    }
    let conv = state
        .store
        .direct_conversation(auth.user_id(), body.peer_id)
        .await?;
    Ok(Json(info(&conv)))
}

/// Loads a conversation the caller belongs to; absent and foreign both answer 403.
async fn member_conversation(
    state: &AppState,
    auth: &Auth,
    raw: &str,
) -> Result<Conversation, ApiError> {
    let id: ConversationId = raw.parse().map_err(|_| ApiError::forbidden())?;
    match state.store.conversation(id).await? {
        Some(c) if c.has_member(auth.user_id()) => Ok(c),
        _ => Err(ApiError::forbidden()),
    }
}

#[derive(Deserialize)]
pub struct HistoryQuery {
    after_seq: Option<u64>,
    before_seq: Option<u64>,
    limit: Option<usize>,
}

/// `GET /v1/conversations/{id}/messages`.
pub async fn history(
    State(state): State<AppState>,
    auth: Auth,
    Path(raw): Path<String>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<MessagesPage>, ApiError> {
    let conv = member_conversation(&state, &auth, &raw).await?;
    let limit = q.limit.unwrap_or(PAGE_LIMIT_DEFAULT);
    if limit == 0 || limit > PAGE_LIMIT_MAX {
        return Err(ApiError::invalid(format!(
            "limit must be 1 to {PAGE_LIMIT_MAX}"
        )));
    }
    let range = match (q.after_seq, q.before_seq) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid("use after_seq or before_seq, not both"))
        }
        (Some(a), None) => MessageRange::After(Seq(a)),
        (None, Some(b)) => MessageRange::Before(Seq(b)),
        (None, None) => MessageRange::Latest,
    };
    let messages = state.store.messages(conv.id, range, limit).await?;
    Ok(Json(MessagesPage {
        messages: messages.iter().map(message_to_wire).collect(),
    }))
}

/// `POST /v1/conversations/{id}/messages`: same guarantees as the socket send.
pub async fn send(
    State(state): State<AppState>,
    auth: Auth,
    Path(raw): Path<String>,
    ApiJson(body): ApiJson<SendRequest>,
) -> Result<Json<SendResult>, ApiError> {
    let conversation_id: ConversationId =
        parse_id(&raw, "conversation").map_err(|_| ApiError::forbidden())?;
    let req = build_request(
        auth.user_id(),
        conversation_id,
        body.client_msg_id,
        body.text,
    )?;
    let mut results = state.store.append(vec![req]).await?;
    let appended = results
        .pop()
        .ok_or_else(|| ApiError::new(magpie_protocol::ErrorCode::Internal, "empty append result"))?
        .map_err(append_error)?;
    let m = &appended.message;
    Ok(Json(SendResult {
        conversation_id: m.conversation_id,
        seq: m.seq.0,
        ts_ms: m.ts_ms,
        duplicate: appended.duplicate,
    }))
}
