//! The background task behind a [`Session`](super::Session): one loop of connect → run →
//! back off, and the per-connection frame loop.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use magpie_protocol::close::{
    CLOSE_HEARTBEAT_TIMEOUT, CLOSE_RESYNC, CLOSE_REVOKED, CLOSE_SHUTDOWN,
};
use magpie_protocol::social::ConversationRow;
use magpie_protocol::ws::{ClientFrame, ServerFrame};
use magpie_protocol::ErrorCode;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinError, JoinHandle};
use tokio::time::{interval_at, sleep_until, timeout, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::{debug, info, warn};

use super::delivery::Delivery;
use super::{AckMode, Control, SessionConfig, SessionEvent, Shared};
use crate::acker::AckTracker;
use crate::backoff::{Backoff, STABLE_CONNECTION_MS};
use crate::client::Client;
use crate::cursor::CursorStore;
use crate::error::{Result, SdkError};
use crate::sequencer::{accept_live, Accepted, EventSource, Inbound, Sequencer};
use crate::tracker::{CatchUpRow, ConversationTracker, Fanout};

/// How long the server may take to send `ready` after the handshake, in milliseconds.
const READY_TIMEOUT_MS: u64 = 10_000;
/// Heartbeat used if the server announces 0; also the bounds we accept from it.
const HEARTBEAT_MS_FALLBACK: u64 = 30_000;
/// Lower bound on the heartbeat, so a misconfigured server cannot make us ping in a busy loop.
const HEARTBEAT_MS_MIN: u64 = 100;
/// Upper bound on the heartbeat, so a dead connection is noticed within minutes.
const HEARTBEAT_MS_MAX: u64 = 600_000;
/// Silence longer than this many heartbeats means the connection is dead.
const DEAD_AFTER_HEARTBEATS: u32 = 3;
/// Events fetched per HTTP request when filling a gap (the server's page maximum).
const GAP_FILL_PAGE_EVENTS: u32 = 200;
/// Longest wait before retrying a refused send.
const TRANSIENT_RETRY_MS_MAX: u64 = 30_000;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type WsSink = SplitSink<Ws, Message>;
type WsStream = SplitStream<Ws>;

/// Checks what `Session::start` needs before spawning, so misuse fails immediately.
pub(super) fn validate(client: &Client) -> Result<()> {
    let token = client
        .token()
        .ok_or_else(|| SdkError::Invalid("a session needs a logged-in client".into()))?;
    bearer(token)?;
    client.ws_url()?;
    Ok(())
}

fn bearer(token: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| SdkError::Invalid("token contains characters not allowed in a header".into()))
}

/// Why a connection ended.
enum Ending {
    /// The application closed the session (or dropped every handle / the receiver).
    Closed,
    /// The token no longer works.
    Revoked,
    /// Anything else: reconnect after a backoff.
    Lost(String),
}

impl From<SdkError> for Ending {
    fn from(e: SdkError) -> Self {
        match e {
            SdkError::Closed => Ending::Closed,
            e if e.is_unauthorized() => Ending::Revoked,
            e => Ending::Lost(e.to_string()),
        }
    }
}

/// The background task's state; lives as long as the session.
pub(super) struct Driver {
    /// Authenticated HTTP client (gap fills, catch-up) and source of the ws URL and token.
    client: Client,
    /// Where processed progress is persisted.
    store: Arc<dyn CursorStore>,
    /// Tuning.
    config: SessionConfig,
    /// Outbox and wake-ups shared with the handles.
    shared: Arc<Shared>,
    /// The application side: emission, message ordering, progress and acks.
    delivery: Delivery,
    /// What has been delivered.
    seq: Sequencer,
    /// Reconnect delays.
    backoff: Backoff,
    /// False until the cursor store or a `ready` frame told us where to resume.
    cursor_known: bool,
    /// When to re-send after a transient refusal.
    retry_at: Option<Instant>,
    /// The conversation list fetched after connecting, to catch up read-fan-out groups.
    catch_up: Option<JoinHandle<Result<Vec<ConversationRow>>>>,
    /// Failed catch-up fetches of this connection, for the retry delay.
    catch_up_failures: u32,
    /// The newest pings of this connection still waiting for their pong, by number (the
    /// first ping is 1) with when each was written, oldest first. At most
    /// [`PINGS_TRACKED_MAX`]; an older one's pong then advances nothing.
    pings: VecDeque<(u64, Instant)>,
    /// Pings written on this connection.
    pings_written: u64,
    /// Pongs received on this connection. The server answers frames in order, so the n-th
    /// pong answers the n-th ping.
    pongs_received: u64,
    /// When the newest answered ping was written: the server has read every frame written
    /// before it, pulls included (see `ConversationTracker::poll_timeouts`).
    server_read_upto: Option<Instant>,
}

