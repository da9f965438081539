//! Validation and error mapping shared by the HTTP and WebSocket send paths, so both give the
//! same answers to the same input.

use magpie_core::{
    validate_text, ClientMsgId, ConversationId, ConversationKind, Message, TextError, UserId,
};
use magpie_protocol::ErrorCode;
use magpie_store::{AppendError, AppendRequest};

use crate::error::ApiError;
use crate::state::AppState;

/// Direct conversations need friendship unless `allow_strangers` is set. Groups (and unknown
/// conversations, refused later by the store as `forbidden`) pass.
pub async fn check_direct_allowed(
    state: &AppState,
    sender: UserId,
    conversation: ConversationId,
) -> Result<(), ApiError> {
    if state.config.allow_strangers {
        return Ok(());
    }
    let Some(conv) = state.store.conversation(conversation).await? else {
        return Ok(());
    };
    if conv.kind != ConversationKind::Direct {
        return Ok(());
    }
    let Some(peer) = conv.members.iter().copied().find(|m| *m != sender) else {
        return Ok(());
    };
    if !conv.members.contains(&sender) || state.store.are_friends(sender, peer).await? {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::NotFriends,
        "you are no longer friends with this user",
    ))
}

/// Answers a send that an access check refused (`refusal`: not a member, no longer friends).
/// A resend of a message stored before its sender lost access gets the stored message back
/// (a duplicate), as the store itself would answer it: the sender must learn that it was
/// delivered, not that it failed. Anything else gets the refusal.
pub async fn stored_or_refused(
    state: &AppState,
    sender: UserId,
    client_msg_id: &ClientMsgId,
    refusal: ApiError,
) -> Result<Message, ApiError> {
    match state.store.sent_message(sender, client_msg_id).await? {
        Some(message) => Ok(message),
        None => Err(refusal),
    }
}

/// Turns a client's send into a store request, or the error the client must get.
pub fn build_request(
    sender: UserId,
    conversation_id: ConversationId,
    client_msg_id: String,
    text: String,
) -> Result<AppendRequest, ApiError> {
    let client_msg_id =
        ClientMsgId::new(client_msg_id).map_err(|e| ApiError::invalid(e.to_string()))?;
    validate_text(&text).map_err(|e| match e {
        TextError::TooLong => ApiError::new(ErrorCode::MessageTooLong, e.to_string()),
        TextError::Empty => ApiError::invalid(e.to_string()),
    })?;
    Ok(AppendRequest {
        conversation_id,
        sender_id: sender,
        client_msg_id,
        text,
    })
}

/// The protocol error for a refused append.
pub fn append_error(e: AppendError) -> ApiError {
    match e {
        // A missing conversation answers like a foreign one, so ids cannot be probed.
        AppendError::NoConversation | AppendError::NotMember => ApiError::forbidden(),
    }
}
