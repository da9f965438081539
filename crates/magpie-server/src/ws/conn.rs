//! One WebSocket connection: the `ready`/`sync`/`send`/`ack`/`ping` protocol.
//!
//! A single task owns the socket and multiplexes four sources: frames from the client, live
//! events from the hub, the completion of the in-flight append batch, and kicks (logout,
//! overflow, shutdown). Sends are queued in arrival order and submitted as one store batch at a
//! time, so seqs and acks follow the order the client sent them while frames that arrive during
//! an fsync ride in the next batch (per-connection group commit).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket};
use futures_util::{FutureExt, SinkExt};
use magpie_core::limits::{PageText, PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX};
use magpie_core::{
    ConversationId, ConversationKind, Cursor, Device, Event, EventPayload, Seq, UserId,
};
use magpie_protocol::close::{
    CLOSE_HEARTBEAT_TIMEOUT, CLOSE_REVOKED, CLOSE_SERVER_ERROR, CLOSE_SHUTDOWN,
};
use magpie_protocol::ws::{
    message_event_frame, message_json, sent_frame, ClientFrame, ServerFrame,
};
use magpie_protocol::{event_to_wire, message_to_wire, page, ErrorCode};
use magpie_store::{AppendError, Appended, MessageRange, StoreError};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::ratelimit::TokenBucket;
use crate::error::ApiError;
use crate::gate::GatePermit;
use crate::http::group_error;
use crate::hub::{
    LiveEvent, Outbound, Registration, Router as _, SharedMessageJson, DEVICE_QUEUE_EVENTS_MAX,
};
use crate::send::{append_error, build_request, check_direct_allowed, stored_or_refused};
use crate::state::AppState;

/// Sends accepted from the socket but not yet handed to the store. When full, the task stops
/// reading the socket, which pushes back on the client through TCP.
const SEND_QUEUE_MAX: usize = 512;
/// Append batches of one connection in the store at once. With one, a send that arrived while
/// a batch was being made durable waited for that whole commit before its own began (at
/// 46,826 msg/s paced, the server's send→ack time was about twice its append time); with
/// two, it joins the store's next batch at once. The store keeps their order.
const IN_FLIGHT_BATCHES_MAX: usize = 2;
/// How long each write may wait while a connection closes (answers to sends already in the
/// store, the close frame): the peer may have stopped reading.
const CLOSING_WRITE_MS: u64 = 1_000;
/// Events read from the store per catch-up page.
const CATCH_UP_PAGE_EVENTS: usize = 200;
/// Live events written per wake-up before flushing, so one busy device cannot starve the rest.
const LIVE_DRAIN_EVENTS_MAX: usize = 64;
/// Conversations whose "may send" answer a connection remembers; cleared when full.
const SEND_OK_CACHE_MAX: usize = 1024;
/// `sync`, `pull` and `read` frames a connection is served per second, and their burst. Each
/// is a store read or a write op (a `read` goes through the writer's queue even when it
/// changes nothing), so an unlimited flood from one socket would slow everyone's writes.
/// Frames beyond wait (the connection reads nothing meanwhile, pushing back through TCP)
/// instead of being refused: clients treat a refused pull as a lost one and retry only
/// after their pull timeout. The burst covers a client pulling its read-fan-out groups
/// after a reconnect.
const STORE_FRAMES_PER_SEC: u32 = 500;
/// See [`STORE_FRAMES_PER_SEC`].
const STORE_FRAMES_BURST: u32 = 1_000;

/// A send waiting for its turn, or an answer already decided (kept in line so that errors and
/// acks reach the client in the order of its sends).
enum Queued {
    Append {
        client_msg_id: String,
        req: magpie_store::AppendRequest,
        /// When the send frame was read, for `magpie_ws_send_ack_seconds`.
        received: Instant,
    },
    Answer(ServerFrame),
}

type BatchResult = Result<Vec<Result<Appended, AppendError>>, StoreError>;
/// What an append batch comes back with: its queued items, the store's answer, and the gate
/// permits to release.
type BatchOutcome = (Vec<Queued>, BatchResult, Vec<GatePermit>);
type InFlight = Pin<Box<dyn Future<Output = BatchOutcome> + Send>>;

/// An append batch handed to the store: still running, or finished, its outcome kept until
/// every earlier batch has been answered.
enum Flight {
    Running(InFlight),
    Done(BatchOutcome),
}
/// A cursor ack being written: the cursor, or the store's refusal.
type AckFlight = Pin<Box<dyn Future<Output = Result<Cursor, StoreError>> + Send>>;

