//! The application-facing half of the session task: hands events and ordered messages to the
//! application's channel, runs the [`ConversationTracker`], and works out how far the inbox
//! has been processed (what may be acked and persisted).

use std::collections::HashMap;
use std::time::Duration;

use magpie_core::ConversationId;
use magpie_protocol::ws::{EventBody, WireEvent};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::warn;

use super::SessionEvent;
use crate::acker::AckTracker;
use crate::error::{Result, SdkError};
use crate::progress::{InboxItem, InboxProgress};
use crate::sequencer::{EventSink, Inbound};
use crate::tracker::{ConversationTracker, Effects, PullRequest};

/// Emission, message ordering and progress accounting. Owned by the driver; lives as long as
/// the session (the tracker's state survives reconnects).
pub(super) struct Delivery {
    /// The application's bounded event channel.
    events: mpsc::Sender<SessionEvent>,
    /// Close requests from `Session::close`; closed when every handle is dropped.
    pub(super) close_rx: mpsc::Receiver<oneshot::Sender<()>>,
    /// Callers of `close` waiting for the task to finish.
    pub(super) closers: Vec<oneshot::Sender<()>>,
    /// Per-conversation ordering of messages over both fan-out paths.
    pub(super) tracker: ConversationTracker,
    /// Inbox events not yet settled.
    progress: InboxProgress,
    /// What has been processed vs. acked and persisted.
    pub(super) acker: AckTracker,
    /// Manual ack mode: the application says what it has handled.
    manual: bool,
    /// Manual mode: the highest event cursor the application acked.
    event_acked: u64,
    /// Manual mode: the highest message seq the application acked, per conversation.
    message_acks: HashMap<ConversationId, u64>,
    /// Per conversation, the seq before the first message the tracker released but the
    /// application never got (the channel closed under it); caps what is persisted.
    not_handed_over: HashMap<ConversationId, u64>,
    /// Pulls waiting to be written on the socket.
    pub(super) pulls: Vec<PullRequest>,
    /// Since when per-conversation progress changed without being persisted.
    seqs_dirty_since: Option<Instant>,
    /// Most unsettled inbox events kept.
    unsettled_max: usize,
    /// Debounce of persisted progress.
    debounce: Duration,
}

impl Delivery {
    /// A delivery resuming after inbox `cursor`.
    pub(super) fn new(
        events: mpsc::Sender<SessionEvent>,
        close_rx: mpsc::Receiver<oneshot::Sender<()>>,
        tracker: ConversationTracker,
        acker: AckTracker,
        manual: bool,
        unsettled_max: usize,
        debounce: Duration,
    ) -> Self {
        Self {
            events,
            close_rx,
            closers: Vec::new(),
            tracker,
            progress: InboxProgress::new(acker.flushed(), unsettled_max),
            acker,
            manual,
            event_acked: 0,
            message_acks: HashMap::new(),
            not_handed_over: HashMap::new(),
            pulls: Vec::new(),
            seqs_dirty_since: None,
            unsettled_max,
            debounce,
        }
    }

    /// Restarts inbox accounting after `cursor` (persisted or server-side progress).
    pub(super) fn resume_at(&mut self, cursor: u64, acker: AckTracker) {
        self.acker = acker;
        self.progress = InboxProgress::new(cursor, self.unsettled_max);
    }

    /// Forgets every conversation's progress (see [`ConversationTracker::forget_all`]); the
    /// emptied progress is persisted with the next cursor.
    pub(super) fn forget_conversations(&mut self, now: Instant) {
        self.tracker.forget_all();
        self.message_acks.clear();
        self.not_handed_over.clear();
        self.pulls.clear();
        self.seqs_dirty_since = Some(now);
    }

    /// Seeds per-conversation progress persisted by an earlier run.
    pub(super) fn restore(&mut self, seqs: &[(ConversationId, u64)]) {
        for &(conversation, seq) in seqs {
            self.tracker.restore(conversation, seq);
            if self.manual {
                self.message_acks.insert(conversation, seq);
            }
        }
    }

    /// Hands `event` to the application unless a close request arrives first: an application
    /// blocked in `Session::close` is not reading, so waiting for channel space would
    /// deadlock.
    pub(super) async fn emit(&mut self, event: SessionEvent) -> Result<()> {
        tokio::select! {
            sent = self.events.send(event) => sent.map_err(|_| SdkError::Closed),
            req = self.close_rx.recv() => {
                self.closers.extend(req);
                Err(SdkError::Closed)
            }
        }
    }

    /// Hands over an ephemeral event only if the channel has room right now.
    pub(super) fn emit_lossy(&mut self, event: SessionEvent) {
        if self.events.try_send(event).is_err() {
            tracing::debug!("application is behind; ephemeral event dropped");
        }
    }

