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

/// Default largest group whose read receipts are pushed as events, in members. Each read
/// action writes one `receipt` event into every other member's inbox, so a group of n members
/// whose members all read every message writes about n² events per message: 9,900 at 100
/// members, 249,500 at 500. Larger groups answer receipt queries instead, as read-fan-out
/// groups do.
pub const RECEIPT_EVENTS_MAX_DEFAULT: u32 = 100;

/// The most user ids one request may name (group creation, adding members, presence).
pub const USER_IDS_PER_REQUEST_MAX: usize = 10_000;

/// Unread counts are exact up to this many unread messages and reported as this value beyond.
pub const UNREAD_COUNT_MAX: u64 = 9_999;

/// Bytes of message text after which a page read from a store stops taking messages (the one
/// that crosses the bound is kept). A page sent to a client is also cut to a JSON byte budget
/// (`magpie_protocol::page`), but only after it has been read and copied: without this bound
/// a request would hold up to [`PAGE_LIMIT_MAX`] messages of 400 KB each (80 MB) first. No
/// single message reaches the bound (checked below), so a page the bound stopped holds at
/// least two messages and more text than the JSON budget allows: the JSON cut then happens
/// too, and the page says it was truncated.
pub const PAGE_TEXT_BYTES_MAX: usize = 1024 * 1024;

// A message's text is at most MESSAGE_CHARS_MAX characters of at most 4 bytes each.
const _: () = assert!(MESSAGE_CHARS_MAX * 4 < PAGE_TEXT_BYTES_MAX);

/// Counts the text of a page being read (see [`PAGE_TEXT_BYTES_MAX`]).
#[derive(Debug, Default)]
pub struct PageText {
    /// Text bytes of the items taken so far.
    bytes: usize,
}

impl PageText {
    /// Counts one item carrying `text_bytes` of text, which the page keeps. True while the
    /// page may take another item.
    pub fn take(&mut self, text_bytes: usize) -> bool {
        self.bytes = self.bytes.saturating_add(text_bytes);
        self.bytes <= PAGE_TEXT_BYTES_MAX
    }

    /// True if a page read whose items carry these text sizes was stopped by the bound,
    /// rather than by its limit or the end of the timeline: only then is its text over it.
    pub fn stopped(sizes: impl IntoIterator<Item = usize>) -> bool {
        let total = sizes.into_iter().fold(0usize, usize::saturating_add);
        total > PAGE_TEXT_BYTES_MAX
    }

    /// How many of the items whose text sizes `sizes` yields, in order, one page takes.
    pub fn fitting(sizes: impl IntoIterator<Item = usize>) -> usize {
        let mut page = PageText::default();
        let mut n = 0;
        for size in sizes {
            n += 1;
            if !page.take(size) {
                break;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_keeps_the_message_that_crosses_the_text_bound_and_stops_after_it() {
        let big = MESSAGE_CHARS_MAX * 4;
        assert_eq!(PageText::fitting([]), 0);
        assert_eq!(PageText::fitting([big]), 1);
        assert_eq!(
            PageText::fitting([10; 500]),
            500,
            "small messages never stop a page"
        );
        // 400 KB, 800 KB, 1.2 MB: the third crosses 1 MiB and is the last one taken.
        assert_eq!(PageText::fitting([big; 200]), 3);
        let mut page = PageText::default();
        assert!(page.take(PAGE_TEXT_BYTES_MAX));
        assert!(!page.take(1));
        assert!(!PageText::stopped([big, big]));
        assert!(PageText::stopped([big; 3]));
        assert!(!PageText::stopped([]));
    }
}
