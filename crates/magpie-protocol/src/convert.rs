//! Conversions from domain records to wire shapes.

use magpie_core::{Event, EventPayload, Message};

use crate::ws::{EventBody, WireEvent, WireMessage};

/// The wire form of a stored message.
pub fn message_to_wire(m: &Message) -> WireMessage {
    WireMessage {
        conversation_id: m.conversation_id,
        seq: m.seq.0,
        sender_id: m.sender_id,
        client_msg_id: m.client_msg_id.as_str().to_owned(),
        text: m.text.clone(),
        ts_ms: m.ts_ms,
    }
}

/// The wire form of an inbox event.
pub fn event_to_wire(e: &Event) -> WireEvent {
    let body = match &e.payload {
        EventPayload::Message(m) => EventBody::Message {
            message: message_to_wire(m),
        },
    };
    WireEvent {
        cursor: e.cursor.0,
        body,
    }
}
