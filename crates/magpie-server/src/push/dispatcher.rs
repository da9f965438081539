//! The push queue and its dispatcher task: bounded intake, per-user coalescing, bounded
//! concurrent delivery, retries with exponential backoff.
//!
//! A user's window keeps the newest candidate of each of its last few conversations, newest
//! first tried: a muted (or left) conversation that posted last must not hide the message from
//! another conversation that should be pushed. When the window ends, the user is checked
//! again: one who came online meanwhile got the message on a socket and needs no push.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use magpie_core::UserId;
use magpie_store::Store;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use super::{PushCandidate, PushError, PushNotification, PushProvider};

/// Conversations a user's window remembers (the newest candidate of each). A push goes out
/// for the newest one that is not muted; past this many, the oldest is forgotten.
pub const CONVERSATIONS_PER_WINDOW_MAX: usize = 8;

/// How long a user's window may wait for a delivery slot before it is dropped as stale. When
/// the webhook is slow or down for long, windows pile up; pushed hours later, they would
/// announce messages the user has long since seen on another device.
const WINDOW_STALE_MS: u64 = 5 * 60 * 1_000;

/// Whether a user has a connected device right now.
pub type IsOnline = Arc<dyn Fn(UserId) -> bool + Send + Sync>;

/// Tunables of the push pipeline.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// Notifications waiting for the dispatcher; beyond this, pushes are dropped (and counted).
    pub queue_max: usize,
    /// Notifications for one user within this window become one push.
    pub coalesce_ms: u64,
    /// Delivery attempts per push, the first included.
    pub attempts_max: u32,
    /// First retry delay; doubles per attempt.
    pub retry_base_ms: u64,
    /// Deliveries in flight at once.
    pub concurrency_max: usize,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            queue_max: 10_000,
            coalesce_ms: 1_000,
            attempts_max: 5,
            retry_base_ms: 500,
            concurrency_max: 16,
        }
    }
}

/// The intake side, held by the router. Cloning shares the queue.
#[derive(Clone)]
pub struct PushQueue {
    /// Bounded intake.
    tx: mpsc::Sender<PushCandidate>,
}

impl PushQueue {
    /// Starts the dispatcher on the current runtime and returns the intake.
    pub fn start(
        provider: Arc<dyn PushProvider>,
        store: Arc<dyn Store>,
        online: IsOnline,
        config: PushConfig,
    ) -> PushQueue {
        let (tx, rx) = mpsc::channel(config.queue_max);
        tokio::spawn(dispatch(rx, provider, store, online, config));
        PushQueue { tx }
    }

    /// Enqueues without waiting; a full queue drops the push (delivery must never wait on push).
    pub fn offer(&self, n: PushCandidate) {
        match self.tx.try_send(n) {
            Ok(()) => metrics::counter!("magpie_push_enqueued_total").increment(1),
            Err(_) => metrics::counter!("magpie_push_dropped_total").increment(1),
        }
    }
}

/// Pending pushes: per user, the newest candidate of each recent conversation, and when the
/// user's window closes.
struct Coalescer {
    /// user → the newest candidate per conversation, oldest first, at most
    /// [`CONVERSATIONS_PER_WINDOW_MAX`].
    pending: HashMap<UserId, Vec<PushCandidate>>,
    /// Users in the order their window opened, with its end. Every window has the same length,
    /// so this order is also the order they fall due: the front is always the next one, and
    /// no scan of `pending` is ever needed.
    due: VecDeque<(Instant, UserId)>,
    /// Window length.
    window: Duration,
    /// Bound on distinct pending users, equal to the queue bound, so memory stays bounded.
    users_max: usize,
}

impl Coalescer {
    fn new(window: Duration, users_max: usize) -> Self {
        Self {
            pending: HashMap::new(),
            due: VecDeque::new(),
            window,
            users_max,
        }
    }