/// Why the loop ended.
enum End {
    /// The peer closed or the socket failed; nothing more to send.
    Gone,
    /// Close with this code and reason.
    Close(u16, &'static str),
}

struct Conn {
    /// Shared server state.
    state: AppState,
    /// The authenticated device.
    device: Device,
    /// The socket.
    socket: WebSocket,
    /// Our slot in the hub; removed on drop.
    reg: Registration,
    /// Live events and frames, present once the client sent `sync`.
    live: Option<mpsc::Receiver<Outbound>>,
    /// The last cursor written to the socket; events at or below it are never sent again.
    last_sent: Cursor,
    /// Sends in arrival order, waiting for room in `in_flight`.
    queue: VecDeque<Queued>,
    /// Append batches handed to the store and not yet answered, oldest first; at most
    /// [`IN_FLIGHT_BATCHES_MAX`]. Polled only oldest-first (see [`Conn::poll_in_order`]), and
    /// answered in that order.
    in_flight: VecDeque<Flight>,
    /// The highest cursor the client acknowledged and the ack write in progress.
    ack_wanted: Cursor,
    /// The inbox head when `ready` was sent (`Cursor(u64::MAX)` before): events after it were
    /// handed to this connection rather than pushed (see `push_unacknowledged`).
    head_at_ready: Cursor,
    ack_written: Cursor,
    ack_flight: Option<AckFlight>,
    /// Rate limit of the frames that cost a store read or write (`sync`, `pull`, `read`).
    store_frames: TokenBucket,
    /// Conversations this device may send to, with the friendship epoch of the check.
    send_ok: HashMap<ConversationId, u64>,
    /// `joined_seq` per conversation, with the membership epoch of the check (for pulls).
    joined: HashMap<ConversationId, (Seq, u64)>,
    /// When the connection counts as dead unless a frame arrives.
    deadline: Instant,
    /// Frames were fed to the socket since the last flush. The busy paths (acks, live events)
    /// leave the flush to the end of the loop turn, so that an ack and the echo of the same
    /// message, which arrive together, share one socket write.
    unflushed: bool,
    /// The connection is ending: writes get [`CLOSING_WRITE_MS`] instead of the silence
    /// limit, and after one write timed out none is tried again, so that closing a socket
    /// whose peer stopped reading takes one silence limit, not one per remaining frame.
    closing: bool,
    /// A write timed out: the peer stopped reading, and no further write is attempted.
    wedged: bool,
}

/// Serves one upgraded socket until it closes.
///
/// Not an `async fn`: the connection is built here, before the future exists, and boxed, so
/// that it is stored once. The state of an `async fn` keeps its arguments for its whole life,
/// next to whatever they were moved into (`Conn`, or a `mut self` binding), which cost an idle
/// socket about 1.5 KiB twice over.
pub fn run(
    state: AppState,
    device: Device,
    socket: WebSocket,
) -> impl std::future::Future<Output = ()> + Send {
    let reg = state.hub.connect(device.user_id, device.id);
    let deadline = Instant::now() + silence_limit(&state);
    let conn = Box::new(Conn {
        ack_wanted: device.cursor,
        head_at_ready: Cursor(u64::MAX),
        ack_written: device.cursor,
        state,
        device,
        socket,
        reg,
        live: None,
        last_sent: Cursor(0),
        queue: VecDeque::new(),
        // Allocated on the first send: an idle connection pays nothing for it.
        in_flight: VecDeque::new(),
        ack_flight: None,
        store_frames: TokenBucket::new(STORE_FRAMES_PER_SEC, STORE_FRAMES_BURST),
        send_ok: HashMap::new(),
        joined: HashMap::new(),
        deadline,
        unflushed: false,
        closing: false,
        wedged: false,
    });
    conn.run()
}

/// Newest inbox events looked at for a push when a user's last connection ends.
const PUSH_ON_CLOSE_EVENTS_MAX: u64 = 64;

/// A connection ended, maybe the user's last. Events handed to it that its device never
/// acknowledged counted as delivered (the user was online, so nothing was pushed), but a
/// socket that died without a close (a phone that lost its network) received nothing for up
/// to the silence limit: if no device of the user is connected now, the newest such message
/// is offered for a push. The push pipeline checks again, when the window ends, that the user
/// is still offline and has not read it. Not at shutdown: every user goes offline at once.
async fn push_unacknowledged(state: &AppState, user: UserId, after: Cursor) {
    if !state.hub.pushes() || state.shutdown_requested() || state.hub.is_online(user) {
        return;
    }
    let Ok(head) = state.store.inbox_head(user).await else {
        return;
    };
    let from = Cursor(after.0.max(head.0.saturating_sub(PUSH_ON_CLOSE_EVENTS_MAX)));
    let limit = (head.0 - from.0.min(head.0)) as usize;
    if limit == 0 {
        return;
    }
    if let Ok(events) = state.store.events(user, from, limit).await {
        state.hub.offer_push_for_newest(user, &events);
    }
}

fn silence_limit(state: &AppState) -> Duration {
    Duration::from_millis(state.config.heartbeat_ms.saturating_mul(3))
}

impl Conn {
    async fn run(mut self: Box<Self>) {
        let end = self.serve().await;
        // Boxed, like the handlers in `serve`: the future of a connection is as large as its
        // largest await, and closing happens once.
        Box::pin(self.finish(end)).await;
        let (state, user) = (self.state.clone(), self.device.user_id);
        // Only events this connection was handed and never acknowledged: older ones were
        // offered for a push when they committed, if the user was offline then.
        let from = self.ack_wanted.max(self.head_at_ready);
        drop(self); // Deregisters the device: the user may be offline from here on.
        push_unacknowledged(&state, user, from).await;
    }

