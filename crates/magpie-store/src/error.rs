//! Storage errors.

/// A failure of the storage backend itself. Callers report these as `unavailable`/`internal`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The engine reported an I/O or corruption error.
    #[error("storage engine error: {0}")]
    Engine(String),
    /// Another process holds the database's lock file (another server on the same data
    /// directory), found when opening it.
    #[error("the database is locked by another process (is another magpie server using this data directory?)")]
    InUse,
    /// A durable write failed earlier; the store refuses writes until restarted because the
    /// on-disk state of the failed batch is unknown.
    #[error("store is poisoned after a failed write; restart required")]
    Poisoned,
    /// The store is shutting down.
    #[error("store is closed")]
    Closed,
    /// A commit has been waiting on the disk for this many milliseconds (a hung disk): every
    /// write waits behind it. Reported by `Store::health`.
    #[error("a commit has been waiting on the disk for {0} ms")]
    Stalled(u64),
    /// The username already exists.
    #[error("username is taken")]
    UsernameTaken,
    /// A record that the operation needs does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A stored record could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// A call carried more items than the `Store` contract allows; nothing was written.
    #[error("too many {0} in one call")]
    TooMany(&'static str),
}

/// Why one message of an append batch was refused (the others are unaffected).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// The conversation does not exist.
    #[error("conversation not found")]
    NoConversation,
    /// The sender is not a member of the conversation.
    #[error("sender is not a member of the conversation")]
    NotMember,
}

/// Why a group or membership operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// No such conversation.
    #[error("conversation not found")]
    NotFound,
    /// The operation needs a group, and this is a direct conversation.
    #[error("not a group")]
    NotGroup,
    /// The actor (or the target user) is not a member.
    #[error("not a member")]
    NotMember,
    /// The actor's role does not allow this.
    #[error("not allowed")]
    Forbidden,
    /// The group would exceed its member limit.
    #[error("group is full ({max} members)")]
    GroupFull { max: u32 },
    /// A named user does not exist.
    #[error("unknown user {0}")]
    UnknownUser(magpie_core::UserId),
}

/// Why a friend operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FriendError {
    /// A request to oneself.
    #[error("cannot befriend yourself")]
    SelfRequest,
    /// They are friends already.
    #[error("already friends")]
    AlreadyFriends,
    /// The other user does not exist.
    #[error("unknown user")]
    UnknownUser,
    /// No such pending request.
    #[error("friend request not found")]
    NotFound,
    /// Only the addressee may answer.
    #[error("only the addressee may answer a friend request")]
    NotAddressee,
}

impl From<fjall::Error> for StoreError {
    fn from(e: fjall::Error) -> Self {
        match e {
            fjall::Error::Locked => StoreError::InUse,
            e => StoreError::Engine(e.to_string()),
        }
    }
}
