//! One ordered message stream over both fan-out paths; see [`ConversationTracker`].

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use magpie_core::limits::PAGE_LIMIT_MAX;
use magpie_core::ConversationId;
use magpie_protocol::ws::WireMessage;
use magpie_protocol::ErrorCode;
use tokio::time::Instant;
use tracing::warn;

/// Out-of-order messages held per conversation by default.
pub const PENDING_PER_CONVERSATION_DEFAULT: usize = 1_024;
/// Conversations tracked at once by default.
pub const TRACKED_CONVERSATIONS_DEFAULT: usize = 10_000;
/// Messages asked for per pull (the server's page maximum).
pub const PULL_PAGE_DEFAULT: usize = 200;
/// How long a pull may stay unanswered before it is issued again, in milliseconds.
pub const PULL_TIMEOUT_MS_DEFAULT: u64 = 15_000;
/// Unanswered pulls in a row after which a conversation's missing range is given up on until
/// the next notify, event or reconnect (a refused pull is answered by an `error` frame that
/// cannot be matched to it). Only pulls that went unanswered while the connection was alive
/// count: see [`ConversationTracker::poll_timeouts`].
pub const PULL_ATTEMPTS_MAX: u32 = 3;

/// The tracker's bounds and pull parameters.
#[derive(Debug, Clone)]
pub struct TrackerLimits {
    /// Out-of-order messages held per conversation.
    pub pending_per_conversation: usize,
    /// Conversations tracked at once.
    pub conversations: usize,
    /// `limit` of each pull.
    pub pull_page: usize,
    /// After this long without an answer a pull is issued again.
    pub pull_timeout: Duration,
}

impl Default for TrackerLimits {
    fn default() -> Self {
        Self {
            pending_per_conversation: PENDING_PER_CONVERSATION_DEFAULT,
            conversations: TRACKED_CONVERSATIONS_DEFAULT,
            pull_page: PULL_PAGE_DEFAULT,
            pull_timeout: Duration::from_millis(PULL_TIMEOUT_MS_DEFAULT),
        }
    }
}

/// A pull the session must send: `{"type":"pull","conversation_id","after_seq","limit"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullRequest {
    /// The conversation to read.
    pub conversation_id: ConversationId,
    /// Messages with a greater seq are wanted.
    pub after_seq: u64,
    /// Page size.
    pub limit: usize,
}

/// Seqs the server could not supply and that were given up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkippedRange {
    /// The conversation.
    pub conversation_id: ConversationId,
    /// First skipped seq.
    pub from: u64,
    /// Last skipped seq.
    pub to: u64,
}

/// What the session has to do after feeding the tracker.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Effects {
    /// Messages to hand to the application, in order (per conversation, ascending seq).
    pub messages: Vec<WireMessage>,
    /// Pulls to send.
    pub pulls: Vec<PullRequest>,
    /// Gaps given up on (worth a log line).
    pub skipped: Vec<SkippedRange>,
}

impl Effects {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.pulls.is_empty() && self.skipped.is_empty()
    }

    fn merge(&mut self, other: Effects) {
        self.messages.extend(other.messages);
        self.pulls.extend(other.pulls);
        self.skipped.extend(other.skipped);
    }
}

/// How a conversation fans out, as reported by `GET /v1/conversations`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fanout {
    /// Every message is an inbox event.
    Write,
    /// Messages are only in the conversation timeline; members pull.
    Read,
}

impl Fanout {
    /// Parses the wire name (`"write"`/`"read"`); anything else counts as read fan-out, the
    /// mode that needs pulls and therefore never misses messages.
    pub fn from_wire(name: &str) -> Fanout {
        if name == "write" {
            Fanout::Write
        } else {
            Fanout::Read
        }
    }
}

/// One row of the conversation list, as far as catching up is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatchUpRow {
    /// The conversation.
    pub conversation_id: ConversationId,
    /// Its newest seq (0 when empty).
    pub last_seq: u64,
    /// Its current fan-out mode.
    pub fanout: Fanout,
}

/// An unanswered pull.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    /// The pull's `after_seq`.
    after: u64,
    /// The pull's `limit`.
    limit: usize,
    /// When it was issued.
    sent_at: Instant,
}

/// The state of one conversation.
#[derive(Debug)]
struct Conv {
    /// The last seq handed out; `None` until the stream's start is known.
    delivered: Option<u64>,
    /// The highest seq known to exist.
    known_last: u64,
    /// Messages after `delivered` that cannot be handed out yet (a gap precedes them).
    pending: BTreeMap<u64, WireMessage>,
    /// The pull in flight, at most one.
    pull: Option<InFlight>,
    /// Pulls in a row that timed out.
    timeouts: u32,
    /// Logical time of the last activity (for eviction).
    touched: u64,
}

impl Conv {
    fn new(delivered: Option<u64>) -> Self {
        Self {
            delivered,
            known_last: delivered.unwrap_or(0),
            pending: BTreeMap::new(),
            pull: None,
            timeouts: 0,
            touched: 0,
        }
    }

    /// Whether messages are known to be missing.
    fn behind(&self) -> bool {
        !self.pending.is_empty() || self.known_last > self.delivered.unwrap_or(0)
    }

    /// Whether evicting this conversation would lose work.
    fn busy(&self) -> bool {
        !self.pending.is_empty() || self.pull.is_some()
    }

    /// Holds `m` until the messages before it are known (bounded).
    fn buffer(&mut self, m: WireMessage, cap: usize) {
        let seq = m.seq;
        if self.delivered.is_some_and(|d| seq <= d) || self.pending.contains_key(&seq) {
            return;
        }
        if self.pending.len() >= cap.max(1) {
            match self.pending.last_key_value() {
                // The newest is dropped; `known_last` keeps it wanted, so a pull fetches it.
                Some((&max, _)) if seq > max => return,
                _ => {
                    self.pending.pop_last();
                }
            }
        }
        self.pending.insert(seq, m);
    }

