//! Newtype identifiers. Each id is a `u64` internally (compact, big-endian sortable keys) and a
//! decimal string on the wire, so clients in any language can treat ids as opaque strings.

use std::fmt;
use std::str::FromStr;

/// The error for an id string that is not a positive decimal integer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid id: expected a positive decimal integer")]
pub struct IdParseError;

macro_rules! numeric_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u64);

        impl $name {
            /// The id as big-endian bytes, the form used inside storage keys so that byte order
            /// equals numeric order.
            pub fn to_be_bytes(self) -> [u8; 8] {
                self.0.to_be_bytes()
            }

            /// Reads an id back from the big-endian form written by `to_be_bytes`.
            pub fn from_be_bytes(bytes: [u8; 8]) -> Self {
                Self(u64::from_be_bytes(bytes))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                // Ids are allocated from 1; leading '+' or whitespace are not ids.
                if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(IdParseError);
                }
                match s.parse::<u64>() {
                    Ok(0) | Err(_) => Err(IdParseError),
                    Ok(v) => Ok(Self(v)),
                }
            }
        }
    };
}

numeric_id!(
    /// A registered account.
    UserId
);
numeric_id!(
    /// One login of an account: each session creates a new device with its own token and cursor.
    DeviceId
);
numeric_id!(
    /// A conversation (direct or group); owns one storage timeline.
    ConversationId
);
numeric_id!(
    /// A friend request.
    RequestId
);

/// Position of a message in its conversation's storage timeline: 1, 2, 3, … without gaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Seq(pub u64);

impl Seq {
    /// The seq that follows this one.
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Position of an event in a user's sync timeline (inbox): 1, 2, 3, … without gaps.
/// `Cursor(0)` means "nothing seen yet".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Cursor(pub u64);

impl Cursor {
    /// The cursor that follows this one.
    pub fn next(self) -> Cursor {
        Cursor(self.0 + 1)
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The client's id for a message it sends; `(sender, client_msg_id)` identifies a message
/// forever and makes resends idempotent.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientMsgId(String);

impl ClientMsgId {
    /// Accepts 1 to `CLIENT_MSG_ID_BYTES_MAX` printable ASCII bytes.
    pub fn new(raw: impl Into<String>) -> Result<Self, crate::ValidationError> {
        let raw = raw.into();
        let ok_len = !raw.is_empty() && raw.len() <= crate::limits::CLIENT_MSG_ID_BYTES_MAX;
        let ok_chars = raw.bytes().all(|b| b.is_ascii_graphic());
        if ok_len && ok_chars {
            Ok(Self(raw))
        } else {
            Err(crate::ValidationError::ClientMsgId)
        }
    }

    /// The id as sent by the client.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientMsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_only_positive_decimals() {
        assert_eq!("42".parse::<UserId>(), Ok(UserId(42)));
        assert!("0".parse::<UserId>().is_err());
        assert!("-1".parse::<UserId>().is_err());
        assert!("+1".parse::<UserId>().is_err());
        assert!("".parse::<UserId>().is_err());
        assert!("99999999999999999999999".parse::<UserId>().is_err());
        assert_eq!(UserId(7).to_string(), "7");
    }

    #[test]
    fn big_endian_bytes_sort_numerically() {
        assert!(Seq(1).0.to_be_bytes() < Seq(256).0.to_be_bytes());
        assert_eq!(
            UserId::from_be_bytes(UserId(300).to_be_bytes()),
            UserId(300)
        );
    }

    #[test]
    fn client_msg_id_bounds() {
        assert!(ClientMsgId::new("abc-123").is_ok());
        assert!(ClientMsgId::new("").is_err());
        assert!(ClientMsgId::new("has space").is_err());
        assert!(ClientMsgId::new("x".repeat(crate::limits::CLIENT_MSG_ID_BYTES_MAX + 1)).is_err());
    }
}
