//! The real-time half of the SDK: a WebSocket session that survives disconnects.
//!
//! [`Session::start`] spawns a background task that connects, resumes the inbox from the
//! persisted cursor, delivers every event exactly once and in order, re-sends unanswered
//! messages after reconnecting, keeps the connection alive with pings and persists progress.
//! Messages are merged from both fan-out paths (inbox events and notify + pull) by a
//! [`ConversationTracker`](crate::ConversationTracker) into one stream of
//! [`SessionEvent::Message`]s: per conversation exactly once and in `seq` order.
//! The application reads [`SessionEvent`]s from a bounded channel; when it falls behind, the
//! task stops reading the socket (back-pressure) instead of buffering without bound.

mod delivery;
mod driver;
#[cfg(test)]
mod scripted_tests;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use magpie_core::{ClientMsgId, ConversationId, DeviceId, UserId};
use magpie_protocol::ws::{WireEvent, WireMessage};
use magpie_protocol::ErrorCode;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::acker::{ACK_BATCH_MAX_DEFAULT, ACK_DEBOUNCE_MS_DEFAULT};
use crate::backoff::{BACKOFF_BASE_MS, BACKOFF_CAP_MS};
use crate::client::Client;
use crate::cursor::CursorStore;
use crate::error::{Result, SdkError};
use crate::outbox::{Outbox, PendingSend, OUTBOX_CAPACITY_DEFAULT};
use crate::progress::UNSETTLED_EVENTS_MAX_DEFAULT;
use crate::tracker::TrackerLimits;

/// Default capacity of the application's event channel.
pub const EVENT_BUFFER_DEFAULT: usize = 256;
/// How long connecting (TCP + WebSocket handshake) may take, in milliseconds.
pub const WS_CONNECT_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// `read`/`typing`/`pull` requests waiting for the connection, at most.
pub const CONTROL_QUEUE_MAX: usize = 256;
/// Conversations with a manual message ack waiting to be picked up, at most.
const MESSAGE_ACKS_MAX: usize = 4_096;

/// Who decides that an event has been processed (and may be acked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckMode {
    /// An event counts as processed once it is handed to the event channel. Simple, but
    /// events still sitting in the channel when the process dies are not re-delivered.
    #[default]
    Auto,
    /// The application calls [`Session::ack`] after it has durably handled an `Event`, and
    /// [`Session::ack_message`] after it has handled a `Message`.
    Manual,
}

/// First delay before re-sending a refused send, in milliseconds.
pub const SEND_RETRY_BASE_MS_DEFAULT: u64 = 1_000;
/// Transient refusals of one send before the session gives up on it: none, by default. A
/// transient refusal (`rate_limited`, `unavailable`, `internal`) does not say the message was
/// not stored: the server may have stored it before a failure, or before a resend was
/// refused for load. Giving up would report a delivered message as failed (and a retyped copy
/// would be a duplicate), so the send stays pending, retried at most every 30 s, until the
/// server answers it; the application shows it as sending, as chat apps do.
pub const SEND_REFUSALS_MAX_DEFAULT: u32 = u32::MAX;

