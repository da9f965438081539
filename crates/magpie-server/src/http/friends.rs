//! Friends: requests, answers, the list (with presence), removal.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use magpie_core::limits::FRIEND_MESSAGE_CHARS_MAX;
use magpie_core::{RequestId, UserId};
use magpie_protocol::friend_request_to_wire;
use magpie_protocol::social::{
    FriendAccepted, FriendList, FriendRequestCreate, FriendRequestCreated, FriendRequests,
    WireFriend,
};

use super::errors::friend_error;
use super::{parse_id, ApiJson, ApiPath};
use crate::auth::Auth;
use crate::error::ApiError;
use crate::state::AppState;

/// `POST /v1/friends/requests`.
pub async fn request(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<FriendRequestCreate>,
) -> Result<(StatusCode, Json<FriendRequestCreated>), ApiError> {
    let message = body.message.unwrap_or_default();
    if message.chars().count() > FRIEND_MESSAGE_CHARS_MAX {
        return Err(ApiError::invalid(format!(
            "message is longer than {FRIEND_MESSAGE_CHARS_MAX} characters"
        )));
    }
    let req = state
        .store
        .request_friend(auth.user_id(), body.user_id, message)
        .await?
        .map_err(friend_error)?;
    Ok((
        StatusCode::CREATED,
        Json(FriendRequestCreated { request_id: req.id }),
    ))
}

/// `GET /v1/friends/requests`.
pub async fn requests(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Json<FriendRequests>, ApiError> {
    let (incoming, outgoing) = state.store.friend_requests(auth.user_id()).await?;
    Ok(Json(FriendRequests {
        incoming: incoming.iter().map(friend_request_to_wire).collect(),
        outgoing: outgoing.iter().map(friend_request_to_wire).collect(),
    }))
}

/// `POST /v1/friends/requests/{id}/accept`.
pub async fn accept(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<FriendAccepted>, ApiError> {
    let id: RequestId = parse_id(&raw, "friend request")?;
    let conv = state
        .store
        .answer_friend_request(auth.user_id(), id, true)
        .await?
        .map_err(friend_error)?;
    let conv = conv.ok_or_else(|| {
        ApiError::new(
            magpie_protocol::ErrorCode::Internal,
            "accept gave no conversation",
        )
    })?;
    Ok(Json(FriendAccepted {
        conversation_id: conv.id,
    }))
}

/// `POST /v1/friends/requests/{id}/decline`.
pub async fn decline(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(raw): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let id: RequestId = parse_id(&raw, "friend request")?;
    state
        .store
        .answer_friend_request(auth.user_id(), id, false)
        .await?
        .map_err(friend_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/friends`.
pub async fn list(State(state): State<AppState>, auth: Auth) -> Result<Json<FriendList>, ApiError> {
    let friends = state.store.friends(auth.user_id()).await?;
    let ids: Vec<_> = friends.iter().map(|f| f.user_id).collect();
    let presence = crate::social::presence_of(&state.hub, &*state.store, &ids).await?;
    let mut out = Vec::with_capacity(friends.len());
    for (f, (online, last_seen_ms)) in friends.into_iter().zip(presence) {
        let username = state
            .store
            .user_by_id(f.user_id)
            .await?
            .map(|u| u.username)
            .unwrap_or_default();
        out.push(WireFriend {
            user_id: f.user_id,
            username,
            online,
            last_seen_ms,
        });
    }
    Ok(Json(FriendList { friends: out }))
}

/// `DELETE /v1/friends/{user_id}`.
pub async fn remove(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(raw): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let other: UserId = parse_id(&raw, "friend")?;
    if !state.store.remove_friend(auth.user_id(), other).await? {
        return Err(ApiError::not_found("friend"));
    }
    // Connections cache "may send" answers for direct conversations; make them recheck.
    state.friend_epoch.fetch_add(1, Ordering::AcqRel);
    Ok(StatusCode::NO_CONTENT)
}
