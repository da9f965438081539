//! The in-process router: which devices of which users are connected here, and how committed
//! events, read-fan-out notifications and ephemeral frames reach them.
//!
//! The store calls [`Hub::committed`] right after each durable commit, in cursor order. The hub
//! never blocks: it `try_send`s into each live device's bounded queue, and a device whose queue
//! is full is kicked with `CLOSE_RESYNC` (it reconnects and resumes from its cursor, so nothing
//! is lost and nothing is dropped silently). Read-fan-out notices are handed to a notifier task
//! (so a 10,000-member group never costs the store's writer thread a member scan), coalesced
//! per conversation there and per device in a [`NotifyBox`]. A cluster router (NATS) will wrap
//! this local hub behind the same [`Router`] trait.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use magpie_core::{ConversationId, DeviceId, Event, EventPayload, Message, Seq, UserEvent, UserId};
use magpie_protocol::close::{CLOSE_RESYNC, CLOSE_REVOKED};
use magpie_store::{CommitSink, ConversationNotice};
use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};

use crate::presence::Presence;
use crate::push::{PushCandidate, PushQueue};
use crate::recent::RecentMessages;

/// Items queued per device before it counts as too slow and is told to resync.
/// One store batch can carry up to 512 sends from each of several connections, each producing an
/// event for this device, so the bound sits well above a batch. tokio allocates the queue in
/// blocks of 32 as it fills, so an idle device pays for one block, not for the bound.
pub const DEVICE_QUEUE_EVENTS_MAX: usize = 4096;
/// Free places a device queue keeps for events: ephemeral frames (typing, presence) are
/// queued only while more than this many are free.
const EPHEMERAL_ROOM_MIN: usize = DEVICE_QUEUE_EVENTS_MAX / 2;
/// Conversations with a pending notify per device; a device beyond it is told to resync.
pub const NOTIFY_PENDING_CONVERSATIONS_MAX: usize = 4096;
/// Read-fan-out conversations waiting for the notifier; beyond it the notice is merged into
/// nothing and counted (members still see the message on their next pull or list refresh).
pub const NOTICES_PENDING_MAX: usize = 65_536;
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

    /// The close code if kicked, without waiting.
    pub fn code(&self) -> Option<u16> {
        match self.code.load(Ordering::Acquire) {
            0 => None,
            code => Some(code),
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

/// Read-fan-out notifications waiting to be written to one device: conversation → newest
/// seq. A burst of messages in one group becomes a single `notify` frame.
#[derive(Default)]
pub struct NotifyBox {
    pending: Mutex<HashMap<ConversationId, Seq>>,
}

impl NotifyBox {
    /// Records `last_seq`; true if the box was empty (the device needs a wake-up).
    fn add(&self, conversation: ConversationId, last_seq: Seq) -> Result<bool, ()> {
        let mut pending = self.pending.lock();
        let was_empty = pending.is_empty();
        if pending.len() >= NOTIFY_PENDING_CONVERSATIONS_MAX && !pending.contains_key(&conversation)
        {
            return Err(());
        }
        let slot = pending.entry(conversation).or_default();
        *slot = (*slot).max(last_seq);
        Ok(was_empty)
    }

    /// Everything pending, emptying the box.
    pub fn take(&self) -> Vec<(ConversationId, Seq)> {
        self.pending.lock().drain().collect()
    }
}

/// A message's JSON (`magpie_protocol::ws::message_json`), written by the first connection
/// that delivers the message and reused by every other recipient device of the same commit:
/// write fan-out puts one message into many inboxes, and their `event` frames differ only in
/// the cursor. `None` inside if serializing failed.
pub type SharedMessageJson = Arc<OnceLock<Option<Box<str>>>>;

/// An inbox event on its way to a user's connected devices.
#[derive(Debug)]
pub struct LiveEvent {
    /// The event.
    pub event: Event,
    /// For a message event, the message's JSON shared by all its recipients.
    pub message_json: Option<SharedMessageJson>,
}

/// What goes into a device's queue.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// An inbox event, delivered in cursor order. Shared by the user's devices, and boxed so
    /// that the queue's slots stay small (an idle device's queue costs one block of slots).
    Event(Arc<LiveEvent>),
    /// The device's [`NotifyBox`] has something.
    NotifyWake,
    /// A serialized ephemeral frame (presence, typing).
    Frame(Arc<str>),
}

/// A connected device as the hub sees it.
struct DeviceSlot {
    /// Unique per connection (a device may reconnect before its old socket is gone).
    conn_id: u64,
    /// The device.
    device_id: DeviceId,
    /// Bounded queue into the connection task; only set once the client asked to `sync`.
    live: Option<mpsc::Sender<Outbound>>,
    /// Pending read-fan-out notifications.
    notify_box: Arc<NotifyBox>,
    /// How to close this connection from outside.
    kick: Arc<Kick>,
}

impl DeviceSlot {
    /// Queues `item`; a full queue kicks the device (it resyncs from its cursor).
    fn push(&mut self, item: Outbound) -> bool {
        let Some(tx) = &self.live else { return false };
        match tx.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.overflow();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.live = None;
                false
            }
        }
    }

    fn overflow(&mut self) {
        self.live = None;
        // Once per connection: a kicked device stays registered until its task ends, and
        // further overflows of it (its notify box keeps filling) are the same kick.
        if self.kick.code().is_some() {
            return;
        }
        self.kick.kick(CLOSE_RESYNC);
        metrics::counter!("magpie_ws_overflow_kicks_total").increment(1);
    }
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
    /// Queues an ephemeral frame to every live device of `user`; dropped for slow devices.
    fn send_frame(&self, user: UserId, frame: Arc<str>);
}