/// First delay before fetching the catch-up list again after a failure, in milliseconds;
/// doubles per failure up to 30 s, jittered (as send retries do).
const CATCH_UP_RETRY_BASE_MS: u64 = 500;

/// Unanswered pings remembered per connection; the oldest are forgotten beyond (a server busy
/// replaying a long inbox keeps the connection alive with events while it answers none).
const PINGS_TRACKED_MAX: usize = 16;

impl Driver {
    pub(super) fn new(
        client: Client,
        store: Arc<dyn CursorStore>,
        config: SessionConfig,
        shared: Arc<Shared>,
        events: mpsc::Sender<SessionEvent>,
        close_rx: mpsc::Receiver<oneshot::Sender<()>>,
    ) -> Self {
        let acker = AckTracker::new(0, config.ack_debounce, config.ack_batch_max);
        let backoff = Backoff::new(config.backoff_base_ms, config.backoff_cap_ms);
        let delivery = Delivery::new(
            events,
            close_rx,
            ConversationTracker::new(config.tracker.clone()),
            acker,
            config.ack_mode == AckMode::Manual,
            config.unsettled_events_max,
            config.ack_debounce,
        );
        Self {
            client,
            store,
            config,
            shared,
            delivery,
            seq: Sequencer::new(0),
            backoff,
            cursor_known: false,
            retry_at: None,
            catch_up: None,
            catch_up_failures: 0,
            pings: VecDeque::new(),
            pings_written: 0,
            pongs_received: 0,
            server_read_upto: None,
        }
    }

    /// Connects, runs and reconnects until closed or revoked.
    pub(super) async fn run(mut self) {
        self.load_cursor().await;
        loop {
            let (ending, ready_at) = self.connection().await;
            self.shared.outbox().reset_written();
            self.retry_at = None;
            let reason = match ending {
                Ending::Closed => break,
                Ending::Revoked => {
                    info!(label = %self.config.label, "session revoked");
                    // The token is gone, so these can never be answered: say so for each. One at
                    // a time, so that those not reported (the application stopped listening)
                    // are still pending for `close` to return.
                    loop {
                        let Some(send) = self.shared.outbox().oldest() else {
                            break;
                        };
                        let failed = SessionEvent::SendFailed {
                            client_msg_id: send.client_msg_id.clone(),
                            code: ErrorCode::Unauthorized,
                            message: "the session was revoked before the send was answered".into(),
                        };
                        if self.emit(failed).await.is_err() {
                            break;
                        }
                        self.shared.outbox().complete(&send.client_msg_id);
                    }
                    let _ = self.emit(SessionEvent::Revoked).await;
                    break;
                }
                Ending::Lost(reason) => reason,
            };
            let stable = Duration::from_millis(STABLE_CONNECTION_MS);
            if ready_at.is_some_and(|t| t.elapsed() >= stable) {
                self.backoff.reset();
            }
            let retry_in = self.backoff.next_delay(&mut rand::rng());
            info!(label = %self.config.label, %reason, ?retry_in, "disconnected");
            let event = SessionEvent::Disconnected { reason, retry_in };
            if self.emit(event).await.is_err() || !self.pause(retry_in).await {
                break;
            }
        }
        self.note_app_acks();
        self.flush(true).await;
        self.shared.stopped.store(true, Ordering::Release);
        for closer in self.delivery.closers.drain(..) {
            let _ = closer.send(());
        }
    }

    /// Reads the persisted cursor and per-conversation progress; on failure resumes from the
    /// server's record instead.
    async fn load_cursor(&mut self) {
        let store = self.store.clone();
        let loaded = tokio::task::spawn_blocking(move || (store.load(), store.load_seqs())).await;
        let (cursor, seqs) = match loaded {
            Ok(pair) => pair,
            Err(e) => {
                warn!(error = %e, "cursor store panicked; using the server's cursor");
                return;
            }
        };
        match cursor {
            Ok(Some(cursor)) => self.resume_at(cursor),
            Ok(None) => {}
            Err(e) => {
                warn!(error = %e, "cannot read the cursor store; using the server's cursor")
            }
        }
        match seqs {
            Ok(seqs) => self.delivery.restore(&seqs),
            Err(e) => warn!(error = %e, "cannot read per-conversation progress; starting afresh"),
        }
    }

