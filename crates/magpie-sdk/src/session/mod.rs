//! The real-time half of the SDK: a WebSocket session that survives disconnects.
//!
//! [`Session::start`] spawns a background task that connects, resumes the inbox from the
//! persisted cursor, delivers every event exactly once and in order, re-sends unanswered
//! messages after reconnecting, keeps the connection alive with pings and persists progress.
//! The application reads [`SessionEvent`]s from a bounded channel; when it falls behind, the
//! task stops reading the socket (back-pressure) instead of buffering without bound.

mod driver;
#[cfg(test)]
mod scripted_tests;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use magpie_core::{ClientMsgId, ConversationId, DeviceId, UserId};
use magpie_protocol::ws::WireEvent;
use magpie_protocol::ErrorCode;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::acker::{ACK_BATCH_MAX_DEFAULT, ACK_DEBOUNCE_MS_DEFAULT};
use crate::backoff::{BACKOFF_BASE_MS, BACKOFF_CAP_MS};
use crate::client::Client;
use crate::cursor::CursorStore;
use crate::error::{Result, SdkError};
use crate::outbox::{Outbox, PendingSend, OUTBOX_CAPACITY_DEFAULT};

/// Default capacity of the application's event channel.
pub const EVENT_BUFFER_DEFAULT: usize = 256;
/// How long connecting (TCP + WebSocket handshake) may take, in milliseconds.
pub const WS_CONNECT_TIMEOUT_MS_DEFAULT: u64 = 10_000;

/// Who decides that an event has been processed (and may be acked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AckMode {
    /// An event counts as processed once it is handed to the event channel. Simple, but
    /// events still sitting in the channel when the process dies are not re-delivered.
    #[default]
    Auto,
    /// The application calls [`Session::ack`] after it has durably handled an event.
    Manual,
}

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
    /// An inbox event, delivered exactly once and in cursor order.
    Event(WireEvent),
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
    /// The server definitively refused a send; it will not be retried.
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

/// State shared between the handles and the background task.
struct Shared {
    /// Unanswered sends, written by `send` and drained by the task.
    outbox: Mutex<Outbox>,
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

    /// Sends still waiting for the server's answer.
    pub fn pending_sends(&self) -> usize {
        self.shared.outbox().len()
    }

    /// Whether the background task has ended (closed or revoked).
    pub fn is_stopped(&self) -> bool {
        self.shared.stopped.load(Ordering::Acquire)
    }

    /// Flushes the processed cursor (ack frame + cursor store), closes the socket and waits
    /// for the background task to end. Unanswered sends are dropped.
    pub async fn close(self) {
        let (tx, rx) = oneshot::channel();
        if self.close_tx.send(tx).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// A fresh random 128-bit `client_msg_id`, as 32 lowercase hex digits.
pub fn new_client_msg_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_msg_ids_are_valid_and_distinct() {
        let a = new_client_msg_id();
        let b = new_client_msg_id();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(ClientMsgId::new(a).is_ok());
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
