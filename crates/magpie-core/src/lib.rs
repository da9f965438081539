//! Magpie's domain model: the vocabulary shared by the store, the server and the SDK.
//!
//! Nothing here knows about JSON or HTTP. The wire representation lives in `magpie-protocol`,
//! which converts to and from these types, so that storage and domain logic never depend on
//! serde attributes or field names chosen for clients.

mod ids;
pub mod limits;
mod model;
mod validate;

pub use ids::{
    ClientMsgId, ConversationId, Cursor, DeviceId, IdParseError, RequestId, Seq, UserId,
};
pub use model::{
    Conversation, ConversationKind, Device, Event, EventPayload, FriendRequest, Member, Message,
    Role, SystemEvent, User, UserEvent,
};
pub use validate::{
    validate_password, validate_text, validate_username, TextError, ValidationError,
};

/// Milliseconds since the Unix epoch, the timestamp unit used everywhere in Magpie.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