    fn add(&mut self, n: PushCandidate) {
        if let Some(list) = self.pending.get_mut(&n.user_id) {
            list.retain(|c| c.conversation_id != n.conversation_id);
            if list.len() == CONVERSATIONS_PER_WINDOW_MAX {
                list.remove(0);
            }
            list.push(n);
            metrics::counter!("magpie_push_coalesced_total").increment(1);
        } else if self.pending.len() < self.users_max {
            self.due
                .push_back((Instant::now() + self.window, n.user_id));
            self.pending.insert(n.user_id, vec![n]);
        } else {
            metrics::counter!("magpie_push_dropped_total").increment(1);
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.due.front().map(|(at, _)| *at)
    }

    /// The users whose window ended, each with its candidates, newest first.
    fn take_due(&mut self) -> Vec<Vec<PushCandidate>> {
        let now = Instant::now();
        let mut out = Vec::new();
        while let Some(&(at, user)) = self.due.front() {
            if at > now {
                break;
            }
            self.due.pop_front();
            out.extend(self.pending.remove(&user).map(|mut list| {
                list.reverse();
                list
            }));
        }
        out
    }
}

async fn dispatch(
    mut rx: mpsc::Receiver<PushCandidate>,
    provider: Arc<dyn PushProvider>,
    store: Arc<dyn Store>,
    online: IsOnline,
    config: PushConfig,
) {
    let permits = Arc::new(Semaphore::new(config.concurrency_max));
    let mut coalescer = Coalescer::new(Duration::from_millis(config.coalesce_ms), config.queue_max);
    // Users whose window ended, waiting for a delivery slot, with when they ended. The intake
    // keeps being read (and coalesced) while all slots are busy; this queue has the
    // coalescer's bound, and when it is full the oldest window makes room for the newest.
    let mut ready: VecDeque<(Instant, Vec<PushCandidate>)> = VecDeque::new();
    let stale_after = Duration::from_millis(WINDOW_STALE_MS);
    loop {
        let due = coalescer.next_due();
        tokio::select! {
            received = rx.recv() => match received {
                Some(n) => coalescer.add(n),
                None => break,
            },
            _ = sleep_until_opt(due) => {
                let now = Instant::now();
                for user in coalescer.take_due() {
                    if ready.len() >= config.queue_max.max(1) {
                        ready.pop_front();
                        metrics::counter!("magpie_push_dropped_total").increment(1);
                    }
                    ready.push_back((now, user));
                }
            }
            permit = permits.clone().acquire_owned(), if !ready.is_empty() => {
                let (Ok(permit), Some((ended, candidates))) = (permit, ready.pop_front()) else { return };
                if ended.elapsed() > stale_after {
                    metrics::counter!("magpie_push_stale_total").increment(1);
                    continue;
                }
                let (provider, store, online, config) =
                    (provider.clone(), store.clone(), online.clone(), config.clone());
                tokio::spawn(async move {
                    if let Some(n) = choose(store.as_ref(), online.as_ref(), candidates).await {
                        deliver_with_retries(provider.as_ref(), &n, &config).await;
                    }
                    drop(permit);
                });
            }
        }
    }
}

/// The push for one user's window: the newest candidate whose conversation is neither muted
/// nor left, unless the user came online meanwhile. `candidates` are newest first.
async fn choose(
    store: &dyn Store,
    online: &(dyn Fn(UserId) -> bool + Send + Sync),
    candidates: Vec<PushCandidate>,
) -> Option<PushNotification> {
    let user = candidates.first()?.user_id;
    if online(user) {
        metrics::counter!("magpie_push_online_total").increment(1);
        return None;
    }
    for candidate in candidates {
        if let Some(n) = enrich(store, candidate).await {
            return Some(n);
        }
    }
    None
}

/// Adds the sender's name and the unread count; `None` when the conversation is muted, the
/// user left it, or the store cannot answer (push is best-effort).
async fn enrich(store: &dyn Store, c: PushCandidate) -> Option<PushNotification> {
    // The list's own row: membership, mute, and the same unread count the app's badge shows.
    let summary = store
        .conversation_summary(c.conversation_id, c.user_id)
        .await
        .ok()??;
    if summary.member.muted {
        metrics::counter!("magpie_push_muted_total").increment(1);
        return None;
    }
    if summary.member.read_seq >= c.seq {
        // Read meanwhile (on another device, over HTTP, or online and gone again).
        metrics::counter!("magpie_push_read_total").increment(1);
        return None;
    }
    let sender_name = store
        .user_by_id(c.sender_id)
        .await
        .ok()?
        .map(|u| u.username)
        .unwrap_or_default();
    Some(PushNotification {
        user_id: c.user_id,
        conversation_id: c.conversation_id,
        seq: c.seq,
        sender_id: c.sender_id,
        sender_name,
        preview: c.preview,
        unread_count: summary.unread_count,
    })
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn deliver_with_retries(
    provider: &dyn PushProvider,
    n: &PushNotification,
    config: &PushConfig,
) {
    let mut delay = Duration::from_millis(config.retry_base_ms);
    for attempt in 1..=config.attempts_max {
        match provider.deliver(n).await {
            Ok(()) => {
                metrics::counter!("magpie_push_delivered_total").increment(1);
                return;
            }
            Err(PushError::Permanent(e)) => {
                tracing::warn!(error = %e, "push failed permanently");
                break;
            }
            Err(PushError::Transient(e)) => {
                metrics::counter!("magpie_push_retries_total").increment(1);
                tracing::debug!(error = %e, attempt, "push failed; retrying");
                if attempt < config.attempts_max {
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(2);
                }
            }
        }
    }
    metrics::counter!("magpie_push_failed_total").increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use magpie_core::{ConversationId, Seq};

    fn candidate(user: u64, seq: u64) -> PushCandidate {
        PushCandidate {
            user_id: UserId(user),
            conversation_id: ConversationId(1),
            seq: Seq(seq),
            sender_id: UserId(99),
            preview: String::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_push_per_user_per_window_in_due_order() {
        let mut c = Coalescer::new(Duration::from_millis(100), 2);
        c.add(candidate(1, 1));
        tokio::time::advance(Duration::from_millis(10)).await;
        c.add(candidate(2, 1));
        c.add(candidate(1, 2));
        c.add(candidate(3, 1)); // over the bound: dropped
        assert!(c.take_due().is_empty(), "nothing is due inside the window");
        tokio::time::advance(Duration::from_millis(95)).await;
        let first = c.take_due();
        assert_eq!(
            first,
            vec![vec![candidate(1, 2)]],
            "user 1's window ended, carrying its latest"
        );
        tokio::time::advance(Duration::from_millis(10)).await;
        assert_eq!(c.take_due(), vec![vec![candidate(2, 1)]]);
        assert!(c.next_due().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_keeps_the_newest_of_each_recent_conversation_newest_first() {
        let in_conv = |conv: u64, seq: u64| PushCandidate {
            conversation_id: ConversationId(conv),
            ..candidate(1, seq)
        };
        let mut c = Coalescer::new(Duration::from_millis(100), 10);
        c.add(in_conv(1, 1));
        c.add(in_conv(2, 1));
        c.add(in_conv(1, 2)); // replaces conversation 1's older candidate
        let newest = 1 + CONVERSATIONS_PER_WINDOW_MAX as u64;
        for conv in 3..=newest {
            c.add(in_conv(conv, 1)); // one too many: the oldest conversation falls out
        }
        tokio::time::advance(Duration::from_millis(100)).await;
        let due = c.take_due();
        assert_eq!(due.len(), 1, "one push per user per window");
        let convs: Vec<u64> = due[0].iter().map(|n| n.conversation_id.0).collect();
        let expected: Vec<u64> = (3..=newest).rev().chain([1]).collect();
        assert_eq!(convs, expected, "newest first; conversation 2 fell out");
        assert_eq!(due[0].last().map(|n| n.seq), Some(Seq(2)));
    }
}
