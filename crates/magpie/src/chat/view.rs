//! How the chat client shows things: timestamps, names and message lines.

use std::collections::{HashMap, HashSet, VecDeque};

use magpie_sdk::{Client, ConversationId, UserId, WireMessage, WireSystem};

/// How many own `client_msg_id`s are remembered to avoid echoing this terminal's own lines.
const OWN_IDS_MAX: usize = 1_024;
/// Conversation labels cached before the cache is reset.
const LABELS_MAX: usize = 10_000;

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

/// Names one system message lists before "and N others": a group of 10,000 would otherwise
/// print 10,000 names and look each up on the server, one request at a time.
pub const SYSTEM_NAMES_LISTED_MAX: usize = 10;
/// Usernames cached; past this the cache starts over (a long session in huge groups).
const NAMES_CACHED_MAX: usize = 10_000;

/// Username lookups, cached: every message carries only the sender's id.
pub struct Names {
    /// Known id → name pairs; at most [`NAMES_CACHED_MAX`].
    known: HashMap<UserId, String>,
    /// The local user, never forgotten.
    me: (UserId, String),
}

impl Names {
    /// A cache that already knows the local user.
    pub fn new(me: UserId, my_name: &str) -> Self {
        Self {
            known: HashMap::from([(me, my_name.to_owned())]),
            me: (me, my_name.to_owned()),
        }
    }

    /// Records a name learnt elsewhere (e.g. from `/to`).
    pub fn remember(&mut self, id: UserId, name: &str) {
        if self.known.len() >= NAMES_CACHED_MAX {
            self.known.clear();
            self.known.insert(self.me.0, self.me.1.clone());
        }
        self.known.insert(id, name.to_owned());
    }

    /// The name of `id`, asking the server once; falls back to `user#ID`.
    pub async fn name(&mut self, client: &Client, id: UserId) -> String {
        if let Some(name) = self.known.get(&id) {
            return name.clone();
        }
        match client.user(id).await {
            Ok(info) => {
                self.remember(id, &info.username);
                info.username
            }
            // Not cached, so a transient failure is retried at the next message.
            Err(_) => format!("user#{id}"),
        }
    }
}

/// Conversation labels: group names and direct peers' usernames, cached.
#[derive(Default)]
pub struct Labels {
    /// Known conversation → label pairs.
    known: HashMap<ConversationId, String>,
    /// Which of them are groups.
    groups: HashSet<ConversationId>,
}

impl Labels {
    /// Records a label learnt elsewhere.
    pub fn remember(&mut self, id: ConversationId, label: &str) {
        if self.known.len() >= LABELS_MAX && !self.known.contains_key(&id) {
            self.known.clear();
            self.groups.clear();
        }
        self.known.insert(id, label.to_owned());
    }

    /// Records that `id` is a group.
    pub fn mark_group(&mut self, id: ConversationId) {
        self.groups.insert(id);
    }