    /// Carries out the tracker's effects: messages to the application, pulls to the queue.
    pub(super) async fn apply(&mut self, fx: Effects) -> Result<()> {
        self.pulls.extend(fx.pulls);
        if fx.messages.is_empty() {
            return Ok(());
        }
        if !self.manual {
            self.mark_seqs_dirty();
        }
        let mut messages = fx.messages.into_iter();
        while let Some(m) = messages.next() {
            let (conversation, seq) = (m.conversation_id, m.seq);
            if let Err(e) = self.emit(SessionEvent::Message(m)).await {
                // Released by the tracker but never handed over: must not count as delivered.
                for (conversation, seq) in std::iter::once((conversation, seq))
                    .chain(messages.map(|m| (m.conversation_id, m.seq)))
                {
                    let floor = self.not_handed_over.entry(conversation).or_insert(u64::MAX);
                    *floor = (*floor).min(seq.saturating_sub(1));
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Handles one inbox event in cursor order.
    async fn on_inbound(&mut self, event: Inbound) -> Result<()> {
        let now = Instant::now();
        let event = match event {
            Inbound::Unknown(cursor) => {
                self.progress.push(cursor, InboxItem::Ignored);
                return Ok(());
            }
            Inbound::Event(event) => event,
        };
        let cursor = event.cursor;
        match event.body {
            EventBody::Message { message } => {
                self.progress.push(
                    cursor,
                    InboxItem::Message {
                        conversation_id: message.conversation_id,
                        seq: message.seq,
                    },
                );
                let fx = self.tracker.on_message(message, now);
                self.apply(fx).await
            }
            body => {
                let fx = match &body {
                    EventBody::GroupJoined { conversation_id } => {
                        self.tracker.on_joined(*conversation_id, now)
                    }
                    EventBody::GroupLeft { conversation_id } => {
                        self.tracker.on_left(*conversation_id);
                        self.message_acks.remove(conversation_id);
                        self.mark_seqs_dirty();
                        Effects::default()
                    }
                    _ => Effects::default(),
                };
                self.emit(SessionEvent::Event(WireEvent { cursor, body }))
                    .await?;
                self.progress.push(cursor, InboxItem::Event);
                self.apply(fx).await
            }
        }
    }

    /// Manual mode: takes in what the application acked.
    pub(super) fn note_app_acks(
        &mut self,
        event_cursor: u64,
        messages: HashMap<ConversationId, u64>,
    ) {
        self.event_acked = self.event_acked.max(event_cursor);
        let mut changed = false;
        for (conversation, seq) in messages {
            // Only conversations the stream knows: acks for anything else cannot matter.
            if !self.tracker.is_tracked(conversation) {
                continue;
            }
            let slot = self.message_acks.entry(conversation).or_default();
            if seq > *slot {
                *slot = seq;
                changed = true;
            }
        }
        if changed {
            self.mark_seqs_dirty();
        }
        if self.message_acks.len() > self.tracker.len().saturating_mul(2).max(1_024) {
            let tracker = &self.tracker;
            self.message_acks.retain(|c, _| tracker.is_tracked(*c));
        }
    }

    /// Moves the processed cursor past every settled inbox event.
    pub(super) fn settle(&mut self) {
        let Delivery {
            progress,
            tracker,
            manual,
            event_acked,
            message_acks,
            not_handed_over,
            acker,
            ..
        } = self;
        let (cursor, forced) = progress.advance(|cursor, item| match *item {
            InboxItem::Ignored => true,
            InboxItem::Event => !*manual || cursor <= *event_acked,
            InboxItem::Message {
                conversation_id,
                seq,
            } => {
                if !tracker.is_tracked(conversation_id) {
                    true
                } else if *manual {
                    message_acks
                        .get(&conversation_id)
                        .is_some_and(|&a| a >= seq)
                } else {
                    tracker.is_settled(conversation_id, seq)
                        && not_handed_over
                            .get(&conversation_id)
                            .is_none_or(|&floor| floor >= seq)
                }
            }
        });
        if forced > 0 {
            warn!(
                forced,
                "too many unprocessed inbox events; counting the oldest as processed"
            );
        }
        acker.note_processed(cursor, Instant::now());
    }

    fn mark_seqs_dirty(&mut self) {
        self.seqs_dirty_since.get_or_insert_with(Instant::now);
    }

    /// When unpersisted per-conversation progress should be persisted.
    pub(super) fn seqs_deadline(&self) -> Option<Instant> {
        self.seqs_dirty_since.map(|t| t + self.debounce)
    }

    /// The per-conversation progress to persist if it is due (or `force`, or a cursor is being
    /// persisted, which must not get ahead of it); clears the dirty mark.
    pub(super) fn take_seqs(
        &mut self,
        force: bool,
        now: Instant,
    ) -> Option<Vec<(ConversationId, u64)>> {
        let since = self.seqs_dirty_since?;
        if !force && since + self.debounce > now {
            return None;
        }
        self.seqs_dirty_since = None;
        Some(self.seqs_snapshot())
    }

    /// Per conversation, the last seq that counts as handled.
    fn seqs_snapshot(&self) -> Vec<(ConversationId, u64)> {
        let mut out: Vec<(ConversationId, u64)> = if self.manual {
            self.message_acks
                .iter()
                .filter(|(c, _)| self.tracker.is_tracked(**c))
                .map(|(c, s)| (*c, *s))
                .collect()
        } else {
            self.tracker
                .snapshot()
                .into_iter()
                .map(|(c, s)| match self.not_handed_over.get(&c) {
                    Some(&floor) => (c, s.min(floor)),
                    None => (c, s),
                })
                .collect()
        };
        out.sort_unstable();
        out
    }
}

/// Inbox events accepted by the sequencer go through [`Delivery::on_inbound`].
impl EventSink for Delivery {
    async fn deliver(&mut self, event: Inbound) -> Result<()> {
        self.on_inbound(event).await
    }
}