/// Tuning knobs of a session; `Default` suits an interactive client.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Capacity of the event channel handed to the application.
    pub event_buffer: usize,
    /// How many unanswered sends may be pending before `send` answers `OutboxFull`.
    pub outbox_capacity: usize,
    /// See [`AckMode`].
    pub ack_mode: AckMode,
    /// Longest delay between processing an event and acking/persisting it.
    pub ack_debounce: Duration,
    /// Processed-but-unacked events that force an immediate ack.
    pub ack_batch_max: u64,
    /// First reconnect delay bound, in milliseconds.
    pub backoff_base_ms: u64,
    /// Largest reconnect delay, in milliseconds.
    pub backoff_cap_ms: u64,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
    /// Device label, only used in logs.
    pub label: String,
    /// Bounds of the message stream (held messages, tracked conversations, pull size).
    pub tracker: TrackerLimits,
    /// Inbox events whose processing is pending (held messages, unacked events in manual
    /// mode) before the oldest is counted as processed anyway.
    pub unsettled_events_max: usize,
    /// First delay before re-sending a send the server refused for now (`rate_limited`,
    /// `unavailable`, `internal`), in milliseconds; doubles per refusal up to 30 s, jittered.
    pub send_retry_base_ms: u64,
    /// Transient refusals of one send before it fails with [`SessionEvent::SendFailed`];
    /// unlimited by default (see [`SEND_REFUSALS_MAX_DEFAULT`]).
    pub send_refusals_max: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            event_buffer: EVENT_BUFFER_DEFAULT,
            outbox_capacity: OUTBOX_CAPACITY_DEFAULT,
            ack_mode: AckMode::Auto,
            ack_debounce: Duration::from_millis(ACK_DEBOUNCE_MS_DEFAULT),
            ack_batch_max: ACK_BATCH_MAX_DEFAULT,
            backoff_base_ms: BACKOFF_BASE_MS,
            backoff_cap_ms: BACKOFF_CAP_MS,
            connect_timeout: Duration::from_millis(WS_CONNECT_TIMEOUT_MS_DEFAULT),
            label: String::new(),
            tracker: TrackerLimits::default(),
            unsettled_events_max: UNSETTLED_EVENTS_MAX_DEFAULT,
            send_retry_base_ms: SEND_RETRY_BASE_MS_DEFAULT,
            send_refusals_max: SEND_REFUSALS_MAX_DEFAULT,
        }
    }
}

/// What the session tells the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// A connection is up and the inbox replay from `resumed_from` has been requested.
    Connected {
        /// The account.
        user_id: UserId,
        /// This login.
        device_id: DeviceId,
        /// The cursor the server had stored for this device.
        server_cursor: u64,
        /// The cursor the replay starts after (everything up to it was delivered before).
        resumed_from: u64,
        /// The server's heartbeat interval.
        heartbeat_ms: u64,
    },
    /// The connection (or an attempt) failed; the next attempt starts after `retry_in`.
    Disconnected {
        /// Human-readable cause.
        reason: String,
        /// Delay before the next attempt.
        retry_in: Duration,
    },
    /// A non-message inbox event (`friend_request`, `friend_added`, `group_joined`,
    /// `group_left`, `read`, `receipt`), delivered exactly once and in cursor order. Messages
    /// come as [`SessionEvent::Message`] instead; kinds this SDK does not know are skipped.
    Event(WireEvent),
    /// A message (text or system), whichever fan-out path brought it: per conversation
    /// exactly once and in `seq` order, starting where the member's history starts.
    Message(WireMessage),
    /// A friend came online or went offline.
    Presence {
        /// The friend.
        user_id: UserId,
        /// Whether they are online now.
        online: bool,
        /// When they were last seen (Unix ms).
        last_seen_ms: u64,
    },
    /// Another member is typing (ephemeral; dropped when the application falls behind).
    Typing {
        /// Where.
        conversation_id: ConversationId,
        /// Who.
        user_id: UserId,
    },
    /// The server stored a message this session sent (`duplicate`: an earlier copy had).
    Sent {
        /// The id the send was made with.
        client_msg_id: String,
        /// Where it went.
        conversation_id: ConversationId,
        /// Its position in the conversation.
        seq: u64,
        /// Server time of storage.
        ts_ms: u64,
        /// Whether the server had already stored this `client_msg_id`.
        duplicate: bool,
    },
    /// The session stopped trying a send; it will not be retried.
    ///
    /// With a permanent code (`forbidden`, `not_friends`, `message_too_long`,
    /// `invalid_request`, `bad_frame`) the server refused it and stored nothing. With a
    /// transient code (only if [`SessionConfig::send_refusals_max`] was lowered) or
    /// `unauthorized` (the session was revoked while it was unanswered) the message **may have
    /// been stored**: sending it again later with [`Session::send_with_id`] and the same id
    /// answers `Sent { duplicate: true, .. }` if so.
    SendFailed {
        /// The id the send was made with.
        client_msg_id: String,
        /// Why (`forbidden`, `message_too_long`, `invalid_request`, `bad_frame`, …).
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
    },
    /// The token was revoked or rejected; the session has stopped for good.
    Revoked,
}