    fn resume_at(&mut self, cursor: u64) {
        self.seq = Sequencer::new(cursor);
        let acker = AckTracker::new(cursor, self.config.ack_debounce, self.config.ack_batch_max);
        self.delivery.resume_at(cursor, acker);
        self.cursor_known = true;
    }

    /// Waits out a backoff delay while still honouring close requests and flushing acks.
    /// Returns false if the session should end.
    async fn pause(&mut self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            let flush_at = self.flush_deadline();
            tokio::select! {
                _ = sleep_until(until) => return true,
                req = self.delivery.close_rx.recv() => {
                    self.delivery.closers.extend(req);
                    return false;
                }
                _ = self.shared.wake.notified() => {
                    self.note_app_acks();
                    // Typing notices are stale by the time a connection is back.
                    self.shared.control().retain(|c| !matches!(c, Control::Typing(_)));
                }
                _ = maybe_sleep_until(flush_at) => {
                    // Offline: persist only; the ack frame goes out after reconnecting.
                    self.flush(false).await;
                }
            }
        }
    }

    /// One connection from dial to drop. Also returns when `ready` arrived, if it did.
    async fn connection(&mut self) -> (Ending, Option<Instant>) {
        let ws = tokio::select! {
            r = connect(&self.client, self.config.connect_timeout) => match r {
                Ok(ws) => ws,
                Err(ending) => return (ending, None),
            },
            req = self.delivery.close_rx.recv() => {
                self.delivery.closers.extend(req);
                return (Ending::Closed, None);
            }
        };
        let (mut sink, mut stream) = ws.split();
        let heartbeat_ms = match self.handshake(&mut sink, &mut stream).await {
            Ok(hb) => hb,
            Err(ending) => return (ending, None),
        };
        let ready_at = Instant::now();
        let ending = self.serve(&mut sink, &mut stream, heartbeat_ms).await;
        // Unanswered pulls and the catch-up die with the connection; the next one redoes them.
        self.delivery.tracker.on_disconnected();
        self.delivery.pulls.clear();
        if let Some(task) = self.catch_up.take() {
            task.abort();
        }
        if matches!(ending, Ending::Closed) {
            self.note_app_acks();
            if let Some(cursor) = self.flush(true).await {
                let _ = timeout(
                    Duration::from_secs(1),
                    write(&mut sink, &ClientFrame::Ack { cursor }),
                )
                .await;
            }
        }
        if !matches!(ending, Ending::Lost(_)) {
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            };
            let _ = timeout(
                Duration::from_secs(1),
                sink.send(Message::Close(Some(frame))),
            )
            .await;
        }
        (ending, Some(ready_at))
    }

    /// Waits for `ready`, announces the connection, asks for the replay and re-sends the
    /// outbox. Returns the heartbeat interval to use.
    async fn handshake(&mut self, sink: &mut WsSink, stream: &mut WsStream) -> Result<u64, Ending> {
        let ready = timeout(Duration::from_millis(READY_TIMEOUT_MS), async {
            loop {
                match stream.next().await {
                    Some(Ok(Message::Text(text))) => {
                        match serde_json::from_str::<ServerFrame>(&text) {
                            // The SDK resumes from its own cursor store; a new device replays
                            // the inbox (the CLI shows recent history that way).
                            Ok(ServerFrame::Ready {
                                user_id,
                                device_id,
                                cursor,
                                heartbeat_ms,
                                inbox_head,
                            }) => {
                                return Ok((user_id, device_id, cursor, heartbeat_ms, inbox_head));
                            }
                            Ok(other) => debug!(?other, "frame before ready ignored"),
                            Err(e) => {
                                return Err(Ending::Lost(format!(
                                    "bad frame instead of ready: {e}"
                                )))
                            }
                        }
                    }
                    Some(Ok(Message::Close(frame))) => return Err(ending_for_close(frame)),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(Ending::Lost(format!("websocket: {e}"))),
                    None => return Err(Ending::Lost("closed before ready".into())),
                }
            }
        })
        .await
        .map_err(|_| Ending::Lost("no ready frame from the server".into()))??;
        let (user_id, device_id, server_cursor, heartbeat_ms, inbox_head) = ready;
        if !self.cursor_known {
            // Nothing persisted locally: trust the server's record for this device.
            self.resume_at(server_cursor);
        }
        if let Some(inbox_head) = inbox_head.filter(|&h| self.seq.last_delivered() > h) {
            // The saved cursor is past everything this user's inbox holds: it was saved for
            // another account, or the server was restored from an older backup. The server
            // would refuse to sync from it and the session would wait forever; nothing beyond
            // the head exists to be missed, so start from there. The conversations' saved
            // progress is just as stale (a restored timeline reuses seqs, and new messages at
            // them would be dropped as already handed out), so it starts afresh too.
            warn!(
                label = %self.config.label,
                saved = self.seq.last_delivered(),
                inbox_head,
                "the saved cursor is ahead of the server's inbox; resuming from its head"
            );
            self.resume_at(inbox_head);
            self.delivery.forget_conversations(Instant::now());
        }
        let resumed_from = self.seq.last_delivered();
        let heartbeat_ms = match heartbeat_ms {
            0 => HEARTBEAT_MS_FALLBACK,
            hb => hb.clamp(HEARTBEAT_MS_MIN, HEARTBEAT_MS_MAX),
        };
        info!(label = %self.config.label, %user_id, %device_id, resumed_from, "connected");
        let connected = SessionEvent::Connected {
            user_id,
            device_id,
            server_cursor,
            resumed_from,
            heartbeat_ms,
        };
        self.delivery.emit(connected).await?;
        write(
            sink,
            &ClientFrame::Sync {
                cursor: resumed_from,
            },
        )
        .await?;
        if self.delivery.acker.flushed() > server_cursor {
            // Progress persisted while offline (or by an earlier run) the server has not seen.
            write(
                sink,
                &ClientFrame::Ack {
                    cursor: self.delivery.acker.flushed(),
                },
            )
            .await?;
        }
        self.write_outbox(sink).await?;
        // Catch up on what the inbox replay cannot bring: read-fan-out groups.
        self.catch_up_failures = 0;
        self.fetch_catch_up(Duration::ZERO);
        let fx = self.delivery.tracker.on_connected(Instant::now());
        self.delivery.apply(fx).await?;
        self.write_controls(sink).await?;
        self.write_pulls(sink).await?;
        Ok(heartbeat_ms)
    }

    /// The frame loop of an established connection.
    async fn serve(
        &mut self,
        sink: &mut WsSink,
        stream: &mut WsStream,
        heartbeat_ms: u64,
    ) -> Ending {
        let heartbeat = Duration::from_millis(heartbeat_ms);
        let ping_every = heartbeat / 2;
        let dead_after = heartbeat * DEAD_AFTER_HEARTBEATS;
        let mut ping = interval_at(Instant::now() + ping_every, ping_every);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_inbound = Instant::now();
        // Pongs of an earlier connection answer nothing written on this one.
        self.pings.clear();
        self.pings_written = 0;
        self.pongs_received = 0;
        self.server_read_upto = None;
        loop {
            let flush_at = self.flush_deadline();
            let retry_at = self.retry_at;
            let pull_at = self.delivery.tracker.next_deadline();
            // Biased, in this order: close requests; the cheap timers and wake-ups (so a flood
            // of inbound frames cannot starve pings or sends); inbound frames; and only then
            // the pull and dead-connection timers, so frames that queued up while we were
            // blocked on a slow application still count: as signs of life, and as answers to
            // pulls (a pull answer waiting unread must not count as unanswered, since three
            // unanswered pulls make the tracker skip the range).
            let step: Result<(), Ending> = tokio::select! {
                biased;
                req = self.delivery.close_rx.recv() => {
                    self.delivery.closers.extend(req);
                    Err(Ending::Closed)
                }
                _ = ping.tick() => {
                    if self.pings.len() >= PINGS_TRACKED_MAX {
                        self.pings.pop_front();
                    }
                    self.pings_written += 1;
                    self.pings.push_back((self.pings_written, Instant::now()));
                    write(sink, &ClientFrame::Ping).await
                }
                _ = self.shared.wake.notified() => {
                    self.note_app_acks();
                    match self.write_outbox(sink).await {
                        Ok(()) => self.write_controls(sink).await,
                        Err(e) => Err(e),
                    }
                }
                _ = maybe_sleep_until(flush_at) => match self.flush(false).await {
                    Some(cursor) => write(sink, &ClientFrame::Ack { cursor }).await,
                    None => Ok(()),
                },
                _ = maybe_sleep_until(retry_at) => {
                    self.retry_at = None;
                    self.write_outbox(sink).await
                }
                rows = maybe_join(&mut self.catch_up) => {
                    self.catch_up = None;
                    self.on_catch_up(rows).await
                }
                msg = stream.next() => {
                    last_inbound = Instant::now();
                    match msg {
                        Some(Ok(Message::Text(text))) => self.on_text(&text).await,
                        Some(Ok(Message::Close(frame))) => Err(ending_for_close(frame)),
                        Some(Ok(_)) => Ok(()),
                        Some(Err(e)) => Err(Ending::Lost(format!("websocket: {e}"))),
                        None => Err(Ending::Lost("connection closed".into())),
                    }
                }
                _ = maybe_sleep_until(pull_at) => {
                    let now = Instant::now();
                    let fx = self.delivery.tracker.poll_timeouts(now, self.server_read_upto);
                    self.delivery.apply(fx).await.map_err(Ending::from)
                }
                _ = sleep_until(last_inbound + dead_after) => {
                    Err(Ending::Lost(format!("no frame from the server for {dead_after:?}")))
                }
            };
            if let Err(ending) = step {
                return ending;
            }
            if let Err(ending) = self.write_pulls(sink).await {
                return ending;
            }
            self.delivery.settle();
        }
    }

    /// One text frame: a known frame, an event of a kind this SDK does not know (stepped
    /// over), or something else from a newer server (ignored).
    async fn on_text(&mut self, text: &str) -> Result<(), Ending> {
        match serde_json::from_str::<ServerFrame>(text) {
            Ok(frame) => self.on_frame(frame).await,
            Err(e) => {
                let value: Option<serde_json::Value> = serde_json::from_str(text).ok();
                let inbound = value
                    .filter(|v| v.get("type").and_then(|t| t.as_str()) == Some("event"))
                    .and_then(Inbound::from_value);
                match inbound {
                    Some(inbound) => self.on_inbound(inbound).await,
                    None => {
                        // Tolerated: a newer server may send frames we do not know.
                        warn!(error = %e, "ignoring unparseable frame");
                        Ok(())
                    }
                }
            }
        }
    }

    /// The conversation list arrived: pull what it shows beyond what was delivered.
    /// Fetches the conversation list for the catch-up after `delay`, on a task of its own.
    fn fetch_catch_up(&mut self, delay: Duration) {
        let client = self.client.clone();
        self.catch_up = Some(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            client.conversations().await
        }));
    }

    async fn on_catch_up(
        &mut self,
        rows: std::result::Result<Result<Vec<ConversationRow>>, JoinError>,
    ) -> Result<(), Ending> {
        let rows = match rows {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) if e.is_unauthorized() => return Err(Ending::Revoked),
            Ok(Err(e)) => {
                // Without it, a quiet read-fan-out group would stay behind until its next
                // message: try again, backing off, for as long as the connection lasts.
                self.catch_up_failures = self.catch_up_failures.saturating_add(1);
                let delay = refusal_delay(
                    CATCH_UP_RETRY_BASE_MS,
                    self.catch_up_failures,
                    &mut rand::rng(),
                );
                warn!(error = %e, ?delay, "cannot fetch the conversation list to catch up; retrying");
                self.fetch_catch_up(delay);
                return Ok(());
            }
            Err(e) => {
                warn!(error = %e, "conversation list task failed");
                return Ok(());
            }
        };
        let rows: Vec<CatchUpRow> = rows
            .iter()
            .map(|r| CatchUpRow {
                conversation_id: r.conversation_id,
                last_seq: r.last_seq,
                fanout: Fanout::from_wire(&r.fanout),
            })
            .collect();
        let fx = self.delivery.tracker.on_catch_up(&rows, Instant::now());
        self.delivery.apply(fx).await.map_err(Ending::from)
    }

    async fn on_frame(&mut self, frame: ServerFrame) -> Result<(), Ending> {
        match frame {
            ServerFrame::Event(event) => self.on_inbound(Inbound::Event(event)).await,
            ServerFrame::Notify {
                conversation_id,
                last_seq,
            } => {
                let fx = self
                    .delivery
                    .tracker
                    .on_notify(conversation_id, last_seq, Instant::now());
                self.delivery.apply(fx).await.map_err(Ending::from)
            }
            ServerFrame::Messages {
                conversation_id,
                messages,
                truncated,
            } => {
                let fx = self.delivery.tracker.on_pulled(
                    conversation_id,
                    messages,
                    truncated,
                    Instant::now(),
                );
                self.delivery.apply(fx).await.map_err(Ending::from)
            }
            ServerFrame::Presence {
                user_id,
                online,
                last_seen_ms,
            } => {
                let presence = SessionEvent::Presence {
                    user_id,
                    online,
                    last_seen_ms,
                };
                self.emit(presence).await
            }
            ServerFrame::Typing {
                conversation_id,
                user_id,
            } => {
                self.delivery.emit_lossy(SessionEvent::Typing {
                    conversation_id,
                    user_id,
                });
                Ok(())
            }
            ServerFrame::Sent {
                client_msg_id,
                conversation_id,
                seq,
                ts_ms,
                duplicate,
            } => {
                if self.shared.outbox().complete(&client_msg_id).is_none() {
                    debug!(%client_msg_id, "sent for an id no longer pending");
                    return Ok(());
                }
                let sent = SessionEvent::Sent {
                    client_msg_id,
                    conversation_id,
                    seq,
                    ts_ms,
                    duplicate,
                };
                self.emit(sent).await
            }
            ServerFrame::Error {
                code,
                message,
                client_msg_id: Some(id),
                ..
            } => {
                if is_transient(code) {
                    let base = self.config.send_retry_base_ms;
                    let mut at = Instant::now();
                    let refusals = self.shared.outbox().retry(&id, |n| {
                        at += refusal_delay(base, n, &mut rand::rng());
                        at
                    });
                    match refusals {
                        Some(n) if n <= self.config.send_refusals_max => {
                            self.retry_at = Some(self.retry_at.map_or(at, |t| t.min(at)));
                            return Ok(());
                        }
                        Some(_) => {} // Refused too often: give up on it below.
                        None => return Ok(()),
                    }
                }
                if self.shared.outbox().complete(&id).is_none() {
                    return Ok(());
                }
                self.emit(SessionEvent::SendFailed {
                    client_msg_id: id,
                    code,
                    message,
                })
                .await
            }
            ServerFrame::Error {
                code,
                message,
                client_msg_id: None,
                conversation_id,
            } => {
                warn!(code = code.as_str(), %message, ?conversation_id, "server reported an error");
                if let Some(conversation) = conversation_id {
                    self.delivery.tracker.on_refused(conversation, code);
                }
                Ok(())
            }
            ServerFrame::Pong => {
                self.pongs_received += 1;
                while self
                    .pings
                    .front()
                    .is_some_and(|&(n, _)| n < self.pongs_received)
                {
                    self.pings.pop_front();
                }
                if let Some(&(n, written_at)) = self.pings.front() {
                    if n == self.pongs_received {
                        self.pings.pop_front();
                        self.server_read_upto = Some(written_at);
                    }
                }
                Ok(())
            }
            ServerFrame::Ready { .. } => {
                debug!("duplicate ready ignored");
                Ok(())
            }
        }
    }

    async fn on_inbound(&mut self, event: Inbound) -> Result<(), Ending> {
        let mut source = HttpSource {
            client: &self.client,
        };
        match accept_live(&mut self.seq, event, &mut source, &mut self.delivery).await? {
            Accepted::InOrder => {}
            Accepted::SkippedGap { from, to } => {
                warn!(from, to, "server could not supply missing events; skipped")
            }
        }
        Ok(())
    }

    async fn emit(&mut self, event: SessionEvent) -> Result<(), Ending> {
        self.delivery.emit(event).await.map_err(Ending::from)
    }

    async fn write_outbox(&mut self, sink: &mut WsSink) -> Result<(), Ending> {
        let (frames, hold) = {
            let mut outbox = self.shared.outbox();
            (outbox.take_unwritten(Instant::now()), outbox.next_hold())
        };
        // Sends held back after a refusal are written when their time comes.
        self.retry_at = hold;
        for frame in &frames {
            sink.feed(Message::text(to_json(frame)?))
                .await
                .map_err(ws_lost)?;
        }
        if !frames.is_empty() {
            sink.flush().await.map_err(ws_lost)?;
        }
        Ok(())
    }

    /// Writes the queued `read`/`typing` requests and turns `pull` requests into pulls.
    async fn write_controls(&mut self, sink: &mut WsSink) -> Result<(), Ending> {
        let controls: Vec<Control> = self.shared.control().drain(..).collect();
        let mut written = false;
        for control in controls {
            let frame = match control {
                Control::Read(conversation_id, seq) => ClientFrame::Read {
                    conversation_id,
                    seq,
                },
                Control::Typing(conversation_id) => ClientFrame::Typing { conversation_id },
                Control::Pull(conversation_id) => {
                    let fx = self
                        .delivery
                        .tracker
                        .request_pull(conversation_id, Instant::now());
                    self.delivery.apply(fx).await?;
                    continue;
                }
            };
            sink.feed(Message::text(to_json(&frame)?))
                .await
                .map_err(ws_lost)?;
            written = true;
        }
        if written {
            sink.flush().await.map_err(ws_lost)?;
        }
        Ok(())
    }

    /// Writes the pulls the tracker asked for.
    async fn write_pulls(&mut self, sink: &mut WsSink) -> Result<(), Ending> {
        if self.delivery.pulls.is_empty() {
            return Ok(());
        }
        for pull in std::mem::take(&mut self.delivery.pulls) {
            let frame = ClientFrame::Pull {
                conversation_id: pull.conversation_id,
                after_seq: pull.after_seq,
                limit: Some(pull.limit),
            };
            sink.feed(Message::text(to_json(&frame)?))
                .await
                .map_err(ws_lost)?;
        }
        sink.flush().await.map_err(ws_lost)
    }

    /// Folds acks from the application into the delivery state (manual mode: never past
    /// what was delivered), then settles progress.
    fn note_app_acks(&mut self) {
        let acked = self.shared.app_acked.load(Ordering::Acquire);
        let cursor = acked.min(self.seq.last_delivered());
        let messages: HashMap<_, _> = std::mem::take(&mut *self.shared.message_acks());
        self.delivery.note_app_acks(cursor, messages);
        self.delivery.settle();
    }

    /// When something processed should next be persisted.
    fn flush_deadline(&self) -> Option<Instant> {
        match (
            self.delivery.acker.deadline(),
            self.delivery.seqs_deadline(),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Persists per-conversation progress and the processed cursor if due (or `force`).
    /// Returns the cursor to ack over the socket.
    async fn flush(&mut self, force: bool) -> Option<u64> {
        let now = Instant::now();
        let cursor = if force {
            self.delivery.acker.take_now()
        } else {
            self.delivery.acker.take_due(now)
        };
        // The seqs go first, and whenever a cursor goes: a cursor must never be persisted
        // ahead of the per-conversation progress it implies.
        let seqs = self.delivery.take_seqs(force || cursor.is_some(), now);
        if cursor.is_none() && seqs.is_none() {
            return None;
        }
        let store = self.store.clone();
        let saved = tokio::task::spawn_blocking(move || {
            if let Some(seqs) = &seqs {
                store.save_seqs(seqs)?;
            }
            if let Some(cursor) = cursor {
                store.save(cursor)?;
            }
            Ok::<(), SdkError>(())
        })
        .await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, ?cursor, "cannot persist progress"),
            Err(e) => warn!(error = %e, ?cursor, "cursor store panicked"),
        }
        cursor
    }
}

