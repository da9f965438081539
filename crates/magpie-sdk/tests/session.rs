//! End-to-end tests of the SDK against an in-process Magpie server.

use std::sync::Arc;
use std::time::Duration;

use magpie_sdk::{
    AckMode, Client, ConversationId, CursorStore, EventBody, FileCursorStore, MemoryCursorStore,
    SdkError, Session, SessionConfig, SessionEvent, UserId, WireEvent,
};
use magpie_server::testing::{free_addr, TestServer};
use tokio::sync::mpsc::Receiver;

const PASSWORD: &str = "correct horse battery";
/// Generous: CI machines are small and shared.
const WAIT: Duration = Duration::from_secs(20);

/// A registered, logged-in user.
struct User {
    id: UserId,
    client: Client,
}

async fn user(base_url: &str, name: &str) -> User {
    let anon = Client::new(base_url).unwrap();
    anon.register(name, PASSWORD).await.unwrap();
    let creds = anon.login(name, PASSWORD, Some("test")).await.unwrap();
    User {
        id: creds.user_id,
        client: anon.with_token(creds.token),
    }
}

/// Fast reconnects so restart tests do not wait on a long backoff.
fn config() -> SessionConfig {
    SessionConfig {
        backoff_cap_ms: 500,
        ..SessionConfig::default()
    }
}

fn start(
    u: &User,
    store: Arc<dyn CursorStore>,
    config: SessionConfig,
) -> (Session, Receiver<SessionEvent>) {
    Session::start(u.client.clone(), store, config).unwrap()
}

/// The next event satisfying `pred`, skipping others; panics after `WAIT`.
async fn next_where(
    rx: &mut Receiver<SessionEvent>,
    mut pred: impl FnMut(&SessionEvent) -> bool,
) -> SessionEvent {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) if pred(&e) => return e,
            Ok(Some(_)) => {}
            Ok(None) => panic!("session ended"),
            Err(_) => panic!("timed out waiting for a session event"),
        }
    }
}

async fn next_event(rx: &mut Receiver<SessionEvent>) -> WireEvent {
    match next_where(rx, |e| matches!(e, SessionEvent::Event(_))).await {
        SessionEvent::Event(e) => e,
        _ => unreachable!(),
    }
}

fn text(e: &WireEvent) -> &str {
    match &e.body {
        EventBody::Message { message } => &message.text,
    }
}

async fn connected(rx: &mut Receiver<SessionEvent>) -> SessionEvent {
    next_where(rx, |e| matches!(e, SessionEvent::Connected { .. })).await
}

/// Waits for `Sent` for `id`; fails on `SendFailed`.
async fn sent(rx: &mut Receiver<SessionEvent>, id: &str) -> (u64, bool) {
    let e = next_where(rx, |e| match e {
        SessionEvent::Sent { client_msg_id, .. }
        | SessionEvent::SendFailed { client_msg_id, .. } => client_msg_id == id,
        _ => false,
    })
    .await;
    match e {
        SessionEvent::Sent { seq, duplicate, .. } => (seq, duplicate),
        other => panic!("send failed: {other:?}"),
    }
}

async fn open(a: &User, b: &User) -> ConversationId {
    a.client.open_direct(b.id).await.unwrap().conversation_id
}