    /// Hands out every message that directly follows `delivered`.
    fn drain(&mut self, out: &mut Vec<WireMessage>) {
        let Some(mut d) = self.delivered else { return };
        while let Some(entry) = self.pending.first_entry() {
            let seq = *entry.key();
            if seq <= d {
                entry.remove();
            } else if seq == d + 1 {
                out.push(entry.remove());
                d = seq;
            } else {
                break;
            }
        }
        self.delivered = Some(d);
        self.known_last = self.known_last.max(d);
    }

    /// The server will not (or cannot) supply what is missing: hands out the held messages
    /// after the gap, or stops wanting more until the next notify or event.
    fn give_up(&mut self, conversation: ConversationId, fx: &mut Effects) {
        match self.pending.first_key_value() {
            Some((&first, _)) => {
                if let Some(d) = self.delivered {
                    if first > d + 1 {
                        fx.skipped.push(SkippedRange {
                            conversation_id: conversation,
                            from: d + 1,
                            to: first - 1,
                        });
                    }
                }
                self.delivered = Some(first - 1);
                self.drain(&mut fx.messages);
            }
            None => self.known_last = self.delivered.unwrap_or(0),
        }
    }
}

/// Exactly-once, per-conversation in-order delivery of messages over both fan-out paths.
///
/// Messages reach a client in several ways that overlap and can miss:
///
/// * `message` events in the inbox (direct conversations and write-fan-out groups),
/// * `notify` frames that only say "this conversation now reaches seq N" (read-fan-out
///   groups), answered by pulls,
/// * the conversation list fetched after a (re)connect, which reveals what was missed offline,
/// * a group switching between the two modes while messages flow.
///
/// The conversation timeline (gap-free `seq` per conversation) is the truth.
/// [`ConversationTracker`] is the pure rule that turns all of those inputs into each
/// conversation's visible messages, each exactly once and in `seq` order, and says which pulls
/// are needed to get there. It does no I/O: the session feeds it and carries out its
/// [`Effects`].
///
/// Where a conversation's stream starts:
/// * a conversation the tracker knows (from this session or from the persisted snapshot)
///   continues after the last delivered seq;
/// * an unknown conversation first seen through an inbox `message` event starts at that
///   message (the inbox holds everything since the member joined, and everything before the
///   resume cursor was handled by an earlier run);
/// * an unknown conversation first seen any other way (`group_joined`, `notify`, a
///   read-fan-out row of the conversation list) is pulled from the beginning, and starts at
///   the first seq the server returns (the member's `joined_seq`).
///
/// Bounded: at most `pending_per_conversation` out-of-order messages are held per
/// conversation (the rest are fetched again by the pull that fills the gap), and at most
/// `conversations` conversations are tracked (the least recently active idle one is forgotten
/// first).
#[derive(Debug)]
pub struct ConversationTracker {
    /// Per-conversation state; at most `limits.conversations` entries.
    convs: HashMap<ConversationId, Conv>,
    /// Bounds and pull parameters.
    limits: TrackerLimits,
    /// Logical clock for least-recently-active eviction.
    tick: u64,
}

impl Default for ConversationTracker {
    fn default() -> Self {
        Self::new(TrackerLimits::default())
    }
}

impl ConversationTracker {
    /// An empty tracker.
    pub fn new(limits: TrackerLimits) -> Self {
        let limits = TrackerLimits {
            // The server refuses pulls outside 1..=200, and a refused pull only times out.
            pull_page: limits.pull_page.clamp(1, PAGE_LIMIT_MAX),
            ..limits
        };
        Self {
            convs: HashMap::new(),
            limits,
            tick: 0,
        }
    }

    /// Forgets every conversation, as on a first run. For a server restored from an older
    /// backup: its timelines may reuse seqs this tracker counts as handed out, and every new
    /// message at such a seq would be dropped as old.
    pub fn forget_all(&mut self) {
        self.convs.clear();
    }

    /// Seeds the tracker with progress persisted by an earlier run: everything up to
    /// `delivered` in `conversation` was handed out before.
    pub fn restore(&mut self, conversation: ConversationId, delivered: u64) {
        let c = self.entry(conversation);
        if c.delivered.is_none_or(|d| d < delivered) {
            c.delivered = Some(delivered);
            c.known_last = c.known_last.max(delivered);
        }
    }

    /// The last seq handed out for `conversation`, if its stream has started.
    pub fn delivered(&self, conversation: ConversationId) -> Option<u64> {
        self.convs.get(&conversation).and_then(|c| c.delivered)
    }

    /// Whether message `seq` of `conversation` needs nothing more: it was handed out, or the
    /// conversation is no longer tracked (left, or forgotten under memory pressure).
    pub fn is_settled(&self, conversation: ConversationId, seq: u64) -> bool {
        match self.convs.get(&conversation) {
            None => true,
            Some(c) => c.delivered.is_some_and(|d| d >= seq),
        }
    }

    /// Whether `conversation` is tracked.
    pub fn is_tracked(&self, conversation: ConversationId) -> bool {
        self.convs.contains_key(&conversation)
    }

    /// How many conversations are tracked.
    pub fn len(&self) -> usize {
        self.convs.len()
    }

    /// Whether no conversation is tracked.
    pub fn is_empty(&self) -> bool {
        self.convs.is_empty()
    }

    /// Out-of-order messages currently held, over all conversations.
    pub fn pending_messages(&self) -> usize {
        self.convs.values().map(|c| c.pending.len()).sum()
    }

    /// `(conversation, last delivered seq)` of every started conversation, for persisting.
    pub fn snapshot(&self) -> Vec<(ConversationId, u64)> {
        let mut out: Vec<_> = self
            .convs
            .iter()
            .filter_map(|(id, c)| c.delivered.map(|d| (*id, d)))
            .collect();
        out.sort_unstable();
        out
    }

