//! The recent tail of read-fan-out conversations, kept in memory for pulls.
//!
//! When a message lands in a 10,000-member group, thousands of members pull the same few
//! messages within milliseconds (seed 002: "按群聊的会话ID对消息列表进行本地LRU缓存"). The
//! notifier loads each new message into this cache *before* it wakes anyone, so those pulls
//! are answered from memory instead of thousands of identical store reads. The cache only
//! ever holds contiguous runs of durable messages, and answers only what it fully covers; a
//! pull it cannot answer goes to the store.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use magpie_core::{ConversationId, Message, Seq};
use parking_lot::Mutex;

/// Messages kept per conversation.
pub const RECENT_MESSAGES_PER_CONVERSATION_MAX: usize = 512;
/// Text bytes kept per conversation (100,000-character messages are up to 400 KB each).
pub const RECENT_BYTES_PER_CONVERSATION_MAX: usize = 2 * 1024 * 1024;
/// Conversations kept; the least recently extended is dropped first.
pub const RECENT_CONVERSATIONS_MAX: usize = 128;

/// A contiguous run of a conversation's newest messages.
#[derive(Default)]
struct Tail {
    /// Ascending, gap-free.
    messages: VecDeque<Arc<Message>>,
    /// Sum of text bytes in `messages`.
    bytes: usize,
    /// Logical clock of the last extension, for eviction.
    touched: u64,
    /// The newest seq committed in this conversation, as announced by the store (any fan-out
    /// mode). The tail answers pulls only while it reaches this seq; otherwise a short page
    /// would look like "nothing more" to a client.
    committed: Seq,
}

impl Tail {
    fn last_seq(&self) -> Option<Seq> {
        self.messages.back().map(|m| m.seq)
    }

    fn push(&mut self, m: Arc<Message>) {
        if let Some(last) = self.last_seq() {
            if m.seq <= last {
                return;
            }
            if m.seq != last.next() {
                // A gap: the run is no longer contiguous, start over from here.
                self.messages.clear();
                self.bytes = 0;
            }
        }
        self.bytes += m.text.len();
        self.messages.push_back(m);
        while self.messages.len() > RECENT_MESSAGES_PER_CONVERSATION_MAX
            || (self.bytes > RECENT_BYTES_PER_CONVERSATION_MAX && self.messages.len() > 1)
        {
            if let Some(old) = self.messages.pop_front() {
                self.bytes -= old.text.len();
            }
        }
    }
}

/// The cache, shared by the notifier (writes) and connections (reads).
#[derive(Default)]
pub struct RecentMessages {
    /// conversation → tail, plus the logical clock.
    inner: Mutex<(HashMap<ConversationId, Tail>, u64)>,
    /// Number of cached conversations, readable without the lock: the store's writer thread
    /// reports every commit here, and most servers cache nothing most of the time.
    cached: AtomicUsize,
}

impl RecentMessages {
    /// Whether no conversation is cached (no commit needs reporting).
    pub fn is_empty(&self) -> bool {
        self.cached.load(Ordering::Acquire) == 0
    }
}

impl RecentMessages {
    /// The newest cached seq of a conversation.
    pub fn last_seq(&self, conversation: ConversationId) -> Option<Seq> {
        self.inner
            .lock()
            .0
            .get(&conversation)
            .and_then(Tail::last_seq)
    }

    /// Makes room for a conversation about to be loaded, before the store read: commits
    /// reported while the read runs (`note_committed`) are then recorded, and the tail never
    /// answers with a page that stops short of one. An empty tail answers nothing.
    pub fn reserve(&self, conversation: ConversationId) {
        self.extend(conversation, Vec::new());
    }

    /// Drops a conversation's entry if it holds no message (a reservation whose load failed),
    /// so that it does not push out a conversation that has some.
    pub fn forget_if_empty(&self, conversation: ConversationId) {
        let mut guard = self.inner.lock();
        let map = &mut guard.0;
        if map
            .get(&conversation)
            .is_some_and(|t| t.messages.is_empty())
        {
            map.remove(&conversation);
            self.cached.store(map.len(), Ordering::Release);
        }
    }

    /// Appends durable messages (ascending) to a conversation's tail.
    pub fn extend(&self, conversation: ConversationId, messages: Vec<Message>) {
        let mut guard = self.inner.lock();
        let (map, clock) = &mut *guard;
        *clock += 1;
        if !map.contains_key(&conversation) && map.len() >= RECENT_CONVERSATIONS_MAX {
            if let Some(oldest) = map.iter().min_by_key(|(_, t)| t.touched).map(|(c, _)| *c) {
                map.remove(&oldest);
            }
        }
        let tail = map.entry(conversation).or_default();
        tail.touched = *clock;
        for m in messages {
            tail.committed = tail.committed.max(m.seq);
            tail.push(Arc::new(m));
        }
        self.cached.store(map.len(), Ordering::Release);
    }

