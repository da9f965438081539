//! The in-process router: which devices of which users are connected here, and how committed
//! events reach them.
//!
//! The store calls [`Hub::committed`] right after each durable commit, in cursor order. The hub
//! never blocks: it `try_send`s into each live device's bounded queue, and a device whose queue
//! is full is kicked with `CLOSE_RESYNC` (it reconnects and resumes from its cursor, so nothing
//! is lost and nothing is dropped silently). A cluster router (NATS) will wrap this local hub
//! behind the same [`Router`] trait.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;

use magpie_core::{DeviceId, Event, UserEvent, UserId};
use magpie_protocol::close::{CLOSE_RESYNC, CLOSE_REVOKED};
use magpie_store::CommitSink;
use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};

/// Events queued per device before it counts as too slow and is told to resync.
pub const DEVICE_QUEUE_EVENTS_MAX: usize = 1024;
/// Lock shards of the connection table, to keep fan-out from contending on one mutex.
const SHARDS: usize = 64;

/// What a connection task is told to do from outside.
#[derive(Default)]
pub struct Kick {
    /// The close code to send; 0 while not kicked.
    code: AtomicU16,
    /// Wakes the connection task.
    notify: Notify,
}

impl Kick {
    /// Asks the connection to close with `code`. The first code wins.
    pub fn kick(&self, code: u16) {
        if self
            .code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.notify.notify_one();
        }
    }

    /// Waits until kicked and returns the close code.
    pub async fn wait(&self) -> u16 {
        loop {
            let code = self.code.load(Ordering::Acquire);
            if code != 0 {
                return code;
            }
            self.notify.notified().await;
        }
    }
}

/// A connected device as the hub sees it.
struct DeviceSlot {
    /// Unique per connection (a device may reconnect before its old socket is gone).
    conn_id: u64,
    /// The device.
    device_id: DeviceId,
    /// Bounded queue into the connection task; only set once the client asked to `sync`.
    live: Option<mpsc::Sender<Event>>,
    /// How to close this connection from outside.
    kick: Arc<Kick>,
}

/// One user's presence on this node.
#[derive(Default)]
struct UserSlot {
    /// Connected devices (usually one to three).
    devices: Vec<DeviceSlot>,
    /// Long-pollers of `GET /v1/sync` waiting for this user's next event.
    waiters: Option<Arc<Notify>>,
    /// Number of long-pollers holding `waiters`.
    waiter_count: usize,
}

/// Routes committed events to connections. Implemented by [`Hub`] in-process.
pub trait Router: CommitSink {
    /// Closes every connection of `device` with `code` (logout, overflow).
    fn kick_device(&self, user: UserId, device: DeviceId, code: u16);
}

/// The in-process connection table.
pub struct Hub {
    /// `user_id % SHARDS` picks the shard.
    shards: Vec<Mutex<HashMap<UserId, UserSlot>>>,
    /// Source of `conn_id`s.
    next_conn_id: AtomicU64,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

/// Removes its connection from the hub when dropped, so a panicking or cancelled connection
/// task can never leave a stale slot behind.
pub struct Registration {
    hub: Arc<Hub>,
    user: UserId,
    conn_id: u64,
    /// How the hub closes this connection.
    pub kick: Arc<Kick>,
}

impl Registration {
    /// Starts live delivery into `tx` (after the client's `sync`).
    pub fn go_live(&self, tx: mpsc::Sender<Event>) {
        let mut shard = self.hub.shard(self.user).lock();
        if let Some(slot) = shard.get_mut(&self.user) {
            if let Some(d) = slot.devices.iter_mut().find(|d| d.conn_id == self.conn_id) {
                d.live = Some(tx);
            }
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut shard = self.hub.shard(self.user).lock();
        if let Some(slot) = shard.get_mut(&self.user) {
            slot.devices.retain(|d| d.conn_id != self.conn_id);
            if slot.devices.is_empty() && slot.waiter_count == 0 {
                shard.remove(&self.user);
            }
        }
        metrics::gauge!("magpie_ws_connections").decrement(1.0);
    }
}

/// A long-poller's registration; releases the waiter slot when dropped.
pub struct Waiter {
    hub: Arc<Hub>,
    user: UserId,
    /// Notified when an event for the user commits.
    pub notify: Arc<Notify>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut shard = self.hub.shard(self.user).lock();
        if let Some(slot) = shard.get_mut(&self.user) {
            slot.waiter_count = slot.waiter_count.saturating_sub(1);
            if slot.waiter_count == 0 {
                slot.waiters = None;
            }
            if slot.devices.is_empty() && slot.waiter_count == 0 {
                shard.remove(&self.user);
            }
        }
    }
}

impl Hub {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            next_conn_id: AtomicU64::new(1),
        }
    }

    fn shard(&self, user: UserId) -> &Mutex<HashMap<UserId, UserSlot>> {
        &self.shards[(user.0 % SHARDS as u64) as usize]
    }

    /// Registers a new connection of `device`; not live until [`Registration::go_live`].
    pub fn connect(self: &Arc<Self>, user: UserId, device: DeviceId) -> Registration {
        let conn_id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let kick = Arc::new(Kick::default());
        let slot = DeviceSlot {
            conn_id,
            device_id: device,
            live: None,
            kick: kick.clone(),
        };
        self.shard(user)
            .lock()
            .entry(user)
            .or_default()
            .devices
            .push(slot);
        metrics::gauge!("magpie_ws_connections").increment(1.0);
        Registration {
            hub: self.clone(),
            user,
            conn_id,
            kick,
        }
    }

    /// Registers a long-poller for `user`'s next event.
    pub fn wait_for(self: &Arc<Self>, user: UserId) -> Waiter {
        let mut shard = self.shard(user).lock();
        let slot = shard.entry(user).or_default();
        slot.waiter_count += 1;
        let notify = slot
            .waiters
            .get_or_insert_with(|| Arc::new(Notify::new()))
            .clone();
        Waiter {
            hub: self.clone(),
            user,
            notify,
        }
    }

    /// Number of users with at least one connected device on this node.
    pub fn online_users(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().values().filter(|u| !u.devices.is_empty()).count())
            .sum()
    }

    fn deliver(slot: &mut UserSlot, event: &Event) {
        for device in slot.devices.iter_mut() {
            let Some(tx) = &device.live else { continue };
            match tx.try_send(event.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // The device cannot keep up. Stop feeding it and tell it to resync from its
                    // cursor; the events stay in its inbox.
                    device.live = None;
                    device.kick.kick(CLOSE_RESYNC);
                    metrics::counter!("magpie_ws_overflow_kicks_total").increment(1);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => device.live = None,
            }
        }
        if let Some(waiters) = &slot.waiters {
            waiters.notify_waiters();
        }
    }
}

impl CommitSink for Hub {
    fn committed(&self, events: &[UserEvent]) {
        for ue in events {
            let mut shard = self.shard(ue.user_id).lock();
            if let Some(slot) = shard.get_mut(&ue.user_id) {
                Hub::deliver(slot, &ue.event);
            }
        }
    }
}

impl Router for Hub {
    fn kick_device(&self, user: UserId, device: DeviceId, code: u16) {
        let mut shard = self.shard(user).lock();
        if let Some(slot) = shard.get_mut(&user) {
            for d in slot.devices.iter_mut().filter(|d| d.device_id == device) {
                d.live = None;
                d.kick.kick(code);
            }
        }
    }
}

/// The close code for a logged-out device, re-exported for handlers.
pub const KICK_REVOKED: u16 = CLOSE_REVOKED;
