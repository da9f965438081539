//! Session behaviour the real server rarely shows on demand (gaps, resync closes, rate
//! limits, silent connections), driven by a scripted fake server.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use magpie_core::{ConversationId, DeviceId, UserId};
use magpie_protocol::close::CLOSE_RESYNC;
use magpie_protocol::http::SyncPage;
use magpie_protocol::social::{ConversationList, ConversationRow};
use magpie_protocol::ws::{ClientFrame, EventBody, ServerFrame, WireEvent, WireMessage};
use magpie_protocol::ErrorCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{Session, SessionConfig, SessionEvent};
use crate::{Client, MemoryCursorStore};

const WAIT: Duration = Duration::from_secs(10);

type ServerWs = WebSocketStream<TcpStream>;

/// Accepts WebSockets (handed to the test) and answers `GET /v1/sync` from `inbox`.
struct FakeServer {
    base_url: String,
    sockets: mpsc::Receiver<ServerWs>,
    inbox: Arc<Mutex<Vec<WireEvent>>>,
    sync_calls: Arc<Mutex<Vec<u64>>>,
    /// What `GET /v1/conversations` answers.
    rows: Arc<Mutex<ConversationList>>,
    /// How many more `GET /v1/conversations` answer 503 before answering `rows`.
    list_failures: Arc<std::sync::atomic::AtomicU32>,
}

impl FakeServer {
    async fn start() -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, sockets) = mpsc::channel(8);
        let inbox = Arc::new(Mutex::new(Vec::new()));
        let sync_calls = Arc::new(Mutex::new(Vec::new()));
        let rows = Arc::new(Mutex::new(ConversationList {
            conversations: Vec::new(),
        }));
        let (inbox2, calls2, rows2) = (inbox.clone(), sync_calls.clone(), rows.clone());
        let list_failures = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let failures2 = list_failures.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let head = peek_head(&tcp).await.to_ascii_lowercase();
                if head.contains("upgrade: websocket") {
                    let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
                    let _ = tx.send(ws).await;
                } else if head.starts_with("get /v1/conversations") {
                    let fail = failures2
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    if fail {
                        let body = r#"{"error":{"code":"unavailable","message":"busy"}}"#;
                        answer(tcp, &head, "503 Service Unavailable", body).await;
                    } else {
                        let body = serde_json::to_string(&*rows2.lock().unwrap()).unwrap();
                        answer_json(tcp, &head, &body).await;
                    }
                } else {
                    answer_sync(tcp, &head, &inbox2, &calls2).await;
                }
            }
        });
        FakeServer {
            base_url,
            sockets,
            inbox,
            sync_calls,
            rows,
            list_failures,
        }
    }

    async fn accept(&mut self) -> ServerWs {
        tokio::time::timeout(WAIT, self.sockets.recv())
            .await
            .expect("no connection")
            .unwrap()
    }

    fn session(&self, config: SessionConfig) -> (Session, mpsc::Receiver<SessionEvent>) {
        let client = Client::new(&self.base_url).unwrap().with_token("tok");
        Session::start(client, Arc::new(MemoryCursorStore::new()), config).unwrap()
    }
}