    async fn serve(&mut self) -> End {
        // The token was checked before the upgrade, but a logout may have revoked it since,
        // and kicked only the sockets registered at that moment. Ours is registered now, and
        // a logout makes the revocation durable before it kicks, so reading the device here
        // catches every logout the kick missed.
        match self.state.store.device(self.device.id).await {
            Ok(Some(device)) if !device.revoked => {}
            Ok(_) => return End::Close(CLOSE_REVOKED, "logged out"),
            Err(e) => {
                tracing::error!(error = %e, "reading the device failed");
                return End::Close(CLOSE_SERVER_ERROR, "storage failure");
            }
        }
        let inbox_head = match self.state.store.inbox_head(self.device.user_id).await {
            Ok(head) => head,
            Err(e) => {
                tracing::error!(error = %e, "reading inbox head failed");
                return End::Close(CLOSE_SERVER_ERROR, "storage failure");
            }
        };
        let ready = ServerFrame::Ready {
            user_id: self.device.user_id,
            device_id: self.device.id,
            cursor: self.device.cursor.0,
            heartbeat_ms: self.state.config.heartbeat_ms,
            inbox_head: Some(inbox_head.0),
        };
        self.head_at_ready = inbox_head;
        if self.write(&ready).await.is_err() || self.flush().await.is_err() {
            return End::Gone;
        }
        let kick = self.reg.kick.clone();
        let shutdown = self.state.shutdown.clone();
        loop {
            let reading = self.queue.len() < SEND_QUEUE_MAX;
            // The handlers are boxed: a connection's future is as large as its largest await,
            // and these nest the whole protocol (about 1 KiB more per idle socket inline); a
            // box costs one small allocation per frame handled.
            let step = tokio::select! {
                code = kick.wait() => Err(End::Close(code, "kicked")),
                _ = shutdown.cancelled() => Err(End::Close(CLOSE_SHUTDOWN, "server shutting down")),
                done = next_done(&mut self.in_flight) => Box::pin(self.on_batch_done(done)).await,
                acked = poll_opt(&mut self.ack_flight) => self.on_ack_written(acked),
                event = recv_opt(&mut self.live) => Box::pin(self.on_live(event)).await,
                frame = self.socket.recv(), if reading => Box::pin(self.on_socket(frame)).await,
                _ = tokio::time::sleep_until(self.deadline) => Err(End::Close(CLOSE_HEARTBEAT_TIMEOUT, "heartbeat timeout")),
            };
            if let Err(end) = step {
                return end;
            }
            self.start_batch();
            self.start_ack();
            if self.unflushed {
                if let Err(end) = Box::pin(self.flush_with_ready()).await {
                    return end;
                }
                self.start_batch();
            }
        }
    }

    /// Writes what is ready right now (a finished batch's acks, queued live items) so it
    /// joins the pending frames, then flushes. Bounded: one batch and one live drain.
    async fn flush_with_ready(&mut self) -> Result<(), End> {
        if let Some(done) = next_done(&mut self.in_flight).now_or_never() {
            self.on_batch_done(done).await?;
        }
        let item = self.live.as_mut().and_then(|rx| rx.try_recv().ok());
        if let Some(item) = item {
            self.on_live(Some(item)).await?;
        }
        self.flush().await
    }

    /// Drains what must not be lost (queued sends answered, acks recorded), then closes.
    async fn finish(&mut self, end: End) {
        self.closing = true;
        // Sends already handed to the store complete regardless; answering them lets a client
        // that is still listening skip a retry.
        while !self.in_flight.is_empty() {
            let done = next_done(&mut self.in_flight).await;
            let _ = self.on_batch_done(done).await;
        }
        if self.ack_wanted > self.ack_written {
            let _ = self
                .state
                .store
                .ack_cursor(self.device.id, self.ack_wanted)
                .await;
        } else if let Some(flight) = self.ack_flight.take() {
            let _ = flight.await;
        }
        if let End::Close(code, reason) = end {
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            };
            let limit = self.write_limit();
            let close = self.socket.send(WsMessage::Close(Some(frame)));
            let _ = bounded(&mut self.wedged, limit, close).await;
        }
        let limit = self.write_limit();
        let _ = bounded(&mut self.wedged, limit, self.socket.flush()).await;
    }

    /// How long one socket write may wait for the peer to read.
    fn write_limit(&self) -> Duration {
        if self.closing {
            Duration::from_millis(CLOSING_WRITE_MS)
        } else {
            silence_limit(&self.state)
        }
    }

    async fn write(&mut self, frame: &ServerFrame) -> Result<(), End> {
        let text = frame_text(frame)?;
        self.feed(text).await
    }

    /// Queues one text frame on the socket (written at the next flush, or now if the write
    /// buffer is full).
    async fn feed(&mut self, text: String) -> Result<(), End> {
        let limit = self.write_limit();
        let feed = self.socket.feed(WsMessage::Text(text.into()));
        bounded(&mut self.wedged, limit, feed).await
    }

    async fn flush(&mut self) -> Result<(), End> {
        self.unflushed = false;
        let limit = self.write_limit();
        bounded(&mut self.wedged, limit, self.socket.flush()).await
    }

    async fn on_socket(
        &mut self,
        frame: Option<Result<WsMessage, axum::Error>>,
    ) -> Result<(), End> {
        let msg = match frame {
            None => return Err(End::Gone),
            Some(Err(e)) => {
                // Oversized frames and protocol violations end here; tell the client why.
                tracing::debug!(error = %e, "websocket read failed");
                return Err(End::Close(1009, "frame too large or malformed"));
            }
            Some(Ok(m)) => m,
        };
        self.deadline = Instant::now() + silence_limit(&self.state);
        match msg {
            WsMessage::Text(text) => self.on_text(text.as_str()).await,
            WsMessage::Binary(_) => {
                self.reply_error(ErrorCode::BadFrame, "binary frames are not supported", None)
                    .await
            }
            WsMessage::Ping(_) | WsMessage::Pong(_) => Ok(()),
            WsMessage::Close(_) => Err(End::Gone),
        }
    }