/// The in-process connection table.
pub struct Hub {
    /// `user_id % SHARDS` picks the shard.
    shards: Vec<Mutex<HashMap<UserId, UserSlot>>>,
    /// Source of `conn_id`s.
    next_conn_id: AtomicU64,
    /// Read-fan-out notices waiting for the notifier task, coalesced per conversation.
    notices: Mutex<HashMap<ConversationId, ConversationNotice>>,
    /// Wakes the notifier task.
    notices_ready: Notify,
    /// Presence tracking (online/offline announcements).
    presence: Arc<Presence>,
    /// Offline push intake, set once at start when a provider is configured (the queue needs
    /// the store, which needs the hub, so it is attached after construction).
    push: std::sync::OnceLock<PushQueue>,
    /// The recent-message cache, told about every commit (set once at start).
    recent: std::sync::OnceLock<Arc<RecentMessages>>,
    /// Bumped whenever a member leaves or is removed from a group. Connections cache their
    /// `joined_seq` for pulls with the epoch they saw; a bump makes every cached answer be
    /// checked against the store again. Bumped from the store's `members_removed` hook, which
    /// runs before the removal's commit becomes readable, while readers are held off: a read
    /// that can see the removal or any later message (one the member must not see) starts
    /// after the bump, and a pull that rechecks the epoch after its read catches it.
    membership_epoch: Arc<AtomicU64>,
}

/// Removes its connection from the hub when dropped, so a panicking or cancelled connection
/// task can never leave a stale slot behind.
pub struct Registration {
    hub: Arc<Hub>,
    user: UserId,
    conn_id: u64,
    /// How the hub closes this connection.
    pub kick: Arc<Kick>,
    /// Pending read-fan-out notifications of this connection.
    pub notify_box: Arc<NotifyBox>,
}

impl Registration {
    /// Starts live delivery into `tx` (after the client's `sync`).
    pub fn go_live(&self, tx: mpsc::Sender<Outbound>) {
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
        drop(shard);
        self.hub.presence.disconnected(self.user);
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
    pub fn new(presence: Arc<Presence>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            next_conn_id: AtomicU64::new(1),
            notices: Mutex::new(HashMap::new()),
            notices_ready: Notify::new(),
            presence,
            push: std::sync::OnceLock::new(),
            recent: std::sync::OnceLock::new(),
            membership_epoch: Arc::new(AtomicU64::new(0)),
        }
    }

    /// See [`Hub::membership_epoch`] (the field).
    pub fn membership_epoch(&self) -> &Arc<AtomicU64> {
        &self.membership_epoch
    }

    /// Attaches the recent-message cache (once).
    pub fn set_recent(&self, recent: Arc<RecentMessages>) {
        let _ = self.recent.set(recent);
    }

    /// Attaches the offline push queue (once).
    pub fn set_push(&self, push: PushQueue) {
        let _ = self.push.set(push);
    }

    fn shard(&self, user: UserId) -> &Mutex<HashMap<UserId, UserSlot>> {
        &self.shards[(user.0 % SHARDS as u64) as usize]
    }

