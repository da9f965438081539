//! Exactly-once, in-order delivery of inbox events.
//!
//! The inbox is gap-free (cursors 1, 2, 3, …), but a client sees events through several paths
//! that can overlap or miss: the `sync` replay after (re)connecting, live pushes, and HTTP
//! gap fills. [`Sequencer`] is the pure rule that decides what to do with each event;
//! [`accept_live`] applies it, filling gaps from an [`EventSource`].

use magpie_protocol::ws::WireEvent;

use crate::error::Result;

/// An inbox event as received: one this SDK understands, or one of a kind added to the
/// protocol later, of which only the cursor matters (it must still be stepped over).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Inbound {
    /// A known event.
    Event(WireEvent),
    /// An event of an unknown kind at this cursor.
    Unknown(u64),
}

impl Inbound {
    /// Reads one event object (`{"cursor",...,"kind",...}`, or a whole `event` frame):
    /// a known kind, or any other object with a valid cursor as `Unknown`.
    pub(crate) fn from_value(value: serde_json::Value) -> Option<Inbound> {
        let cursor = value.get("cursor").and_then(serde_json::Value::as_u64)?;
        match serde_json::from_value::<WireEvent>(value) {
            Ok(event) => Some(Inbound::Event(event)),
            Err(e) => {
                tracing::debug!(cursor, error = %e, "stepping over an event of an unknown kind");
                Some(Inbound::Unknown(cursor))
            }
        }
    }

    /// The event's inbox cursor.
    pub(crate) fn cursor(&self) -> u64 {
        match self {
            Inbound::Event(e) => e.cursor,
            Inbound::Unknown(cursor) => *cursor,
        }
    }
}

/// What to do with an incoming event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The next expected event: hand it to the application.
    Deliver,
    /// Already delivered (cursor ≤ last delivered): drop it.
    Duplicate,
    /// Events `after + 1 ..= before - 1` are missing and must be fetched first.
    Gap {
        /// The last delivered cursor.
        after: u64,
        /// The cursor of the event that revealed the gap.
        before: u64,
    },
}

/// Tracks the last cursor handed to the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sequencer {
    /// The highest cursor delivered; 0 before the first event.
    last: u64,
}

impl Sequencer {
    /// A sequencer that has already delivered everything up to `last_delivered`.
    pub fn new(last_delivered: u64) -> Self {
        Self {
            last: last_delivered,
        }
    }

    /// The highest cursor delivered so far (where a `sync` should resume).
    pub fn last_delivered(&self) -> u64 {
        self.last
    }

    /// Classifies an event by its cursor.
    pub fn check(&self, cursor: u64) -> Verdict {
        if cursor <= self.last {
            Verdict::Duplicate
        } else if cursor == self.last + 1 {
            Verdict::Deliver
        } else {
            Verdict::Gap {
                after: self.last,
                before: cursor,
            }
        }
    }

    /// Records that the event at `cursor` was delivered. Cursors never move backwards.
    pub fn delivered(&mut self, cursor: u64) {
        self.last = self.last.max(cursor);
    }
}

/// Where missing events come from (`GET /v1/sync` in the session).
pub(crate) trait EventSource {
    /// Up to one page of events with cursor > `after`, ascending.
    async fn fetch_after(&mut self, after: u64) -> Result<Vec<Inbound>>;
}

/// Where accepted events go (the application's channel in the session).
pub(crate) trait EventSink {
    /// Hands one event on. An error stops processing (the application went away).
    async fn deliver(&mut self, event: Inbound) -> Result<()>;
}

/// How `accept_live` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Accepted {
    /// Delivered, after filling any gap completely (or it was a duplicate).
    InOrder,
    /// Delivered, but the source could not supply every missing event; the gap was skipped.
    SkippedGap {
        /// Cursors in `from..=to` were never delivered.
        from: u64,
        /// See `from`.
        to: u64,
    },
}

