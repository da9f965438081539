//! Presence: who is online, with damping.
//!
//! A user is online while at least one device is connected (connections that stop
//! heartbeating are closed, so "connected" implies "heartbeating"). Going online is announced
//! at once; going offline only after a grace period with no device, so a reconnect inside it
//! announces nothing. Announcements go to a bounded queue consumed by a task that tells the
//! user's online friends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use magpie_core::{now_ms, UserId};
use parking_lot::Mutex;
use tokio::sync::mpsc;

/// Announcements waiting for the announcer task; beyond this they are dropped and counted
/// (presence is advisory; clients can always ask `GET /v1/presence`).
pub const PRESENCE_QUEUE_MAX: usize = 4096;
/// How long an offline announcement that found the queue full waits before it is tried
/// again, at least (a mass disconnect expires thousands of grace timers at once): up to twice
/// this, at random, so that the retries of many users spread out instead of all coming back
/// in the same instant.
const ANNOUNCE_RETRY_MS: u64 = 1_000;

/// A change to tell friends about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announcement {
    /// Whose presence changed.
    pub user_id: UserId,
    /// The new state.
    pub online: bool,
    /// When the user was last connected (now, when online).
    pub last_seen_ms: u64,
}

#[derive(Default)]
struct UserPresence {
    /// Connected devices on this node.
    connections: usize,
    /// What friends were last told.
    announced_online: bool,
    /// Last time a device disconnected (or connected).
    last_seen_ms: u64,
    /// Bumped on every change so a stale grace timer knows it lost.
    generation: u64,
}

/// Presence state of the users connected to this node.
pub struct Presence {
    /// Per-user state of users online or in their grace period (and, rarely, offline users
    /// whose announcement found the queue full): bounded by the connected users.
    users: Mutex<HashMap<UserId, UserPresence>>,
    /// Delay before announcing offline.
    grace: Duration,
    /// Intake of the announcer task.
    announce: mpsc::Sender<Announcement>,
}

impl Presence {
    /// A tracker whose announcements go to `announce`.
    pub fn new(grace: Duration, announce: mpsc::Sender<Announcement>) -> Arc<Self> {
        Arc::new(Self {
            users: Mutex::new(HashMap::new()),
            grace,
            announce,
        })
    }

    fn emit(&self, a: Announcement) {
        if self.announce.try_send(a).is_err() {
            metrics::counter!("magpie_presence_dropped_total").increment(1);
        }
    }

    /// A device of `user` connected.
    pub fn connected(&self, user: UserId) {
        let mut users = self.users.lock();
        let p = users.entry(user).or_default();
        p.connections += 1;
        p.generation += 1;
        p.last_seen_ms = now_ms();
        if !p.announced_online {
            p.announced_online = true;
            let a = Announcement {
                user_id: user,
                online: true,
                last_seen_ms: p.last_seen_ms,
            };
            drop(users);
            self.emit(a);
        }
    }

