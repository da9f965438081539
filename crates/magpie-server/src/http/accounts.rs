//! Accounts, sessions (devices) and user lookup.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use magpie_core::limits::DEVICE_NAME_BYTES_MAX;
use magpie_core::{validate_password, validate_username, UserId};
use magpie_protocol::http::{Credentials, SessionCreated, UserInfo};
use magpie_protocol::ErrorCode;
use serde::Deserialize;

use super::{parse_id, ApiJson, ApiPath, ApiQuery};
use crate::auth::{hash_password, new_token, verify_password, Auth};
use crate::error::ApiError;
use crate::hub::{Router as _, KICK_REVOKED};
use crate::state::AppState;

/// `POST /v1/accounts`.
pub async fn register(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<(StatusCode, Json<UserInfo>), ApiError> {
    validate_username(&body.username).map_err(|e| ApiError::invalid(e.to_string()))?;
    validate_password(&body.password).map_err(|e| ApiError::invalid(e.to_string()))?;
    // Cheap check first so a taken name does not cost an Argon2 hash; the store re-checks
    // atomically.
    if state.store.user_by_name(&body.username).await?.is_some() {
        return Err(ApiError::new(ErrorCode::UsernameTaken, "username is taken"));
    }
    let hash = hash_password(&state, body.password).await?;
    let user = state.store.create_user(body.username, hash).await?;
    metrics::counter!("magpie_accounts_created_total").increment(1);
    Ok((
        StatusCode::CREATED,
        Json(UserInfo {
            user_id: user.id,
            username: user.username,
        }),
    ))
}

/// `POST /v1/sessions`: a login creates a new device with its own token.
pub async fn login(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<(StatusCode, Json<SessionCreated>), ApiError> {
    let wrong = || ApiError::new(ErrorCode::Unauthorized, "wrong username or password");
    if validate_username(&body.username).is_err() || validate_password(&body.password).is_err() {
        return Err(wrong());
    }
    // Cut before the (possibly long) wait for a password check, not after: the request
    // should not hold a 600 KB name while it queues.
    let name = truncate(body.device_name.unwrap_or_default(), DEVICE_NAME_BYTES_MAX);
    let user = state
        .store
        .user_by_name(&body.username)
        .await?
        .ok_or_else(wrong)?;
    if !verify_password(&state, body.password, user.password_hash.clone()).await? {
        return Err(wrong());
    }
    let (token, hash) = new_token();
    let device = state.store.create_device(user.id, name, hash).await?;
    Ok((
        StatusCode::CREATED,
        Json(SessionCreated {
            token,
            user_id: user.id,
            device_id: device.id,
        }),
    ))
}

/// `DELETE /v1/sessions/current`: revokes the token and closes the device's sockets.
pub async fn logout(State(state): State<AppState>, auth: Auth) -> Result<StatusCode, ApiError> {
    state.store.revoke_device(auth.device_id()).await?;
    state
        .hub
        .kick_device(auth.user_id(), auth.device_id(), KICK_REVOKED);
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/users/{user_id}`.
pub async fn user_by_id(
    State(state): State<AppState>,
    _auth: Auth,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<UserInfo>, ApiError> {
    let id: UserId = parse_id(&raw, "user")?;
    let user = state
        .store
        .user_by_id(id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    Ok(Json(UserInfo {
        user_id: user.id,
        username: user.username,
    }))
}

#[derive(Deserialize)]
pub struct ByName {
    username: String,
}

/// `GET /v1/users?username=NAME`.
pub async fn user_by_name(
    State(state): State<AppState>,
    _auth: Auth,
    ApiQuery(q): ApiQuery<ByName>,
) -> Result<Json<UserInfo>, ApiError> {
    if validate_username(&q.username).is_err() {
        return Err(ApiError::not_found("user"));
    }
    let user = state
        .store
        .user_by_name(&q.username)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    Ok(Json(UserInfo {
        user_id: user.id,
        username: user.username,
    }))
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}
