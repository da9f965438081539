//! How far the inbox has been processed when messages can be held back.
//!
//! Inbox events reach the session in cursor order, but a `message` event may be held by the
//! [`ConversationTracker`](crate::ConversationTracker) until a pull fills the gap before it,
//! and in manual-ack mode nothing counts as processed until the application says so. The
//! cursor that may be acked (and persisted) is therefore the one just before the oldest
//! event that is not yet settled. [`InboxProgress`] keeps those unsettled events, bounded.

use std::collections::VecDeque;

use magpie_core::ConversationId;

/// Unsettled inbox events held by default before the oldest is given up on.
pub const UNSETTLED_EVENTS_MAX_DEFAULT: usize = 16_384;

/// What an inbox event was, as far as settling is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxItem {
    /// An event of a kind this SDK does not know: nothing to wait for.
    Ignored,
    /// Any other non-message event (handed to the application as is).
    Event,
    /// A `message` event (handed to the application by the tracker, possibly later).
    Message {
        /// Its conversation.
        conversation_id: ConversationId,
        /// Its seq.
        seq: u64,
    },
}

/// The unsettled suffix of the inbox.
#[derive(Debug, Clone)]
pub struct InboxProgress {
    /// Unsettled events in cursor order.
    queue: VecDeque<(u64, InboxItem)>,
    /// The highest cursor seen.
    last: u64,
    /// Most unsettled events held; beyond, the oldest is treated as settled.
    cap: usize,
}

impl InboxProgress {
    /// Everything up to `cursor` is settled.
    pub fn new(cursor: u64, cap: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            last: cursor,
            cap: cap.max(1),
        }
    }

    /// Records the event at `cursor` (cursors must increase; older ones are ignored).
    pub fn push(&mut self, cursor: u64, item: InboxItem) {
        if cursor <= self.last {
            return;
        }
        self.last = cursor;
        self.queue.push_back((cursor, item));
    }

    /// Drops settled events from the front (those `settled` says yes to, and the oldest beyond
    /// the bound) and returns the processed cursor: everything up to it is settled. Returns
    /// how many events were given up on because of the bound, too.
    pub fn advance(&mut self, mut settled: impl FnMut(u64, &InboxItem) -> bool) -> (u64, usize) {
        let mut forced = 0;
        while let Some((cursor, item)) = self.queue.front() {
            if settled(*cursor, item) {
                self.queue.pop_front();
            } else if self.queue.len() > self.cap {
                self.queue.pop_front();
                forced += 1;
            } else {
                break;
            }
        }
        (self.processed(), forced)
    }

    /// Everything up to this cursor is settled.
    pub fn processed(&self) -> u64 {
        match self.queue.front() {
            Some((cursor, _)) => cursor.saturating_sub(1),
            None => self.last,
        }
    }

    /// How many events are unsettled.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether every event seen is settled.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(seq: u64) -> InboxItem {
        InboxItem::Message {
            conversation_id: ConversationId(1),
            seq,
        }
    }

    #[test]
    fn processed_stops_before_the_oldest_unsettled_event() {
        let mut p = InboxProgress::new(10, 100);
        p.push(11, InboxItem::Event);
        p.push(12, m(5));
        p.push(13, InboxItem::Event);
        p.push(12, InboxItem::Event); // old: ignored
                                      // The message at 12 is held back; 13 is settled but behind it.
        let (cursor, forced) = p.advance(|c, _| c != 12);
        assert_eq!((cursor, forced), (11, 0));
        assert_eq!(p.len(), 2);
        let (cursor, _) = p.advance(|_, _| true);
        assert_eq!(cursor, 13);
        assert!(p.is_empty());
    }

    #[test]
    fn bound_gives_up_on_the_oldest() {
        let mut p = InboxProgress::new(0, 2);
        for c in 1..=4 {
            p.push(c, m(c));
        }
        let (cursor, forced) = p.advance(|_, _| false);
        assert_eq!((cursor, forced), (2, 2));
        assert_eq!(p.len(), 2);
    }
}
