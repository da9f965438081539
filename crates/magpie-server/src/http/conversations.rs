//! Conversations: direct conversations, history (roaming), the HTTP send path, the
//! conversation list, read state, receipts and settings.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::Json;
use magpie_core::limits::{PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX};
use magpie_core::{Conversation, ConversationId, ConversationKind, Member, Seq, UserId};
use magpie_protocol::http::{
    ConversationInfo, DirectRequest, MessagesPage, SendRequest, SendResult,
};
use magpie_protocol::social::{
    ConversationList, ConversationRow, ConversationSettings, ReadRequest, ReadState, Receipts,
};
use magpie_protocol::ErrorCode;
use magpie_protocol::{message_to_wire, page};
use magpie_store::MessageRange;
use serde::Deserialize;

use super::errors::group_error;
use super::groups::{fanout_name, receipts_name};
use super::{parse_id, ApiJson, ApiPath, ApiQuery};
use crate::auth::Auth;
use crate::error::ApiError;
use crate::send::{append_error, build_request, check_direct_allowed, stored_or_refused};
use crate::state::AppState;

/// Members read per page when computing receipts.
const RECEIPT_MEMBER_PAGE: usize = 1000;

fn info(c: &Conversation) -> ConversationInfo {
    ConversationInfo {
        conversation_id: c.id,
        kind: kind_name(c.kind).into(),
        members: c.members.iter().map(|m| m.to_string()).collect(),
    }
}

/// `POST /v1/conversations/direct`: the same conversation from either side; needs friendship
/// unless `allow_strangers` is set.
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
    if !state.config.allow_strangers
        && !state
            .store
            .are_friends(auth.user_id(), body.peer_id)
            .await?
    {
        return Err(ApiError::new(
            ErrorCode::NotFriends,
            "add this user as a friend first",
        ));
    }
    let conv = state
        .store
        .direct_conversation(auth.user_id(), body.peer_id)
        .await?;
    Ok(Json(info(&conv)))
}

/// The caller's member row in a conversation; absent and foreign both answer 403. (A member
/// row implies the conversation exists.)
async fn member_conversation(
    state: &AppState,
    auth: &Auth,
    raw: &str,
) -> Result<(ConversationId, Member), ApiError> {
    let id: ConversationId = raw.parse().map_err(|_| ApiError::forbidden())?;
    let member = state
        .store
        .member(id, auth.user_id())
        .await?
        .ok_or_else(ApiError::forbidden)?;
    Ok((id, member))
}

/// The member's record again if a member was removed anywhere since `epoch` was read (the
/// hub's membership epoch); `forbidden` if `auth` is no longer a member. A read that started
/// before a removal may hold messages committed after it: the epoch moves before those
/// become readable, so a read that finds it unchanged is clean.
async fn recheck_member(
    state: &AppState,
    auth: &Auth,
    conv_id: ConversationId,
    epoch: u64,
) -> Result<Option<Member>, ApiError> {
    if state.membership_epoch.load(Ordering::Acquire) == epoch {
        return Ok(None);
    }
    let member = state
        .store
        .member(conv_id, auth.user_id())
        .await?
        .ok_or_else(ApiError::forbidden)?;
    Ok(Some(member))
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
    ApiPath(raw): ApiPath<String>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<MessagesPage>, ApiError> {
    let epoch = state.membership_epoch.load(Ordering::Acquire);
    let (conv_id, member) = member_conversation(&state, &auth, &raw).await?;
    let limit = q.limit.unwrap_or(PAGE_LIMIT_DEFAULT);
    if limit == 0 || limit > PAGE_LIMIT_MAX {
        return Err(ApiError::invalid(format!(
            "limit must be 1 to {PAGE_LIMIT_MAX}"
        )));
    }
    // A member reads history from the seq at which they joined.
    let first_visible = member.joined_seq.0.max(1);
    let range = match (q.after_seq, q.before_seq) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid("use after_seq or before_seq, not both"))
        }
        (Some(a), None) => MessageRange::After(Seq(a.max(first_visible - 1))),
        (None, Some(b)) => MessageRange::Before(Seq(b)),
        (None, None) => MessageRange::Latest,
    };
    let forward = matches!(range, MessageRange::After(_));
    let mut messages = state.store.messages(conv_id, range, limit).await?;
    // Removed (and perhaps added again) while we read: only what the membership now allows.
    let first_visible = match recheck_member(&state, &auth, conv_id, epoch).await? {
        Some(now) => now.joined_seq.0.max(1),
        None => first_visible,
    };
    messages.retain(|m| m.seq.0 >= first_visible);
    let mut messages: Vec<_> = messages.iter().map(message_to_wire).collect();
    // Cut at the byte budget from the far end of the direction read, so the page stays
    // contiguous with where the client asked it to start.
    let truncated = if forward {
        page::keep_first(&mut messages, page::message_bytes)
    } else {
        page::keep_last(&mut messages, page::message_bytes)
    };
    Ok(Json(MessagesPage {
        messages,
        truncated,
    }))
}

