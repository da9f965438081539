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
    Message { message: WireMessage },
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
        cursor: u64,
        heartbeat_ms: u64,
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
    },
    Pong,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_frame_is_flat() {
        let frame = ServerFrame::Event(WireEvent {
            cursor: 3,
            body: EventBody::Message {
                message: WireMessage {
                    conversation_id: ConversationId(9),
                    seq: 1,
                    sender_id: UserId(2),
                    client_msg_id: "c1".into(),
                    text: "hi".into(),
                    ts_ms: 5,
                },
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
