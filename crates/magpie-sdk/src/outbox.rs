//! Sends that the server has not yet answered, kept so they survive reconnects.
//!
//! An entry stays until the server answers `sent` (including `duplicate: true`, which means an
//! earlier copy got through) or a definitive `error`. After a reconnect every entry is written
//! again with the same `client_msg_id`; the server's per-sender dedup makes that safe.

use std::collections::VecDeque;

use magpie_core::ConversationId;
use magpie_protocol::ws::ClientFrame;
use tokio::time::Instant;

use crate::error::{Result, SdkError};

/// How many unanswered sends a session holds by default.
pub const OUTBOX_CAPACITY_DEFAULT: usize = 1_024;

/// One unanswered send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingSend {
    /// The idempotency key, unique per sender.
    pub client_msg_id: String,
    /// Where it goes.
    pub conversation_id: ConversationId,
    /// The message text (already validated).
    pub text: String,
    /// Whether it was written on the current connection (reset on every reconnect).
    written: bool,
    /// Transient refusals (`rate_limited`, `unavailable`, `internal`) so far.
    refusals: u32,
    /// After a refusal: not written again before this instant.
    not_before: Option<Instant>,
}

impl PendingSend {
    /// A send not yet written anywhere.
    pub fn new(client_msg_id: String, conversation_id: ConversationId, text: String) -> Self {
        Self {
            client_msg_id,
            conversation_id,
            text,
            written: false,
            refusals: 0,
            not_before: None,
        }
    }

    fn frame(&self) -> ClientFrame {
        ClientFrame::Send {
            client_msg_id: self.client_msg_id.clone(),
            conversation_id: self.conversation_id,
            text: self.text.clone(),
        }
    }
}

/// A bounded, ordered set of unanswered sends.
#[derive(Debug)]
pub struct Outbox {
    /// In the order the application sent them; resends keep that order.
    entries: VecDeque<PendingSend>,
    /// The most entries held at once.
    capacity: usize,
}

impl Outbox {
    /// An empty outbox holding at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Queues a send. Returns `Ok(false)` without queueing if an entry with the same
    /// `client_msg_id` is already pending (it will be answered once), `OutboxFull` at capacity.
    pub fn push(&mut self, send: PendingSend) -> Result<bool> {
        if self.contains(&send.client_msg_id) {
            return Ok(false);
        }
        if self.entries.len() >= self.capacity {
            return Err(SdkError::OutboxFull);
        }
        self.entries.push_back(send);
        Ok(true)
    }

    /// The frames of every entry not yet written on this connection and not held back after
    /// a refusal until later than `now`, in order, marking them written. An entry held back
    /// also holds back the later unwritten entries of its conversation, so that a refusal
    /// does not let later messages overtake it (those already written may still have).
    pub fn take_unwritten(&mut self, now: Instant) -> Vec<ClientFrame> {
        let mut held: Vec<ConversationId> = Vec::new();
        let mut frames = Vec::new();
        for e in self.entries.iter_mut().filter(|e| !e.written) {
            if held.contains(&e.conversation_id) {
                continue;
            }
            if e.not_before.is_some_and(|t| t > now) {
                held.push(e.conversation_id);
                continue;
            }
            e.written = true;
            e.not_before = None;
            frames.push(e.frame());
        }
        frames
    }

    /// Removes and returns the entry for `client_msg_id` (answered by `sent` or a definitive
    /// error). `None` if it is not pending.
    pub fn complete(&mut self, client_msg_id: &str) -> Option<PendingSend> {
        let i = self
            .entries
            .iter()
            .position(|e| e.client_msg_id == client_msg_id)?;
        self.entries.remove(i)
    }

    /// Marks one entry for rewriting (after a transient error such as `rate_limited`), no
    /// sooner than `at(n)`, where `n` is how often it has been refused so far, this time
    /// included. Returns `n`, or `None` if it is not pending.
    pub fn retry(&mut self, client_msg_id: &str, at: impl FnOnce(u32) -> Instant) -> Option<u32> {
        let e = self
            .entries
            .iter_mut()
            .find(|e| e.client_msg_id == client_msg_id)?;
        e.written = false;
        e.refusals = e.refusals.saturating_add(1);
        e.not_before = Some(at(e.refusals));
        Some(e.refusals)
    }

