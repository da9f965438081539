//! The background task behind a [`Session`](super::Session): one loop of connect → run →
//! back off, and the per-connection frame loop.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use magpie_protocol::close::{
    CLOSE_HEARTBEAT_TIMEOUT, CLOSE_RESYNC, CLOSE_REVOKED, CLOSE_SHUTDOWN,
};
use magpie_protocol::ws::{ClientFrame, ServerFrame, WireEvent};
use magpie_protocol::ErrorCode;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{interval_at, sleep_until, timeout, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::{debug, info, warn};

use super::{AckMode, SessionConfig, SessionEvent, Shared};
use crate::acker::AckTracker;
use crate::backoff::{Backoff, STABLE_CONNECTION_MS};
use crate::client::Client;
use crate::cursor::CursorStore;
use crate::error::{Result, SdkError};
use crate::sequencer::{accept_live, Accepted, EventSink, EventSource, Sequencer};

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
/// Delay before re-sending after a transient refusal (`rate_limited`, `unavailable`).
const TRANSIENT_RETRY_MS: u64 = 1_000;

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
    /// Authenticated HTTP client (gap fills) and source of the ws URL and token.
    client: Client,
    /// Where processed progress is persisted.
    store: Arc<dyn CursorStore>,
    /// Tuning.
    config: SessionConfig,
    /// Outbox and wake-ups shared with the handles.
    shared: Arc<Shared>,
    /// The application's bounded event channel.
    events: mpsc::Sender<SessionEvent>,
    /// Close requests from `Session::close`; closed when every handle is dropped.
    close_rx: mpsc::Receiver<oneshot::Sender<()>>,
    /// What has been delivered.
    seq: Sequencer,
    /// What has been processed vs. acked and persisted.
    acker: AckTracker,
    /// Reconnect delays.
    backoff: Backoff,
    /// False until the cursor store or a `ready` frame told us where to resume.
    cursor_known: bool,
    /// When to re-send after a transient refusal.
    retry_at: Option<Instant>,
    /// Callers of `close` waiting for the task to finish.
    closers: Vec<oneshot::Sender<()>>,
}

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
        Self {
            client,
            store,
            config,
            shared,
            events,
            close_rx,
            seq: Sequencer::new(0),
            acker,
            backoff,
            cursor_known: false,
            retry_at: None,
            closers: Vec::new(),
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
        self.flush_cursor(true).await;
        self.shared.stopped.store(true, Ordering::Release);
        for closer in self.closers.drain(..) {
            let _ = closer.send(());
        }
    }

    /// Reads the persisted cursor; on failure resumes from the server's record instead.
    async fn load_cursor(&mut self) {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.load()).await {
            Ok(Ok(Some(cursor))) => self.resume_at(cursor),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "cannot read the cursor store; using the server's cursor")
            }
            Err(e) => warn!(error = %e, "cursor store panicked; using the server's cursor"),
        }
    }

    fn resume_at(&mut self, cursor: u64) {
        self.seq = Sequencer::new(cursor);
        self.acker = AckTracker::new(cursor, self.config.ack_debounce, self.config.ack_batch_max);
        self.cursor_known = true;
    }

    /// Waits out a backoff delay while still honouring close requests and flushing acks.
    /// Returns false if the session should end.
    async fn pause(&mut self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            let ack_at = self.acker.deadline();
            tokio::select! {
                _ = sleep_until(until) => return true,
                req = self.close_rx.recv() => {
                    self.closers.extend(req);
                    return false;
                }
                _ = self.shared.wake.notified() => self.note_app_acks(),
                _ = maybe_sleep_until(ack_at) => {
                    // Offline: persist only; the ack frame goes out after reconnecting.
                    self.flush_cursor(false).await;
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
            req = self.close_rx.recv() => {
                self.closers.extend(req);
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
        if matches!(ending, Ending::Closed) {
            self.note_app_acks();
            if let Some(cursor) = self.flush_cursor(true).await {
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
                            Ok(ServerFrame::Ready {
                                user_id,
                                device_id,
                                cursor,
                                heartbeat_ms,
                            }) => {
                                return Ok((user_id, device_id, cursor, heartbeat_ms));
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
        let (user_id, device_id, server_cursor, heartbeat_ms) = ready;
        if !self.cursor_known {
            // Nothing persisted locally: trust the server's record for this device.
            self.resume_at(server_cursor);
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
        self.events
            .send(connected)
            .await
            .map_err(|_| Ending::Closed)?;
        write(
            sink,
            &ClientFrame::Sync {
                cursor: resumed_from,
            },
        )
        .await?;
        if self.acker.flushed() > server_cursor {
            // Progress persisted while offline (or by an earlier run) the server has not seen.
            write(
                sink,
                &ClientFrame::Ack {
                    cursor: self.acker.flushed(),
                },
            )
            .await?;
        }
        self.write_outbox(sink).await?;
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
        loop {
            let ack_at = self.acker.deadline();
            let retry_at = self.retry_at;
            // Biased, in this order: close requests; the cheap timers and wake-ups (so a flood
            // of inbound frames cannot starve pings or sends); inbound frames; and only then
            // the dead-connection timer, so frames that queued up while we were blocked on a
            // slow application still count as signs of life.
            let step: Result<(), Ending> = tokio::select! {
                biased;
                req = self.close_rx.recv() => {
                    self.closers.extend(req);
                    Err(Ending::Closed)
                }
                _ = ping.tick() => write(sink, &ClientFrame::Ping).await,
                _ = self.shared.wake.notified() => {
                    self.note_app_acks();
                    self.write_outbox(sink).await
                }
                _ = maybe_sleep_until(ack_at) => match self.flush_cursor(false).await {
                    Some(cursor) => write(sink, &ClientFrame::Ack { cursor }).await,
                    None => Ok(()),
                },
                _ = maybe_sleep_until(retry_at) => {
                    self.retry_at = None;
                    self.write_outbox(sink).await
                }
                msg = stream.next() => {
                    last_inbound = Instant::now();
                    match msg {
                        Some(Ok(Message::Text(text))) => match serde_json::from_str(&text) {
                            Ok(frame) => self.on_frame(frame).await,
                            Err(e) => {
                                // Tolerated: a newer server may send frames we do not know.
                                warn!(error = %e, "ignoring unparseable frame");
                                Ok(())
                            }
                        },
                        Some(Ok(Message::Close(frame))) => Err(ending_for_close(frame)),
                        Some(Ok(_)) => Ok(()),
                        Some(Err(e)) => Err(Ending::Lost(format!("websocket: {e}"))),
                        None => Err(Ending::Lost("connection closed".into())),
                    }
                }
                _ = sleep_until(last_inbound + dead_after) => {
                    Err(Ending::Lost(format!("no frame from the server for {dead_after:?}")))
                }
            };
            if let Err(ending) = step {
                return ending;
            }
        }
    }

    async fn on_frame(&mut self, frame: ServerFrame) -> Result<(), Ending> {
        match frame {
            ServerFrame::Event(event) => self.on_event(event).await,
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
            } => {
                if is_transient(code) {
                    if self.shared.outbox().retry(&id) {
                        let at = Instant::now() + Duration::from_millis(TRANSIENT_RETRY_MS);
                        self.retry_at = Some(self.retry_at.map_or(at, |t| t.min(at)));
                    }
                    return Ok(());
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
            } => {
                warn!(code = code.as_str(), %message, "server reported an error");
                Ok(())
            }
            ServerFrame::Pong => Ok(()),
            ServerFrame::Ready { .. } => {
                debug!("duplicate ready ignored");
                Ok(())
            }
        }
    }

    async fn on_event(&mut self, event: WireEvent) -> Result<(), Ending> {
        let mut source = HttpSource {
            client: &self.client,
        };
        let mut sink = AppSink {
            events: &self.events,
            close_rx: &mut self.close_rx,
            closers: &mut self.closers,
            acker: &mut self.acker,
            auto_ack: self.config.ack_mode == AckMode::Auto,
        };
        match accept_live(&mut self.seq, event, &mut source, &mut sink).await? {
            Accepted::InOrder => {}
            Accepted::SkippedGap { from, to } => {
                warn!(from, to, "server could not supply missing events; skipped")
            }
        }
        Ok(())
    }

    async fn emit(&mut self, event: SessionEvent) -> Result<(), Ending> {
        emit_or_close(&self.events, &mut self.close_rx, &mut self.closers, event)
            .await
            .map_err(Ending::from)
    }

    async fn write_outbox(&mut self, sink: &mut WsSink) -> Result<(), Ending> {
        let frames = self.shared.outbox().take_unwritten();
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

    /// Folds manual acks from the application into the tracker (never past what was delivered).
    fn note_app_acks(&mut self) {
        let acked = self.shared.app_acked.load(Ordering::Acquire);
        let cursor = acked.min(self.seq.last_delivered());
        self.acker.note_processed(cursor, Instant::now());
    }

    /// Persists the processed cursor if a flush is due (or `force`). Returns the cursor to
    /// ack over the socket.
    async fn flush_cursor(&mut self, force: bool) -> Option<u64> {
        let cursor = if force {
            self.acker.take_now()
        } else {
            self.acker.take_due(Instant::now())
        }?;
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.save(cursor)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, cursor, "cannot persist the cursor"),
            Err(e) => warn!(error = %e, cursor, "cursor store panicked"),
        }
        Some(cursor)
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

/// Hands `event` to the application unless a close request arrives first: an application
/// blocked in `Session::close` is not reading, so waiting for channel space would deadlock.
async fn emit_or_close(
    events: &mpsc::Sender<SessionEvent>,
    close_rx: &mut mpsc::Receiver<oneshot::Sender<()>>,
    closers: &mut Vec<oneshot::Sender<()>>,
    event: SessionEvent,
) -> Result<()> {
    tokio::select! {
        sent = events.send(event) => sent.map_err(|_| SdkError::Closed),
        req = close_rx.recv() => {
            closers.extend(req);
            Err(SdkError::Closed)
        }
    }
}

/// Fills gaps through `GET /v1/sync`.
struct HttpSource<'a> {
    client: &'a Client,
}

impl EventSource for HttpSource<'_> {
    async fn fetch_after(&mut self, after: u64) -> Result<Vec<WireEvent>> {
        Ok(self
            .client
            .sync(after, Some(GAP_FILL_PAGE_EVENTS), None)
            .await?
            .events)
    }
}

/// Hands events to the application and, in auto mode, counts them as processed.
struct AppSink<'a> {
    events: &'a mpsc::Sender<SessionEvent>,
    close_rx: &'a mut mpsc::Receiver<oneshot::Sender<()>>,
    closers: &'a mut Vec<oneshot::Sender<()>>,
    acker: &'a mut AckTracker,
    auto_ack: bool,
}

impl EventSink for AppSink<'_> {
    async fn deliver(&mut self, event: WireEvent) -> Result<()> {
        let cursor = event.cursor;
        let event = SessionEvent::Event(event);
        emit_or_close(self.events, self.close_rx, self.closers, event).await?;
        if self.auto_ack {
            self.acker.note_processed(cursor, Instant::now());
        }
        Ok(())
    }
}

/// Refusals worth retrying on the same connection.
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