    /// The label of `id`, asking the server if unknown; falls back to `#ID`.
    pub async fn label(&mut self, client: &Client, id: ConversationId) -> String {
        if let Some(label) = self.known.get(&id) {
            return label.clone();
        }
        self.refresh(client, id).await;
        self.known
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("#{id}"))
    }

    /// The group name if `id` is a group, `None` for a direct conversation.
    pub async fn group_label(&mut self, client: &Client, id: ConversationId) -> Option<String> {
        if !self.known.contains_key(&id) {
            self.refresh(client, id).await;
        }
        self.groups
            .contains(&id)
            .then(|| self.known.get(&id).cloned())
            .flatten()
    }

    /// Learns every group's name and `id`'s label from the conversation list.
    async fn refresh(&mut self, client: &Client, id: ConversationId) {
        let Ok(rows) = client.conversations().await else {
            return; // Not cached, so the next message tries again.
        };
        for row in rows {
            if row.kind == "group" {
                self.remember(row.conversation_id, &row.name);
                self.mark_group(row.conversation_id);
            } else if row.conversation_id == id {
                let peer = row
                    .peer_id
                    .as_deref()
                    .and_then(|p| p.parse::<UserId>().ok());
                if let Some(peer) = peer {
                    if let Ok(info) = client.user(peer).await {
                        self.remember(id, &info.username);
                    }
                }
            }
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

/// `line` made safe for a terminal. Messages, names and group names come from other users,
/// and control characters in them would be obeyed by the terminal (escape sequences can clear
/// the screen, retitle the window or forge lines): each becomes U+FFFD, except tabs, and
/// newlines, after which the text is indented so it cannot pass for a line of its own.
pub fn printable(line: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && c != '\t';
    if !line.contains(unsafe_char) {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 8);
    for c in line.chars() {
        match c {
            '\n' => out.push_str("\n    "),
            c if unsafe_char(c) => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// One message line: `[HH:MM:SS] name: text`, with ` (you)` after one's own name and the
/// group's name in brackets when the message is from a group other than the current one.
pub fn message_line(m: &WireMessage, sender: &str, own: bool, group: Option<&str>) -> String {
    let you = if own { " (you)" } else { "" };
    let context = group.map(|g| format!("[{g}] ")).unwrap_or_default();
    format!("[{}] {context}{sender}{you}: {}", clock(m.ts_ms), m.text)
}

/// The user ids a system message mentions (as on the wire).
pub fn system_user_ids(s: &WireSystem) -> Vec<&str> {
    match s {
        WireSystem::GroupCreated {
            actor_id, user_ids, ..
        }
        | WireSystem::MembersAdded { actor_id, user_ids } => std::iter::once(actor_id.as_str())
            // Only the names `system_text` prints (the actor may be listed too).
            .chain(
                user_ids
                    .iter()
                    .take(SYSTEM_NAMES_LISTED_MAX + 1)
                    .map(String::as_str),
            )
            .collect(),
        WireSystem::MemberRemoved { actor_id, user_id }
        | WireSystem::RoleChanged {
            actor_id, user_id, ..
        } => vec![actor_id, user_id],
        WireSystem::MemberLeft { user_id } | WireSystem::OwnerChanged { user_id } => {
            vec![user_id]
        }
        WireSystem::Renamed { actor_id, .. } => vec![actor_id],
        WireSystem::Unknown => Vec::new(),
    }
}

/// A system message in words: `alice added bob, carol`. `name` maps a wire user id to a name.
pub fn system_text(s: &WireSystem, name: impl Fn(&str) -> String) -> String {
    let list = |ids: &[String], skip: &str| {
        let listed: Vec<&String> = ids.iter().filter(|id| id.as_str() != skip).collect();
        let mut names: Vec<String> = listed
            .iter()
            .take(SYSTEM_NAMES_LISTED_MAX)
            .map(|id| name(id))
            .collect();
        if listed.len() > SYSTEM_NAMES_LISTED_MAX {
            names.push(format!(
                "and {} others",
                listed.len() - SYSTEM_NAMES_LISTED_MAX
            ));
        }
        names.join(", ")
    };
    match s {
        WireSystem::GroupCreated {
            actor_id,
            name: group,
            user_ids,
        } => {
            let others = list(user_ids, actor_id);
            if others.is_empty() {
                format!("{} created {group}", name(actor_id))
            } else {
                format!("{} created {group} with {others}", name(actor_id))
            }
        }
        WireSystem::MembersAdded { actor_id, user_ids } => {
            format!("{} added {}", name(actor_id), list(user_ids, ""))
        }
        WireSystem::MemberRemoved { actor_id, user_id } => {
            format!("{} removed {}", name(actor_id), name(user_id))
        }
        WireSystem::MemberLeft { user_id } => format!("{} left", name(user_id)),
        WireSystem::RoleChanged {
            actor_id,
            user_id,
            role,
        } => format!("{} made {} {role}", name(actor_id), name(user_id)),
        WireSystem::Renamed {
            actor_id,
            name: group,
        } => format!("{} renamed the group to {group}", name(actor_id)),
        WireSystem::OwnerChanged { user_id } => format!("{} is now the owner", name(user_id)),
        WireSystem::Unknown => "the group changed (an update this client cannot show)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_reach_the_terminal() {
        assert!(matches!(
            printable("plain\ttext é 你好"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(
            printable("a\u{1b}]0;pwned\u{7}b\u{1b}[2Jc\rd\u{9b}e"),
            "a\u{FFFD}]0;pwned\u{FFFD}b\u{FFFD}[2Jc\u{FFFD}d\u{FFFD}e"
        );
        assert_eq!(
            printable("[12:00:00] eve: hi\n* bob left the group"),
            "[12:00:00] eve: hi\n    * bob left the group",
            "a newline cannot start a line that looks like the client's own"
        );
    }

    #[test]
    fn clock_is_utc_time_of_day() {
        assert_eq!(clock(0), "00:00:00");
        // 2021-01-01T13:14:15.999Z
        assert_eq!(clock(1_609_506_855_999), "13:14:15");
    }

    #[test]
    fn lines_mark_own_messages_and_other_groups() {
        let m = WireMessage {
            conversation_id: ConversationId(1),
            seq: 1,
            sender_id: UserId(2),
            client_msg_id: "c".into(),
            text: "hi".into(),
            ts_ms: 3_600_000,
            kind: "text".into(),
            system: None,
        };
        assert_eq!(message_line(&m, "bob", false, None), "[01:00:00] bob: hi");
        assert_eq!(
            message_line(&m, "alice", true, None),
            "[01:00:00] alice (you): hi"
        );
        assert_eq!(
            message_line(&m, "bob", false, Some("team")),
            "[01:00:00] [team] bob: hi"
        );
    }

    #[test]
    fn system_messages_read_as_sentences() {
        let names = |id: &str| match id {
            "1" => "alice".to_owned(),
            "2" => "bob".to_owned(),
            "3" => "carol".to_owned(),
            other => format!("user#{other}"),
        };
        let added = WireSystem::MembersAdded {
            actor_id: "1".into(),
            user_ids: vec!["2".into(), "3".into()],
        };
        assert_eq!(system_text(&added, names), "alice added bob, carol");
        assert_eq!(system_user_ids(&added), ["1", "2", "3"]);
        let created = WireSystem::GroupCreated {
            actor_id: "1".into(),
            name: "team".into(),
            user_ids: vec!["1".into(), "2".into()],
        };
        assert_eq!(system_text(&created, names), "alice created team with bob");
        let big = WireSystem::GroupCreated {
            actor_id: "1".into(),
            name: "all".into(),
            user_ids: (1..=10_000).map(|i| i.to_string()).collect(),
        };
        let text = system_text(&big, names);
        assert!(
            text.starts_with("alice created all with bob, carol, user#4"),
            "{text}"
        );
        assert!(text.ends_with(", user#11, and 9989 others"), "{text}");
        assert_eq!(
            system_user_ids(&big).len(),
            SYSTEM_NAMES_LISTED_MAX + 2,
            "only the names printed are looked up"
        );
        let cases = [
            (
                WireSystem::MemberRemoved {
                    actor_id: "1".into(),
                    user_id: "3".into(),
                },
                "alice removed carol",
            ),
            (
                WireSystem::MemberLeft {
                    user_id: "2".into(),
                },
                "bob left",
            ),
            (
                WireSystem::RoleChanged {
                    actor_id: "1".into(),
                    user_id: "2".into(),
                    role: "admin".into(),
                },
                "alice made bob admin",
            ),
            (
                WireSystem::Renamed {
                    actor_id: "2".into(),
                    name: "crew".into(),
                },
                "bob renamed the group to crew",
            ),
            (
                WireSystem::OwnerChanged {
                    user_id: "9".into(),
                },
                "user#9 is now the owner",
            ),
        ];
        for (s, text) in cases {
            assert_eq!(system_text(&s, names), text);
        }
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
