//! The presence announcer: tells a user's online friends when the user comes online or goes
//! offline (after the grace period).

use std::sync::Arc;

use magpie_protocol::ws::ServerFrame;
use magpie_store::Store;
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
