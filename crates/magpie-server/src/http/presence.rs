//! `GET /v1/presence?user_ids=a,b`: presence of the caller's friends among the named users.

use axum::extract::State;
use axum::Json;
use magpie_core::limits::USER_IDS_PER_REQUEST_MAX;
use magpie_core::UserId;
use magpie_protocol::social::{PresenceList, WirePresence};
use serde::Deserialize;

use super::ApiQuery;
use crate::auth::Auth;
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Deserialize)]
pub struct PresenceQuery {
    user_ids: String,
}

/// Non-friends are omitted: presence is only shared with friends.
pub async fn presence(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<PresenceQuery>,
) -> Result<Json<PresenceList>, ApiError> {
    let ids: Vec<&str> = q
        .user_ids
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if ids.len() > USER_IDS_PER_REQUEST_MAX {
        return Err(ApiError::invalid(format!(
            "at most {USER_IDS_PER_REQUEST_MAX} user ids"
        )));
    }
    let mut shared = Vec::new();
    for raw in ids {
        let user: UserId = raw
            .parse()
            .map_err(|_| ApiError::invalid(format!("invalid user id {raw:?}")))?;
        if user != auth.user_id() && !state.store.are_friends(auth.user_id(), user).await? {
            continue;
        }
        shared.push(user);
    }
    let presence = crate::social::presence_of(&state.hub, &*state.store, &shared).await?;
    let out = shared
        .into_iter()
        .zip(presence)
        .map(|(user_id, (online, last_seen_ms))| WirePresence {
            user_id,
            online,
            last_seen_ms,
        })
        .collect();
    Ok(Json(PresenceList { presence: out }))
}
