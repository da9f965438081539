//! The push queue and its dispatcher task: bounded intake, per-user coalescing, bounded
//! concurrent delivery, retries with exponential backoff.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use magpie_core::limits::{PAGE_LIMIT_MAX, UNREAD_COUNT_MAX};
use magpie_core::UserId;
use magpie_store::{MessageRange, Store};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use super::{PushCandidate, PushError, PushNotification, PushProvider};

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
        config: PushConfig,
    ) -> PushQueue {
        let (tx, rx) = mpsc::channel(config.queue_max);
        tokio::spawn(dispatch(rx, provider, store, config));
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

/// Pending pushes: the latest notification per user and when its window closes.
struct Coalescer {
    /// user → (latest candidate, flush time).
    pending: HashMap<UserId, (PushCandidate, Instant)>,
    /// Window length.
    window: Duration,
    /// Bound on distinct pending users, equal to the queue bound, so memory stays bounded.
    users_max: usize,
}

impl Coalescer {
    fn add(&mut self, n: PushCandidate) {
        let now = Instant::now();
        if let Some((latest, _)) = self.pending.get_mut(&n.user_id) {
            *latest = n;
            metrics::counter!("magpie_push_coalesced_total").increment(1);
        } else if self.pending.len() < self.users_max {
            self.pending.insert(n.user_id, (n, now + self.window));
        } else {
            metrics::counter!("magpie_push_dropped_total").increment(1);
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.pending.values().map(|(_, at)| *at).min()
    }

    fn take_due(&mut self) -> Vec<PushCandidate> {
        let now = Instant::now();
        let due: Vec<UserId> = self
            .pending
            .iter()
            .filter(|(_, (_, at))| *at <= now)
            .map(|(u, _)| *u)
            .collect();
        due.into_iter()
            .filter_map(|u| self.pending.remove(&u).map(|(n, _)| n))
            .collect()
    }
}

async fn dispatch(
    mut rx: mpsc::Receiver<PushCandidate>,
    provider: Arc<dyn PushProvider>,
    store: Arc<dyn Store>,
    config: PushConfig,
) {
    let permits = Arc::new(Semaphore::new(config.concurrency_max));
    let mut coalescer = Coalescer {
        pending: HashMap::new(),
        window: Duration::from_millis(config.coalesce_ms),
        users_max: config.queue_max,
    };
    loop {
        let due = coalescer.next_due();
        tokio::select! {
            received = rx.recv() => match received {
                Some(n) => coalescer.add(n),
                None => break,
            },
            _ = sleep_until_opt(due) => {
                for candidate in coalescer.take_due() {
                    let Ok(permit) = permits.clone().acquire_owned().await else { return };
                    let (provider, store, config) = (provider.clone(), store.clone(), config.clone());
                    tokio::spawn(async move {
                        if let Some(n) = enrich(store.as_ref(), candidate).await {
                            deliver_with_retries(provider.as_ref(), &n, &config).await;
                        }
                        drop(permit);
                    });
                }
            }
        }
    }
}

/// Adds the sender's name and the unread count; `None` when the conversation is muted, the
/// user left it, or the store cannot answer (push is best-effort).
async fn enrich(store: &dyn Store, c: PushCandidate) -> Option<PushNotification> {
    let member = store.member(c.conversation_id, c.user_id).await.ok()??;
    if member.muted {
        metrics::counter!("magpie_push_muted_total").increment(1);
        return None;
    }
    let sender_name = store
        .user_by_id(c.sender_id)
        .await
        .ok()?
        .map(|u| u.username)
        .unwrap_or_default();
    let mut unread_count = 0u64;
    let mut after = member.read_seq;
    // Count unread messages from others, a page at a time, up to the cap.
    while unread_count < UNREAD_COUNT_MAX {
        let page = store
            .messages(
                c.conversation_id,
                MessageRange::After(after),
                PAGE_LIMIT_MAX,
            )
            .await
            .ok()?;
        unread_count += page.iter().filter(|m| m.sender_id != c.user_id).count() as u64;
        match page.last() {
            Some(last) if page.len() == PAGE_LIMIT_MAX => after = last.seq,
            _ => break,
        }
    }
    Some(PushNotification {
        user_id: c.user_id,
        conversation_id: c.conversation_id,
        seq: c.seq,
        sender_id: c.sender_id,
        sender_name,
        preview: c.preview,
        unread_count: unread_count.min(UNREAD_COUNT_MAX),
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