/// Dials the WebSocket endpoint with the client's bearer token.
async fn connect(client: &Client, connect_timeout: Duration) -> Result<Ws, Ending> {
    let url = client.ws_url()?;
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| Ending::Lost(format!("bad websocket request: {e}")))?;
    // Already validated in `Session::start`; the header keeps the token out of URLs/logs.
    let token = client.token().unwrap_or_default();
    request.headers_mut().insert(AUTHORIZATION, bearer(token)?);
    match timeout(connect_timeout, tokio_tungstenite::connect_async(request)).await {
        Err(_) => Err(Ending::Lost("connect timed out".into())),
        Ok(Ok((ws, _response))) => Ok(ws),
        Ok(Err(tungstenite::Error::Http(resp))) if resp.status().as_u16() == 401 => {
            Err(Ending::Revoked)
        }
        Ok(Err(tungstenite::Error::Http(resp))) => Err(Ending::Lost(format!(
            "websocket upgrade refused: HTTP {}",
            resp.status()
        ))),
        Ok(Err(tungstenite::Error::Io(e))) => Err(Ending::Lost(format!("cannot connect: {e}"))),
        Ok(Err(e)) => Err(Ending::Lost(format!("connect failed: {e}"))),
    }
}

/// Fills gaps through `GET /v1/sync`.
struct HttpSource<'a> {
    client: &'a Client,
}

