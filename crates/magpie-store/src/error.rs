//! Storage errors.

/// A failure of the storage backend itself. Callers report these as `unavailable`/`internal`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The engine reported an I/O or corruption error.
    #[error("storage engine error: {0}")]
    Engine(String),
    /// A durable write failed earlier; the store refuses writes until restarted because the
    /// on-disk state of the failed batch is unknown.
    #[error("store is poisoned after a failed write; restart required")]
    Poisoned,
    /// The store is shutting down.
    #[error("store is closed")]
    Closed,
    /// The username already exists.
    #[error("username is taken")]
    UsernameTaken,
    /// A record that the operation needs does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A stored record could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
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

impl From<fjall::Error> for StoreError {
    fn from(e: fjall::Error) -> Self {
        StoreError::Engine(e.to_string())
    }
}
