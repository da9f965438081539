//! The SDK's error type.

use magpie_protocol::ErrorCode;

/// Everything that can go wrong in the SDK.
#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    /// The server answered with an error status and (usually) a v1 error body.
    #[error("server refused the request ({status} {}): {message}", code.as_str())]
    Api {
        /// The HTTP status.
        status: u16,
        /// The machine-readable code from the body (guessed from the status if the body was
        /// not a v1 error body, e.g. a proxy's error page).
        code: ErrorCode,
        /// The human-readable explanation.
        message: String,
    },
    /// The HTTP request failed at the transport level (connect, timeout, body decoding).
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// The WebSocket failed. Boxed because tungstenite's error is large.
    #[error("websocket: {0}")]
    Ws(#[from] Box<tokio_tungstenite::tungstenite::Error>),
    /// The server sent something the wire contract does not allow.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// Local I/O failed (cursor store).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// An argument was refused before anything went on the wire (empty text, bad URL, ...).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// `Session::send` found the outbox at capacity; retry after some `Sent` events.
    #[error("outbox full: too many unacknowledged sends")]
    OutboxFull,
    /// Too many `read`/`typing`/`pull` requests are waiting for the connection.
    #[error("too many requests waiting for the connection")]
    QueueFull,
    /// The session's background task has stopped (closed, or revoked).
    #[error("session closed")]
    Closed,
}

impl SdkError {
    /// Whether this is an HTTP 401: the token is missing, wrong or revoked.
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, SdkError::Api { status: 401, .. })
    }

    /// The error code if the server answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            SdkError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for SdkError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        SdkError::Ws(Box::new(e))
    }
}

/// The SDK's result type.
pub type Result<T, E = SdkError> = std::result::Result<T, E>;

/// The code a bare HTTP status most likely means, for error bodies that are not v1 bodies.
pub(crate) fn code_for_status(status: u16) -> ErrorCode {
    match status {
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Forbidden,
        404 => ErrorCode::NotFound,
        409 => ErrorCode::UsernameTaken,
        413 => ErrorCode::PayloadTooLarge,
        429 => ErrorCode::RateLimited,
        502..=504 => ErrorCode::Unavailable,
        500..=599 => ErrorCode::Internal,
        _ => ErrorCode::InvalidRequest,
    }
}
