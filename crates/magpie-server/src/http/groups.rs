//! Groups: creation, info, member paging, membership and role changes, renaming.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use magpie_core::limits::{GROUP_NAME_CHARS_MAX, USER_IDS_PER_REQUEST_MAX};
use magpie_core::{Conversation, ConversationId, ConversationKind, Role, UserId};
use magpie_protocol::role_name;
use magpie_protocol::social::{
    GroupCreate, GroupInfo, GroupPatch, MemberPage, MembersAdd, RoleSet, WireMember,
};
use serde::Deserialize;

use super::errors::group_error;
use super::{ApiJson, ApiPath, ApiQuery};
use crate::auth::Auth;
use crate::error::ApiError;
use crate::state::AppState;

/// Default and largest page of `GET /v1/groups/{id}/members`.
const MEMBER_PAGE_DEFAULT: usize = 100;
/// See [`MEMBER_PAGE_DEFAULT`].
const MEMBER_PAGE_MAX: usize = 1000;

/// `"write"` or `"read"`: how this conversation fans out now.
pub fn fanout_name(state: &AppState, c: &Conversation) -> &'static str {
    if c.kind == ConversationKind::Direct || state.config.policy.writes_fanout(c.member_count) {
        "write"
    } else {
        "read"
    }
}

/// How the other members' reads reach a member: `"events"` (`receipt` events) or `"query"`.
pub fn receipts_name(state: &AppState, c: &Conversation) -> &'static str {
    if c.kind == ConversationKind::Direct || state.config.policy.pushes_receipts(c.member_count) {
        "events"
    } else {
        "query"
    }
}

fn info(state: &AppState, c: &Conversation, with_fanout: bool) -> GroupInfo {
    GroupInfo {
        conversation_id: c.id,
        kind: "group".into(),
        name: c.name.clone(),
        owner_id: c.owner.map(|o| o.to_string()),
        member_count: c.member_count,
        fanout: with_fanout.then(|| fanout_name(state, c).to_owned()),
        receipts: with_fanout.then(|| receipts_name(state, c).to_owned()),
    }
}

fn check_name(name: &str) -> Result<String, ApiError> {
    let trimmed = name.trim();
    if trimmed.is_empty() || trimmed.chars().count() > GROUP_NAME_CHARS_MAX {
        return Err(ApiError::invalid(format!(
            "name must be 1 to {GROUP_NAME_CHARS_MAX} characters"
        )));
    }
    Ok(trimmed.to_owned())
}

fn parse_users(raw: &[String]) -> Result<Vec<UserId>, ApiError> {
    if raw.len() > USER_IDS_PER_REQUEST_MAX {
        return Err(ApiError::invalid(format!(
            "at most {USER_IDS_PER_REQUEST_MAX} user ids per request"
        )));
    }
    raw.iter()
        .map(|s| {
            s.parse()
                .map_err(|_| ApiError::invalid(format!("invalid user id {s:?}")))
        })
        .collect()
}

/// Loads a group the caller belongs to; anything else answers 403.
async fn member_group(state: &AppState, auth: &Auth, raw: &str) -> Result<Conversation, ApiError> {
    let id: ConversationId = raw.parse().map_err(|_| ApiError::forbidden())?;
    let conv = state
        .store
        .conversation(id)
        .await?
        .ok_or_else(ApiError::forbidden)?;
    if conv.kind != ConversationKind::Group
        || state.store.member(id, auth.user_id()).await?.is_none()
    {
        return Err(ApiError::forbidden());
    }
    Ok(conv)
}

async fn reload(state: &AppState, id: ConversationId) -> Result<Conversation, ApiError> {
    state
        .store
        .conversation(id)
        .await?
        .ok_or_else(|| ApiError::not_found("group"))
}

/// `POST /v1/groups`.
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    ApiJson(body): ApiJson<GroupCreate>,
) -> Result<(StatusCode, Json<GroupInfo>), ApiError> {
    let name = check_name(&body.name)?;
    let members = parse_users(&body.member_ids)?;
    let conv = state
        .store
        .create_group(auth.user_id(), name, members)
        .await?
        .map_err(group_error)?;
    Ok((StatusCode::CREATED, Json(info(&state, &conv, false))))
}