impl EventSource for HttpSource<'_> {
    async fn fetch_after(&mut self, after: u64) -> Result<Vec<Inbound>> {
        self.client.sync_inbound(after, GAP_FILL_PAGE_EVENTS).await
    }
}

/// Refusals worth retrying on the same connection.
/// How long to hold a send back after its `n`th transient refusal: exponential from `base_ms`,
/// capped at `TRANSIENT_RETRY_MS_MAX`, with jitter (half to all of it), so that many clients
/// refused together do not come back together.
fn refusal_delay(base_ms: u64, n: u32, rng: &mut impl rand::Rng) -> Duration {
    let exp = base_ms.saturating_mul(1u64 << n.saturating_sub(1).min(16));
    let full = exp.min(TRANSIENT_RETRY_MS_MAX);
    Duration::from_millis(rng.random_range(full / 2..=full))
}

fn is_transient(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::RateLimited | ErrorCode::Unavailable | ErrorCode::Internal
    )
}

fn ending_for_close(frame: Option<CloseFrame>) -> Ending {
    let Some(frame) = frame else {
        return Ending::Lost("server closed the connection".into());
    };
    let code = u16::from(frame.code);
    let what = match code {
        CLOSE_REVOKED => return Ending::Revoked,
        CLOSE_RESYNC => "fell behind; resyncing",
        CLOSE_HEARTBEAT_TIMEOUT => "heartbeat timeout",
        CLOSE_SHUTDOWN => "server shutting down",
        _ => "server closed the connection",
    };
    Ending::Lost(format!("{what} (close {code})"))
}

