//! Validation of user-supplied values, shared by every entry point (HTTP, WebSocket, SDK).

use crate::limits::*;

/// Why a user-supplied value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error(
        "username must be {USERNAME_BYTES_MIN} to {USERNAME_BYTES_MAX} characters of [a-z0-9_]"
    )]
    Username,
    #[error("password must be {PASSWORD_CHARS_MIN} to {PASSWORD_CHARS_MAX} characters")]
    Password,
    #[error("client_msg_id must be 1 to {CLIENT_MSG_ID_BYTES_MAX} printable ASCII characters")]
    ClientMsgId,
}

/// Why a message text was refused. Kept apart from [`ValidationError`] because the protocol
/// reports "too long" with its own error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("message text must not be empty")]
    Empty,
    #[error("message text is longer than {MESSAGE_CHARS_MAX} characters")]
    TooLong,
}

/// Checks the username alphabet and length.
pub fn validate_username(name: &str) -> Result<(), ValidationError> {
    let len_ok = (USERNAME_BYTES_MIN..=USERNAME_BYTES_MAX).contains(&name.len());
    let chars_ok = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if len_ok && chars_ok {
        Ok(())
    } else {
        Err(ValidationError::Username)
    }
}

/// Checks the password length in characters.
pub fn validate_password(password: &str) -> Result<(), ValidationError> {
    let chars = password.chars().count();
    if (PASSWORD_CHARS_MIN..=PASSWORD_CHARS_MAX).contains(&chars) {
        Ok(())
    } else {
        Err(ValidationError::Password)
    }
}

/// Checks that a message text has 1 to `MESSAGE_CHARS_MAX` characters.
pub fn validate_text(text: &str) -> Result<(), TextError> {
    if text.is_empty() {
        return Err(TextError::Empty);
    }
    // Counting chars is O(n); the byte length bounds it first so huge inputs exit early.
    if text.len() > MESSAGE_CHARS_MAX * 4 || text.chars().count() > MESSAGE_CHARS_MAX {
        return Err(TextError::TooLong);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert!(validate_username("alice_01").is_ok());
        assert!(validate_username("al").is_err());
        assert!(validate_username("Alice").is_err());
        assert!(validate_username(&"a".repeat(33)).is_err());
    }

    #[test]
    fn texts_count_characters_not_bytes() {
        assert!(validate_text(&"é".repeat(MESSAGE_CHARS_MAX)).is_ok());
        assert_eq!(
            validate_text(&"x".repeat(MESSAGE_CHARS_MAX + 1)),
            Err(TextError::TooLong)
        );
        assert_eq!(validate_text(""), Err(TextError::Empty));
    }
}
