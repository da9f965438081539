//! WebSocket frames. Every frame is one JSON text message with a `type` tag.

use magpie_core::{ConversationId, DeviceId, UserId};
use serde::{Deserialize, Serialize};

use crate::ErrorCode;

/// A message object: `{"conversation_id","seq","sender_id","client_msg_id","text","ts_ms"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireMessage {
    #[serde(with = "crate::id_string")]
    pub conversation_id: ConversationId,
    pub seq: u64,
    #[serde(with = "crate::id_string")]
    pub sender_id: UserId,
    pub client_msg_id: String,
    pub text: String,
    pub ts_ms: u64,
    /// `"text"` or `"system"`.
    #[serde(default = "text_kind")]
    pub kind: String,
    /// What happened, for system messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<WireSystem>,
}

fn text_kind() -> String {
    "text".into()
}

/// The `system` object of a system message, tagged by `action`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum WireSystem {
    GroupCreated {
        actor_id: String,
        name: String,
        user_ids: Vec<String>,
    },
    MembersAdded {
        actor_id: String,
        user_ids: Vec<String>,
    },
    MemberRemoved {
        actor_id: String,
        user_id: String,
    },
    MemberLeft {
        user_id: String,
    },
    RoleChanged {
        actor_id: String,
        user_id: String,
        role: String,
    },
    Renamed {
        actor_id: String,
        name: String,
    },
    OwnerChanged {
        user_id: String,
    },
    /// An action this version does not know (a newer server's). Clients show the message
    /// generically instead of failing to read it, or the whole page or event carrying it.
    #[serde(other)]
    Unknown,
}

/// An event object: `{"cursor","kind":"message","message":{...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEvent {
    pub cursor: u64,
    #[serde(flatten)]
    pub body: EventBody,
}

/// The kind-specific part of an event, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventBody {
    Message {
        message: WireMessage,
    },
    FriendRequest {
        request: crate::social::WireFriendRequest,
    },
    FriendAdded {
        #[serde(with = "crate::id_string")]
        user_id: UserId,
        #[serde(with = "crate::id_string")]
        conversation_id: ConversationId,
    },
    GroupJoined {
        #[serde(with = "crate::id_string")]
        conversation_id: ConversationId,
    },
    GroupLeft {
        #[serde(with = "crate::id_string")]
        conversation_id: ConversationId,
    },
    Read {
        #[serde(with = "crate::id_string")]
        conversation_id: ConversationId,
        read_seq: u64,
    },
    Receipt {
        #[serde(with = "crate::id_string")]
        conversation_id: ConversationId,
        #[serde(with = "crate::id_string")]
        user_id: UserId,
        read_seq: u64,
    },
}

/// Frames a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Stream every event after `cursor`, then live events.
    Sync { cursor: u64 },
    /// Send a message; answered by `sent` or `error` after durability.
    Send {
        client_msg_id: String,
        #[serde(with = "crate::id_string")]
        conversation_id: ConversationId,
        text: String,
    },
    /// Record that this device processed events up to `cursor`.
    Ack { cursor: u64 },
    /// Heartbeat; answered by `pong`.
    Ping,
    /// Reads a conversation's timeline after `after_seq`; answered by `messages`.
    Pull {
        #[serde(with = "crate::id_string")]
        conversation_id: ConversationId,
        after_seq: u64,
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Marks the conversation read up to `seq`.
    Read {
        #[serde(with = "crate::id_string")]
        conversation_id: ConversationId,
        seq: u64,
    },
    /// The user is typing in the conversation (relayed, not stored).
    Typing {
        #[serde(with = "crate::id_string")]
        conversation_id: ConversationId,
    },
}