/// Accepts one pushed event: drops duplicates, fills a gap in front of it from `source`
/// (delivering page by page, so memory stays bounded), then delivers it.
pub(crate) async fn accept_live<S: EventSource, K: EventSink>(
    seq: &mut Sequencer,
    event: Inbound,
    source: &mut S,
    sink: &mut K,
) -> Result<Accepted> {
    let target = event.cursor();
    let mut outcome = Accepted::InOrder;
    match seq.check(target) {
        Verdict::Duplicate => return Ok(Accepted::InOrder),
        Verdict::Deliver => {}
        Verdict::Gap { .. } => {
            // The HTTP answer lists every event that exists after a cursor, so anything
            // newer than `last` in it is deliverable, even if it reaches past `target`.
            while seq.last_delivered() + 1 < target {
                let before = seq.last_delivered();
                for e in source.fetch_after(before).await? {
                    if e.cursor() > seq.last_delivered() {
                        let cursor = e.cursor();
                        sink.deliver(e).await?;
                        seq.delivered(cursor);
                    }
                }
                if seq.last_delivered() == before {
                    break; // No progress: the source has nothing more to give.
                }
            }
            if seq.last_delivered() + 1 < target {
                outcome = Accepted::SkippedGap {
                    from: seq.last_delivered() + 1,
                    to: target - 1,
                };
            }
        }
    }
    if target > seq.last_delivered() {
        sink.deliver(event).await?;
        seq.delivered(target);
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use magpie_core::{ConversationId, UserId};
    use magpie_protocol::ws::{EventBody, WireMessage};

    fn ev(cursor: u64) -> Inbound {
        Inbound::Event(WireEvent {
            cursor,
            body: EventBody::Message {
                message: WireMessage {
                    conversation_id: ConversationId(1),
                    seq: cursor,
                    sender_id: UserId(1),
                    client_msg_id: format!("c{cursor}"),
                    text: "t".into(),
                    ts_ms: 0,
                    kind: "text".into(),
                    system: None,
                },
            },
        })
    }

    /// A server inbox holding cursors `1..=len` except `holes`, paged by `page`.
    struct FakeInbox {
        len: u64,
        holes: Vec<u64>,
        page: usize,
        fetches: Vec<u64>,
    }

    impl EventSource for FakeInbox {
        async fn fetch_after(&mut self, after: u64) -> Result<Vec<Inbound>> {
            self.fetches.push(after);
            Ok((after + 1..=self.len)
                .filter(|c| !self.holes.contains(c))
                .take(self.page)
                .map(ev)
                .collect())
        }
    }

    #[derive(Default)]
    struct Collect(Vec<u64>);

    impl EventSink for Collect {
        async fn deliver(&mut self, event: Inbound) -> Result<()> {
            self.0.push(event.cursor());
            Ok(())
        }
    }

    #[test]
    fn verdicts() {
        let mut s = Sequencer::new(5);
        assert_eq!(s.check(3), Verdict::Duplicate);
        assert_eq!(s.check(5), Verdict::Duplicate);
        assert_eq!(s.check(6), Verdict::Deliver);
        assert_eq!(
            s.check(9),
            Verdict::Gap {
                after: 5,
                before: 9
            }
        );
        s.delivered(6);
        assert_eq!(s.last_delivered(), 6);
        s.delivered(2);
        assert_eq!(s.last_delivered(), 6, "never moves backwards");
    }

    #[tokio::test]
    async fn in_order_and_duplicates_need_no_fetch() {
        let mut seq = Sequencer::new(0);
        let mut src = FakeInbox {
            len: 100,
            holes: vec![],
            page: 10,
            fetches: vec![],
        };
        let mut out = Collect::default();
        for c in [1, 2, 2, 1, 3] {
            accept_live(&mut seq, ev(c), &mut src, &mut out)
                .await
                .unwrap();
        }
        assert_eq!(out.0, vec![1, 2, 3]);
        assert!(src.fetches.is_empty());
    }

    #[tokio::test]
    async fn gap_is_filled_page_by_page_before_the_live_event() {
        let mut seq = Sequencer::new(2);
        let mut src = FakeInbox {
            len: 12,
            holes: vec![],
            page: 3,
            fetches: vec![],
        };
        let mut out = Collect::default();
        let r = accept_live(&mut seq, ev(12), &mut src, &mut out)
            .await
            .unwrap();
        assert_eq!(r, Accepted::InOrder);
        assert_eq!(out.0, (3..=12).collect::<Vec<_>>());
        assert_eq!(src.fetches, vec![2, 5, 8]);
        // The live copies of events the fill already delivered are duplicates now.
        accept_live(&mut seq, ev(11), &mut src, &mut out)
            .await
            .unwrap();
        accept_live(&mut seq, ev(12), &mut src, &mut out)
            .await
            .unwrap();
        assert_eq!(out.0.len(), 10);
    }

    #[tokio::test]
    async fn fill_may_overshoot_the_live_event_without_repeating_it() {
        let mut seq = Sequencer::new(0);
        let mut src = FakeInbox {
            len: 8,
            holes: vec![],
            page: 50,
            fetches: vec![],
        };
        let mut out = Collect::default();
        accept_live(&mut seq, ev(4), &mut src, &mut out)
            .await
            .unwrap();
        assert_eq!(out.0, (1..=8).collect::<Vec<_>>());
        assert_eq!(seq.last_delivered(), 8);
    }

    #[test]
    fn unknown_kinds_parse_as_cursors() {
        let known = serde_json::json!({"cursor":4,"kind":"group_left","conversation_id":"9"});
        assert!(matches!(
            Inbound::from_value(known),
            Some(Inbound::Event(_))
        ));
        let unknown = serde_json::json!({"cursor":5,"kind":"sticker_pack","x":1});
        assert_eq!(Inbound::from_value(unknown), Some(Inbound::Unknown(5)));
        assert_eq!(Inbound::from_value(serde_json::json!({"kind":"x"})), None);
    }

    #[tokio::test]
    async fn unknown_kinds_are_stepped_over() {
        let mut seq = Sequencer::new(0);
        let mut src = FakeInbox {
            len: 0,
            holes: vec![],
            page: 10,
            fetches: vec![],
        };
        let mut out = Collect::default();
        accept_live(&mut seq, ev(1), &mut src, &mut out)
            .await
            .unwrap();
        accept_live(&mut seq, Inbound::Unknown(2), &mut src, &mut out)
            .await
            .unwrap();
        accept_live(&mut seq, ev(3), &mut src, &mut out)
            .await
            .unwrap();
        assert_eq!(out.0, vec![1, 2, 3]);
        assert!(src.fetches.is_empty(), "an unknown kind is not a gap");
    }

    #[tokio::test]
    async fn unfillable_gap_is_skipped_not_looped_on() {
        let mut seq = Sequencer::new(0);
        let mut src = FakeInbox {
            len: 3,
            holes: vec![2, 3],
            page: 10,
            fetches: vec![],
        };
        let mut out = Collect::default();
        let r = accept_live(&mut seq, ev(5), &mut src, &mut out)
            .await
            .unwrap();
        assert_eq!(r, Accepted::SkippedGap { from: 2, to: 4 });
        assert_eq!(out.0, vec![1, 5]);
        assert_eq!(
            src.fetches,
            vec![0, 1],
            "stops once the source makes no progress"
        );
    }
}
