//! Cheap encoding and decoding of the frames on the hot path.
//!
//! The client shares the machine's cores with the server, so it avoids building a full
//! [`ServerFrame`] for every `sent` and `event`: it recognises them by the `type` tag the server
//! writes first and pulls out the few fields it needs by key. Anything else (and any frame
//! the fast path cannot read) goes through `serde_json` with the real protocol types. The tests
//! check both paths against frames serialized from `magpie_protocol`.
//!
//! Key search is sound on valid JSON: inside a string every `"` is escaped, so `"seq":` can only
//! match a real key.

use std::sync::LazyLock;
use std::time::Instant;

use memchr::memmem::Finder;

use magpie_core::ConversationId;
use magpie_protocol::ws::{ClientFrame, ServerFrame};
use magpie_protocol::ErrorCode;

/// Bytes of text in each bench message (20 digits of send time, a space and padding), close
/// to a typical chat line.
pub const TEXT_BYTES: usize = 100;
/// Digits of the send timestamp at the start of each text.
const STAMP_DIGITS: usize = 20;
/// Filler after the timestamp.
const PADDING: &str =
    "the quick brown fox jumps over the lazy dog while the magpie steals a shiny spoon ok";

/// The process-wide clock origin: timestamps in texts are nanoseconds since this instant, so
/// sender and receiver (both in this process) read the same clock.
pub fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// The instant [`now_ns`] counts from.
pub fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The tokio instant `ns` nanoseconds after [`epoch`].
pub fn instant_at(ns: u64) -> tokio::time::Instant {
    tokio::time::Instant::from_std(epoch() + std::time::Duration::from_nanos(ns))
}

/// The `send` frame with client message id `id` (printable ASCII without `"` or `\`, as
/// the bench's generators make them), stamped with `sent_ns`.
pub fn send_frame(id: &str, conversation: ConversationId, sent_ns: u64) -> String {
    let pad = &PADDING[..TEXT_BYTES - STAMP_DIGITS - 1];
    format!(
        r#"{{"type":"send","client_msg_id":"{id}","conversation_id":"{conversation}","text":"{sent_ns:0width$} {pad}"}}"#,
        width = STAMP_DIGITS
    )
}

/// The `sync` frame.
pub fn sync_frame(cursor: u64) -> String {
    serde_json::to_string(&ClientFrame::Sync { cursor }).unwrap_or_default()
}

/// The `ping` frame.
pub fn ping_frame() -> String {
    serde_json::to_string(&ClientFrame::Ping).unwrap_or_default()
}

/// The send timestamp at the start of a bench text, if it is one.
pub fn stamp_of(text: &str) -> Option<u64> {
    text.get(..STAMP_DIGITS)?.parse().ok()
}

/// A decoded server frame, borrowing from the text where it can.
#[derive(Debug, PartialEq)]
pub enum Incoming<'a> {
    /// `sent`.
    Sent {
        client_msg_id: &'a str,
        seq: u64,
        duplicate: bool,
    },
    /// `event` of kind `message`.
    Message {
        cursor: u64,
        seq: u64,
        sender_id: &'a str,
        text: &'a str,
    },
    /// `event` of a kind this tool does not know (still advances the cursor).
    OtherEvent { cursor: u64 },
    /// `ready`.
    Ready { cursor: u64, heartbeat_ms: u64 },
    /// `error`.
    Error {
        code: ErrorCode,
        message: String,
        client_msg_id: Option<String>,
    },
    /// `pong`.
    Pong,
    /// A frame the bench does not act on (presence, typing, notifications, or a frame type newer
    /// than this build).
    Ignored,
}

/// Decodes a server text frame.
pub fn parse(text: &str) -> anyhow::Result<Incoming<'_>> {
    if let Some(rest) = text.strip_prefix(r#"{"type":"sent","#) {
        if let Some(frame) = fast_sent(rest) {
            return Ok(frame);
        }
    } else if let Some(rest) = text.strip_prefix(r#"{"type":"event","#) {
        if let Some(frame) = fast_event(rest) {
            return Ok(frame);
        }
    }
    slow(text)
}

/// The keys the fast path looks for, each with its searcher built once: building a
/// `memmem` searcher per call was 8% of the paced bench client's CPU time.
struct Keys {
    client_msg_id: Finder<'static>,
    seq: Finder<'static>,
    duplicate: Finder<'static>,
    cursor: Finder<'static>,
    kind_message: Finder<'static>,
    sender_id: Finder<'static>,
    text: Finder<'static>,
}