/// `POST /v1/conversations/{id}/messages`: same guarantees as the socket send.
pub async fn send(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(raw): ApiPath<String>,
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
    if !state.send_limits.try_take(auth.device.id) {
        metrics::counter!("magpie_ws_rate_limited_total").increment(1);
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            "too many sends; slow down",
        ));
    }
    // Members only before the gate (the store checks again): an outsider's sends must not
    // take the conversation's in-flight slots and starve its members.
    let access = async {
        member_conversation(&state, &auth, &raw).await?;
        check_direct_allowed(&state, auth.user_id(), conversation_id).await
    };
    if let Err(refusal) = access.await {
        let m = stored_or_refused(&state, auth.user_id(), &req.client_msg_id, refusal).await?;
        return Ok(Json(SendResult {
            conversation_id: m.conversation_id,
            seq: m.seq.0,
            ts_ms: m.ts_ms,
            duplicate: true,
        }));
    }
    let _permit = state.gate.try_enter(conversation_id).ok_or_else(|| {
        ApiError::new(
            ErrorCode::RateLimited,
            "conversation is busy; retry shortly",
        )
    })?;
    let mut results = state.store.append(vec![req]).await?;
    let appended = results
        .pop()
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "empty append result"))?
        .map_err(append_error)?;
    let m = &appended.message;
    Ok(Json(SendResult {
        conversation_id: m.conversation_id,
        seq: m.seq.0,
        ts_ms: m.ts_ms,
        duplicate: appended.duplicate,
    }))
}

fn kind_name(k: ConversationKind) -> &'static str {
    match k {
        ConversationKind::Direct => "direct",
        ConversationKind::Group => "group",
    }
}

/// `GET /v1/conversations`: most recent activity first.
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Json<ConversationList>, ApiError> {
    let me = auth.user_id();
    let rows = state.store.conversations_of(me).await?;
    let conversations = rows
        .iter()
        .map(|r| {
            let c = &r.conversation;
            ConversationRow {
                conversation_id: c.id,
                kind: kind_name(c.kind).into(),
                name: c.name.clone(),
                peer_id: (c.kind == ConversationKind::Direct)
                    .then(|| c.members.iter().find(|m| **m != me).map(|m| m.to_string()))
                    .flatten(),
                member_count: c.member_count,
                fanout: fanout_name(&state, c).into(),
                receipts: receipts_name(&state, c).into(),
                last_seq: r.last_message.as_ref().map_or(0, |m| m.seq.0),
                last_message: r.last_message.as_deref().map(message_to_wire),
                read_seq: r.member.read_seq.0,
                unread_count: r.unread_count,
                muted: r.member.muted,
            }
        })
        .collect();
    Ok(Json(ConversationList { conversations }))
}

/// `POST /v1/conversations/{id}/read`.
pub async fn read(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(raw): ApiPath<String>,
    ApiJson(body): ApiJson<ReadRequest>,
) -> Result<Json<ReadState>, ApiError> {
    let id: ConversationId = raw.parse().map_err(|_| ApiError::forbidden())?;
    let read_seq = state
        .store
        .mark_read(auth.user_id(), id, Seq(body.seq))
        .await?
        .map_err(group_error)?;
    Ok(Json(ReadState {
        conversation_id: id,
        read_seq: read_seq.0,
    }))
}

#[derive(Deserialize)]
pub struct ReceiptsQuery {
    seq: u64,
}

/// `GET /v1/conversations/{id}/receipts?seq=S`: who of the members other than the sender has
/// read message S. Members who joined after S are in neither list (they never saw it).
pub async fn receipts(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(raw): ApiPath<String>,
    ApiQuery(q): ApiQuery<ReceiptsQuery>,
) -> Result<Json<Receipts>, ApiError> {
    let epoch = state.membership_epoch.load(Ordering::Acquire);
    let (conv_id, member) = member_conversation(&state, &auth, &raw).await?;
    let seq = Seq(q.seq);
    if seq.0 < member.joined_seq.0.max(1) {
        return Err(ApiError::invalid("no such message"));
    }
    let message = state
        .store
        .messages(conv_id, MessageRange::After(Seq(seq.0 - 1)), 1)
        .await?;
    let sender = match message.first() {
        Some(m) if m.seq == seq => m.sender_id,
        _ => return Err(ApiError::invalid("no such message")),
    };
    let (mut read, mut unread) = (Vec::new(), Vec::new());
    let mut after: Option<UserId> = None;
    loop {
        let page = state
            .store
            .members(conv_id, after, RECEIPT_MEMBER_PAGE)
            .await?;
        for m in &page {
            if m.user_id == sender || m.joined_seq > seq {
                continue;
            }
            if m.read_seq >= seq {
                read.push(m.user_id.to_string())
            } else {
                unread.push(m.user_id.to_string())
            }
        }
        match page.last() {
            Some(last) if page.len() == RECEIPT_MEMBER_PAGE => after = Some(last.user_id),
            _ => break,
        }
    }
    // Removed meanwhile: 403. Removed and added again after S: S is before their (new) join.
    if let Some(now) = recheck_member(&state, &auth, conv_id, epoch).await? {
        if seq.0 < now.joined_seq.0.max(1) {
            return Err(ApiError::invalid("no such message"));
        }
    }
    Ok(Json(Receipts {
        seq: seq.0,
        read_count: read.len() as u64,
        unread_count: unread.len() as u64,
        read,
        unread,
    }))
}

/// `PUT /v1/conversations/{id}/settings`.
pub async fn settings(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(raw): ApiPath<String>,
    ApiJson(body): ApiJson<ConversationSettings>,
) -> Result<Json<ConversationSettings>, ApiError> {
    let id: ConversationId = raw.parse().map_err(|_| ApiError::forbidden())?;
    state
        .store
        .set_muted(auth.user_id(), id, body.muted)
        .await?
        .map_err(group_error)?;
    Ok(Json(ConversationSettings { muted: body.muted }))
}