    /// A device of `user` disconnected; starts the grace timer when it was the last one.
    pub fn disconnected(self: &Arc<Self>, user: UserId) {
        let mut users = self.users.lock();
        let Some(p) = users.get_mut(&user) else {
            return;
        };
        p.connections = p.connections.saturating_sub(1);
        p.last_seen_ms = now_ms();
        p.generation += 1;
        if p.connections > 0 {
            return;
        }
        let generation = p.generation;
        drop(users);
        let this = self.clone();
        // The timer only matters if a runtime is there to run it (it always is in the server).
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                tokio::time::sleep(this.grace).await;
                this.grace_expired(user, generation);
            });
        }
    }

    fn grace_expired(self: &Arc<Self>, user: UserId, generation: u64) {
        let mut users = self.users.lock();
        let Some(p) = users.get_mut(&user) else {
            return;
        };
        if p.generation != generation || p.connections > 0 || !p.announced_online {
            return;
        }
        let a = Announcement {
            user_id: user,
            online: false,
            last_seen_ms: p.last_seen_ms,
        };
        // The announcer task records the last-seen time in the store, which answers for users
        // this map does not know; so the entry can go, and the map holds only users online or
        // in their grace period, not everyone who connected since start.
        if self.announce.try_send(a).is_ok() {
            users.remove(&user);
            return;
        }
        // The queue is full (a mass disconnect): the user stays announced online (so friends
        // are not left with a stale "online" that no announcement will correct, and shutdown
        // still records the time) and the announcement is tried again shortly, unless the
        // user reconnects meanwhile.
        metrics::counter!("magpie_presence_retried_total").increment(1);
        drop(users);
        let this = self.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let jitter = rand::random_range(0..=ANNOUNCE_RETRY_MS);
                tokio::time::sleep(Duration::from_millis(ANNOUNCE_RETRY_MS + jitter)).await;
                this.grace_expired(user, generation);
            });
        }
    }

    /// `(online, last_seen_ms)` if this node has seen `user` connect since it started; `None`
    /// otherwise (the store then knows when the user was last seen).
    pub fn known(&self, user: UserId) -> Option<(bool, u64)> {
        let users = self.users.lock();
        users.get(&user).map(|p| {
            if p.announced_online {
                (true, now_ms().max(p.last_seen_ms))
            } else {
                (false, p.last_seen_ms)
            }
        })
    }

    /// Users whose going offline has not been announced (and so not recorded) yet, with the
    /// time to record: now for connected users, the last disconnect for those in their grace
    /// period. Recorded at shutdown, so "last seen" survives a restart.
    pub fn unrecorded(&self) -> Vec<(UserId, u64)> {
        let now = now_ms();
        let users = self.users.lock();
        users
            .iter()
            .filter(|(_, p)| p.announced_online)
            .map(|(&u, p)| {
                (
                    u,
                    if p.connections > 0 {
                        now
                    } else {
                        p.last_seen_ms
                    },
                )
            })
            .collect()
    }

    /// What friends see: `(online, last_seen_ms)`; `(false, 0)` for users not seen here.
    #[cfg(test)]
    pub fn status(&self, user: UserId) -> (bool, u64) {
        self.known(user).unwrap_or((false, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_offline_announcement_that_finds_the_queue_full_is_retried() {
        let (tx, mut rx) = mpsc::channel(1);
        let p = Presence::new(Duration::from_millis(1000), tx);
        let (u, v) = (UserId(1), UserId(2));
        p.connected(u);
        p.disconnected(u);
        assert!(rx.recv().await.unwrap().online, "u online");
        p.connected(v); // fills the queue
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(p.status(u).0, "still online while its announcement waits");
        assert!(rx.recv().await.unwrap().online, "v online");
        tokio::time::sleep(Duration::from_millis(2 * ANNOUNCE_RETRY_MS + 100)).await;
        let a = rx.try_recv().expect("u's offline announcement, retried");
        assert_eq!((a.user_id, a.online), (u, false));
        assert!(!p.status(u).0);
    }

    #[tokio::test(start_paused = true)]
    async fn reconnect_within_grace_announces_nothing() {
        let (tx, mut rx) = mpsc::channel(16);
        let p = Presence::new(Duration::from_millis(1000), tx);
        let u = UserId(1);
        p.connected(u);
        assert!(rx.recv().await.unwrap().online);
        p.disconnected(u);
        tokio::time::sleep(Duration::from_millis(500)).await;
        p.connected(u);
        tokio::time::sleep(Duration::from_millis(2000)).await;
        assert!(
            rx.try_recv().is_err(),
            "no announcement for a quick reconnect"
        );
        assert!(p.status(u).0);
        p.disconnected(u);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let a = rx.try_recv().expect("offline announced after grace");
        assert!(!a.online);
        assert!(!p.status(u).0);
        assert_eq!(
            p.users.lock().len(),
            0,
            "an announced offline user is forgotten"
        );
    }
}
