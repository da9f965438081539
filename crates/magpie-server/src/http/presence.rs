//! `GET /v1/presence?user_ids=a,b`: presence of the caller's friends among the named users.

use std::collections::HashSet;

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
    let asked = ids
        .into_iter()
        .map(|raw| {
            raw.parse::<UserId>()
                .map_err(|_| ApiError::invalid(format!("invalid user id {raw:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // One read of the caller's friends instead of one friendship check per id.
    let friends: HashSet<UserId> = state
        .store
        .friends(auth.user_id())
        .await?
        .into_iter()
        .map(|f| f.user_id)
        .collect();
    let shared: Vec<UserId> = asked
        .into_iter()
        .filter(|u| *u == auth.user_id() || friends.contains(u))
        .collect();
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