fn ws_lost(e: tungstenite::Error) -> Ending {
    Ending::Lost(format!("websocket: {e}"))
}

fn to_json(frame: &ClientFrame) -> Result<String, Ending> {
    serde_json::to_string(frame).map_err(|e| Ending::Lost(format!("cannot encode frame: {e}")))
}

async fn write(sink: &mut WsSink, frame: &ClientFrame) -> Result<(), Ending> {
    sink.send(Message::text(to_json(frame)?))
        .await
        .map_err(ws_lost)
}

/// Waits for the task if there is one (never completes otherwise).
async fn maybe_join<T>(task: &mut Option<JoinHandle<T>>) -> std::result::Result<T, JoinError> {
    match task {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}

async fn maybe_sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_sends_back_off_exponentially_with_jitter_up_to_a_cap() {
        let mut rng = rand::rng();
        for _ in 0..100 {
            let first = refusal_delay(1_000, 1, &mut rng).as_millis();
            assert!((500..=1_000).contains(&first), "{first}");
            let fourth = refusal_delay(1_000, 4, &mut rng).as_millis();
            assert!((4_000..=8_000).contains(&fourth), "{fourth}");
            let late = refusal_delay(1_000, u32::MAX, &mut rng).as_millis();
            assert!(late <= u128::from(TRANSIENT_RETRY_MS_MAX), "{late}");
            assert!(late >= u128::from(TRANSIENT_RETRY_MS_MAX / 2), "{late}");
        }
    }

    #[test]
    fn close_codes_map_to_endings() {
        let frame = |code: u16| {
            Some(CloseFrame {
                code: CloseCode::from(code),
                reason: "".into(),
            })
        };
        assert!(matches!(
            ending_for_close(frame(CLOSE_REVOKED)),
            Ending::Revoked
        ));
        for code in [CLOSE_RESYNC, CLOSE_HEARTBEAT_TIMEOUT, CLOSE_SHUTDOWN, 1000] {
            assert!(matches!(ending_for_close(frame(code)), Ending::Lost(_)));
        }
        assert!(matches!(ending_for_close(None), Ending::Lost(_)));
    }

    #[test]
    fn sdk_errors_map_to_endings() {
        let unauthorized = SdkError::Api {
            status: 401,
            code: ErrorCode::Unauthorized,
            message: String::new(),
        };
        assert!(matches!(Ending::from(unauthorized), Ending::Revoked));
        assert!(matches!(Ending::from(SdkError::Closed), Ending::Closed));
        assert!(matches!(
            Ending::from(SdkError::Protocol("x".into())),
            Ending::Lost(_)
        ));
    }
}
