//! Shared state handed to every handler.

use std::sync::Arc;

use self::tokio_util_shim::CancelToken;
use magpie_store::Store;
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::hub::Hub;

/// Concurrent Argon2 computations; each costs ~19 MiB and a core for tens of milliseconds, so
/// a login flood must queue instead of exhausting memory.
pub const ARGON2_CONCURRENCY_MAX: usize = 4;

/// Password hashes waiting or running at once. Registration and login need no token, so a
/// flood of them would otherwise queue without bound and hold every real login behind it;
/// beyond this many, requests are answered `rate_limited` at once (at ~50 ms a hash on two
/// cores, the last of them waits about a second).
pub const ARGON2_QUEUE_MAX: usize = 64;

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The resolved configuration.
    pub config: Arc<Config>,
    /// Durable storage.
    pub store: Arc<dyn Store>,
    /// Connections on this node.
    pub hub: Arc<Hub>,
    /// Bounds sends in flight per conversation (hot-group protection).
    pub gate: Arc<crate::gate::ConversationGate>,
    /// Bumped whenever a friendship ends, so cached "may send" answers are rechecked.
    pub friend_epoch: Arc<std::sync::atomic::AtomicU64>,
    /// Bumped by the commit hook whenever a member leaves a group, so cached `joined_seq`s are
    /// rechecked (shared with `Hub::membership_epoch`).
    pub membership_epoch: Arc<std::sync::atomic::AtomicU64>,
    /// Recent messages of read-fan-out conversations, for pulls.
    pub recent: Arc<crate::recent::RecentMessages>,
    /// Bounds concurrent password hashing.
    pub argon2_permits: Arc<Semaphore>,
    /// Bounds password hashing waiting or running ([`ARGON2_QUEUE_MAX`]).
    pub argon2_queue: Arc<Semaphore>,
    /// The send rate limit per device, for the socket and HTTP send paths.
    pub send_limits: Arc<crate::ws::ratelimit::SendLimits>,
    /// Typing frames per user, over all of the user's sockets.
    pub typing_limits: Arc<crate::ws::ratelimit::SendLimits<magpie_core::UserId>>,
    /// Fires when the server begins shutting down, so long-lived tasks close promptly.
    pub shutdown: CancelToken,
    /// Metric handles updated per message, resolved once at start.
    pub hot_metrics: Arc<crate::metrics_setup::HotMetrics>,
}

/// A tiny cancellation token (a watch channel), so the server needs no extra crate for it.
pub mod tokio_util_shim {
    use tokio::sync::watch;

    /// Cloneable; `cancel` wakes every `cancelled().await`.
    #[derive(Clone)]
    pub struct CancelToken {
        tx: std::sync::Arc<watch::Sender<bool>>,
        rx: watch::Receiver<bool>,
    }

    impl Default for CancelToken {
        fn default() -> Self {
            let (tx, rx) = watch::channel(false);
            Self {
                tx: std::sync::Arc::new(tx),
                rx,
            }
        }
    }

    impl CancelToken {
        /// Signals cancellation to every clone.
        pub fn cancel(&self) {
            let _ = self.tx.send(true);
        }

        /// True once `cancel` was called.
        pub fn is_cancelled(&self) -> bool {
            *self.rx.borrow()
        }

        /// Resolves once cancelled.
        pub async fn cancelled(&self) {
            let mut rx = self.rx.clone();
            // An error means the sender is gone, which only happens at teardown: treat as cancel.
            let _ = rx.wait_for(|v| *v).await;
        }
    }
}

impl AppState {
    /// True once shutdown began.
    pub fn shutdown_requested(&self) -> bool {
        self.shutdown.is_cancelled()
    }
}