    async fn on_text(&mut self, text: &str) -> Result<(), End> {
        let received = Instant::now();
        let frame: ClientFrame = match serde_json::from_str(text) {
            Ok(f) => f,
            Err(e) => {
                return self
                    .reply_error(
                        ErrorCode::BadFrame,
                        &format!("unparseable frame: {e}"),
                        None,
                    )
                    .await
            }
        };
        if costs_a_store_op(&frame) {
            self.pace_store_frame().await?;
        }
        match frame {
            ClientFrame::Ping => {
                self.write(&ServerFrame::Pong).await?;
                self.flush().await
            }
            ClientFrame::Sync { cursor } => self.on_sync(Cursor(cursor)).await,
            ClientFrame::Ack { cursor } => {
                // Never record more than this connection delivered: a client acking the future
                // would otherwise skip events on its next resume.
                let capped = Cursor(cursor).min(self.last_sent);
                self.ack_wanted = self.ack_wanted.max(capped);
                Ok(())
            }
            ClientFrame::Send {
                client_msg_id,
                conversation_id,
                text,
            } => {
                let queued = if !self.state.send_limits.try_take(self.device.id) {
                    metrics::counter!("magpie_ws_rate_limited_total").increment(1);
                    Queued::Answer(error_frame(
                        ErrorCode::RateLimited,
                        "too many sends; slow down",
                        Some(client_msg_id),
                    ))
                } else {
                    match build_request(
                        self.device.user_id,
                        conversation_id,
                        client_msg_id.clone(),
                        text,
                    ) {
                        Ok(req) => match self.may_send(conversation_id).await {
                            Ok(()) => Queued::Append {
                                client_msg_id,
                                req,
                                received,
                            },
                            Err(refusal) => {
                                let (sender, id) = (req.sender_id, &req.client_msg_id);
                                match stored_or_refused(&self.state, sender, id, refusal).await {
                                    Ok(m) => Queued::Answer(ServerFrame::Sent {
                                        client_msg_id,
                                        conversation_id: m.conversation_id,
                                        seq: m.seq.0,
                                        ts_ms: m.ts_ms,
                                        duplicate: true,
                                    }),
                                    Err(e) => {
                                        Queued::Answer(api_error_frame(e, Some(client_msg_id)))
                                    }
                                }
                            }
                        },
                        Err(e) => Queued::Answer(api_error_frame(e, Some(client_msg_id))),
                    }
                };
                self.queue.push_back(queued);
                Ok(())
            }
            ClientFrame::Pull {
                conversation_id,
                after_seq,
                limit,
            } => self.on_pull(conversation_id, after_seq, limit).await,
            ClientFrame::Read {
                conversation_id,
                seq,
            } => {
                match self
                    .state
                    .store
                    .mark_read(self.device.user_id, conversation_id, Seq(seq))
                    .await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => {
                        self.reply_conversation_error(conversation_id, group_error(e))
                            .await
                    }
                    Err(e) => {
                        self.reply_conversation_error(conversation_id, e.into())
                            .await
                    }
                }
            }
            ClientFrame::Typing { conversation_id } => self.on_typing(conversation_id).await,
        }
    }

    /// Waits, if this connection is over [`STORE_FRAMES_PER_SEC`], until its next store
    /// frame may be served. Kicks and shutdown still end the wait.
    async fn pace_store_frame(&mut self) -> Result<(), End> {
        let wait = self.store_frames.wait_for_token();
        if !wait.is_zero() {
            metrics::counter!("magpie_ws_store_frames_paced_total").increment(1);
            tokio::time::sleep(wait).await;
            self.interrupted()?;
        }
        self.store_frames.try_take();
        Ok(())
    }

    /// Direct conversations need friendship; the answer is cached until a friendship ends.
    async fn may_send(&mut self, conversation: ConversationId) -> Result<(), ApiError> {
        // Members only, checked here (cached until a membership changes) and again by the
        // store: an outsider's sends must not take the conversation's in-flight slots (the
        // gate) and so starve its members until the store refuses them.
        if self.joined_seq(conversation).await?.is_none() {
            return Err(ApiError::forbidden());
        }
        let epoch = self.state.friend_epoch.load(Ordering::Acquire);
        if self.send_ok.get(&conversation) == Some(&epoch) {
            return Ok(());
        }
        check_direct_allowed(&self.state, self.device.user_id, conversation).await?;
        if self.send_ok.len() >= SEND_OK_CACHE_MAX {
            self.send_ok.clear();
        }
        self.send_ok.insert(conversation, epoch);
        Ok(())
    }

    /// Refuses a frame about `conversation` (a `pull`, `read` or `typing`), naming it in the
    /// error.
    async fn reply_conversation_error(
        &mut self,
        conversation: ConversationId,
        e: ApiError,
    ) -> Result<(), End> {
        let frame = ServerFrame::Error {
            code: e.code,
            message: e.message,
            client_msg_id: None,
            conversation_id: Some(conversation),
        };
        self.write(&frame).await?;
        self.flush().await
    }

    /// `pull`: the conversation's messages after `after_seq` (never before the member joined).
    /// Fresh read-fan-out messages come from the recent-message cache; the rest from the store.
    async fn on_pull(
        &mut self,
        conversation_id: ConversationId,
        after_seq: u64,
        limit: Option<usize>,
    ) -> Result<(), End> {
        let limit = limit.unwrap_or(PAGE_LIMIT_DEFAULT);
        if limit == 0 || limit > PAGE_LIMIT_MAX {
            let msg = format!("limit must be 1 to {PAGE_LIMIT_MAX}");
            let e = ApiError::new(ErrorCode::InvalidRequest, msg);
            return self.reply_conversation_error(conversation_id, e).await;
        }
        let epoch = self.state.membership_epoch.load(Ordering::Acquire);
        let joined = match self.member_since(conversation_id).await {
            Ok(j) => j,
            Err(e) => return self.reply_conversation_error(conversation_id, e).await,
        };
        let after = Seq(after_seq.max(joined.0.saturating_sub(1)));
        let mut messages: Vec<_> = match self.state.recent.get(conversation_id, after, limit) {
            Some(mut cached) => {
                metrics::counter!("magpie_pulls_cached_total").increment(1);
                // The store's text bound, before the texts are copied into wire messages.
                cached.truncate(PageText::fitting(cached.iter().map(|m| m.text.len())));
                cached.iter().map(|m| message_to_wire(m)).collect()
            }
            None => match self
                .state
                .store
                .messages(conversation_id, MessageRange::After(after), limit)
                .await
            {
                Ok(m) => m.iter().map(message_to_wire).collect(),
                Err(e) => {
                    return self
                        .reply_conversation_error(conversation_id, e.into())
                        .await
                }
            },
        };
        // A member removed while we read may have had messages after the removal read along;
        // the epoch moves before such messages become readable, so recheck when it moved.
        if self.state.membership_epoch.load(Ordering::Acquire) != epoch {
            match self.member_since(conversation_id).await {
                Ok(now) => messages.retain(|m| m.seq >= now.0),
                Err(e) => return self.reply_conversation_error(conversation_id, e).await,
            }
        }
        let truncated = page::keep_first(&mut messages, page::message_bytes);
        self.write(&ServerFrame::Messages {
            conversation_id,
            messages,
            truncated,
        })
        .await?;
        self.flush().await
    }

    /// The caller's `joined_seq` in `conversation_id`; `forbidden` if not a member.
    async fn member_since(&mut self, conversation_id: ConversationId) -> Result<Seq, ApiError> {
        match self.joined_seq(conversation_id).await {
            Ok(Some(joined)) => Ok(joined),
            Ok(None) => Err(ApiError::forbidden()),
            Err(e) => Err(e.into()),
        }
    }

    /// The caller's `joined_seq` in a conversation (`None`: not a member), cached until any
    /// group membership changes.
    async fn joined_seq(
        &mut self,
        conversation_id: ConversationId,
    ) -> Result<Option<Seq>, StoreError> {
        let epoch = self.state.membership_epoch.load(Ordering::Acquire);
        if let Some((joined, at)) = self.joined.get(&conversation_id) {
            if *at == epoch {
                return Ok(Some(*joined));
            }
        }
        let Some(member) = self
            .state
            .store
            .member(conversation_id, self.device.user_id)
            .await?
        else {
            self.joined.remove(&conversation_id);
            return Ok(None);
        };
        if self.joined.len() >= SEND_OK_CACHE_MAX {
            self.joined.clear();
        }
        self.joined
            .insert(conversation_id, (member.joined_seq, epoch));
        Ok(Some(member.joined_seq))
    }

    /// `typing`: relayed to the other members' online devices in direct conversations and
    /// write-fan-out groups; read-fan-out groups are too large for it and ignore it.
    async fn on_typing(&mut self, conversation_id: ConversationId) -> Result<(), End> {
        // Per user, over all of the user's sockets: each typing frame reads the conversation's
        // members and fans out to all of them, so more sockets must not mean more frames.
        if !self.state.typing_limits.try_take(self.device.user_id) {
            return Ok(());
        }
        // Whoever may not send to a direct conversation (former friends) may not type there.
        if let Err(e) = self.may_send(conversation_id).await {
            return self.reply_conversation_error(conversation_id, e).await;
        }
        let me = self.device.user_id;
        let recipients = match typing_recipients(&self.state, conversation_id).await {
            Ok(r) => r,
            Err(e) => return self.reply_conversation_error(conversation_id, e).await,
        };
        let frame = ServerFrame::Typing {
            conversation_id,
            user_id: me,
        };
        let Ok(text) = serde_json::to_string(&frame) else {
            return Ok(());
        };
        let text: std::sync::Arc<str> = text.into();
        for user in recipients.into_iter().filter(|u| *u != me) {
            self.state.hub.send_frame(user, text.clone());
        }
        Ok(())
    }

    async fn reply_error(
        &mut self,
        code: ErrorCode,
        message: &str,
        id: Option<String>,
    ) -> Result<(), End> {
        self.write(&error_frame(code, message, id)).await?;
        self.flush().await
    }

    /// Streams every event after `cursor`, then switches to live delivery without a gap:
    /// live delivery starts first, and while catching up the live queue is drained and
    /// discarded, because everything it held was durable before it was queued and so is
    /// covered by the next store read.
    async fn on_sync(&mut self, cursor: Cursor) -> Result<(), End> {
        // A cursor beyond the inbox head would make the connection skip future events as
        // "already sent"; refuse it instead of guessing.
        let head = match self.state.store.inbox_head(self.device.user_id).await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "reading inbox head failed");
                return Err(End::Close(CLOSE_SERVER_ERROR, "storage failure"));
            }
        };
        if cursor > head {
            let msg = format!("cursor {cursor} is ahead of the inbox head {head}");
            return self
                .reply_error(ErrorCode::InvalidRequest, &msg, None)
                .await;
        }
        let (tx, rx) = mpsc::channel(DEVICE_QUEUE_EVENTS_MAX);
        self.reg.go_live(tx);
        let mut rx = rx;
        self.last_sent = cursor;
        loop {
            // Events are covered by the store read below; ephemeral frames may be dropped;
            // notifications stay in the notify box, flushed after catch-up.
            while rx.try_recv().is_ok() {}
            let page = self.read_events(CATCH_UP_PAGE_EVENTS).await?;
            // A page also ends early when its text passed the store's bound; more follow then.
            let full = page.len() == CATCH_UP_PAGE_EVENTS
                || PageText::stopped(page.iter().map(Event::text_bytes));
            for event in &page {
                self.send_event(event, None).await?;
            }
            self.flush().await?;
            // Catch-up runs inside one turn of the select loop, which cannot watch for kicks
            // (a logout) or shutdown meanwhile: look for them between pages. The client's
            // frames wait unread meanwhile, so its silence does not count against it.
            self.interrupted()?;
            self.deadline = Instant::now() + silence_limit(&self.state);
            if !full {
                break;
            }
        }
        self.live = Some(rx);
        self.write_notifies().await?;
        self.flush().await
    }

    /// A kick or a shutdown that arrived while the connection was busy outside its select
    /// loop.
    fn interrupted(&self) -> Result<(), End> {
        if let Some(code) = self.reg.kick.code() {
            return Err(End::Close(code, "kicked"));
        }
        if self.state.shutdown.is_cancelled() {
            return Err(End::Close(CLOSE_SHUTDOWN, "server shutting down"));
        }
        Ok(())
    }

    /// Writes one `notify` frame per conversation waiting in the notify box.
    async fn write_notifies(&mut self) -> Result<(), End> {
        for (conversation_id, last_seq) in self.reg.notify_box.take() {
            self.write(&ServerFrame::Notify {
                conversation_id,
                last_seq: last_seq.0,
            })
            .await?;
        }
        Ok(())
    }

    async fn read_events(&mut self, limit: usize) -> Result<Vec<Event>, End> {
        match self
            .state
            .store
            .events(self.device.user_id, self.last_sent, limit)
            .await
        {
            Ok(events) => Ok(events),
            Err(e) => {
                tracing::error!(error = %e, "reading inbox failed");
                Err(End::Close(CLOSE_SERVER_ERROR, "storage failure"))
            }
        }
    }

    /// Writes one event. A live message event comes with the message's JSON cell shared by
    /// all its recipients; the first to get here fills it.
    async fn send_event(
        &mut self,
        event: &Event,
        shared: Option<&SharedMessageJson>,
    ) -> Result<(), End> {
        debug_assert_eq!(
            event.cursor,
            self.last_sent.next(),
            "events must be sent gap-free"
        );
        let text = match (&event.payload, shared) {
            (EventPayload::Message(m), Some(cell)) => {
                let json = cell.get_or_init(|| {
                    message_json(&message_to_wire(m))
                        .ok()
                        .map(String::into_boxed_str)
                });
                let Some(json) = json else {
                    return Err(End::Gone);
                };
                message_event_frame(event.cursor.0, json)
            }
            _ => frame_text(&ServerFrame::Event(event_to_wire(event)))?,
        };
        self.feed(text).await?;
        self.last_sent = event.cursor;
        self.state.hot_metrics.events_delivered.increment(1);
        Ok(())
    }

    /// Delivers one live item (plus whatever else is queued), filling event gaps from the store.
    async fn on_live(&mut self, item: Option<Outbound>) -> Result<(), End> {
        let Some(first) = item else {
            // The hub dropped our queue (overflow); the kick that follows closes us.
            self.live = None;
            return Ok(());
        };
        let mut next = Some(first);
        let mut written = 0;
        while let Some(item) = next.take() {
            match item {
                Outbound::Event(live) => self.deliver(&live).await?,
                Outbound::NotifyWake => self.write_notifies().await?,
                Outbound::Frame(text) => self.feed(text.as_ref().into()).await?,
            }
            written += 1;
            if written < LIVE_DRAIN_EVENTS_MAX {
                next = self.live.as_mut().and_then(|rx| rx.try_recv().ok());
            }
        }
        self.unflushed = true;
        Ok(())
    }

    async fn deliver(&mut self, live: &LiveEvent) -> Result<(), End> {
        let event = &live.event;
        if event.cursor <= self.last_sent {
            return Ok(());
        }
        while event.cursor > self.last_sent.next() {
            let missing = (event.cursor.0 - self.last_sent.0 - 1) as usize;
            let page = self.read_events(missing.min(CATCH_UP_PAGE_EVENTS)).await?;
            if page.is_empty() {
                tracing::error!(cursor = %event.cursor, last = %self.last_sent, "inbox gap not readable");
                return Err(End::Close(CLOSE_SERVER_ERROR, "inbox gap"));
            }
            for e in page.iter().filter(|e| e.cursor < event.cursor) {
                self.send_event(e, None).await?;
            }
        }
        self.send_event(event, live.message_json.as_ref()).await
    }

    /// Submits everything queued as one store batch, if no batch is in flight. Each send
    /// passes the conversation gate first; a send to a conversation at its in-flight bound is
    /// answered `rate_limited` in its place in line.
    fn start_batch(&mut self) {
        if self.in_flight.len() >= IN_FLIGHT_BATCHES_MAX || self.queue.is_empty() {
            return;
        }
        let mut permits = Vec::new();
        let items: Vec<Queued> = self
            .queue
            .drain(..)
            .map(|q| match q {
                Queued::Append {
                    client_msg_id,
                    req,
                    received,
                } => match self.state.gate.try_enter(req.conversation_id) {
                    Some(p) => {
                        permits.push(p);
                        Queued::Append {
                            client_msg_id,
                            req,
                            received,
                        }
                    }
                    None => Queued::Answer(error_frame(
                        ErrorCode::RateLimited,
                        "conversation is busy; retry shortly",
                        Some(client_msg_id),
                    )),
                },
                answer => answer,
            })
            .collect();
        let requests: Vec<_> = items
            .iter()
            .filter_map(|q| match q {
                Queued::Append { req, .. } => Some(req.clone()),
                Queued::Answer(_) => None,
            })
            .collect();
        let store = self.state.store.clone();
        let append_seconds = self.state.hot_metrics.append_seconds.clone();
        let flight: InFlight = Box::pin(async move {
            let result = if requests.is_empty() {
                Ok(Vec::new())
            } else {
                let started = Instant::now();
                let result = store.append(requests).await;
                append_seconds.record(started.elapsed().as_secs_f64());
                result
            };
            (items, result, permits)
        });
        self.in_flight.push_back(Flight::Running(flight));
        self.poll_in_order();
    }

    /// Polls every running batch once, oldest first, so that the new one enters the store's
    /// queue now (`Store::append` orders batches by the poll in which they enter it).
    ///
    /// A batch may fail to enter at its first poll (the queue is full, or the task's
    /// cooperative budget is spent and tokio's channel defers the push), and then enters at a
    /// later poll. Only two places poll batches: this pass, which always polls the older ones
    /// first in the same task poll, and [`next_done`], which polls only the oldest. So a batch
    /// can never enter the queue ahead of an older one: in one pass an older batch either
    /// entered, or is queued ahead for a slot (tokio's channel hands slots out in order), or
    /// was deferred by the same spent budget that defers every later one.
    fn poll_in_order(&mut self) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        for flight in self.in_flight.iter_mut() {
            let ready = match flight {
                Flight::Running(f) => match f.as_mut().poll(&mut cx) {
                    Poll::Ready(done) => Some(done),
                    Poll::Pending => None,
                },
                Flight::Done(_) => None,
            };
            if let Some(done) = ready {
                *flight = Flight::Done(done);
            }
        }
    }

    /// Records the newest acknowledged cursor, one write at a time per connection.
    fn start_ack(&mut self) {
        if self.ack_flight.is_some() || self.ack_wanted <= self.ack_written {
            return;
        }
        let (store, device, cursor) = (self.state.store.clone(), self.device.id, self.ack_wanted);
        self.ack_flight = Some(Box::pin(async move {
            store.ack_cursor(device, cursor).await.map(|()| cursor)
        }));
    }

    /// An ack write finished. A refused one ends the connection: retrying at once would spin
    /// (a store that refuses writes answers without waiting), and the client resends its
    /// ack after reconnecting with backoff, so nothing is lost.
    fn on_ack_written(&mut self, acked: Result<Cursor, StoreError>) -> Result<(), End> {
        match acked {
            Ok(cursor) => {
                self.ack_written = self.ack_written.max(cursor);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "recording ack failed; closing the connection");
                Err(End::Close(CLOSE_SERVER_ERROR, "storage failure"))
            }
        }
    }

    /// Answers a finished batch in the order of the client's sends.
    async fn on_batch_done(
        &mut self,
        (items, result, permits): (Vec<Queued>, BatchResult, Vec<GatePermit>),
    ) -> Result<(), End> {
        // The gate admits the next sends as soon as these are durable.
        drop(permits);
        let mut outcomes = match result {
            Ok(v) => v.into_iter(),
            Err(e) => {
                tracing::error!(error = %e, "append batch failed");
                let frames: Vec<ServerFrame> = items
                    .into_iter()
                    .map(|q| match q {
                        Queued::Answer(f) => f,
                        Queued::Append { client_msg_id, .. } => {
                            api_error_frame(ApiError::from(e.clone()), Some(client_msg_id))
                        }
                    })
                    .collect();
                for f in &frames {
                    self.write(f).await?;
                }
                return self.flush().await;
            }
        };
        for item in items {
            let text = match item {
                Queued::Answer(f) => frame_text(&f)?,
                Queued::Append {
                    client_msg_id,
                    received,
                    ..
                } => match outcomes.next() {
                    Some(Ok(a)) => {
                        let hot = &self.state.hot_metrics;
                        hot.messages_sent.increment(1);
                        hot.send_ack_seconds
                            .record(received.elapsed().as_secs_f64());
                        let m = &a.message;
                        sent_frame(
                            &client_msg_id,
                            m.conversation_id,
                            m.seq.0,
                            m.ts_ms,
                            a.duplicate,
                        )
                        .map_err(|_| End::Gone)?
                    }
                    Some(Err(e)) => {
                        frame_text(&api_error_frame(append_error(e), Some(client_msg_id)))?
                    }
                    None => frame_text(&error_frame(
                        ErrorCode::Internal,
                        "missing append result",
                        Some(client_msg_id),
                    ))?,
                },
            };
            self.feed(text).await?;
        }
        self.unflushed = true;
        Ok(())
    }
}