async fn peek_head(tcp: &TcpStream) -> String {
    let mut buf = [0u8; 4096];
    loop {
        let n = tcp.peek(&mut buf).await.unwrap();
        let head = String::from_utf8_lossy(&buf[..n]).into_owned();
        if head.contains("\r\n\r\n") || n == buf.len() {
            return head;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn answer_sync(
    tcp: TcpStream,
    head: &str,
    inbox: &Mutex<Vec<WireEvent>>,
    calls: &Mutex<Vec<u64>>,
) {
    let after: u64 = head
        .split("cursor=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|d| d.parse().ok())
        .unwrap_or(0);
    calls.lock().unwrap().push(after);
    let events: Vec<_> = inbox
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.cursor > after)
        .cloned()
        .collect();
    let next_cursor = events.last().map_or(after, |e| e.cursor);
    let body = serde_json::to_string(&SyncPage {
        events,
        next_cursor,
    })
    .unwrap();
    answer_json(tcp, head, &body).await;
}

/// Answers one HTTP request (whose head was peeked) with a JSON body.
async fn answer_json(tcp: TcpStream, head: &str, body: &str) {
    answer(tcp, head, "200 OK", body).await;
}

/// Answers one HTTP request (whose head was peeked) with `status` and a JSON body.
async fn answer(mut tcp: TcpStream, head: &str, status: &str, body: &str) {
    let mut buf = vec![0u8; head.len()];
    let _ = tcp.read_exact(&mut buf).await;
    let resp = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tcp.write_all(resp.as_bytes()).await;
}

fn event(cursor: u64) -> WireEvent {
    WireEvent {
        cursor,
        body: EventBody::Message {
            message: WireMessage {
                conversation_id: ConversationId(1),
                seq: cursor,
                sender_id: UserId(2),
                client_msg_id: format!("m{cursor}"),
                text: format!("text {cursor}"),
                ts_ms: 1,
                kind: "text".into(),
                system: None,
            },
        },
    }
}

async fn push(ws: &mut ServerWs, frame: ServerFrame) {
    ws.send(Message::text(serde_json::to_string(&frame).unwrap()))
        .await
        .unwrap();
}

async fn ready(ws: &mut ServerWs, cursor: u64, heartbeat_ms: u64) {
    let frame = ServerFrame::Ready {
        user_id: UserId(1),
        device_id: DeviceId(1),
        cursor,
        heartbeat_ms,
        // The scripts push events beyond any cursor they name: no head to hold them to, as
        // from a server too old to send one.
        inbox_head: None,
    };
    push(ws, frame).await;
}

/// The next client frame other than `ping`.
async fn recv(ws: &mut ServerWs) -> ClientFrame {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no frame")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            let frame: ClientFrame = serde_json::from_str(&t).unwrap();
            if frame != ClientFrame::Ping {
                return frame;
            }
        }
    }
}

async fn next_where(
    rx: &mut mpsc::Receiver<SessionEvent>,
    mut pred: impl FnMut(&SessionEvent) -> bool,
) -> SessionEvent {
    loop {
        let e = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("no event")
            .expect("ended");
        if pred(&e) {
            return e;
        }
    }
}

/// The seqs of the next `n` messages (in these scripts a message's seq equals its cursor).
async fn cursors(rx: &mut mpsc::Receiver<SessionEvent>, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    while out.len() < n {
        if let SessionEvent::Message(m) =
            next_where(rx, |e| matches!(e, SessionEvent::Message(_))).await
        {
            out.push(m.seq);
        }
    }
    out
}

#[tokio::test]
async fn live_gap_is_filled_over_http_and_duplicates_dropped() {
    let mut server = FakeServer::start().await;
    server.inbox.lock().unwrap().extend((1..=5).map(event));
    let (_session, mut rx) = server.session(SessionConfig::default());
    let mut ws = server.accept().await;
    ready(&mut ws, 0, 30_000).await;
    assert_eq!(recv(&mut ws).await, ClientFrame::Sync { cursor: 0 });
    for c in [1, 4, 5, 3, 1] {
        push(&mut ws, ServerFrame::Event(event(c))).await;
    }
    assert_eq!(cursors(&mut rx, 5).await, [1, 2, 3, 4, 5]);
    assert_eq!(
        *server.sync_calls.lock().unwrap(),
        [1],
        "one HTTP fetch after cursor 1"
    );
    // Nothing else arrives: the late 3 and 1 were dropped.
    push(&mut ws, ServerFrame::Event(event(6))).await;
    assert_eq!(cursors(&mut rx, 1).await, [6]);
}

#[tokio::test]
async fn resync_close_reconnects_resumes_and_resends_with_the_same_id() {
    let mut server = FakeServer::start().await;
    let config = SessionConfig {
        backoff_cap_ms: 50,
        ..SessionConfig::default()
    };
    let (session, mut rx) = server.session(config);
    let id = session.send(ConversationId(1), "hello").unwrap();

    let mut ws = server.accept().await;
    ready(&mut ws, 0, 30_000).await;
    assert_eq!(recv(&mut ws).await, ClientFrame::Sync { cursor: 0 });
    let first = recv(&mut ws).await;
    assert!(matches!(&first, ClientFrame::Send { client_msg_id, .. } if *client_msg_id == id));
    push(&mut ws, ServerFrame::Event(event(1))).await;
    assert_eq!(cursors(&mut rx, 1).await, [1]);
    // The server stored the send but the client is cut off before the `sent` frame.
    let close = CloseFrame {
        code: CloseCode::from(CLOSE_RESYNC),
        reason: "behind".into(),
    };
    ws.close(Some(close)).await.unwrap();
    match next_where(&mut rx, |e| matches!(e, SessionEvent::Disconnected { .. })).await {
        SessionEvent::Disconnected { reason, .. } => assert!(reason.contains("4000"), "{reason}"),
        _ => unreachable!(),
    }

    let mut ws = server.accept().await;
    ready(&mut ws, 0, 30_000).await;
    assert_eq!(
        recv(&mut ws).await,
        ClientFrame::Sync { cursor: 1 },
        "resumes after delivered"
    );
    assert_eq!(recv(&mut ws).await, first, "same frame, same client_msg_id");
    let sent = ServerFrame::Sent {
        client_msg_id: id.clone(),
        conversation_id: ConversationId(1),
        seq: 7,
        ts_ms: 1,
        duplicate: true,
    };
    push(&mut ws, sent).await;
    let e = next_where(&mut rx, |e| matches!(e, SessionEvent::Sent { .. })).await;
    assert!(matches!(
        e,
        SessionEvent::Sent {
            seq: 7,
            duplicate: true,
            ..
        }
    ));
    assert_eq!(session.pending_sends(), 0);
}

#[tokio::test]
async fn rate_limited_sends_are_retried_not_failed() {
    let mut server = FakeServer::start().await;
    let (session, mut rx) = server.session(SessionConfig::default());
    let mut ws = server.accept().await;
    ready(&mut ws, 0, 30_000).await;
    recv(&mut ws).await; // sync
    let id = session.send(ConversationId(1), "hi").unwrap();
    let frame = recv(&mut ws).await;
    let error = ServerFrame::Error {
        code: ErrorCode::RateLimited,
        message: "slow down".into(),
        client_msg_id: Some(id.clone()),
        conversation_id: None,
    };
    push(&mut ws, error).await;
    assert_eq!(recv(&mut ws).await, frame, "re-sent after a pause");
    let error = ServerFrame::Error {
        code: ErrorCode::MessageTooLong,
        message: "no".into(),
        client_msg_id: Some(id.clone()),
        conversation_id: None,
    };
    push(&mut ws, error).await;
    let e = next_where(&mut rx, |e| {
        matches!(
            e,
            SessionEvent::SendFailed { .. } | SessionEvent::Sent { .. }
        )
    })
    .await;
    assert!(matches!(
        e,
        SessionEvent::SendFailed {
            code: ErrorCode::MessageTooLong,
            ..
        }
    ));
    assert_eq!(session.pending_sends(), 0);
}

#[tokio::test]
async fn pings_at_half_heartbeat_and_silence_means_dead() {
    let mut server = FakeServer::start().await;
    let config = SessionConfig {
        backoff_cap_ms: 50,
        ..SessionConfig::default()
    };
    let (_session, mut rx) = server.session(config);
    let mut ws = server.accept().await;
    let started = tokio::time::Instant::now();
    ready(&mut ws, 0, 200).await;
    let mut pings = 0;
    // Read (so pings are seen) but never answer: the client must give up after ~600 ms.
    let reason = loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) if t.as_str().contains("ping") => pings += 1,
                Some(Ok(_)) => {}
                _ => {}
            },
            e = next_where(&mut rx, |e| matches!(e, SessionEvent::Disconnected { .. })) => {
                break e;
            }
        }
    };
    let elapsed = started.elapsed();
    assert!(
        matches!(&reason, SessionEvent::Disconnected { reason, .. } if reason.contains("no frame"))
    );
    assert!(elapsed >= Duration::from_millis(550), "{elapsed:?}");
    assert!(pings >= 3, "about every 100 ms: {pings}");
    // And it comes back.
    let mut ws = server.accept().await;
    ready(&mut ws, 0, 30_000).await;
    assert_eq!(recv(&mut ws).await, ClientFrame::Sync { cursor: 0 });
}