/// Frames the server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Ready {
        #[serde(with = "crate::id_string")]
        user_id: UserId,
        #[serde(with = "crate::id_string")]
        device_id: DeviceId,
        /// The last cursor this device acknowledged (0 if none).
        cursor: u64,
        heartbeat_ms: u64,
        /// The newest cursor of the user's inbox when the socket opened. A device with no
        /// cursor of its own may start there instead of replaying the user's whole history
        /// (which it can page through over HTTP). Absent (`None`) from older servers, which
        /// did not send it: unknown, not zero.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        inbox_head: Option<u64>,
    },
    Event(WireEvent),
    Sent {
        client_msg_id: String,
        #[serde(with = "crate::id_string")]
        conversation_id: ConversationId,
        seq: u64,
        ts_ms: u64,
        duplicate: bool,
    },
    Error {
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<String>,
        /// The conversation a refused `pull`, `read` or `typing` named, so the client can tell
        /// which one failed (absent for sends, which carry `client_msg_id`, and for other
        /// frames).
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "crate::id_string_opt"
        )]
        conversation_id: Option<ConversationId>,
    },
    Pong,
    /// A read-fan-out conversation has messages up to `last_seq`; pull what you miss.
    Notify {
        #[serde(with = "crate::id_string")]
        conversation_id: ConversationId,
        last_seq: u64,
    },
    /// Answer to `pull`.
    Messages {
        #[serde(with = "crate::id_string")]
        conversation_id: ConversationId,
        messages: Vec<WireMessage>,
        /// The page stopped at [`crate::page::PAGE_BYTES_MAX`] before `limit`: more messages
        /// follow. Absent (false) otherwise.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
    },
    /// A friend came online or went offline.
    Presence {
        #[serde(with = "crate::id_string")]
        user_id: UserId,
        online: bool,
        last_seen_ms: u64,
    },
    /// Another member is typing.
    Typing {
        #[serde(with = "crate::id_string")]
        conversation_id: ConversationId,
        #[serde(with = "crate::id_string")]
        user_id: UserId,
    },
}

/// The JSON of a message object, exactly as it appears inside an `event` frame.
///
/// Write fan-out puts one message into every member's inbox, and each inbox event differs only
/// in its cursor; serializing the message once and wrapping it per recipient with
/// [`message_event_frame`] saves one serialization per recipient device but the first.
pub fn message_json(message: &WireMessage) -> Result<String, serde_json::Error> {
    serde_json::to_string(message)
}

/// The text of the `event` frame for a message event at `cursor`, given the message's JSON
/// from [`message_json`]. Byte for byte what serializing
/// `ServerFrame::Event(WireEvent { cursor, body: EventBody::Message { .. } })` produces.
pub fn message_event_frame(cursor: u64, message_json: &str) -> String {
    const HEAD: &str = r#"{"type":"event","cursor":"#;
    const KIND: &str = r#","kind":"message","message":"#;
    let mut digits = itoa::Buffer::new();
    let cursor = digits.format(cursor);
    let mut text =
        String::with_capacity(HEAD.len() + cursor.len() + KIND.len() + message_json.len() + 1);
    text.push_str(HEAD);
    text.push_str(cursor);
    text.push_str(KIND);
    text.push_str(message_json);
    text.push('}');
    text
}

