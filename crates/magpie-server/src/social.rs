//! The presence announcer: tells a user's online friends when the user comes online or goes
//! offline (after the grace period).

use std::sync::Arc;

use magpie_core::UserId;
use magpie_protocol::ws::ServerFrame;
use magpie_store::{Store, StoreError};
use tokio::sync::mpsc;

use crate::hub::{Hub, Router as _};
use crate::presence::Announcement;

/// Runs until the intake closes: one `presence` frame per online friend per announcement.
pub async fn announce_presence(
    mut rx: mpsc::Receiver<Announcement>,
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
) {
    while let Some(a) = rx.recv().await {
        if !a.online {
            // "Last seen" must survive a restart; the in-memory tracker does not.
            if let Err(e) = store
                .record_last_seen(vec![(a.user_id, a.last_seen_ms)])
                .await
            {
                tracing::warn!(error = %e, "presence: recording last seen failed");
            }
        }
        let friends = match store.friends(a.user_id).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "presence: reading friends failed");
                continue;
            }
        };
        let frame = ServerFrame::Presence {
            user_id: a.user_id,
            online: a.online,
            last_seen_ms: a.last_seen_ms,
        };
        let Ok(text) = serde_json::to_string(&frame) else {
            continue;
        };
        let text: Arc<str> = text.into();
        for f in friends {
            hub.send_frame(f.user_id, text.clone());
        }
        metrics::counter!("magpie_presence_announcements_total").increment(1);
    }
}

/// `(online, last_seen_ms)` of each of `users`, in order: from this node's presence tracker
/// for users seen since it started, from the store for the rest (0 = never seen).
pub async fn presence_of(
    hub: &Hub,
    store: &dyn Store,
    users: &[UserId],
) -> Result<Vec<(bool, u64)>, StoreError> {
    let mut out: Vec<Option<(bool, u64)>> =
        users.iter().map(|&u| hub.presence().known(u)).collect();
    let unknown: Vec<UserId> = users
        .iter()
        .zip(&out)
        .filter(|(_, known)| known.is_none())
        .map(|(&u, _)| u)
        .collect();
    if !unknown.is_empty() {
        let mut recorded = store.last_seen(&unknown).await?.into_iter();
        for slot in out.iter_mut().filter(|s| s.is_none()) {
            *slot = Some((false, recorded.next().unwrap_or(0)));
        }
    }
    Ok(out.into_iter().map(|s| s.unwrap_or((false, 0))).collect())
}