/// A request for the connection other than a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    /// Mark read up to `seq` (coalesced per conversation; kept while offline).
    Read(ConversationId, u64),
    /// Typing notice (dropped while offline).
    Typing(ConversationId),
    /// Bring the conversation's stream up to date.
    Pull(ConversationId),
}

/// State shared between the handles and the background task.
struct Shared {
    /// Unanswered sends, written by `send` and drained by the task.
    outbox: Mutex<Outbox>,
    /// `read`/`typing`/`pull` requests, at most `CONTROL_QUEUE_MAX`.
    control: Mutex<VecDeque<Control>>,
    /// Manual message acks not yet picked up by the task: conversation → highest seq.
    message_acks: Mutex<HashMap<ConversationId, u64>>,
    /// Highest cursor the application acked (manual mode).
    app_acked: AtomicU64,
    /// Wakes the task when the outbox or `app_acked` changed.
    wake: Notify,
    /// Set when the task has ended; further sends are refused.
    stopped: AtomicBool,
}

impl Shared {
    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        // The outbox has no invariant a panicking holder could break halfway.
        self.outbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn control(&self) -> MutexGuard<'_, VecDeque<Control>> {
        self.control.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn message_acks(&self) -> MutexGuard<'_, HashMap<ConversationId, u64>> {
        self.message_acks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A handle to a running session. Clones share the session; when the last handle is dropped
/// the session closes (persisting its cursor), so keep one alive as long as you need it.
#[derive(Clone)]
pub struct Session {
    /// Outbox, ack and wake-up state shared with the task.
    shared: Arc<Shared>,
    /// Asks the task to close; carries a channel to confirm when it has.
    close_tx: mpsc::Sender<oneshot::Sender<()>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("pending_sends", &self.pending_sends())
            .field("stopped", &self.is_stopped())
            .finish()
    }
}

impl Session {
    /// Starts a session for the authenticated `client`, resuming from `store`'s cursor.
    /// Must be called inside a Tokio runtime. Returns the handle and the event receiver.
    pub fn start(
        client: Client,
        store: Arc<dyn CursorStore>,
        config: SessionConfig,
    ) -> Result<(Session, mpsc::Receiver<SessionEvent>)> {
        driver::validate(&client)?;
        let (events_tx, events_rx) = mpsc::channel(config.event_buffer.max(1));
        // One slot per concurrent `close` call is plenty; extra callers simply wait.
        let (close_tx, close_rx) = mpsc::channel(4);
        let shared = Arc::new(Shared {
            outbox: Mutex::new(Outbox::new(config.outbox_capacity)),
            control: Mutex::new(VecDeque::new()),
            message_acks: Mutex::new(HashMap::new()),
            app_acked: AtomicU64::new(0),
            wake: Notify::new(),
            stopped: AtomicBool::new(false),
        });
        let driver =
            driver::Driver::new(client, store, config, shared.clone(), events_tx, close_rx);
        tokio::spawn(driver.run());
        Ok((Session { shared, close_tx }, events_rx))
    }

    /// Queues `text` for `conversation_id` under a fresh random `client_msg_id`, which is
    /// returned; the outcome arrives as `Sent` or `SendFailed` with that id.
    pub fn send(&self, conversation_id: ConversationId, text: impl Into<String>) -> Result<String> {
        let id = new_client_msg_id();
        self.send_with_id(conversation_id, &id, text)?;
        Ok(id)
    }