    /// Records commits (conversation, newest seq) of cached conversations; others are ignored.
    pub fn note_committed(&self, commits: &[(ConversationId, Seq)]) {
        let mut guard = self.inner.lock();
        for (conversation, seq) in commits {
            if let Some(tail) = guard.0.get_mut(conversation) {
                tail.committed = tail.committed.max(*seq);
            }
        }
    }

    /// The messages with seq > `after`, at most `limit`, if the cache holds `after + 1` and its
    /// tail reaches the newest committed seq. `None` means "ask the store".
    pub fn get(
        &self,
        conversation: ConversationId,
        after: Seq,
        limit: usize,
    ) -> Option<Vec<Arc<Message>>> {
        let guard = self.inner.lock();
        let tail = guard.0.get(&conversation)?;
        let first = tail.messages.front()?.seq;
        let last = tail.last_seq()?;
        // `after < last` first, so `after + 1` cannot overflow (a client may ask for u64::MAX).
        if after >= last || after.0 + 1 < first.0 || last < tail.committed {
            return None;
        }
        let skip = (after.0 + 1 - first.0) as usize;
        Some(
            tail.messages
                .iter()
                .skip(skip)
                .take(limit)
                .cloned()
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use magpie_core::{ClientMsgId, UserId};

    fn msg(seq: u64) -> Message {
        Message {
            conversation_id: ConversationId(1),
            seq: Seq(seq),
            sender_id: UserId(1),
            client_msg_id: ClientMsgId::new(format!("c{seq}")).unwrap(),
            text: "x".into(),
            system: None,
            ts_ms: 0,
        }
    }

    #[test]
    fn answers_only_what_it_covers() {
        let r = RecentMessages::default();
        let c = ConversationId(1);
        assert!(r.get(c, Seq(0), 10).is_none());
        r.extend(c, (5..=8).map(msg).collect());
        let seqs = |v: Vec<Arc<Message>>| v.iter().map(|m| m.seq.0).collect::<Vec<_>>();
        assert_eq!(seqs(r.get(c, Seq(4), 10).unwrap()), vec![5, 6, 7, 8]);
        assert_eq!(seqs(r.get(c, Seq(6), 1).unwrap()), vec![7]);
        assert!(r.get(c, Seq(3), 10).is_none(), "seq 4 is not cached");
        assert!(
            r.get(c, Seq(8), 10).is_none(),
            "beyond the tail: ask the store"
        );
        r.extend(c, vec![msg(10)]);
        assert!(r.get(c, Seq(8), 10).is_none(), "a gap restarts the run");
        assert_eq!(seqs(r.get(c, Seq(9), 10).unwrap()), vec![10]);
        r.note_committed(&[(c, Seq(11))]);
        assert!(
            r.get(c, Seq(9), 10).is_none(),
            "behind the store: a short page would mislead"
        );
        r.extend(c, vec![msg(11)]);
        assert_eq!(seqs(r.get(c, Seq(9), 10).unwrap()), vec![10, 11]);
    }

    #[test]
    fn a_commit_during_the_first_load_is_not_missed() {
        let r = RecentMessages::default();
        let c = ConversationId(1);
        // The notifier reserves the entry, then reads 9 and 10 from the store; seq 11 commits
        // while it reads.
        r.reserve(c);
        assert!(
            r.get(c, Seq(0), 10).is_none(),
            "an empty tail answers nothing"
        );
        r.note_committed(&[(c, Seq(11))]);
        r.extend(c, vec![msg(9), msg(10)]);
        assert!(
            r.get(c, Seq(8), 10).is_none(),
            "the page [9, 10] would stop short of 11"
        );
        r.extend(c, vec![msg(11)]);
        let seqs: Vec<u64> = r
            .get(c, Seq(8), 10)
            .unwrap()
            .iter()
            .map(|m| m.seq.0)
            .collect();
        assert_eq!(seqs, vec![9, 10, 11]);
        r.forget_if_empty(c);
        assert!(
            r.get(c, Seq(8), 10).is_some(),
            "a tail with messages is kept"
        );
        let failed = ConversationId(2);
        r.reserve(failed);
        r.forget_if_empty(failed); // its load failed
        assert_eq!(r.inner.lock().0.len(), 1, "the empty reservation is gone");
    }

    #[test]
    fn bounded() {
        let r = RecentMessages::default();
        r.extend(
            ConversationId(1),
            (1..=(RECENT_MESSAGES_PER_CONVERSATION_MAX as u64 + 10))
                .map(msg)
                .collect(),
        );
        assert!(
            r.get(ConversationId(1), Seq(5), 1).is_none(),
            "oldest evicted"
        );
        for c in 2..(RECENT_CONVERSATIONS_MAX as u64 + 5) {
            r.extend(ConversationId(c), vec![msg(1)]);
        }
        assert!(r.inner.lock().0.len() <= RECENT_CONVERSATIONS_MAX);
    }
}
