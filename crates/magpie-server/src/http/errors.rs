//! Mapping of the store's per-operation errors to protocol errors.

use magpie_protocol::ErrorCode;
use magpie_store::{FriendError, GroupError};

use crate::error::ApiError;

/// The protocol error for a refused group operation.
pub fn group_error(e: GroupError) -> ApiError {
    match e {
        GroupError::NotFound | GroupError::NotMember => ApiError::forbidden(),
        GroupError::Forbidden => {
            ApiError::new(ErrorCode::Forbidden, "your role does not allow this")
        }
        GroupError::NotGroup => ApiError::invalid("not a group"),
        GroupError::GroupFull { max } => ApiError::new(
            ErrorCode::GroupFull,
            format!("a group holds at most {max} members"),
        ),
        GroupError::UnknownUser(u) => ApiError::invalid(format!("unknown user {u}")),
    }
}

/// The protocol error for a refused friend operation.
pub fn friend_error(e: FriendError) -> ApiError {
    match e {
        FriendError::SelfRequest => ApiError::invalid("cannot befriend yourself"),
        FriendError::AlreadyFriends => ApiError::new(ErrorCode::AlreadyFriends, "already friends"),
        FriendError::UnknownUser => ApiError::not_found("user"),
        FriendError::NotFound => ApiError::not_found("friend request"),
        FriendError::NotAddressee => {
            ApiError::new(ErrorCode::Forbidden, "only the addressee may answer")
        }
    }
}