/// The JSON text of `frame`; a frame that cannot be serialized ends the connection.
fn frame_text(frame: &ServerFrame) -> Result<String, End> {
    serde_json::to_string(frame).map_err(|_| End::Gone)
}

fn error_frame(code: ErrorCode, message: &str, client_msg_id: Option<String>) -> ServerFrame {
    ServerFrame::Error {
        code,
        message: message.to_owned(),
        client_msg_id,
        conversation_id: None,
    }
}

fn api_error_frame(e: ApiError, client_msg_id: Option<String>) -> ServerFrame {
    ServerFrame::Error {
        code: e.code,
        message: e.message,
        client_msg_id,
        conversation_id: None,
    }
}

/// Waits for the oldest batch of `queue` to finish and removes it; pending forever when
/// empty. Cancel-safe: nothing is removed unless its outcome is returned.
async fn next_done(queue: &mut VecDeque<Flight>) -> BatchOutcome {
    loop {
        match queue.front_mut() {
            None => return std::future::pending().await,
            Some(Flight::Running(f)) => {
                let done = f.await;
                queue.pop_front();
                return done;
            }
            Some(Flight::Done(_)) => {
                if let Some(Flight::Done(done)) = queue.pop_front() {
                    return done;
                }
            }
        }
    }
}

/// Runs a socket write, giving up after `limit`: a peer that stops reading fills the socket's
/// buffers, and a write waiting on it forever would hold the connection (and its buffers)
/// with nothing watching its heartbeat, kicks or shutdown. The usual write completes at its
/// first poll and arms no timer.
async fn within<F: Future>(limit: Duration, write: F) -> Option<F::Output> {
    let mut write = std::pin::pin!(write);
    if let Some(out) = (&mut write).now_or_never() {
        return Some(out);
    }
    tokio::time::timeout(limit, write).await.ok()
}

