//! `GET /v1/sync`: the polling fallback for clients without a WebSocket.

use std::time::Duration;

use axum::extract::State;
use axum::Json;
use magpie_core::limits::{PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX};
use magpie_core::Cursor;
use magpie_protocol::http::SyncPage;
use magpie_protocol::{event_to_wire, page};
use serde::Deserialize;

use super::ApiQuery;
use crate::auth::Auth;
use crate::error::ApiError;
use crate::state::AppState;

/// The longest a long-poll may wait; proxies commonly cut idle requests at 60 s.
pub const SYNC_WAIT_MS_MAX: u64 = 55_000;

#[derive(Deserialize)]
pub struct SyncQuery {
    cursor: Option<u64>,
    limit: Option<usize>,
    wait_ms: Option<u64>,
}

/// Returns events after `cursor`; with `wait_ms`, waits for the first one.
pub async fn sync(
    State(state): State<AppState>,
    auth: Auth,
    ApiQuery(q): ApiQuery<SyncQuery>,
) -> Result<Json<SyncPage>, ApiError> {
    let after = Cursor(q.cursor.unwrap_or(0));
    let limit = q.limit.unwrap_or(PAGE_LIMIT_DEFAULT);
    if limit == 0 || limit > PAGE_LIMIT_MAX {
        return Err(ApiError::invalid(format!(
            "limit must be 1 to {PAGE_LIMIT_MAX}"
        )));
    }
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0).min(SYNC_WAIT_MS_MAX));
    let deadline = tokio::time::Instant::now() + wait;
    let user = auth.user_id();
    let head = state.store.inbox_head(user).await?;
    if after > head {
        return Err(ApiError::invalid(format!(
            "cursor {after} is ahead of the inbox head {head}"
        )));
    }
    loop {
        // Register before reading so an event committed between the read and the wait still
        // wakes us (Notify::notify_waiters only wakes already-registered futures).
        let waiter = state.hub.wait_for(user);
        let notified = waiter.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let events = state.store.events(user, after, limit).await?;
        if !events.is_empty() || tokio::time::Instant::now() >= deadline {
            let mut events: Vec<_> = events.iter().map(event_to_wire).collect();
            // A page cut at the byte budget is simply shorter: the client asks again from
            // `next_cursor` and gets the rest at once.
            page::keep_first(&mut events, page::event_bytes);
            let next_cursor = events.last().map_or(after.0, |e| e.cursor);
            return Ok(Json(SyncPage {
                events,
                next_cursor,
            }));
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = state.shutdown.cancelled() => {}
        }
        if state.shutdown_requested() {
            return Ok(Json(SyncPage {
                events: Vec::new(),
                next_cursor: after.0,
            }));
        }
    }
}