/// `GET /v1/groups/{id}`.
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<GroupInfo>, ApiError> {
    let conv = member_group(&state, &auth, &raw).await?;
    Ok(Json(info(&state, &conv, true)))
}

#[derive(Deserialize)]
pub struct MembersQuery {
    after: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/groups/{id}/members?after=&limit=`.
pub async fn members(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(raw): ApiPath<String>,
    ApiQuery(q): ApiQuery<MembersQuery>,
) -> Result<Json<MemberPage>, ApiError> {
    let conv = member_group(&state, &auth, &raw).await?;
    let limit = q.limit.unwrap_or(MEMBER_PAGE_DEFAULT);
    if limit == 0 || limit > MEMBER_PAGE_MAX {
        return Err(ApiError::invalid(format!(
            "limit must be 1 to {MEMBER_PAGE_MAX}"
        )));
    }
    let after = match q.after.as_deref() {
        None | Some("") => None,
        Some(s) => Some(
            s.parse::<UserId>()
                .map_err(|_| ApiError::invalid("invalid after"))?,
        ),
    };
    let page = state.store.members(conv.id, after, limit).await?;
    let next_after = (page.len() == limit)
        .then(|| page.last().map(|m| m.user_id.to_string()))
        .flatten();
    let members = page
        .iter()
        .map(|m| WireMember {
            user_id: m.user_id,
            role: role_name(m.role).into(),
            joined_seq: m.joined_seq.0,
        })
        .collect();
    Ok(Json(MemberPage {
        members,
        next_after,
    }))
}

/// `POST /v1/groups/{id}/members` (owner or admin).
pub async fn add(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(raw): ApiPath<String>,
    ApiJson(body): ApiJson<MembersAdd>,
) -> Result<Json<GroupInfo>, ApiError> {
    let conv = member_group(&state, &auth, &raw).await?;
    let users = parse_users(&body.user_ids)?;
    if users.is_empty() {
        return Err(ApiError::invalid("user_ids must not be empty"));
    }
    state
        .store
        .add_members(auth.user_id(), conv.id, users)
        .await?
        .map_err(group_error)?;
    Ok(Json(info(&state, &reload(&state, conv.id).await?, true)))
}

/// `DELETE /v1/groups/{id}/members/{user_id}`: owner/admin removes, anyone leaves.
pub async fn remove(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((raw, user)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let conv = member_group(&state, &auth, &raw).await?;
    let user: UserId = user.parse().map_err(|_| ApiError::not_found("member"))?;
    state
        .store
        .remove_member(auth.user_id(), conv.id, user)
        .await?
        .map_err(group_error)?;
    // Connections that cached this member's joined_seq for pulls recheck it: the commit hook
    // bumped the membership epoch before this reply (see `Hub::membership_epoch`).
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v1/groups/{id}/members/{user_id}` (owner): `{"role":"admin"|"member"}`.
pub async fn set_role(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath((raw, user)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<RoleSet>,
) -> Result<Json<WireMember>, ApiError> {
    let conv = member_group(&state, &auth, &raw).await?;
    let user: UserId = user.parse().map_err(|_| ApiError::not_found("member"))?;
    let role = match body.role.as_str() {
        "admin" => Role::Admin,
        "member" => Role::Member,
        _ => return Err(ApiError::invalid("role must be \"admin\" or \"member\"")),
    };
    state
        .store
        .set_role(auth.user_id(), conv.id, user, role)
        .await?
        .map_err(group_error)?;
    let m = state
        .store
        .member(conv.id, user)
        .await?
        .ok_or_else(|| ApiError::not_found("member"))?;
    Ok(Json(WireMember {
        user_id: m.user_id,
        role: role_name(m.role).into(),
        joined_seq: m.joined_seq.0,
    }))
}

/// `PATCH /v1/groups/{id}` (owner or admin): `{"name"}`.
pub async fn rename(
    State(state): State<AppState>,
    auth: Auth,
    ApiPath(raw): ApiPath<String>,
    ApiJson(body): ApiJson<GroupPatch>,
) -> Result<Json<GroupInfo>, ApiError> {
    let conv = member_group(&state, &auth, &raw).await?;
    let name = check_name(&body.name)?;
    state
        .store
        .rename_group(auth.user_id(), conv.id, name)
        .await?
        .map_err(group_error)?;
    Ok(Json(info(&state, &reload(&state, conv.id).await?, true)))
}