#[tokio::test]
async fn users_chat_both_ways_in_real_time() {
    let server = TestServer::start().await;
    let alice = user(&server.base_url(), "alice").await;
    let bob = user(&server.base_url(), "bob").await;
    let conv = open(&alice, &bob).await;
    assert_eq!(
        open(&bob, &alice).await,
        conv,
        "same conversation from either side"
    );

    let (a, mut a_rx) = start(&alice, Arc::new(MemoryCursorStore::new()), config());
    let (b, mut b_rx) = start(&bob, Arc::new(MemoryCursorStore::new()), config());
    match connected(&mut a_rx).await {
        SessionEvent::Connected {
            user_id,
            resumed_from,
            ..
        } => {
            assert_eq!(user_id, alice.id);
            assert_eq!(resumed_from, 0);
        }
        _ => unreachable!(),
    }
    connected(&mut b_rx).await;

    let id = b.send(conv, "hi alice").unwrap();
    assert_eq!(sent(&mut b_rx, &id).await, (1, false));
    let e = next_event(&mut a_rx).await;
    assert_eq!(text(&e), "hi alice");
    match &e.body {
        EventBody::Message { message } => {
            assert_eq!(message.sender_id, bob.id);
            assert_eq!(message.client_msg_id, id);
        }
    }

    let id = a.send(conv, "hi bob").unwrap();
    assert_eq!(sent(&mut a_rx, &id).await, (2, false));
    // Bob's inbox also holds his own message (write fan-out covers the sender's devices).
    let mut texts = Vec::new();
    while texts.last().map(String::as_str) != Some("hi bob") {
        texts.push(text(&next_event(&mut b_rx).await).to_owned());
    }

    // Definitive refusals are reported, not retried: a conversation alice is not in.
    let carol = user(&server.base_url(), "carol").await;
    let foreign = open(&bob, &carol).await;
    let id = a.send(foreign, "let me in").unwrap();
    let e = next_where(&mut a_rx, |e| matches!(e, SessionEvent::SendFailed { .. })).await;
    assert!(
        matches!(e, SessionEvent::SendFailed { client_msg_id, code: magpie_sdk::ErrorCode::Forbidden, .. } if client_msg_id == id)
    );
    assert_eq!(a.pending_sends(), 0);

    a.close().await;
    b.close().await;
    server.stop().await;
}

#[tokio::test]
async fn offline_catch_up_resumes_from_the_persisted_cursor() {
    let server = TestServer::start().await;
    let alice = user(&server.base_url(), "alice").await;
    let bob = user(&server.base_url(), "bob").await;
    let conv = open(&bob, &alice).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FileCursorStore::new(dir.path().join("cursor")));

    let (a, mut a_rx) = start(&alice, store.clone(), config());
    connected(&mut a_rx).await;
    bob.client.send_http(conv, "m1", "first").await.unwrap();
    let first = next_event(&mut a_rx).await;
    assert_eq!(text(&first), "first");
    a.close().await;
    assert_eq!(
        store.load().unwrap(),
        Some(first.cursor),
        "close persists the processed cursor"
    );

    // While alice is offline.
    bob.client.send_http(conv, "m2", "second").await.unwrap();
    bob.client.send_http(conv, "m3", "third").await.unwrap();

    let (a, mut a_rx) = start(&alice, store.clone(), config());
    match connected(&mut a_rx).await {
        SessionEvent::Connected {
            server_cursor,
            resumed_from,
            ..
        } => {
            assert_eq!(resumed_from, first.cursor);
            assert_eq!(
                server_cursor, first.cursor,
                "the close also acked to the server"
            );
        }
        _ => unreachable!(),
    }
    let second = next_event(&mut a_rx).await;
    let third = next_event(&mut a_rx).await;
    assert_eq!((text(&second), text(&third)), ("second", "third"));
    assert_eq!(
        (second.cursor, third.cursor),
        (first.cursor + 1, first.cursor + 2)
    );

    // The debounced auto-ack persists without a close.
    let deadline = tokio::time::Instant::now() + WAIT;
    while store.load().unwrap() != Some(third.cursor) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "cursor never persisted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.close().await;
    server.stop().await;
}

#[tokio::test]
async fn resending_an_id_whose_ack_was_lost_is_reported_duplicate() {
    let server = TestServer::start().await;
    let alice = user(&server.base_url(), "alice").await;
    let bob = user(&server.base_url(), "bob").await;
    let conv = open(&alice, &bob).await;

    // The first attempt reached the server, but (as far as the app knows) its ack was lost.
    let first = alice
        .client
        .send_http(conv, "lost-ack-1", "only once")
        .await
        .unwrap();
    assert!(!first.duplicate);

    let (a, mut a_rx) = start(&alice, Arc::new(MemoryCursorStore::new()), config());
    a.send_with_id(conv, "lost-ack-1", "only once").unwrap();
    assert_eq!(sent(&mut a_rx, "lost-ack-1").await, (first.seq, true));

    // And through the socket twice in a row: the second answer is the duplicate.
    a.send_with_id(conv, "ws-twice", "hello").unwrap();
    let (seq, dup) = sent(&mut a_rx, "ws-twice").await;
    assert!(!dup);
    a.send_with_id(conv, "ws-twice", "hello").unwrap();
    assert_eq!(sent(&mut a_rx, "ws-twice").await, (seq, true));

    let history = bob
        .client
        .messages(conv, magpie_sdk::HistoryRange::Latest, None)
        .await
        .unwrap();
    let texts: Vec<_> = history.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["only once", "hello"], "no duplicates stored");
    a.close().await;
    server.stop().await;
}