    /// A `message` event from the inbox (write fan-out).
    pub fn on_message(&mut self, m: WireMessage, now: Instant) -> Effects {
        let id = m.conversation_id;
        let cap = self.limits.pending_per_conversation;
        let c = self.entry(id);
        if c.delivered.is_none() && c.pull.is_none() {
            // First sight of the conversation through the inbox: the stream starts here.
            c.delivered = Some(m.seq.saturating_sub(1));
        }
        c.known_last = c.known_last.max(m.seq);
        c.buffer(m, cap);
        self.settle(id, now)
    }

    /// A `notify` frame: the conversation's timeline reaches `last_seq`.
    pub fn on_notify(
        &mut self,
        conversation: ConversationId,
        last_seq: u64,
        now: Instant,
    ) -> Effects {
        let c = self.entry(conversation);
        c.known_last = c.known_last.max(last_seq);
        self.settle(conversation, now)
    }

    /// The user joined a group (`group_joined`): its stream starts at the first message the
    /// server shows this member, so it is pulled from the beginning.
    pub fn on_joined(&mut self, conversation: ConversationId, now: Instant) -> Effects {
        let limit = self.limits.pull_page;
        let c = self.entry(conversation);
        if c.delivered.is_some() || c.pull.is_some() {
            return Effects::default();
        }
        c.pull = Some(InFlight {
            after: 0,
            limit,
            sent_at: now,
        });
        Effects {
            pulls: vec![PullRequest {
                conversation_id: conversation,
                after_seq: 0,
                limit,
            }],
            ..Effects::default()
        }
    }

    /// The user left or was removed (`group_left`): the conversation is forgotten.
    pub fn on_left(&mut self, conversation: ConversationId) {
        self.convs.remove(&conversation);
    }

    /// The server refused a frame about `conversation` (an `error` naming it). `forbidden`
    /// means the user is no longer a member: stop pulling it now instead of re-issuing the
    /// pull on every timeout until the range is given up (the `group_left` event follows in
    /// the inbox). Other refusals are left to the pull timeout.
    pub fn on_refused(&mut self, conversation: ConversationId, code: ErrorCode) {
        if code == ErrorCode::Forbidden {
            self.on_left(conversation);
        }
    }

    /// The application asked to bring `conversation` up to date now.
    pub fn request_pull(&mut self, conversation: ConversationId, now: Instant) -> Effects {
        let limit = self.limits.pull_page;
        let c = self.entry(conversation);
        if c.pull.is_some() {
            return Effects::default();
        }
        let after = c.delivered.unwrap_or(0);
        c.pull = Some(InFlight {
            after,
            limit,
            sent_at: now,
        });
        Effects {
            pulls: vec![PullRequest {
                conversation_id: conversation,
                after_seq: after,
                limit,
            }],
            ..Effects::default()
        }
    }

    /// The answer to a pull (`messages` frame or `GET …/messages?after_seq=`): every visible
    /// message after the pull's `after_seq`, ascending, at most the pull's `limit`.
    /// `truncated`: the server cut the page at its byte budget, so more messages follow even
    /// though the page is short.
    pub fn on_pulled(
        &mut self,
        conversation: ConversationId,
        messages: Vec<WireMessage>,
        truncated: bool,
        now: Instant,
    ) -> Effects {
        let cap = self.limits.pending_per_conversation;
        let page = self.limits.pull_page;
        let Some(c) = self.convs.get_mut(&conversation) else {
            return Effects::default(); // Left or forgotten meanwhile.
        };
        let flight = c.pull.take();
        if let Some(f) = flight {
            // Answers cannot be matched to their pulls, and a pull that timed out is issued
            // again, so the answer to an earlier pull can arrive while a later one is in
            // flight. Every answer lists only messages after its own pull's `after_seq`, so one
            // starting at or below the pull in flight is an earlier pull's. Taken for the
            // answer in flight, it would end that pull, and the real answer would then look
            // unsolicited and stop the catch-up. Keep what it adds; keep waiting.
            if messages.first().is_some_and(|m| m.seq <= f.after) {
                c.pull = Some(f);
                let mut fx = Effects::default();
                let delivered = c.delivered.unwrap_or(0);
                for m in messages
                    .into_iter()
                    .filter(|m| m.conversation_id == conversation && m.seq > delivered)
                {
                    c.buffer(m, cap);
                    c.drain(&mut fx.messages);
                }
                return fx;
            }
        }
        c.timeouts = 0;
        // An unsolicited answer is read as "everything after what was delivered".
        let after = flight.map_or(c.delivered.unwrap_or(0), |f| f.after);
        let full = truncated || messages.len() >= flight.map_or(page, |f| f.limit);
        let before = c.delivered;
        let mut fresh: Vec<WireMessage> = messages
            .into_iter()
            .filter(|m| m.conversation_id == conversation && m.seq > after)
            .collect();
        fresh.sort_by_key(|m| m.seq);
        fresh.dedup_by_key(|m| m.seq);
        let base = c.delivered.unwrap_or(after).max(after);
        if let Some(first) = fresh.iter().map(|m| m.seq).find(|&s| s > base) {
            // The answer lists every visible message after `after`, so nothing between `base`
            // and its first new message is visible (e.g. before this member joined).
            let first = c
                .pending
                .first_key_value()
                .map_or(first, |(&p, _)| p.min(first));
            if c.delivered.is_none_or(|d| first > d + 1) {
                c.delivered = Some(first - 1);
            }
        }
        if let Some(last) = fresh.last() {
            c.known_last = c.known_last.max(last.seq);
        }
        let mut fx = Effects::default();
        for m in fresh {
            // Draining as we go keeps a page larger than the pending bound from being cut.
            c.buffer(m, cap);
            c.drain(&mut fx.messages);
        }
        let progressed = c.delivered != before;
        let delivered = c.delivered.unwrap_or(0);
        if full && delivered > after {
            // A full page: more may follow, so stay behind until an answer comes back short.
            c.known_last = c.known_last.max(delivered + 1);
        } else if !progressed {
            // The server has nothing between `delivered` and the held messages (or nothing
            // new at all): give up on that range rather than wait forever.
            c.give_up(conversation, &mut fx);
        }
        fx.merge(self.settle(conversation, now));
        for s in &fx.skipped {
            warn!(conversation = %s.conversation_id, from = s.from, to = s.to,
                "messages the server could not supply were skipped");
        }
        fx
    }

