//! WebSocket close codes Magpie uses (4000–4999 is the application range).

/// The device fell behind: its outbound queue overflowed. Reconnect and `sync` from the last
/// cursor you processed; nothing was lost.
pub const CLOSE_RESYNC: u16 = 4000;
/// The session was logged out; the token no longer works. Do not reconnect with it.
pub const CLOSE_REVOKED: u16 = 4001;
/// No frame arrived for about three heartbeat intervals.
pub const CLOSE_HEARTBEAT_TIMEOUT: u16 = 4002;
/// The server is shutting down; reconnect with backoff.
pub const CLOSE_SHUTDOWN: u16 = 1001;
/// The server could not serve the connection (its store failed or refuses writes); reconnect
/// with backoff. Nothing acknowledged was lost.
pub const CLOSE_SERVER_ERROR: u16 = 1011;