#[tokio::test]
async fn server_restart_reconnects_and_flushes_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let server = TestServer::start_on(dir.path(), addr).await;
    let base = server.base_url();
    let alice = user(&base, "alice").await;
    let bob = user(&base, "bob").await;
    let conv = open(&alice, &bob).await;

    let (a, mut a_rx) = start(&alice, Arc::new(MemoryCursorStore::new()), config());
    let (b, mut b_rx) = start(&bob, Arc::new(MemoryCursorStore::new()), config());
    connected(&mut a_rx).await;
    connected(&mut b_rx).await;
    let id = b.send(conv, "before").unwrap();
    sent(&mut b_rx, &id).await;
    assert_eq!(text(&next_event(&mut a_rx).await), "before");

    server.stop().await;
    next_where(&mut a_rx, |e| {
        matches!(e, SessionEvent::Disconnected { .. })
    })
    .await;
    // Sent while the server is down: waits in the outbox.
    let offline_id = a.send(conv, "while you were down").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.pending_sends(), 1);

    let server = TestServer::start_on(dir.path(), addr).await;
    connected(&mut a_rx).await;
    let (_, dup) = sent(&mut a_rx, &offline_id).await;
    assert!(!dup);
    assert_eq!(a.pending_sends(), 0);
    // Bob's session reconnected on its own too and gets the message live or by replay. His own
    // "before" may or may not still be queued (it raced his `sent`), but never twice.
    let mut got = Vec::new();
    while got.last().map(|(_, t): &(u64, String)| t.as_str()) != Some("while you were down") {
        let e = next_event(&mut b_rx).await;
        got.push((e.cursor, text(&e).to_owned()));
    }
    assert!(
        got.windows(2).all(|w| w[0].0 < w[1].0),
        "cursors strictly increase: {got:?}"
    );
    assert!(
        got.iter().filter(|(_, t)| t == "before").count() <= 1,
        "{got:?}"
    );

    a.close().await;
    b.close().await;
    server.stop().await;
}

#[tokio::test]
async fn manual_ack_mode_persists_only_what_the_app_acked() {
    let server = TestServer::start().await;
    let alice = user(&server.base_url(), "alice").await;
    let bob = user(&server.base_url(), "bob").await;
    let conv = open(&bob, &alice).await;
    bob.client.send_http(conv, "x1", "one").await.unwrap();
    bob.client.send_http(conv, "x2", "two").await.unwrap();
    let store = Arc::new(MemoryCursorStore::new());
    let manual = || SessionConfig {
        ack_mode: AckMode::Manual,
        ..config()
    };

    let (a, mut a_rx) = start(&alice, store.clone(), manual());
    let one = next_event(&mut a_rx).await;
    next_event(&mut a_rx).await;
    a.ack(one.cursor);
    a.close().await;
    assert_eq!(store.load().unwrap(), Some(one.cursor));

    // Unacked "two" is delivered again to the next session.
    let (a, mut a_rx) = start(&alice, store.clone(), manual());
    assert_eq!(text(&next_event(&mut a_rx).await), "two");
    a.close().await;
    server.stop().await;
}

#[tokio::test]
async fn logout_revokes_the_session() {
    let server = TestServer::start().await;
    let alice = user(&server.base_url(), "alice").await;
    let (a, mut a_rx) = start(&alice, Arc::new(MemoryCursorStore::new()), config());
    connected(&mut a_rx).await;
    alice.client.logout().await.unwrap();
    next_where(&mut a_rx, |e| matches!(e, SessionEvent::Revoked)).await;
    assert!(
        a_rx.recv().await.is_none(),
        "the session stops after Revoked"
    );
    assert!(a.is_stopped());
    assert!(matches!(
        a.send(ConversationId(1), "x"),
        Err(SdkError::Closed)
    ));

    // A session started with a dead token is revoked at the upgrade (HTTP 401).
    let (_a, mut a_rx) = start(&alice, Arc::new(MemoryCursorStore::new()), config());
    next_where(&mut a_rx, |e| matches!(e, SessionEvent::Revoked)).await;
    let err = alice.client.user(alice.id).await.unwrap_err();
    assert!(err.is_unauthorized(), "{err}");
    server.stop().await;
}