#[tokio::test]
async fn close_returns_while_the_app_is_not_reading_and_acks_what_was_handed_over() {
    let mut server = FakeServer::start().await;
    let store = Arc::new(MemoryCursorStore::new());
    let client = Client::new(&server.base_url).unwrap().with_token("tok");
    let config = SessionConfig {
        event_buffer: 1,
        ..SessionConfig::default()
    };
    let (session, rx) = Session::start(client, store.clone(), config).unwrap();
    let mut ws = server.accept().await;
    ready(&mut ws, 0, 30_000).await;
    recv(&mut ws).await; // sync
    for c in 1..=5 {
        push(&mut ws, ServerFrame::Event(event(c))).await;
    }
    // Connected and event 1 fill the channel (the sender waits for space); nobody reads.
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::time::timeout(WAIT, session.close())
        .await
        .expect("close deadlocked");
    drop(rx);
    let persisted = crate::CursorStore::load(&*store).unwrap();
    assert!(
        matches!(persisted, None | Some(0..=1)),
        "only handed-over events count: {persisted:?}"
    );
}

fn message(conversation: u64, seq: u64) -> WireMessage {
    WireMessage {
        conversation_id: ConversationId(conversation),
        seq,
        sender_id: UserId(2),
        client_msg_id: format!("m{conversation}-{seq}"),
        text: format!("{conversation}/{seq}"),
        ts_ms: 1,
        kind: "text".into(),
        system: None,
    }
}