    /// Like [`Session::send`] with a caller-chosen id (e.g. one persisted in the app's own
    /// outbox before a crash). Re-using an id the server already stored yields
    /// `Sent { duplicate: true }` with the original `seq`; an id that is still pending here is
    /// not queued a second time.
    pub fn send_with_id(
        &self,
        conversation_id: ConversationId,
        client_msg_id: &str,
        text: impl Into<String>,
    ) -> Result<()> {
        if self.is_stopped() {
            return Err(SdkError::Closed);
        }
        let text = text.into();
        ClientMsgId::new(client_msg_id).map_err(|e| SdkError::Invalid(e.to_string()))?;
        magpie_core::validate_text(&text).map_err(|e| SdkError::Invalid(e.to_string()))?;
        let send = PendingSend::new(client_msg_id.to_owned(), conversation_id, text);
        self.shared.outbox().push(send)?;
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Declares every event up to `cursor` processed ([`AckMode::Manual`]); the session acks
    /// and persists it after the debounce interval. Cursors beyond what was delivered are
    /// clamped, lower ones ignored.
    pub fn ack(&self, cursor: u64) {
        self.shared.app_acked.fetch_max(cursor, Ordering::AcqRel);
        self.shared.wake.notify_one();
    }

    /// Declares `seq` of `conversation_id` (and everything before it in that conversation)
    /// handled ([`AckMode::Manual`]). A restarted session resumes each conversation after the
    /// acked seq; inbox progress is acked once every message and event before it is.
    pub fn ack_message(&self, conversation_id: ConversationId, seq: u64) {
        {
            let mut acks = self.shared.message_acks();
            if acks.len() >= MESSAGE_ACKS_MAX && !acks.contains_key(&conversation_id) {
                // The task is not picking acks up; an unrecorded ack only means re-delivery.
                return;
            }
            let slot = acks.entry(conversation_id).or_default();
            *slot = (*slot).max(seq);
        }
        self.shared.wake.notify_one();
    }

    /// Marks `conversation_id` read up to `seq` (`read` frame). Requests for the same
    /// conversation are merged, and kept until a connection is up.
    pub fn read(&self, conversation_id: ConversationId, seq: u64) -> Result<()> {
        self.control(Control::Read(conversation_id, seq))
    }

    /// Tells the other members that the user is typing (`typing` frame). Not kept while
    /// offline: a late typing notice is worse than none.
    pub fn typing(&self, conversation_id: ConversationId) -> Result<()> {
        self.control(Control::Typing(conversation_id))
    }

    /// Asks for `conversation_id` to be brought up to date now (a `pull` after the last
    /// delivered seq, or from its beginning if none was). What it finds arrives as
    /// [`SessionEvent::Message`]s in order. Rarely needed: notifies, gaps and reconnects
    /// trigger pulls on their own. For scrolling back through history use
    /// [`Client::messages`].
    pub fn pull(&self, conversation_id: ConversationId) -> Result<()> {
        self.control(Control::Pull(conversation_id))
    }

    fn control(&self, request: Control) -> Result<()> {
        if self.is_stopped() {
            return Err(SdkError::Closed);
        }
        {
            let mut queue = self.shared.control();
            if let Control::Read(conv, seq) = request {
                let queued = queue.iter_mut().find_map(|c| match c {
                    Control::Read(c_conv, c_seq) if *c_conv == conv => Some(c_seq),
                    _ => None,
                });
                if let Some(queued) = queued {
                    *queued = (*queued).max(seq);
                    return Ok(());
                }
            }
            if queue.len() >= CONTROL_QUEUE_MAX {
                return Err(SdkError::QueueFull);
            }
            queue.push_back(request);
        }
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Sends still waiting for the server's answer.
    pub fn pending_sends(&self) -> usize {
        self.shared.outbox().len()
    }

    /// Whether the background task has ended (closed or revoked).
    pub fn is_stopped(&self) -> bool {
        self.shared.stopped.load(Ordering::Acquire)
    }

    /// Flushes the processed cursor (ack frame + cursor store), closes the socket and waits
    /// for the background task to end. Returns the sends still unanswered, oldest first: the
    /// server may or may not have stored them, so a later session can send them again with
    /// the same `client_msg_id` (`send_with_id`) and be told which.
    pub async fn close(self) -> Vec<crate::PendingSend> {
        let (tx, rx) = oneshot::channel();
        if self.close_tx.send(tx).await.is_ok() {
            let _ = rx.await;
        }
        self.shared.outbox().drain()
    }
}

/// The first character of a client message id (see [`new_client_msg_id`]).
const MSG_ID_PREFIX: char = 'z';

/// Bits of a client message id below its millisecond timestamp.
const MSG_ID_RANDOM_BITS: u32 = 80;

/// The last id this process generated, so that the next one is greater.
static LAST_MSG_ID: std::sync::Mutex<u128> = std::sync::Mutex::new(0);

/// A fresh `client_msg_id`: `z` and 32 lowercase hex digits holding the Unix time in
/// milliseconds (48 bits) and then 80 random bits, greater than every id this process
/// generated before (the scheme of UUIDv7 and ULID). Ids that grow over time are unique like
/// random ones, and they let the server see that a send is new without searching its dedup
/// index (it keeps each sender's greatest id): the common case costs no index read. The `z`
/// puts them above the ids of earlier versions (32 random hex digits from this SDK, `w-…`
/// from the web client), so a user who sent with those gets the fast path too.
pub fn new_client_msg_id() -> String {
    let now_ms = u128::from(magpie_core::now_ms()) & ((1u128 << 48) - 1);
    let random = rand::random::<u128>() & ((1u128 << MSG_ID_RANDOM_BITS) - 1);
    let fresh = (now_ms << MSG_ID_RANDOM_BITS) | random;
    // A poisoned lock still holds a valid last id (a plain integer).
    let mut last = LAST_MSG_ID
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let id = fresh.max(last.wrapping_add(1));
    *last = id;
    format!("{MSG_ID_PREFIX}{id:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_msg_ids_are_valid_and_increasing() {
        let ids: Vec<String> = (0..1000).map(|_| new_client_msg_id()).collect();
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1], "{} then {}", pair[0], pair[1]);
        }
        assert!(ids.iter().all(|id| id.len() == 33 && id.starts_with('z')));
        assert!(ClientMsgId::new(ids[0].clone()).is_ok());
        // Above the formats of earlier versions, whatever their random digits.
        assert!(ids[0].as_str() > "ffffffffffffffffffffffffffffffff");
        assert!(ids[0].as_str() > "w-ffffffffffffffffffffffffffffffff");
        // The leading 48 bits are the time in milliseconds.
        let ms = u64::from_str_radix(&ids[999][1..13], 16).unwrap();
        assert!(ms.abs_diff(magpie_core::now_ms()) < 60_000, "{ms}");
    }

    #[tokio::test]
    async fn start_requires_a_token_and_send_validates_locally() {
        let client = Client::new("http://127.0.0.1:9").unwrap();
        let store: Arc<dyn CursorStore> = Arc::new(crate::MemoryCursorStore::new());
        assert!(matches!(
            Session::start(client.clone(), store.clone(), SessionConfig::default()),
            Err(SdkError::Invalid(_))
        ));
        let config = SessionConfig {
            outbox_capacity: 1,
            ..SessionConfig::default()
        };
        let (session, _events) = Session::start(client.with_token("t"), store, config).unwrap();
        let conv = ConversationId(1);
        assert!(matches!(session.send(conv, ""), Err(SdkError::Invalid(_))));
        assert!(matches!(
            session.send_with_id(conv, "has space", "x"),
            Err(SdkError::Invalid(_))
        ));
        session.send_with_id(conv, "a", "x").unwrap();
        session.send_with_id(conv, "a", "x").unwrap();
        assert!(matches!(session.send(conv, "y"), Err(SdkError::OutboxFull)));
        assert_eq!(session.pending_sends(), 1);
        session.clone().close().await;
        assert!(session.is_stopped());
        assert!(matches!(session.send(conv, "z"), Err(SdkError::Closed)));
    }
}