    /// A copy of the oldest entry.
    pub fn oldest(&self) -> Option<PendingSend> {
        self.entries.front().cloned()
    }

    /// Removes and returns every entry, oldest first.
    pub fn drain(&mut self) -> Vec<PendingSend> {
        self.entries.drain(..).collect()
    }

    /// The earliest instant an entry held back after a refusal may be written again.
    pub fn next_hold(&self) -> Option<Instant> {
        self.entries
            .iter()
            .filter(|e| !e.written)
            .filter_map(|e| e.not_before)
            .min()
    }

    /// Marks everything unwritten: the connection they were written on is gone, and with it
    /// any answer still in flight.
    pub fn reset_written(&mut self) {
        self.entries.iter_mut().for_each(|e| e.written = false);
    }

    /// Whether `client_msg_id` is pending.
    pub fn contains(&self, client_msg_id: &str) -> bool {
        self.entries
            .iter()
            .any(|e| e.client_msg_id == client_msg_id)
    }

    /// Pending entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: &str) -> PendingSend {
        PendingSend::new(id.into(), ConversationId(1), format!("text {id}"))
    }

    fn ids(frames: &[ClientFrame]) -> Vec<String> {
        frames
            .iter()
            .map(|f| match f {
                ClientFrame::Send { client_msg_id, .. } => client_msg_id.clone(),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn bounded_and_idempotent() {
        let mut o = Outbox::new(2);
        assert!(o.push(p("a")).unwrap());
        assert!(!o.push(p("a")).unwrap(), "same id is not queued twice");
        assert!(o.push(p("b")).unwrap());
        assert!(matches!(o.push(p("c")), Err(SdkError::OutboxFull)));
        o.complete("a");
        assert!(o.push(p("c")).unwrap());
    }

    #[test]
    fn resends_everything_unanswered_in_order_after_reconnect() {
        let mut o = Outbox::new(10);
        for id in ["a", "b", "c"] {
            o.push(p(id)).unwrap();
        }
        let now = Instant::now();
        assert_eq!(ids(&o.take_unwritten(now)), ["a", "b", "c"]);
        assert!(
            o.take_unwritten(now).is_empty(),
            "written once per connection"
        );
        assert_eq!(o.complete("a").map(|e| e.text), Some("text a".into()));
        o.push(p("d")).unwrap();
        assert_eq!(ids(&o.take_unwritten(now)), ["d"]);
        o.reset_written();
        assert_eq!(ids(&o.take_unwritten(now)), ["b", "c", "d"]);
        let later = now + std::time::Duration::from_secs(1);
        assert_eq!(o.retry("c", |_| later), Some(1));
        assert_eq!(o.retry("zz", |_| later), None);
        assert!(o.take_unwritten(now).is_empty(), "held back until `later`");
        assert_eq!(ids(&o.take_unwritten(later)), ["c"]);
        assert_eq!(o.retry("c", |_| later), Some(2), "refusals add up");
        assert!(o.complete("zz").is_none());
        assert_eq!(o.len(), 3);
    }

    #[test]
    fn a_held_send_holds_back_the_later_sends_of_its_conversation_only() {
        let mut o = Outbox::new(10);
        let other = PendingSend::new("x".into(), ConversationId(2), "other".into());
        for send in [p("a"), p("b"), other, p("c")] {
            o.push(send).unwrap();
        }
        let now = Instant::now();
        let later = now + std::time::Duration::from_secs(1);
        assert_eq!(ids(&o.take_unwritten(now)), ["a", "b", "x", "c"]);
        // "a" is refused before "b" and "c" were answered; the connection drops, so all four
        // are written again, but "a" is held back: "b" and "c" must not overtake it.
        o.reset_written();
        o.retry("a", |_| later);
        assert_eq!(
            ids(&o.take_unwritten(now)),
            ["x"],
            "only the other conversation"
        );
        assert_eq!(
            ids(&o.take_unwritten(later)),
            ["a", "b", "c"],
            "in order once due"
        );
    }
}