    /// Presence state.
    pub fn presence(&self) -> &Presence {
        &self.presence
    }

    /// Registers a new connection of `device`; not live until [`Registration::go_live`].
    pub fn connect(self: &Arc<Self>, user: UserId, device: DeviceId) -> Registration {
        let conn_id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let kick = Arc::new(Kick::default());
        let notify_box = Arc::new(NotifyBox::default());
        let slot = DeviceSlot {
            conn_id,
            device_id: device,
            live: None,
            notify_box: notify_box.clone(),
            kick: kick.clone(),
        };
        self.shard(user)
            .lock()
            .entry(user)
            .or_default()
            .devices
            .push(slot);
        self.presence.connected(user);
        metrics::gauge!("magpie_ws_connections").increment(1.0);
        Registration {
            hub: self.clone(),
            user,
            conn_id,
            kick,
            notify_box,
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

    /// Whether `user` has a socket registered on this node.
    pub fn is_online(&self, user: UserId) -> bool {
        self.shard(user)
            .lock()
            .get(&user)
            .is_some_and(|slot| !slot.devices.is_empty())
    }

    /// Number of users with at least one connected device on this node.
    pub fn online_users(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().values().filter(|u| !u.devices.is_empty()).count())
            .sum()
    }

    /// Delivers one event to a user's devices; returns whether any device is connected.
    fn deliver(&self, ue: &UserEvent, shared: &mut LastMessageJson) -> bool {
        let mut shard = self.shard(ue.user_id).lock();
        let Some(slot) = shard.get_mut(&ue.user_id) else {
            return false;
        };
        let message_json = match &ue.event.payload {
            EventPayload::Message(m) => Some(shared.cell_for(m)),
            _ => None,
        };
        let event = Arc::new(LiveEvent {
            event: ue.event.clone(),
            message_json,
        });
        for device in slot.devices.iter_mut() {
            device.push(Outbound::Event(event.clone()));
        }
        if let Some(waiters) = &slot.waiters {
            waiters.notify_waiters();
        }
        !slot.devices.is_empty()
    }

    /// Whether offline pushes are configured.
    pub fn pushes(&self) -> bool {
        self.push.get().is_some()
    }

    /// Offers for a push the newest message of each conversation among `events` (the
    /// user's, ascending), oldest first, as the commits would have: the push window tries the
    /// newest first, and a muted or read conversation cannot hide another.
    pub fn offer_push_for_newest(&self, user: UserId, events: &[Event]) {
        let mut offered: Vec<ConversationId> = Vec::new();
        let mut newest_first: Vec<&Event> = Vec::new();
        for e in events.iter().rev() {
            let EventPayload::Message(m) = &e.payload else {
                continue;
            };
            // What `offer_push` would skip must not take its conversation's place.
            if m.sender_id == user || m.system.is_some() || offered.contains(&m.conversation_id) {
                continue;
            }
            offered.push(m.conversation_id);
            newest_first.push(e);
            if offered.len() >= crate::push::CONVERSATIONS_PER_WINDOW_MAX {
                break;
            }
        }
        for event in newest_first.into_iter().rev() {
            self.offer_push(&UserEvent {
                user_id: user,
                event: event.clone(),
            });
        }
    }

    fn offer_push(&self, ue: &UserEvent) {
        let Some(push) = self.push.get() else { return };
        let EventPayload::Message(m) = &ue.event.payload else {
            return;
        };
        if m.sender_id == ue.user_id || m.system.is_some() {
            return;
        }
        push.offer(PushCandidate {
            user_id: ue.user_id,
            conversation_id: m.conversation_id,
            seq: m.seq,
            sender_id: m.sender_id,
            preview: crate::push::preview(&m.text),
        });
    }

    /// Tells the recent-message cache how far each conversation got, so it never answers a
    /// pull with a page that stops short of what is committed.
    fn note_commits(&self, events: &[UserEvent], notices: &[ConversationNotice]) {
        let Some(recent) = self.recent.get().filter(|r| !r.is_empty()) else {
            return;
        };
        let mut commits: Vec<(ConversationId, Seq)> = notices
            .iter()
            .map(|n| (n.conversation_id, n.last_seq))
            .collect();
        for ue in events {
            if let EventPayload::Message(m) = &ue.event.payload {
                if commits.last().map(|(c, s)| (*c, *s)) != Some((m.conversation_id, m.seq)) {
                    commits.push((m.conversation_id, m.seq));
                }
            }
        }
        if !commits.is_empty() {
            recent.note_committed(&commits);
        }
    }

    /// Runs forever: turns coalesced read-fan-out notices into per-device notify wake-ups,
    /// loading the new messages into `recent` first so the pulls that follow hit memory.
    pub async fn run_notifier(
        self: Arc<Self>,
        store: Arc<dyn magpie_store::Store>,
        recent: Arc<RecentMessages>,
    ) {
        loop {
            let batch: Vec<ConversationNotice> = {
                let mut pending = self.notices.lock();
                pending.drain().map(|(_, n)| n).collect()
            };
            if batch.is_empty() {
                self.notices_ready.notified().await;
                continue;
            }
            for notice in &batch {
                fill_recent(store.as_ref(), &recent, notice).await;
                self.notify_members(notice);
                // A 10,000-member notice is a few milliseconds of work; let other tasks run.
                tokio::task::yield_now().await;
            }
        }
    }

    fn notify_members(&self, notice: &ConversationNotice) {
        let mut woken = 0u64;
        for &member in notice.members.iter() {
            let mut shard = self.shard(member).lock();
            let Some(slot) = shard.get_mut(&member) else {
                continue;
            };
            // Every registered device, live or not: one that has not sent `sync` yet finds
            // the notice in its box when it goes live (`on_sync` ends by flushing the box).
            // Recording only live devices lost notices committed between a connect and its
            // `sync`, which the client's own catch-up (sync, then the conversation list) could
            // not see either.
            for device in slot.devices.iter_mut() {
                match device
                    .notify_box
                    .add(notice.conversation_id, notice.last_seq)
                {
                    Ok(true) => {
                        if device.push(Outbound::NotifyWake) {
                            woken += 1;
                        }
                    }
                    Ok(false) => {}
                    Err(()) => device.overflow(),
                }
            }
        }
        metrics::counter!("magpie_notify_wakeups_total").increment(woken);
    }
}

impl CommitSink for Hub {
    fn members_removed(&self) {
        self.membership_epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn committed(&self, events: &[UserEvent], notices: &[ConversationNotice]) {
        self.note_commits(events, notices);
        let mut shared = LastMessageJson::default();
        for ue in events {
            if !self.deliver(ue, &mut shared) {
                self.offer_push(ue);
            }
        }
        if notices.is_empty() {
            return;
        }
        let mut pending = self.notices.lock();
        for n in notices {
            let room = pending.len() < NOTICES_PENDING_MAX;
            match pending.get_mut(&n.conversation_id) {
                Some(existing) if n.last_seq > existing.last_seq => *existing = n.clone(),
                Some(_) => {}
                None if room => {
                    pending.insert(n.conversation_id, n.clone());
                }
                None => metrics::counter!("magpie_notices_dropped_total").increment(1),
            }
        }
        drop(pending);
        self.notices_ready.notify_one();
    }
}

/// The JSON cell of the message whose events are being delivered. The store appends a
/// message's fan-out events one after another, so remembering the last message is enough to
/// share one cell among all its recipients.
#[derive(Default)]
struct LastMessageJson(Option<(Arc<Message>, SharedMessageJson)>);

impl LastMessageJson {
    /// The cell shared by every event of `message` in this commit.
    fn cell_for(&mut self, message: &Arc<Message>) -> SharedMessageJson {
        if let Some((last, cell)) = &self.0 {
            if Arc::ptr_eq(last, message) {
                return cell.clone();
            }
        }
        let cell = SharedMessageJson::default();
        self.0 = Some((message.clone(), cell.clone()));
        cell
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

    fn send_frame(&self, user: UserId, frame: Arc<str>) {
        let mut shard = self.shard(user).lock();
        if let Some(slot) = shard.get_mut(&user) {
            for d in slot.devices.iter_mut() {
                if let Some(tx) = &d.live {
                    // Ephemeral frames are advisory: they are dropped rather than kick the
                    // device, and they take only the first half of its queue, so that a flood
                    // of them (typing from many sockets) cannot fill it and get the device
                    // kicked by the next event (its events are what must not be lost).
                    let room = tx.capacity() > EPHEMERAL_ROOM_MIN;
                    if !room || tx.try_send(Outbound::Frame(frame.clone())).is_err() {
                        metrics::counter!("magpie_ephemeral_dropped_total").increment(1);
                    }
                }
            }
        }
    }
}

/// Messages read per store page when filling the recent cache.
const RECENT_FILL_PAGE: usize = 200;
/// Pages read per notice at most; a larger backlog is left to the store path of pulls.
const RECENT_FILL_PAGES_MAX: usize = 4;

/// Loads the messages up to `notice.last_seq` that the cache does not hold yet.
async fn fill_recent(
    store: &dyn magpie_store::Store,
    recent: &RecentMessages,
    notice: &ConversationNotice,
) {
    let conv = notice.conversation_id;
    let mut after = match recent.last_seq(conv) {
        Some(last) if last >= notice.last_seq => return,
        Some(last) => last,
        // Cold start: a short window is enough for the pulls this notice triggers. Reserve
        // the entry first, so that commits during the read are recorded against it.
        None => {
            recent.reserve(conv);
            Seq(notice.last_seq.0.saturating_sub(RECENT_FILL_PAGE as u64))
        }
    };
    for _ in 0..RECENT_FILL_PAGES_MAX {
        let page = match store
            .messages(
                conv,
                magpie_store::MessageRange::After(after),
                RECENT_FILL_PAGE,
            )
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "filling the recent-message cache failed");
                recent.forget_if_empty(conv);
                return;
            }
        };
        let Some(last) = page.last().map(|m| m.seq) else {
            return;
        };
        recent.extend(conv, page);
        if last >= notice.last_seq {
            return;
        }
        after = last;
    }
}

