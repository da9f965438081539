//! How the chat client shows things: timestamps, names and message lines.

use std::collections::{HashMap, VecDeque};

use magpie_sdk::{Client, UserId, WireMessage};

/// How many own `client_msg_id`s are remembered to avoid echoing this terminal's own lines.
const OWN_IDS_MAX: usize = 1_024;

/// `HH:MM:SS` (UTC) of a Unix-millisecond timestamp.
pub fn clock(ts_ms: u64) -> String {
    let secs = (ts_ms / 1_000) % 86_400;
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3_600,
        (secs / 60) % 60,
        secs % 60
    )
}

/// Username lookups, cached: every message carries only the sender's id.
pub struct Names {
    /// Known id → name pairs; grows with the people one talks to.
    known: HashMap<UserId, String>,
}

impl Names {
    /// A cache that already knows the local user.
    pub fn new(me: UserId, my_name: &str) -> Self {
        Self {
            known: HashMap::from([(me, my_name.to_owned())]),
        }
    }

    /// Records a name learnt elsewhere (e.g. from `/to`).
    pub fn remember(&mut self, id: UserId, name: &str) {
        self.known.insert(id, name.to_owned());
    }

    /// The name of `id`, asking the server once; falls back to `user#ID`.
    pub async fn name(&mut self, client: &Client, id: UserId) -> String {
        if let Some(name) = self.known.get(&id) {
            return name.clone();
        }
        match client.user(id).await {
            Ok(info) => {
                self.known.insert(id, info.username.clone());
                info.username
            }
            // Not cached, so a transient failure is retried at the next message.
            Err(_) => format!("user#{id}"),
        }
    }
}

/// The ids this terminal sent recently, so their inbox copies are not printed twice.
#[derive(Default)]
pub struct OwnSends {
    /// Oldest first; bounded by `OWN_IDS_MAX`.
    ids: VecDeque<String>,
}

impl OwnSends {
    /// Remembers an id this terminal sent.
    pub fn insert(&mut self, id: String) {
        if self.ids.len() >= OWN_IDS_MAX {
            self.ids.pop_front();
        }
        self.ids.push_back(id);
    }

    /// Whether `id` was sent from this terminal.
    pub fn contains(&self, id: &str) -> bool {
        self.ids.iter().any(|i| i == id)
    }
}

/// One message line: `[HH:MM:SS] name: text`, with ` (you)` after one's own name.
pub fn message_line(m: &WireMessage, sender: &str, own: bool) -> String {
    let you = if own { " (you)" } else { "" };
    format!("[{}] {sender}{you}: {}", clock(m.ts_ms), m.text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use magpie_sdk::ConversationId;

    #[test]
    fn clock_is_utc_time_of_day() {
        assert_eq!(clock(0), "00:00:00");
        // 2021-01-01T13:14:15.999Z
        assert_eq!(clock(1_609_506_855_999), "13:14:15");
    }

    #[test]
    fn lines_mark_own_messages() {
        let m = WireMessage {
            conversation_id: ConversationId(1),
            seq: 1,
            sender_id: UserId(2),
            client_msg_id: "c".into(),
            text: "hi".into(),
            ts_ms: 3_600_000,
        };
        assert_eq!(message_line(&m, "bob", false), "[01:00:00] bob: hi");
        assert_eq!(
            message_line(&m, "alice", true),
            "[01:00:00] alice (you): hi"
        );
    }

    #[test]
    fn own_sends_are_bounded() {
        let mut own = OwnSends::default();
        for i in 0..OWN_IDS_MAX + 5 {
            own.insert(i.to_string());
        }
        assert!(!own.contains("0"));
        assert!(own.contains(&(OWN_IDS_MAX + 4).to_string()));
    }
}
