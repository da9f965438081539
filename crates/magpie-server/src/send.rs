//! Validation and error mapping shared by the HTTP and WebSocket send paths, so both give the
//! same answers to the same input.

use magpie_core::{validate_text, ClientMsgId, ConversationId, TextError, UserId};
use magpie_protocol::ErrorCode;
use magpie_store::{AppendError, AppendRequest};

use crate::error::ApiError;

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