/// The close code for a logged-out device, re-exported for handlers.
pub const KICK_REVOKED: u16 = CLOSE_REVOKED;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use magpie_core::{ClientMsgId, Cursor};

    use super::*;

    fn event(payload: EventPayload) -> UserEvent {
        UserEvent {
            user_id: UserId(1),
            event: Event {
                cursor: Cursor(1),
                payload,
            },
        }
    }

    #[tokio::test]
    async fn the_removal_hook_bumps_the_membership_epoch_and_delivery_does_not() {
        let (tx, _rx) = mpsc::channel(4);
        let hub = Hub::new(Presence::new(Duration::from_secs(1), tx));
        let epoch = || hub.membership_epoch().load(Ordering::Acquire);
        let conversation_id = ConversationId(3);
        hub.committed(&[event(EventPayload::GroupJoined { conversation_id })], &[]);
        hub.committed(&[event(EventPayload::GroupLeft { conversation_id })], &[]);
        assert_eq!(
            epoch(),
            0,
            "the store's hook bumps it, before the commit is readable; delivery does not"
        );
        hub.members_removed();
        assert_eq!(
            epoch(),
            1,
            "every cached joined_seq is rechecked after a leave"
        );
    }

    #[tokio::test]
    async fn a_device_whose_queue_overflows_is_told_to_resync_and_nothing_is_queued_silently() {
        let (tx, _rx) = mpsc::channel(4);
        let hub = Arc::new(Hub::new(Presence::new(Duration::from_secs(1), tx)));
        let reg = hub.connect(UserId(1), DeviceId(7));
        let (live_tx, mut live_rx) = mpsc::channel(DEVICE_QUEUE_EVENTS_MAX);
        reg.go_live(live_tx);
        let conversation_id = ConversationId(3);
        let joined = event(EventPayload::GroupJoined { conversation_id });
        // The queue holds exactly its bound; the connection is not kicked yet.
        for _ in 0..DEVICE_QUEUE_EVENTS_MAX {
            hub.committed(std::slice::from_ref(&joined), &[]);
        }
        assert_eq!(
            reg.kick.code.load(Ordering::Acquire),
            0,
            "not kicked at the bound"
        );
        // One more does not fit: the device is kicked with the resync code and its queue is
        // cut off, so later events are not queued behind a gap.
        hub.committed(std::slice::from_ref(&joined), &[]);
        let code = tokio::time::timeout(Duration::from_secs(5), reg.kick.wait())
            .await
            .expect("kicked");
        assert_eq!(code, CLOSE_RESYNC);
        hub.committed(std::slice::from_ref(&joined), &[]);
        let mut queued = 0;
        while live_rx.try_recv().is_ok() {
            queued += 1;
        }
        assert_eq!(
            queued, DEVICE_QUEUE_EVENTS_MAX,
            "nothing queued past the overflow"
        );
    }

    #[tokio::test]
    async fn ephemeral_frames_take_only_half_of_a_device_queue() {
        let (tx, _rx) = mpsc::channel(4);
        let hub = Arc::new(Hub::new(Presence::new(Duration::from_secs(1), tx)));
        let reg = hub.connect(UserId(1), DeviceId(7));
        let (live_tx, mut live_rx) = mpsc::channel(DEVICE_QUEUE_EVENTS_MAX);
        reg.go_live(live_tx);
        let typing: Arc<str> = Arc::from(r#"{"type":"typing"}"#);
        for _ in 0..DEVICE_QUEUE_EVENTS_MAX {
            hub.send_frame(UserId(1), typing.clone());
        }
        // Half the queue is still free for events: a burst of that many does not kick.
        let joined = event(EventPayload::GroupJoined {
            conversation_id: ConversationId(3),
        });
        for _ in 0..EPHEMERAL_ROOM_MIN {
            hub.committed(std::slice::from_ref(&joined), &[]);
        }
        assert_eq!(reg.kick.code.load(Ordering::Acquire), 0, "not kicked");
        let (mut frames, mut events) = (0, 0);
        while let Ok(item) = live_rx.try_recv() {
            match item {
                Outbound::Frame(_) => frames += 1,
                Outbound::Event(_) => events += 1,
                Outbound::NotifyWake => {}
            }
        }
        assert_eq!(
            (frames, events),
            (
                DEVICE_QUEUE_EVENTS_MAX - EPHEMERAL_ROOM_MIN,
                EPHEMERAL_ROOM_MIN
            )
        );
    }

    /// A message event as the store announces it: `user`'s inbox at `cursor`.
    fn message_event(user: u64, cursor: u64, message: &Arc<Message>) -> UserEvent {
        UserEvent {
            user_id: UserId(user),
            event: Event {
                cursor: Cursor(cursor),
                payload: EventPayload::Message(message.clone()),
            },
        }
    }

    /// The next live item of a device, which must be an event.
    fn next_live(rx: &mut mpsc::Receiver<Outbound>) -> Arc<LiveEvent> {
        match rx.try_recv() {
            Ok(Outbound::Event(live)) => live,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn recipients_of_one_message_share_one_json_cell_and_other_messages_get_their_own() {
        let (tx, _rx) = mpsc::channel(4);
        let hub = Arc::new(Hub::new(Presence::new(Duration::from_secs(1), tx)));
        let mut queues = Vec::new();
        let mut regs = Vec::new();
        // User 1 with two devices, user 2 with one.
        for (user, device) in [(1, 10), (1, 11), (2, 20)] {
            let reg = hub.connect(UserId(user), DeviceId(device));
            let (live_tx, live_rx) = mpsc::channel(8);
            reg.go_live(live_tx);
            regs.push(reg);
            queues.push(live_rx);
        }
        let message = |seq| {
            Arc::new(Message {
                conversation_id: ConversationId(5),
                seq: Seq(seq),
                sender_id: UserId(1),
                client_msg_id: ClientMsgId::new(format!("m{seq}")).expect("valid id"),
                text: "hello".into(),
                system: None,
                ts_ms: 1,
            })
        };
        let (first, second) = (message(1), message(2));
        hub.committed(
            &[
                message_event(1, 1, &first),
                message_event(2, 1, &first),
                message_event(1, 2, &second),
                message_event(2, 2, &second),
            ],
            &[],
        );
        let cell = |live: &Arc<LiveEvent>| live.message_json.clone().expect("a message event");
        let got: Vec<Vec<SharedMessageJson>> = queues
            .iter_mut()
            .map(|rx| (0..2).map(|_| cell(&next_live(rx))).collect())
            .collect();
        for device in &got[1..] {
            assert!(
                Arc::ptr_eq(&got[0][0], &device[0]),
                "first message: one cell"
            );
            assert!(
                Arc::ptr_eq(&got[0][1], &device[1]),
                "second message: one cell"
            );
        }
        assert!(
            !Arc::ptr_eq(&got[0][0], &got[0][1]),
            "each message has a cell of its own"
        );
        // Non-message events carry no cell.
        hub.committed(
            &[event(EventPayload::GroupJoined {
                conversation_id: ConversationId(5),
            })],
            &[],
        );
        assert!(next_live(&mut queues[0]).message_json.is_none());
    }
}
