//! Bounds on everything a client can send. Every limit carries its unit in its name.

/// The longest message text, in Unicode scalar values ("characters").
pub const MESSAGE_CHARS_MAX: usize = 100_000;

/// The longest client message id, in bytes.
pub const CLIENT_MSG_ID_BYTES_MAX: usize = 128;

/// Username length bounds, in bytes (usernames are ASCII `[a-z0-9_]`).
pub const USERNAME_BYTES_MIN: usize = 3;
/// See [`USERNAME_BYTES_MIN`].
pub const USERNAME_BYTES_MAX: usize = 32;

/// Password length bounds, in characters. The upper bound keeps Argon2 work per request bounded.
pub const PASSWORD_CHARS_MIN: usize = 8;
/// See [`PASSWORD_CHARS_MIN`].
pub const PASSWORD_CHARS_MAX: usize = 1024;

/// The longest device name, in bytes; longer names are truncated at a char boundary.
pub const DEVICE_NAME_BYTES_MAX: usize = 64;

/// The largest page of messages or events a single read returns.
pub const PAGE_LIMIT_MAX: usize = 200;
/// The page size when the client does not ask for one.
pub const PAGE_LIMIT_DEFAULT: usize = 50;

/// The longest friend-request message, in characters.
pub const FRIEND_MESSAGE_CHARS_MAX: usize = 500;

/// The longest group name, in characters.
pub const GROUP_NAME_CHARS_MAX: usize = 100;

/// Default largest group, in members.
pub const GROUP_MEMBERS_MAX_DEFAULT: u32 = 10_000;

/// Default largest group that still uses write fan-out, in members.
pub const FANOUT_WRITE_MAX_DEFAULT: u32 = 500;

/// The most user ids one request may name (group creation, adding members, presence).
pub const USER_IDS_PER_REQUEST_MAX: usize = 10_000;

/// Unread counts are exact up to this many unread messages and reported as this value beyond.
pub const UNREAD_COUNT_MAX: u64 = 9_999;