fn row(conversation: u64, last_seq: u64, fanout: &str) -> ConversationRow {
    ConversationRow {
        conversation_id: ConversationId(conversation),
        kind: "group".into(),
        name: "g".into(),
        peer_id: None,
        member_count: 600,
        fanout: fanout.into(),
        receipts: String::new(),
        last_seq,
        last_message: None,
        read_seq: 0,
        unread_count: 0,
        muted: false,
    }
}

/// The next `n` messages as `conversation/seq` texts.
async fn texts(rx: &mut mpsc::Receiver<SessionEvent>, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    while out.len() < n {
        if let SessionEvent::Message(m) =
            next_where(rx, |e| matches!(e, SessionEvent::Message(_))).await
        {
            out.push(m.text);
        }
    }
    out
}

async fn answer_pull(ws: &mut ServerWs, conversation: u64, seqs: std::ops::RangeInclusive<u64>) {
    let frame = ServerFrame::Messages {
        conversation_id: ConversationId(conversation),
        messages: seqs.map(|s| message(conversation, s)).collect(),
        truncated: false,
    };
    push(ws, frame).await;
}

fn pull_frame(conversation: u64, after_seq: u64) -> ClientFrame {
    ClientFrame::Pull {
        conversation_id: ConversationId(conversation),
        after_seq,
        limit: Some(crate::PULL_PAGE_DEFAULT),
    }
}

