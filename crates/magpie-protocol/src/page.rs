//! The byte budget of a page: a history page, a `messages` frame, a sync page.
//!
//! A page holds at most `limit` items (at most 200), but 200 messages of 100,000 characters
//! are 20 MB of JSON, and 120 MB if every character needs a `\uXXXX` escape: too much to hold
//! in memory per request, and far more than a socket's write buffer accepts as one frame. So a
//! page also stops at [`PAGE_BYTES_MAX`] of JSON. It always carries at least one item, so
//! paging always makes progress (one message is at most about 600 KB of JSON).

use crate::ws::{EventBody, WireEvent, WireMessage};

/// Most bytes of JSON that the items of one page add up to (estimated from above).
pub const PAGE_BYTES_MAX: usize = 1024 * 1024;

/// Bytes of a message object besides its text, `client_msg_id` and `system` object: the keys,
/// the quotes, two ids, seq, ts_ms and kind, each at its longest (an upper bound).
const MESSAGE_FIXED_BYTES_MAX: usize = 200;

/// Bytes of an event wrapped around its message: `{"cursor":N,"kind":"message","message":}`.
const EVENT_FIXED_BYTES_MAX: usize = 64;

/// The length of `s` as the contents of a JSON string (without the quotes), exactly as
/// serde_json writes it.
pub fn json_str_bytes(s: &str) -> usize {
    s.bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum()
}

/// An upper bound of the JSON length of `m`.
pub fn message_bytes(m: &WireMessage) -> usize {
    // System messages are rare and may list thousands of ids: measure them exactly.
    let system = m.system.as_ref().map_or(0, |s| {
        serde_json::to_vec(s).map_or(PAGE_BYTES_MAX, |v| v.len() + 16)
    });
    MESSAGE_FIXED_BYTES_MAX + json_str_bytes(&m.text) + json_str_bytes(&m.client_msg_id) + system
}

/// An upper bound of the JSON length of `e`.
pub fn event_bytes(e: &WireEvent) -> usize {
    match &e.body {
        EventBody::Message { message } => EVENT_FIXED_BYTES_MAX + message_bytes(message),
        // The other kinds are small or rare; measure them exactly.
        _ => serde_json::to_vec(e).map_or(PAGE_BYTES_MAX, |v| v.len()),
    }
}

/// How many of `sizes`, taken in order, fit into [`PAGE_BYTES_MAX`]: at least one if there is
/// one.
fn fitting(sizes: impl Iterator<Item = usize>) -> usize {
    let mut total = 0usize;
    let mut n = 0;
    for size in sizes {
        total = total.saturating_add(size);
        if n > 0 && total > PAGE_BYTES_MAX {
            break;
        }
        n += 1;
    }
    n
}

/// Cuts an ascending page to the oldest items that fit the budget (a page read forward, with
/// `after_seq` or a sync cursor). True if it cut anything.
pub fn keep_first<T>(items: &mut Vec<T>, bytes: impl Fn(&T) -> usize) -> bool {
    let n = fitting(items.iter().map(&bytes));
    let cut = n < items.len();
    items.truncate(n);
    cut
}

/// Cuts an ascending page to the newest items that fit the budget (a page read backward, with
/// `before_seq` or the latest page). True if it cut anything.
pub fn keep_last<T>(items: &mut Vec<T>, bytes: impl Fn(&T) -> usize) -> bool {
    let n = fitting(items.iter().rev().map(&bytes));
    let cut = n < items.len();
    items.drain(..items.len() - n);
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use magpie_core::{ConversationId, UserId};

    fn message(seq: u64, text: &str) -> WireMessage {
        WireMessage {
            conversation_id: ConversationId(u64::MAX),
            seq,
            sender_id: UserId(u64::MAX),
            client_msg_id: "x".repeat(magpie_core::limits::CLIENT_MSG_ID_BYTES_MAX),
            text: text.to_owned(),
            ts_ms: u64::MAX,
            kind: "text".into(),
            system: None,
        }
    }

    #[test]
    fn json_str_bytes_matches_serde_json() {
        let samples = [
            "",
            "plain ascii",
            "quote \" backslash \\ slash /",
            "\n\r\t\u{8}\u{c}",
            "\u{0}\u{1}\u{1f}\u{7f}",
            "héllo wörld 你好 🎉",
        ];
        for s in samples {
            let quoted = serde_json::to_string(s).expect("serializes");
            assert_eq!(json_str_bytes(s), quoted.len() - 2, "{s:?}");
        }
    }

    #[test]
    fn message_and_event_bytes_bound_the_real_json() {
        for text in ["", "hi", &"\u{1}".repeat(1000), &"é\"".repeat(500)] {
            let m = message(u64::MAX, text);
            let json = serde_json::to_vec(&m).expect("serializes");
            assert!(message_bytes(&m) >= json.len(), "{text:?}");
            assert!(message_bytes(&m) < json.len() + MESSAGE_FIXED_BYTES_MAX);
            let e = WireEvent {
                cursor: u64::MAX,
                body: EventBody::Message { message: m },
            };
            let json = serde_json::to_vec(&e).expect("serializes");
            assert!(event_bytes(&e) >= json.len(), "{text:?}");
        }
    }

    #[test]
    fn pages_are_cut_at_the_budget_from_the_right_end_and_never_to_nothing() {
        let big = "a".repeat(PAGE_BYTES_MAX / 3);
        let page: Vec<_> = (1..=5).map(|s| message(s, &big)).collect();
        let mut first = page.clone();
        assert!(keep_first(&mut first, message_bytes));
        assert_eq!(first.iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2]);
        let mut last = page.clone();
        assert!(keep_last(&mut last, message_bytes));
        assert_eq!(last.iter().map(|m| m.seq).collect::<Vec<_>>(), [4, 5]);

        let huge = "\u{1}".repeat(100_000);
        let mut one = vec![message(1, &huge), message(2, &huge)];
        assert!(keep_first(&mut one, message_bytes));
        assert_eq!(one.len(), 1, "a page always makes progress");

        let mut small: Vec<_> = (1..=200).map(|s| message(s, "hello")).collect();
        assert!(!keep_first(&mut small, message_bytes));
        assert!(!keep_last(&mut small, message_bytes));
        assert_eq!(small.len(), 200);
        let mut empty: Vec<WireMessage> = Vec::new();
        assert!(!keep_last(&mut empty, message_bytes));
    }
}