    /// The conversation list fetched after a (re)connect: pulls whatever it shows beyond what
    /// was delivered. Unknown write-fan-out conversations are left to the inbox replay;
    /// unknown read-fan-out ones are pulled from the beginning.
    pub fn on_catch_up(&mut self, rows: &[CatchUpRow], now: Instant) -> Effects {
        let mut fx = Effects::default();
        for row in rows {
            let known = self.convs.contains_key(&row.conversation_id);
            if !known && (row.fanout == Fanout::Write || row.last_seq == 0) {
                continue;
            }
            let c = self.entry(row.conversation_id);
            c.known_last = c.known_last.max(row.last_seq);
            fx.merge(self.settle(row.conversation_id, now));
        }
        fx
    }

    /// The connection dropped: unanswered pulls will never be answered.
    pub fn on_disconnected(&mut self) {
        for c in self.convs.values_mut() {
            c.pull = None;
        }
    }

    /// A connection is up: pulls whatever is known to be missing.
    pub fn on_connected(&mut self, now: Instant) -> Effects {
        let behind: Vec<ConversationId> = self
            .convs
            .iter()
            .filter(|(_, c)| c.behind() && c.pull.is_none())
            .map(|(id, _)| *id)
            .collect();
        let mut fx = Effects::default();
        for id in behind {
            fx.merge(self.settle(id, now));
        }
        fx
    }