#[tokio::test]
async fn pulls_are_not_given_up_while_the_server_has_not_read_them() {
    let mut server = FakeServer::start().await;
    let config = SessionConfig {
        tracker: crate::TrackerLimits {
            pull_timeout: Duration::from_millis(100),
            ..crate::TrackerLimits::default()
        },
        ..SessionConfig::default()
    };
    let (_session, mut rx) = server.session(config);
    let mut ws = server.accept().await;
    ready(&mut ws, 0, 2_000).await; // a ping every second
    assert_eq!(recv(&mut ws).await, ClientFrame::Sync { cursor: 0 });
    let event = |cursor, m| {
        ServerFrame::Event(WireEvent {
            cursor,
            body: EventBody::Message { message: m },
        })
    };
    push(&mut ws, event(1, message(7, 1))).await;
    push(&mut ws, event(2, message(7, 3))).await; // 2 is missing: a pull goes out
                                                  // The server is busy (replaying a long inbox, say) and reads no frame for a second: no
                                                  // pong and no pull answer, though its events keep coming. Ten pull timeouts pass.
    for cursor in 3..=12 {
        push(&mut ws, event(cursor, message(8, cursor))).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then it reads the pulls and answers.
    answer_pull(&mut ws, 7, 2..=3).await;
    let got = texts(&mut rx, 13).await;
    let seven: Vec<&str> = got
        .iter()
        .map(String::as_str)
        .filter(|t| t.starts_with("7/"))
        .collect();
    assert_eq!(seven, ["7/1", "7/2", "7/3"], "nothing skipped: {got:?}");
}

#[tokio::test]
async fn a_late_pong_answers_its_own_ping_not_a_newer_one() {
    let mut server = FakeServer::start().await;
    let config = SessionConfig {
        tracker: crate::TrackerLimits {
            pull_timeout: Duration::from_millis(1_000),
            ..crate::TrackerLimits::default()
        },
        ..SessionConfig::default()
    };
    let (_session, mut rx) = server.session(config);
    let mut ws = server.accept().await;
    ready(&mut ws, 0, 100).await; // a ping every 50 ms: 16 of them in less than a pull timeout
    assert_eq!(recv(&mut ws).await, ClientFrame::Sync { cursor: 0 });
    let event = |cursor, m| {
        ServerFrame::Event(WireEvent {
            cursor,
            body: EventBody::Message { message: m },
        })
    };
    push(&mut ws, event(1, message(7, 1))).await;
    tokio::time::sleep(Duration::from_millis(200)).await; // pings go out before the pull
    push(&mut ws, event(2, message(7, 3))).await; // 2 is missing: a pull goes out
                                                  // The server is busy for 4.5 s: its events keep the connection alive, and now and then
                                                  // it answers one of the first pings, all written before the pull. Those pongs must not
                                                  // pass for pongs of pings written after the (re-issued) pulls, which would make the
                                                  // unanswered pulls count and the gap be skipped.
    let mut cursor = 2;
    for round in 1..=90 {
        cursor += 1;
        push(&mut ws, event(cursor, message(8, cursor))).await;
        // Just before each pull timeout (the pull went out at about 0.2 s, then every 1 s).
        if round % 20 == 18 {
            push(&mut ws, ServerFrame::Pong).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    answer_pull(&mut ws, 7, 2..=3).await;
    let got = texts(&mut rx, 1 + 90 + 2).await;
    let seven: Vec<&str> = got
        .iter()
        .map(String::as_str)
        .filter(|t| t.starts_with("7/"))
        .collect();
    assert_eq!(seven, ["7/1", "7/2", "7/3"], "nothing skipped");
}

#[tokio::test]
async fn a_failed_catch_up_is_fetched_again() {
    let mut server = FakeServer::start().await;
    // A read-fan-out group with two messages this device never saw; the list fails twice.
    server.rows.lock().unwrap().conversations = vec![row(7, 2, "read")];
    server.list_failures.store(2, Ordering::SeqCst);
    let (_session, mut rx) = server.session(SessionConfig::default());
    let mut ws = server.accept().await;
    ready(&mut ws, 0, 30_000).await;
    assert_eq!(recv(&mut ws).await, ClientFrame::Sync { cursor: 0 });
    assert_eq!(
        recv(&mut ws).await,
        pull_frame(7, 0),
        "the third fetch succeeds"
    );
    assert_eq!(server.list_failures.load(Ordering::SeqCst), 0);
    answer_pull(&mut ws, 7, 1..=2).await;
    assert_eq!(texts(&mut rx, 2).await, ["7/1", "7/2"]);
}

#[tokio::test]
async fn notifies_pulls_catch_up_and_inbox_events_make_one_ordered_stream() {
    let mut server = FakeServer::start().await;
    // Conversation 7 is a read-fan-out group with two messages this device never saw.
    server.rows.lock().unwrap().conversations = vec![row(7, 2, "read"), row(8, 5, "write")];
    let (session, mut rx) = server.session(SessionConfig::default());
    let mut ws = server.accept().await;
    ready(&mut ws, 0, 30_000).await;
    assert_eq!(recv(&mut ws).await, ClientFrame::Sync { cursor: 0 });

    // Catch-up: the unknown read-fan-out group is pulled from its beginning; the unknown
    // write-fan-out one is left to the inbox replay.
    assert_eq!(recv(&mut ws).await, pull_frame(7, 0));
    answer_pull(&mut ws, 7, 1..=2).await;
    assert_eq!(texts(&mut rx, 2).await, ["7/1", "7/2"]);

    // Live notifies are answered by one pull after what was delivered.
    let notify = |last_seq| ServerFrame::Notify {
        conversation_id: ConversationId(7),
        last_seq,
    };
    push(&mut ws, notify(3)).await;
    assert_eq!(recv(&mut ws).await, pull_frame(7, 2));
    push(&mut ws, notify(4)).await; // coalesced into the pull in flight
    answer_pull(&mut ws, 7, 3..=4).await;
    assert_eq!(texts(&mut rx, 2).await, ["7/3", "7/4"]);

    // The group shrinks back to write fan-out: an inbox event with a gap before it.
    let event = |cursor, m| {
        ServerFrame::Event(WireEvent {
            cursor,
            body: EventBody::Message { message: m },
        })
    };
    push(&mut ws, event(1, message(7, 6))).await;
    assert_eq!(recv(&mut ws).await, pull_frame(7, 4));
    answer_pull(&mut ws, 7, 5..=6).await;
    assert_eq!(texts(&mut rx, 2).await, ["7/5", "7/6"], "6 waited for 5");

    // An event of a kind this SDK does not know is stepped over without a gap fill.
    let unknown = r#"{"type":"event","cursor":2,"kind":"sticker_pack","pack":"x"}"#;
    ws.send(Message::text(unknown)).await.unwrap();
    push(&mut ws, event(3, message(8, 6))).await;
    assert_eq!(texts(&mut rx, 1).await, ["8/6"]);
    assert!(server.sync_calls.lock().unwrap().is_empty(), "no gap fill");

    // Ephemeral frames surface as their own events.
    push(
        &mut ws,
        ServerFrame::Presence {
            user_id: UserId(2),
            online: true,
            last_seen_ms: 5,
        },
    )
    .await;
    let e = next_where(&mut rx, |e| matches!(e, SessionEvent::Presence { .. })).await;
    assert!(matches!(e, SessionEvent::Presence { online: true, .. }));
    push(
        &mut ws,
        ServerFrame::Typing {
            conversation_id: ConversationId(7),
            user_id: UserId(2),
        },
    )
    .await;
    next_where(&mut rx, |e| matches!(e, SessionEvent::Typing { .. })).await;

    // read and typing go out as frames; reads for one conversation are merged.
    session.read(ConversationId(7), 5).unwrap();
    session.read(ConversationId(7), 6).unwrap();
    session.typing(ConversationId(7)).unwrap();
    let first = recv(&mut ws).await;
    assert!(
        matches!(first, ClientFrame::Read { seq: 5 | 6, .. }),
        "{first:?}"
    );
    let mut next = recv(&mut ws).await;
    if matches!(next, ClientFrame::Read { seq: 6, .. }) {
        next = recv(&mut ws).await; // the first read had gone out before the second came
    }
    assert_eq!(
        next,
        ClientFrame::Typing {
            conversation_id: ConversationId(7)
        }
    );
    // An explicit pull goes out after what was delivered, and its answer is de-duplicated.
    session.pull(ConversationId(7)).unwrap();
    assert_eq!(recv(&mut ws).await, pull_frame(7, 6));
    answer_pull(&mut ws, 7, 5..=7).await;
    assert_eq!(texts(&mut rx, 1).await, ["7/7"]);
}

#[tokio::test]
async fn pulls_lost_with_the_connection_are_repeated_after_reconnecting() {
    let mut server = FakeServer::start().await;
    let config = SessionConfig {
        backoff_cap_ms: 50,
        ..SessionConfig::default()
    };
    let (_session, mut rx) = server.session(config);
    let mut ws = server.accept().await;
    ready(&mut ws, 0, 30_000).await;
    recv(&mut ws).await; // sync
    let event = ServerFrame::Event(WireEvent {
        cursor: 1,
        body: EventBody::Message {
            message: message(7, 1),
        },
    });
    push(&mut ws, event).await;
    assert_eq!(texts(&mut rx, 1).await, ["7/1"]);
    push(
        &mut ws,
        ServerFrame::Notify {
            conversation_id: ConversationId(7),
            last_seq: 3,
        },
    )
    .await;
    assert_eq!(recv(&mut ws).await, pull_frame(7, 1));
    drop(ws); // the answer never comes

    let mut ws = server.accept().await;
    ready(&mut ws, 1, 30_000).await;
    assert_eq!(recv(&mut ws).await, ClientFrame::Sync { cursor: 1 });
    assert_eq!(
        recv(&mut ws).await,
        pull_frame(7, 1),
        "re-issued on connect"
    );
    answer_pull(&mut ws, 7, 2..=3).await;
    assert_eq!(texts(&mut rx, 2).await, ["7/2", "7/3"]);
}

#[tokio::test]
async fn a_saved_cursor_ahead_of_the_inbox_resumes_from_the_inbox_head() {
    let mut server = FakeServer::start().await;
    let store = Arc::new(MemoryCursorStore::with_cursor(50));
    // Conversation 1 was handed out up to seq 40 before the restore.
    crate::CursorStore::save_seqs(&*store, &[(ConversationId(1), 40)]).unwrap();
    let client = Client::new(&server.base_url).unwrap().with_token("tok");
    let (_session, mut rx) = Session::start(client, store, SessionConfig::default()).unwrap();
    let mut ws = server.accept().await;
    // The server's inbox ends at 7 (a restored backup, or another account's cursor file).
    let frame = ServerFrame::Ready {
        user_id: UserId(1),
        device_id: DeviceId(1),
        cursor: 3,
        heartbeat_ms: 30_000,
        inbox_head: Some(7),
    };
    push(&mut ws, frame).await;
    assert_eq!(
        recv(&mut ws).await,
        ClientFrame::Sync { cursor: 7 },
        "a sync from 50 would be refused"
    );
    push(&mut ws, ServerFrame::Event(event(8))).await;
    assert_eq!(
        cursors(&mut rx, 1).await,
        [8],
        "new events arrive, and the restored timeline's seq 8 is not taken for one of the \
         40 handed out before"
    );
}

#[tokio::test]
async fn a_send_refused_too_often_fails_instead_of_retrying_forever() {
    let mut server = FakeServer::start().await;
    let config = SessionConfig {
        send_retry_base_ms: 1,
        send_refusals_max: 3,
        ..SessionConfig::default()
    };
    let (session, mut rx) = server.session(config);
    let mut ws = server.accept().await;
    ready(&mut ws, 0, 30_000).await;
    recv(&mut ws).await; // sync
    let id = session.send(ConversationId(1), "hi").unwrap();
    let refuse = || ServerFrame::Error {
        code: ErrorCode::Unavailable,
        message: "store failed".into(),
        client_msg_id: Some(id.clone()),
        conversation_id: None,
    };
    // Written once, then again after each of three refusals; the fourth refusal ends it.
    for attempt in 1..=4 {
        let frame = recv(&mut ws).await;
        assert!(
            matches!(&frame, ClientFrame::Send { client_msg_id, .. } if *client_msg_id == id),
            "attempt {attempt}: {frame:?}"
        );
        push(&mut ws, refuse()).await;
    }
    let e = next_where(&mut rx, |e| matches!(e, SessionEvent::SendFailed { .. })).await;
    assert!(matches!(
        e,
        SessionEvent::SendFailed {
            code: ErrorCode::Unavailable,
            ..
        }
    ));
    assert_eq!(session.pending_sends(), 0);
}

#[tokio::test]
async fn by_default_transient_refusals_never_fail_a_send() {
    let mut server = FakeServer::start().await;
    let config = SessionConfig {
        send_retry_base_ms: 1,
        ..SessionConfig::default()
    };
    let (session, mut rx) = server.session(config);
    let mut ws = server.accept().await;
    ready(&mut ws, 0, 30_000).await;
    recv(&mut ws).await; // sync
    let id = session.send(ConversationId(1), "hi").unwrap();
    // More refusals than the old limit of 10, each of a kind that leaves the outcome open
    // (the message may have been stored): the send stays pending and is written again.
    let codes = [
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::RateLimited,
    ];
    for attempt in 0..12 {
        let frame = recv(&mut ws).await;
        assert!(
            matches!(&frame, ClientFrame::Send { client_msg_id, .. } if *client_msg_id == id),
            "attempt {attempt}: {frame:?}"
        );
        let refuse = ServerFrame::Error {
            code: codes[attempt % codes.len()],
            message: "not now".into(),
            client_msg_id: Some(id.clone()),
            conversation_id: None,
        };
        push(&mut ws, refuse).await;
    }
    assert_eq!(session.pending_sends(), 1);
    recv(&mut ws).await; // the 13th attempt
    let sent = ServerFrame::Sent {
        client_msg_id: id.clone(),
        conversation_id: ConversationId(1),
        seq: 5,
        ts_ms: 1,
        duplicate: true,
    };
    push(&mut ws, sent).await;
    let e = next_where(&mut rx, |e| {
        matches!(
            e,
            SessionEvent::Sent { .. } | SessionEvent::SendFailed { .. }
        )
    })
    .await;
    assert!(
        matches!(&e, SessionEvent::Sent { client_msg_id, seq: 5, duplicate: true, .. } if *client_msg_id == id),
        "{e:?}"
    );
    assert_eq!(session.pending_sends(), 0);
}

#[tokio::test]
async fn unanswered_sends_are_returned_by_close_and_failed_on_revocation() {
    // close(): the application gets them back to send again later with the same ids.
    let mut server = FakeServer::start().await;
    let (session, _rx) = server.session(SessionConfig::default());
    let mut ws = server.accept().await;
    ready(&mut ws, 0, 30_000).await;
    recv(&mut ws).await; // sync
    let id = session.send(ConversationId(1), "never answered").unwrap();
    recv(&mut ws).await; // the send
    let back = tokio::time::timeout(WAIT, session.close())
        .await
        .expect("close");
    assert_eq!(
        back.iter()
            .map(|p| p.client_msg_id.as_str())
            .collect::<Vec<_>>(),
        [id.as_str()]
    );

    // A revoked session fails each unanswered send before saying it was revoked.
    let mut server = FakeServer::start().await;
    let (session, mut rx) = server.session(SessionConfig::default());
    let mut ws = server.accept().await;
    ready(&mut ws, 0, 30_000).await;
    recv(&mut ws).await; // sync
    let id = session
        .send(ConversationId(1), "in flight at logout")
        .unwrap();
    recv(&mut ws).await; // the send
    let close = CloseFrame {
        code: CloseCode::from(magpie_protocol::close::CLOSE_REVOKED),
        reason: "logged out".into(),
    };
    ws.close(Some(close)).await.unwrap();
    let e = next_where(&mut rx, |e| {
        matches!(e, SessionEvent::SendFailed { .. } | SessionEvent::Revoked)
    })
    .await;
    assert!(
        matches!(&e, SessionEvent::SendFailed { client_msg_id, code: ErrorCode::Unauthorized, .. } if *client_msg_id == id),
        "{e:?}"
    );
    let e = next_where(&mut rx, |e| matches!(e, SessionEvent::Revoked)).await;
    assert_eq!(e, SessionEvent::Revoked);
}