static KEYS: LazyLock<Keys> = LazyLock::new(|| Keys {
    client_msg_id: Finder::new(r#""client_msg_id":""#),
    seq: Finder::new(r#""seq":"#),
    duplicate: Finder::new(r#""duplicate":"#),
    cursor: Finder::new(r#""cursor":"#),
    kind_message: Finder::new(r#""kind":"message""#),
    sender_id: Finder::new(r#""sender_id":""#),
    text: Finder::new(r#""text":""#),
});

fn fast_sent(rest: &str) -> Option<Incoming<'_>> {
    let keys = &*KEYS;
    Some(Incoming::Sent {
        client_msg_id: str_field(rest, &keys.client_msg_id)?,
        seq: u64_field(rest, &keys.seq)?,
        duplicate: bool_field(rest, &keys.duplicate)?,
    })
}

fn fast_event(rest: &str) -> Option<Incoming<'_>> {
    let keys = &*KEYS;
    let cursor = u64_field(rest, &keys.cursor)?;
    if find(rest, &keys.kind_message).is_none() {
        return Some(Incoming::OtherEvent { cursor });
    }
    Some(Incoming::Message {
        cursor,
        seq: u64_field(rest, &keys.seq)?,
        sender_id: str_field(rest, &keys.sender_id)?,
        text: str_field(rest, &keys.text)?,
    })
}

/// The full `serde_json` path, for rare frames and for anything the fast path could not read.
fn slow(text: &str) -> anyhow::Result<Incoming<'_>> {
    let frame: ServerFrame = match serde_json::from_str(text) {
        Ok(f) => f,
        Err(e) => return unknown(text, e),
    };
    Ok(match frame {
        ServerFrame::Ready {
            cursor,
            heartbeat_ms,
            ..
        } => Incoming::Ready {
            cursor,
            heartbeat_ms,
        },
        ServerFrame::Error {
            code,
            message,
            client_msg_id,
            ..
        } => Incoming::Error {
            code,
            message,
            client_msg_id,
        },
        ServerFrame::Pong => Incoming::Pong,
        // Valid, but not in the shape the fast path expects (fields reordered, or escapes in a
        // string the bench wrote without any): search the whole text, else report it.
        ServerFrame::Event(_) => fast_event(text)
            .ok_or_else(|| anyhow::anyhow!("event frame the bench cannot read: {}", clip(text)))?,
        ServerFrame::Sent { .. } => fast_sent(text)
            .ok_or_else(|| anyhow::anyhow!("sent frame the bench cannot read: {}", clip(text)))?,
        _ => Incoming::Ignored,
    })
}

/// A frame the protocol types refused: events of unknown kinds and frames of unknown types
/// are skipped (clients must tolerate protocol additions); malformed known frames are errors.
fn unknown(text: &str, e: serde_json::Error) -> anyhow::Result<Incoming<'_>> {
    if let Ok(raw) = serde_json::from_str::<RawFrame>(text) {
        match (raw.r#type.as_str(), raw.cursor, raw.kind.as_deref()) {
            ("event", Some(cursor), Some(kind)) if kind != "message" => {
                return Ok(Incoming::OtherEvent { cursor })
            }
            ("event" | "ready" | "sent" | "error" | "pong", _, _) => {}
            _ => return Ok(Incoming::Ignored),
        }
    }
    anyhow::bail!("unparseable server frame ({e}): {}", clip(text))
}

/// The envelope of any frame.
#[derive(serde::Deserialize)]
struct RawFrame {
    r#type: String,
    cursor: Option<u64>,
    kind: Option<String>,
}

/// Where `key` starts in `s`. A prebuilt `memmem` searcher rather than `str::find`: the
/// standard searcher's set-up per call (`StrSearcher::new`, then the two-way search) was 6% of
/// the paced bench client's CPU time, for needles of a dozen bytes in frames of a few hundred.
fn find(s: &str, key: &Finder<'static>) -> Option<usize> {
    key.find(s.as_bytes())
}

/// Where the value after `key` starts in `s`.
fn value_start(s: &str, key: &Finder<'static>) -> Option<usize> {
    Some(find(s, key)? + key.needle().len())
}

/// The unsigned integer after `key`.
fn u64_field(s: &str, key: &Finder<'static>) -> Option<u64> {
    let start = value_start(s, key)?;
    let digits = &s[start..];
    let end = digits
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// The string after `key` (which ends with the opening quote), up to the closing quote. Refuses
/// strings with escapes (the caller falls back to serde).
fn str_field<'a>(s: &'a str, key: &Finder<'static>) -> Option<&'a str> {
    let start = value_start(s, key)?;
    let tail = &s[start..];
    let end = tail.find('"')?;
    let value = &tail[..end];
    (!value.contains('\\')).then_some(value)
}

fn bool_field(s: &str, key: &Finder<'static>) -> Option<bool> {
    let start = value_start(s, key)?;
    let tail = &s[start..];
    if tail.starts_with("true") {
        Some(true)
    } else if tail.starts_with("false") {
        Some(false)
    } else {
        None
    }
}

/// The first 200 characters of a frame, for error messages.
pub fn clip(text: &str) -> &str {
    match text.char_indices().nth(200) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use magpie_core::{DeviceId, UserId};

    use super::*;

    /// An event frame as the server serializes it (built from JSON so that fields added to
    /// the protocol types later keep their defaults).
    fn event(text: &str) -> String {
        let frame: ServerFrame = serde_json::from_value(serde_json::json!({
            "type": "event",
            "cursor": 41,
            "kind": "message",
            "message": {
                "conversation_id": "3",
                "seq": 17,
                "sender_id": "12",
                "client_msg_id": "9",
                "text": text,
                "ts_ms": 1_763_900_000_000u64,
            },
        }))
        .expect("a valid event");
        serde_json::to_string(&frame).expect("serializes")
    }

    #[test]
    fn send_frame_is_a_protocol_send() {
        let raw = send_frame("7", ConversationId(5), 123_456);
        let frame: ClientFrame = serde_json::from_str(&raw).expect("valid send frame");
        let ClientFrame::Send {
            client_msg_id,
            conversation_id,
            text,
        } = frame
        else {
            panic!("not a send")
        };
        assert_eq!(client_msg_id, "7");
        assert_eq!(conversation_id, ConversationId(5));
        assert_eq!(text.len(), TEXT_BYTES);
        assert_eq!(stamp_of(&text), Some(123_456));
    }

    #[test]
    fn fast_paths_match_protocol_types() {
        let text = send_frame("1", ConversationId(3), 99);
        let ClientFrame::Send { text, .. } = serde_json::from_str(&text).expect("send") else {
            panic!()
        };
        let raw = event(&text);
        assert_eq!(
            parse(&raw).expect("event"),
            Incoming::Message {
                cursor: 41,
                seq: 17,
                sender_id: "12",
                text: &text
            }
        );
        let sent = serde_json::to_string(&ServerFrame::Sent {
            client_msg_id: "c-1".into(),
            conversation_id: ConversationId(3),
            seq: 18,
            ts_ms: 5,
            duplicate: false,
        })
        .expect("serializes");
        assert_eq!(
            parse(&sent).expect("sent"),
            Incoming::Sent {
                client_msg_id: "c-1",
                seq: 18,
                duplicate: false
            }
        );
    }

    #[test]
    fn escaped_text_is_reported() {
        let raw = event("a \"quoted\" text");
        // The bench only writes texts without escapes; anything else is reported, not misread.
        assert!(parse(&raw).is_err());
    }

    #[test]
    fn other_frames_use_serde() {
        let ready = serde_json::to_string(&ServerFrame::Ready {
            user_id: UserId(1),
            device_id: DeviceId(4),
            cursor: 10,
            heartbeat_ms: 30_000,
            inbox_head: Some(12),
        })
        .expect("serializes");
        assert_eq!(
            parse(&ready).expect("ready"),
            Incoming::Ready {
                cursor: 10,
                heartbeat_ms: 30_000
            }
        );
        assert_eq!(parse(r#"{"type":"pong"}"#).expect("pong"), Incoming::Pong);
        let unknown = r#"{"type":"event","cursor":5,"kind":"reaction","emoji":"x"}"#;
        assert_eq!(
            parse(unknown).expect("unknown kind"),
            Incoming::OtherEvent { cursor: 5 }
        );
        assert!(parse("nonsense").is_err());
    }
}