/// One socket write of a connection: none once an earlier one timed out (`wedged`), at most
/// `limit` otherwise, and a timeout marks the connection wedged.
async fn bounded<F>(wedged: &mut bool, limit: Duration, write: F) -> Result<(), End>
where
    F: Future<Output = Result<(), axum::Error>>,
{
    if *wedged {
        return Err(End::Gone);
    }
    match within(limit, write).await {
        Some(Ok(())) => Ok(()),
        Some(Err(_)) => Err(End::Gone),
        None => {
            *wedged = true;
            Err(End::Gone)
        }
    }
}

/// Polls an optional future; pending forever when absent (a disabled `select!` branch).
async fn poll_opt<T>(slot: &mut Option<Pin<Box<dyn Future<Output = T> + Send>>>) -> T {
    match slot.as_mut() {
        Some(f) => {
            let out = f.await;
            *slot = None;
            out
        }
        None => std::future::pending().await,
    }
}

/// Receives from an optional channel; pending forever when absent.
async fn recv_opt(rx: &mut Option<mpsc::Receiver<Outbound>>) -> Option<Outbound> {
    match rx.as_mut() {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// `sync`, `pull` and `read`: the frames that cost a store read or a writer op.
fn costs_a_store_op(frame: &ClientFrame) -> bool {
    matches!(
        frame,
        ClientFrame::Sync { .. } | ClientFrame::Pull { .. } | ClientFrame::Read { .. }
    )
}

/// Who gets a `typing` frame: the members of a direct conversation or write-fan-out group
/// (the caller skips itself). Read-fan-out groups are too large for typing indicators. The
/// caller has checked that `me` is a member (`Conn::may_send`, cached per connection).
async fn typing_recipients(
    state: &AppState,
    conversation_id: ConversationId,
) -> Result<Vec<UserId>, ApiError> {
    let store = &state.store;
    let conv = store
        .conversation(conversation_id)
        .await?
        .ok_or_else(ApiError::forbidden)?;
    if conv.kind == ConversationKind::Direct {
        // A direct conversation's two members never change: its own row names them.
        return Ok(conv.members);
    }
    let policy = state.config.policy;
    if !policy.writes_fanout(conv.member_count) {
        return Ok(Vec::new());
    }
    let members = store
        .members(conversation_id, None, policy.fanout_write_max as usize + 1)
        .await?;
    Ok(members.into_iter().map(|m| m.user_id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn returned_size<A, B, C, F>(_f: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every idle socket holds one of these futures (plus the boxed `Conn`). It was 2,928
    /// bytes (debug and release builds alike) before the connection and the frame handlers
    /// were boxed, and is 872 after.
    const CONN_FUTURE_BYTES_MAX: usize = 1_024;

    #[test]
    fn the_future_of_a_connection_stays_small() {
        let size = returned_size(run);
        eprintln!("connection future: {size} bytes");
        assert!(size <= CONN_FUTURE_BYTES_MAX, "{size} bytes");
    }
}