    /// When the oldest unanswered pull times out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.convs
            .values()
            .filter_map(|c| c.pull.map(|p| p.sent_at + self.limits.pull_timeout))
            .min()
    }

    /// Re-issues pulls that have gone unanswered for too long. `server_read_upto`: the
    /// server is known to have read every frame written before this instant (the send time
    /// of the newest ping it answered; it handles a connection's frames in order and answers
    /// a pull before reading the next frame). A pull counts towards giving up (which skips
    /// the missing range) only if it was written before that: the server read it and did not
    /// answer it. Otherwise it is only issued again. A stalled connection, or a server still
    /// replaying a long inbox before it reads more frames, would answer it later; giving up
    /// there would skip messages the server was about to send.
    pub fn poll_timeouts(&mut self, now: Instant, server_read_upto: Option<Instant>) -> Effects {
        let timeout = self.limits.pull_timeout;
        let expired: Vec<(ConversationId, bool)> = self
            .convs
            .iter_mut()
            .filter_map(|(id, c)| {
                let p = c.pull.filter(|p| p.sent_at + timeout <= now)?;
                c.pull = None;
                Some((*id, server_read_upto.is_some_and(|t| t > p.sent_at)))
            })
            .collect();
        let mut fx = Effects::default();
        for (id, read_by_server) in expired {
            let c = self.entry(id);
            if read_by_server {
                c.timeouts += 1;
            }
            if c.timeouts >= PULL_ATTEMPTS_MAX {
                c.timeouts = 0;
                c.give_up(id, &mut fx);
                continue;
            }
            if !c.behind() && c.delivered.is_none() {
                // An unanswered start-from-the-beginning pull: ask again.
                c.known_last = c.known_last.max(1);
            }
            fx.merge(self.settle(id, now));
        }
        for s in &fx.skipped {
            warn!(conversation = %s.conversation_id, from = s.from, to = s.to,
                "pulls went unanswered; skipped messages");
        }
        fx
    }

    /// Hands out what can be handed out and issues the pull that is missing, if any.
    fn settle(&mut self, conversation: ConversationId, now: Instant) -> Effects {
        let limit = self.limits.pull_page;
        let mut fx = Effects::default();
        let Some(c) = self.convs.get_mut(&conversation) else {
            return fx;
        };
        c.drain(&mut fx.messages);
        if c.pull.is_none() && c.behind() {
            let after = c.delivered.unwrap_or(0);
            c.pull = Some(InFlight {
                after,
                limit,
                sent_at: now,
            });
            fx.pulls.push(PullRequest {
                conversation_id: conversation,
                after_seq: after,
                limit,
            });
        }
        fx
    }

    /// The state of `conversation`, created (and something evicted) if needed.
    fn entry(&mut self, conversation: ConversationId) -> &mut Conv {
        self.tick += 1;
        if !self.convs.contains_key(&conversation)
            && self.convs.len() >= self.limits.conversations.max(1)
        {
            self.evict_one();
        }
        let c = self
            .convs
            .entry(conversation)
            .or_insert_with(|| Conv::new(None));
        c.touched = self.tick;
        c
    }

    /// Forgets the least recently active conversation, idle ones first.
    fn evict_one(&mut self) {
        let victim = self
            .convs
            .iter()
            .min_by_key(|(_, c)| (c.busy(), c.touched))
            .map(|(id, c)| (*id, c.busy()));
        if let Some((id, busy)) = victim {
            if busy {
                warn!(conversation = %id, "too many conversations tracked; dropping a busy one");
            }
            self.convs.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use magpie_core::UserId;

    const A: ConversationId = ConversationId(10);
    const B: ConversationId = ConversationId(20);

    fn msg(conv: ConversationId, seq: u64) -> WireMessage {
        WireMessage {
            conversation_id: conv,
            seq,
            sender_id: UserId(1),
            client_msg_id: format!("c{}-{seq}", conv.0),
            text: format!("m{seq}"),
            ts_ms: seq,
            kind: "text".into(),
            system: None,
        }
    }

    fn msgs(conv: ConversationId, seqs: impl IntoIterator<Item = u64>) -> Vec<WireMessage> {
        seqs.into_iter().map(|s| msg(conv, s)).collect()
    }

    fn pull(conv: ConversationId, after: u64) -> PullRequest {
        PullRequest {
            conversation_id: conv,
            after_seq: after,
            limit: PULL_PAGE_DEFAULT,
        }
    }

    /// A tracker plus everything it handed out, checked for exactly-once order on each step.
    struct Harness {
        t: ConversationTracker,
        now: Instant,
        out: HashMap<ConversationId, Vec<u64>>,
        pulls: Vec<PullRequest>,
    }

    impl Harness {
        fn new(limits: TrackerLimits) -> Self {
            Self {
                t: ConversationTracker::new(limits),
                now: Instant::now(),
                out: HashMap::new(),
                pulls: Vec::new(),
            }
        }

        fn apply(&mut self, fx: Effects) -> Effects {
            for m in &fx.messages {
                let got = self.out.entry(m.conversation_id).or_default();
                if let Some(&last) = got.last() {
                    assert!(
                        m.seq > last,
                        "out of order or repeated: {} after {last}",
                        m.seq
                    );
                }
                got.push(m.seq);
            }
            self.pulls.extend(fx.pulls.iter().copied());
            fx
        }

        fn event(&mut self, conv: ConversationId, seq: u64) -> Effects {
            let fx = self.t.on_message(msg(conv, seq), self.now);
            self.apply(fx)
        }

        fn notify(&mut self, conv: ConversationId, last: u64) -> Effects {
            let fx = self.t.on_notify(conv, last, self.now);
            self.apply(fx)
        }

        /// Answers the pull `p` from a timeline holding `timeline` (visible seqs).
        fn answer(&mut self, p: PullRequest, timeline: &[u64]) -> Effects {
            let page: Vec<u64> = timeline
                .iter()
                .copied()
                .filter(|&s| s > p.after_seq)
                .take(p.limit)
                .collect();
            let fx = self.t.on_pulled(
                p.conversation_id,
                msgs(p.conversation_id, page),
                false,
                self.now,
            );
            self.apply(fx)
        }

        fn take_pulls(&mut self) -> Vec<PullRequest> {
            std::mem::take(&mut self.pulls)
        }

        fn got(&self, conv: ConversationId) -> Vec<u64> {
            self.out.get(&conv).cloned().unwrap_or_default()
        }
    }

    fn harness() -> Harness {
        Harness::new(TrackerLimits::default())
    }

    #[test]
    fn inbox_messages_in_order_need_no_pulls_and_duplicates_are_dropped() {
        let mut h = harness();
        for s in [1, 2, 2, 3, 1, 3, 4] {
            h.event(A, s);
        }
        assert_eq!(h.got(A), [1, 2, 3, 4]);
        assert!(h.take_pulls().is_empty());
        assert_eq!(h.t.delivered(A), Some(4));
        assert!(h.t.is_settled(A, 4));
        assert!(!h.t.is_settled(A, 5));
    }

    #[test]
    fn unknown_conversation_starts_at_its_first_inbox_message() {
        let mut h = harness();
        h.event(A, 7);
        h.event(A, 8);
        assert_eq!(h.got(A), [7, 8]);
        assert!(h.take_pulls().is_empty(), "no history is fetched");
    }

    #[test]
    fn reordered_events_are_held_and_the_gap_is_pulled_once() {
        let mut h = harness();
        h.event(A, 1);
        h.event(A, 4);
        h.event(A, 3);
        assert_eq!(h.got(A), [1]);
        let pulls = h.take_pulls();
        assert_eq!(
            pulls,
            [pull(A, 1)],
            "one pull for the gap, not one per message"
        );
        // The late 2 arrives before the pull answer: everything flows.
        h.event(A, 2);
        assert_eq!(h.got(A), [1, 2, 3, 4]);
        // The answer then only holds duplicates.
        h.answer(pulls[0], &[1, 2, 3, 4]);
        assert_eq!(h.got(A), [1, 2, 3, 4]);
        assert!(h.take_pulls().is_empty());
        assert!(h.t.is_settled(A, 4));
    }

    #[test]
    fn notifies_are_coalesced_into_one_pull_and_pages_are_followed() {
        let limits = TrackerLimits {
            pull_page: 3,
            ..TrackerLimits::default()
        };
        let mut h = Harness::new(limits);
        h.t.restore(A, 2);
        h.notify(A, 5);
        h.notify(A, 8);
        let p = h.take_pulls();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].after_seq, 2);
        let timeline: Vec<u64> = (1..=8).collect();
        h.answer(p[0], &timeline); // 3,4,5: a full page
        let p = h.take_pulls();
        assert_eq!(p[0].after_seq, 5, "the next page follows at once");
        h.answer(p[0], &timeline); // 6,7,8
        let p = h.take_pulls();
        assert_eq!(p[0].after_seq, 8, "another full page: ask again");
        h.answer(p[0], &timeline); // empty
        assert!(h.take_pulls().is_empty());
        assert_eq!(h.got(A), [3, 4, 5, 6, 7, 8]);
        // A stale notify asks for nothing.
        h.notify(A, 6);
        assert!(h.take_pulls().is_empty());
    }

    #[test]
    fn interleaved_events_notifies_and_pulls_across_conversations() {
        let mut h = harness();
        h.event(A, 1);
        h.notify(B, 2); // unknown read-fan-out conversation: from the beginning
        let pb = h.take_pulls();
        assert_eq!(pb, [pull(B, 0)]);
        h.event(A, 2);
        h.notify(B, 4); // coalesced into the pull in flight
        assert!(h.take_pulls().is_empty());
        h.answer(pb[0], &[1, 2, 3]); // answered before 4 existed
        let pb = h.take_pulls();
        assert_eq!(pb, [pull(B, 3)], "still behind the notify: pull on");
        h.event(A, 3);
        h.answer(pb[0], &[1, 2, 3, 4]);
        assert!(h.take_pulls().is_empty());
        assert_eq!(h.got(A), [1, 2, 3]);
        assert_eq!(h.got(B), [1, 2, 3, 4]);
    }

    #[test]
    fn mode_switch_mid_stream_events_then_notifies() {
        let mut h = harness();
        // Write fan-out: 1..=3 as inbox events.
        for s in 1..=3 {
            h.event(A, s);
        }
        // The group grows past the threshold; 4 (members added) and later are read fan-out.
        let timeline: Vec<u64> = (1..=6).collect();
        h.notify(A, 5);
        let p = h.take_pulls();
        assert_eq!(p, [pull(A, 3)]);
        h.notify(A, 6);
        h.answer(p[0], &timeline);
        assert_eq!(h.got(A), [1, 2, 3, 4, 5, 6]);
        assert!(h.take_pulls().is_empty());
        // ...and shrinks back: inbox events again, with a gap nobody notified about.
        let timeline: Vec<u64> = (1..=9).collect();
        h.event(A, 9);
        let p = h.take_pulls();
        assert_eq!(p, [pull(A, 6)]);
        h.answer(p[0], &timeline);
        assert_eq!(h.got(A), (1..=9).collect::<Vec<_>>());
    }

    #[test]
    fn mode_switch_with_events_racing_the_pull() {
        let mut h = harness();
        h.event(A, 1);
        h.notify(A, 3);
        let p = h.take_pulls();
        // A late inbox copy (write fan-out) of 2 and a reordered 3 arrive while the pull flies.
        h.event(A, 3);
        h.event(A, 2);
        assert_eq!(h.got(A), [1, 2, 3]);
        h.answer(p[0], &[1, 2, 3]);
        assert_eq!(h.got(A), [1, 2, 3]);
        assert!(h.take_pulls().is_empty());
    }

    #[test]
    fn joined_group_starts_at_the_first_seq_the_server_returns() {
        let mut h = harness();
        let fx = h.t.on_joined(A, h.now);
        let p = h.apply(fx).pulls;
        assert_eq!(p, [pull(A, 0)]);
        // The write-fan-out copy of the "members added" message races the pull.
        h.event(A, 12);
        assert!(
            h.got(A).is_empty(),
            "held until the pull says where the stream starts"
        );
        // The server shows this member history from joined_seq 12 on.
        h.answer(p[0], &[12, 13]);
        assert_eq!(h.got(A), [12, 13]);
        // Joining again (replay) does not restart the stream.
        let fx = h.t.on_joined(A, h.now);
        assert!(fx.is_empty());
    }

    #[test]
    fn unfillable_gap_is_skipped_not_waited_on() {
        let mut h = harness();
        h.event(A, 1);
        h.event(A, 5);
        let p = h.take_pulls();
        // The server cannot supply 2..=4 (say they are not visible); 5 came from the inbox.
        let fx = h.answer(p[0], &[]);
        assert_eq!(
            fx.skipped,
            [SkippedRange {
                conversation_id: A,
                from: 2,
                to: 4
            }]
        );
        assert_eq!(h.got(A), [1, 5]);
        assert!(h.take_pulls().is_empty());
    }

    #[test]
    fn empty_answer_to_a_notify_pull_stops_pulling() {
        let mut h = harness();
        h.t.restore(A, 4);
        h.notify(A, 9);
        let p = h.take_pulls();
        h.answer(p[0], &[1, 2, 3, 4]);
        assert!(
            h.take_pulls().is_empty(),
            "no pull loop when the server has nothing"
        );
        // The next notify tries again.
        h.notify(A, 9);
        assert_eq!(h.take_pulls(), [pull(A, 4)]);
    }

    #[test]
    fn catch_up_pulls_what_was_missed_offline() {
        let mut h = harness();
        h.t.restore(A, 3); // read fan-out, known
        h.event(B, 1); // write fan-out, known
        h.take_pulls();
        let c = ConversationId(30); // read fan-out, never seen
        let d = ConversationId(40); // write fan-out, never seen: left to the inbox replay
        let rows = [
            CatchUpRow {
                conversation_id: A,
                last_seq: 6,
                fanout: Fanout::Read,
            },
            CatchUpRow {
                conversation_id: B,
                last_seq: 1,
                fanout: Fanout::Write,
            },
            CatchUpRow {
                conversation_id: c,
                last_seq: 2,
                fanout: Fanout::Read,
            },
            CatchUpRow {
                conversation_id: d,
                last_seq: 9,
                fanout: Fanout::Write,
            },
        ];
        let fx = h.t.on_catch_up(&rows, h.now);
        let fx = h.apply(fx);
        let mut pulls = fx.pulls.clone();
        pulls.sort_by_key(|p| p.conversation_id);
        assert_eq!(pulls, [pull(A, 3), pull(c, 0)]);
        h.answer(pull(A, 3), &[1, 2, 3, 4, 5, 6]);
        h.answer(pull(c, 0), &[1, 2]);
        assert_eq!(h.got(A), [4, 5, 6]);
        assert_eq!(h.got(c), [1, 2]);
        assert_eq!(h.t.delivered(d), None);
    }

    #[test]
    fn reconnect_reissues_lost_pulls_and_timeouts_retry() {
        let limits = TrackerLimits {
            pull_timeout: Duration::from_secs(5),
            ..TrackerLimits::default()
        };
        let mut h = Harness::new(limits);
        h.event(A, 1);
        h.event(A, 3);
        assert_eq!(h.take_pulls(), [pull(A, 1)]);
        h.t.on_disconnected();
        let fx = h.t.on_connected(h.now);
        assert_eq!(h.apply(fx).pulls, [pull(A, 1)]);
        h.take_pulls();
        assert_eq!(h.t.next_deadline(), Some(h.now + Duration::from_secs(5)));
        assert!(h
            .t
            .poll_timeouts(
                h.now + Duration::from_secs(4),
                Some(h.now + Duration::from_secs(4))
            )
            .is_empty());
        let fx = h.t.poll_timeouts(
            h.now + Duration::from_secs(5),
            Some(h.now + Duration::from_secs(5)),
        );
        assert_eq!(fx.pulls.len(), 1);
        assert_eq!(fx.pulls[0].after_seq, 1);
        // A pull that is never answered (refused) is not retried forever: after a few
        // attempts the held message is handed out past the gap.
        let fx = h.t.poll_timeouts(
            h.now + Duration::from_secs(10),
            Some(h.now + Duration::from_secs(10)),
        );
        assert_eq!(fx.pulls.len(), 1);
        let fx = h.t.poll_timeouts(
            h.now + Duration::from_secs(15),
            Some(h.now + Duration::from_secs(15)),
        );
        assert!(fx.pulls.is_empty());
        assert_eq!(
            fx.skipped,
            [SkippedRange {
                conversation_id: A,
                from: 2,
                to: 2
            }]
        );
        h.apply(fx);
        assert_eq!(h.got(A), [1, 3]);
        assert_eq!(h.t.next_deadline(), None);
    }

    #[test]
    fn pulls_the_server_has_not_read_are_reissued_never_given_up() {
        let limits = TrackerLimits {
            pull_timeout: Duration::from_secs(5),
            ..TrackerLimits::default()
        };
        let mut h = Harness::new(limits);
        h.event(A, 1);
        h.event(A, 3);
        assert_eq!(h.take_pulls(), [pull(A, 1)]);
        let start = h.now;
        let secs = |n| start + Duration::from_secs(n);
        // The server reads nothing written after the first pull (a stalled network, or a long
        // inbox replay before it reads more frames): each timeout only issues the pull again,
        // however many there are; message 3 stays held behind the gap.
        for n in 1..=(2 * u64::from(PULL_ATTEMPTS_MAX)) {
            let read_upto = (n > 2).then_some(start);
            let fx = h.t.poll_timeouts(secs(5 * n), read_upto);
            assert!(fx.skipped.is_empty(), "timeout {n}: {:?}", fx.skipped);
            assert_eq!(fx.pulls.len(), 1, "timeout {n}");
            h.apply(fx);
        }
        assert_eq!(h.got(A), [1]);
        // Once the server answers pings written after the pulls, unanswered pulls count, and
        // the range is given up on.
        let mut skipped = Vec::new();
        for n in 7..=9 {
            let fx = h.t.poll_timeouts(secs(5 * n), Some(secs(5 * n)));
            skipped.extend(fx.skipped.iter().copied());
            h.apply(fx);
        }
        assert_eq!(
            skipped,
            [SkippedRange {
                conversation_id: A,
                from: 2,
                to: 2
            }]
        );
        assert_eq!(h.got(A), [1, 3]);
    }

    #[test]
    fn stale_pull_answer_is_harmless() {
        let mut h = harness();
        h.event(A, 1);
        h.notify(A, 4);
        let p = h.take_pulls();
        h.event(A, 2); // progress while the pull is in flight
        h.event(A, 3);
        h.answer(p[0], &[1, 2, 3, 4]);
        assert_eq!(h.got(A), [1, 2, 3, 4]);
        // A duplicate, unsolicited answer changes nothing.
        let fx = h.t.on_pulled(A, msgs(A, 1..=4), false, h.now);
        assert!(h.apply(fx).messages.is_empty());
    }

    #[test]
    fn a_late_answer_to_a_timed_out_pull_does_not_stop_the_catch_up() {
        let limits = TrackerLimits {
            pull_timeout: Duration::from_secs(5),
            ..TrackerLimits::default()
        };
        let mut h = Harness::new(limits);
        let timeline: Vec<u64> = (1..=1_000).collect();
        h.event(A, 1);
        h.notify(A, 1_000);
        let p1 = h.take_pulls();
        assert_eq!(p1, [pull(A, 1)]);
        // P1 goes unanswered for too long and is issued again as P2 (same range).
        let fx = h.t.poll_timeouts(
            h.now + Duration::from_secs(5),
            Some(h.now + Duration::from_secs(5)),
        );
        let p2 = h.apply(fx).pulls;
        h.take_pulls();
        assert_eq!(p2, [pull(A, 1)]);
        // P1's answer comes after all: 2..=201, and P3 goes out after 201.
        h.answer(p1[0], &timeline);
        let p3 = h.take_pulls();
        assert_eq!(p3.iter().map(|p| p.after_seq).collect::<Vec<_>>(), [201]);
        // P2's answer arrives late, while P3 is in flight: it must not pass for P3's.
        h.answer(p2[0], &timeline);
        assert!(h.take_pulls().is_empty(), "P3 is still in flight");
        // P3's real answer keeps the catch-up going, page after page, to the end.
        let mut next = p3;
        while let Some(p) = next.pop() {
            h.answer(p, &timeline);
            next = h.take_pulls();
        }
        assert_eq!(h.got(A), timeline, "every message once, in order");
        assert!(h.t.is_settled(A, 1_000));
    }

    #[test]
    fn a_page_cut_at_the_byte_budget_is_followed_by_another_pull() {
        for truncated in [true, false] {
            let mut h = harness();
            let fx = h.t.on_joined(A, h.now);
            h.apply(fx);
            let p = h.take_pulls();
            assert_eq!((p.len(), p[0].after_seq), (1, 0));
            let fx = h.t.on_pulled(A, msgs(A, 1..=2), truncated, h.now);
            h.apply(fx);
            assert_eq!(h.got(A), [1, 2]);
            let next = h.take_pulls();
            if truncated {
                assert_eq!(next.len(), 1, "a short but truncated page is not the end");
                assert_eq!(next[0].after_seq, 2);
            } else {
                assert!(next.is_empty(), "a short page is the end: {next:?}");
                assert!(h.t.is_settled(A, 2));
            }
        }
    }

    #[test]
    fn a_pull_refused_as_forbidden_stops_pulling_and_other_refusals_wait() {
        let mut h = harness();
        h.event(A, 1);
        h.notify(A, 3);
        assert_eq!(h.take_pulls().len(), 1);
        h.t.on_refused(A, ErrorCode::Internal);
        assert!(
            !h.t.is_settled(A, 3),
            "an internal error is left to the timeout"
        );
        h.t.on_refused(A, ErrorCode::Forbidden);
        assert_eq!(h.t.len(), 0, "forbidden: the conversation is forgotten");
        assert!(h.t.is_settled(A, 99));
    }

    #[test]
    fn left_conversation_is_forgotten_and_late_answers_ignored() {
        let mut h = harness();
        h.event(A, 1);
        h.notify(A, 3);
        let p = h.take_pulls();
        h.t.on_left(A);
        assert!(
            h.t.is_settled(A, 99),
            "nothing is owed for a left conversation"
        );
        assert!(h.answer(p[0], &[1, 2, 3]).is_empty());
        assert_eq!(h.t.len(), 0);
    }

    #[test]
    fn pending_messages_are_bounded_and_refetched() {
        let limits = TrackerLimits {
            pending_per_conversation: 3,
            pull_page: 100,
            ..TrackerLimits::default()
        };
        let mut h = Harness::new(limits);
        h.event(A, 1);
        for s in (3..=10).rev() {
            h.event(A, s);
        }
        assert_eq!(h.t.pending_messages(), 3, "bounded");
        let p = h.take_pulls();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].after_seq, 1);
        h.answer(p[0], &(1..=10).collect::<Vec<_>>());
        assert_eq!(h.got(A), (1..=10).collect::<Vec<_>>());
        assert_eq!(h.t.pending_messages(), 0);
    }

    #[test]
    fn tracked_conversations_are_bounded_idle_ones_evicted_first() {
        let limits = TrackerLimits {
            conversations: 2,
            ..TrackerLimits::default()
        };
        let mut h = Harness::new(limits);
        h.event(A, 1);
        h.event(A, 3); // A is busy (gap, pull in flight)
        h.event(B, 1); // idle
        h.event(ConversationId(30), 1);
        assert_eq!(h.t.len(), 2);
        assert!(h.t.delivered(A).is_some(), "the busy conversation survives");
        assert!(h.t.delivered(B).is_none(), "the idle one is forgotten");
    }

    #[test]
    fn restore_and_snapshot_round_trip() {
        let mut t = ConversationTracker::default();
        t.restore(B, 9);
        t.restore(A, 4);
        t.restore(A, 2); // never backwards
        let _ = t.on_joined(ConversationId(30), Instant::now()); // not started: not persisted
        assert_eq!(t.snapshot(), [(A, 4), (B, 9)]);
        let fx = t.on_message(msg(A, 4), Instant::now());
        assert!(
            fx.messages.is_empty(),
            "already delivered by an earlier run"
        );
    }

    #[test]
    fn many_random_interleavings_deliver_each_message_once_in_order() {
        // A small deterministic PRNG; the property: whatever the mix of paths and orders,
        // every conversation's output is exactly its timeline.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        for _round in 0..200 {
            let limits = TrackerLimits {
                pending_per_conversation: 1 + rnd(6) as usize,
                pull_page: 1 + rnd(5) as usize,
                ..TrackerLimits::default()
            };
            let mut h = Harness::new(limits);
            // The stream's start is known (reordering the very first inbox event of an unknown
            // conversation cannot happen: the inbox is in seq order per conversation).
            h.t.restore(A, 0);
            let total = 1 + rnd(30);
            let mut in_flight: Vec<PullRequest> = Vec::new();
            let mut published = 0;
            let mut inbox: Vec<u64> = Vec::new();
            let mut steps = 0;
            while h.got(A).len() < total as usize {
                steps += 1;
                assert!(
                    steps < 100_000,
                    "stuck: total {total} published {published} inbox {inbox:?} in flight {in_flight:?} got {:?} state {:?}",
                    h.got(A),
                    h.t.convs.get(&A).map(|c| (c.delivered, c.known_last, c.pending.keys().collect::<Vec<_>>(), c.pull))
                );
                match rnd(5) {
                    // A new message: an inbox event (write) or a notify (read) now or later.
                    0 | 1 if published < total => {
                        published += 1;
                        if rnd(2) == 0 {
                            inbox.push(published);
                        } else {
                            h.notify(A, published);
                        }
                    }
                    // An inbox event arrives, in some order, maybe twice.
                    2 if !inbox.is_empty() => {
                        let i = rnd(inbox.len() as u64) as usize;
                        let s = if rnd(4) == 0 {
                            inbox[i]
                        } else {
                            inbox.remove(i)
                        };
                        h.event(A, s);
                    }
                    // A pull is answered from what is published now.
                    3 if !in_flight.is_empty() => {
                        let p = in_flight.remove(0);
                        let timeline: Vec<u64> = (1..=published).collect();
                        h.answer(p, &timeline);
                    }
                    // Connection loss.
                    4 if rnd(4) == 0 => {
                        in_flight.clear();
                        h.t.on_disconnected();
                        let fx = h.t.on_connected(h.now);
                        h.apply(fx);
                    }
                    _ => {
                        if published == total && inbox.is_empty() && in_flight.is_empty() {
                            // Everything is out; the final state must be reachable by a notify.
                            h.notify(A, total);
                        }
                    }
                }
                in_flight.extend(h.take_pulls());
            }
            assert_eq!(h.got(A), (1..=total).collect::<Vec<_>>());
        }
    }
}