/// The text of a `sent` frame: byte for byte what serializing `ServerFrame::Sent` produces,
/// without going through serde's tagged-enum machinery. One is written for every message a
/// connection sends, so it sits on the hottest path of the server.
pub fn sent_frame(
    client_msg_id: &str,
    conversation_id: ConversationId,
    seq: u64,
    ts_ms: u64,
    duplicate: bool,
) -> Result<String, serde_json::Error> {
    let mut digits = itoa::Buffer::new();
    let mut text = Vec::with_capacity(112 + client_msg_id.len());
    text.extend_from_slice(br#"{"type":"sent","client_msg_id":"#);
    // The id is printable ASCII, but may hold quotes or backslashes: serde_json escapes it.
    serde_json::to_writer(&mut text, client_msg_id)?;
    text.extend_from_slice(br#","conversation_id":""#);
    text.extend_from_slice(digits.format(conversation_id.0).as_bytes());
    text.extend_from_slice(br#"","seq":"#);
    text.extend_from_slice(digits.format(seq).as_bytes());
    text.extend_from_slice(br#","ts_ms":"#);
    text.extend_from_slice(digits.format(ts_ms).as_bytes());
    text.extend_from_slice(if duplicate {
        br#","duplicate":true}"#.as_slice()
    } else {
        br#","duplicate":false}"#.as_slice()
    });
    // Every piece above is UTF-8, so this never fails; it is checked rather than assumed.
    String::from_utf8(text).map_err(<serde_json::Error as serde::ser::Error>::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_system_action_from_a_newer_server_reads_as_unknown_and_keeps_its_page() {
        let frame = r#"{"type":"messages","conversation_id":"4","messages":[
            {"conversation_id":"4","seq":7,"sender_id":"1","client_msg_id":"sys-4-7",
             "text":"","ts_ms":1,"kind":"system",
             "system":{"action":"pinned","actor_id":"1","seq":3}},
            {"conversation_id":"4","seq":8,"sender_id":"2","client_msg_id":"c8",
             "text":"hi","ts_ms":2}]}"#;
        let parsed: ServerFrame = serde_json::from_str(frame).expect("the page still parses");
        let ServerFrame::Messages { messages, .. } = parsed else {
            panic!("{parsed:?}");
        };
        assert_eq!(
            messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            [7, 8],
            "no message is lost"
        );
        assert_eq!(messages[0].system, Some(WireSystem::Unknown));
        assert_eq!(messages[1].system, None);
    }

    /// A message that exercises every part of the object: escapes, non-ASCII text, a system
    /// payload, and the largest ids.
    fn sample_messages() -> Vec<WireMessage> {
        let plain = WireMessage {
            conversation_id: ConversationId(9),
            seq: 1,
            sender_id: UserId(2),
            client_msg_id: "c1".into(),
            text: "hi".into(),
            ts_ms: 5,
            kind: "text".into(),
            system: None,
        };
        let escaped = WireMessage {
            conversation_id: ConversationId(u64::MAX),
            seq: u64::MAX,
            sender_id: UserId(u64::MAX),
            client_msg_id: "quote\"back\\slash\u{1}".into(),
            text: "line\nbreak \u{7f} 你好 🙂 \"x\"".into(),
            ts_ms: u64::MAX,
            kind: "text".into(),
            system: None,
        };
        let system = WireMessage {
            conversation_id: ConversationId(3),
            seq: 7,
            sender_id: UserId(4),
            client_msg_id: "sys:3:7".into(),
            text: String::new(),
            ts_ms: 1_700_000_000_000,
            kind: "system".into(),
            system: Some(WireSystem::Renamed {
                actor_id: "4".into(),
                name: "new \"name\"".into(),
            }),
        };
        vec![plain, escaped, system]
    }

    #[test]
    fn a_hand_built_sent_frame_is_what_serde_writes() {
        for id in ["c1", "quote\"and\\backslash", "x".repeat(64).as_str()] {
            for (conversation, seq, ts_ms) in [
                (0, 0, 0),
                (5, 9, 1_700_000_000_000),
                (u64::MAX, u64::MAX, u64::MAX),
            ] {
                for duplicate in [false, true] {
                    let frame = ServerFrame::Sent {
                        client_msg_id: id.to_owned(),
                        conversation_id: ConversationId(conversation),
                        seq,
                        ts_ms,
                        duplicate,
                    };
                    let expected = serde_json::to_string(&frame).unwrap();
                    let built = sent_frame(id, ConversationId(conversation), seq, ts_ms, duplicate)
                        .unwrap();
                    assert_eq!(built, expected);
                }
            }
        }
    }

    #[test]
    fn a_shared_message_event_frame_is_what_serde_writes() {
        for message in sample_messages() {
            let json = message_json(&message).unwrap();
            for cursor in [0, 1, 42, u64::MAX] {
                let frame = ServerFrame::Event(WireEvent {
                    cursor,
                    body: EventBody::Message {
                        message: message.clone(),
                    },
                });
                let expected = serde_json::to_string(&frame).unwrap();
                assert_eq!(message_event_frame(cursor, &json), expected);
                let back: ServerFrame = serde_json::from_str(&expected).unwrap();
                assert_eq!(back, frame);
            }
        }
    }

    #[test]
    fn event_frame_is_flat() {
        let frame = ServerFrame::Event(WireEvent {
            cursor: 3,
            body: EventBody::Message {
                message: sample_messages().remove(0),
            },
        });
        let json = serde_json::to_value(&frame).unwrap();
        assert_eq!(json["type"], "event");
        assert_eq!(json["cursor"], 3);
        assert_eq!(json["kind"], "message");
        assert_eq!(json["message"]["conversation_id"], "9");
        assert_eq!(json["message"]["sender_id"], "2");
        let back: ServerFrame = serde_json::from_value(json).unwrap();
        assert_eq!(back, frame);
    }

    #[test]
    fn client_frames_parse() {
        let f: ClientFrame = serde_json::from_str(
            r#"{"type":"send","client_msg_id":"a","conversation_id":"4","text":"x"}"#,
        )
        .unwrap();
        assert!(matches!(
            f,
            ClientFrame::Send {
                conversation_id: ConversationId(4),
                ..
            }
        ));
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"nope"}"#).is_err());
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"sync","cursor":-1}"#).is_err());
    }
}
