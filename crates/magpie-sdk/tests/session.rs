//! End-to-end tests of the SDK against an in-process Magpie server.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use magpie_sdk::{
    AckMode, ConversationId, CursorStore, ErrorCode, EventBody, FileCursorStore, MemoryCursorStore,
    SdkError, SessionConfig, SessionEvent,
};
use magpie_server::testing::{free_addr, TestServer};

/// A server that lets strangers open direct conversations, for tests where friendship is not
/// the point.
async fn open_server() -> TestServer {
    TestServer::start_with(|c| c.allow_strangers = true).await
}

async fn open(a: &User, b: &User) -> ConversationId {
    a.client.open_direct(b.id).await.unwrap().conversation_id
}

#[tokio::test]
async fn friends_chat_after_a_request_is_accepted() {
    let server = TestServer::start().await;
    let alice = user(&server.base_url(), "alice").await;
    let bob = user(&server.base_url(), "bob").await;
    let (a, mut a_rx) = start(&alice.client, Arc::new(MemoryCursorStore::new()), config());
    let (b, mut b_rx) = start(&bob.client, Arc::new(MemoryCursorStore::new()), config());
    connected(&mut a_rx).await;
    connected(&mut b_rx).await;

    // Strangers cannot talk.
    let err = alice.client.open_direct(bob.id).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFriends), "{err}");

    let request = alice
        .client
        .send_friend_request(bob.id, Some("it's alice"))
        .await
        .unwrap();
    match next_inbox_event(&mut b_rx, |b| matches!(b, EventBody::FriendRequest { .. })).await {
        EventBody::FriendRequest { request: r } => {
            assert_eq!((r.request_id, r.from_id), (request, alice.id));
            assert_eq!(r.message, "it's alice");
        }
        _ => unreachable!(),
    }
    let pending = bob.client.friend_requests().await.unwrap();
    assert_eq!(pending.incoming.len(), 1);
    assert!(pending.outgoing.is_empty());
    let conv = bob.client.accept_friend_request(request).await.unwrap();
    for rx in [&mut a_rx, &mut b_rx] {
        match next_inbox_event(rx, |b| matches!(b, EventBody::FriendAdded { .. })).await {
            EventBody::FriendAdded {
                conversation_id, ..
            } => assert_eq!(conversation_id, conv),
            _ => unreachable!(),
        }
    }
    assert_eq!(open(&alice, &bob).await, conv, "the same conversation");
    let friends = alice.client.friends().await.unwrap();
    assert_eq!(friends.len(), 1);
    assert_eq!(
        (friends[0].user_id, friends[0].username.as_str()),
        (bob.id, "bob")
    );

    let id = b.send(conv, "hi alice").unwrap();
    assert_eq!(sent(&mut b_rx, &id).await, (1, false));
    let m = next_message(&mut a_rx).await;
    assert_eq!(
        (m.text.as_str(), m.seq, m.sender_id),
        ("hi alice", 1, bob.id)
    );
    let id = a.send(conv, "hi bob").unwrap();
    assert_eq!(sent(&mut a_rx, &id).await, (2, false));
    // Bob's stream also holds his own message (write fan-out covers the sender's devices),
    // unless it arrived before his `sent` and was skipped by the wait above.
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("hi bob") {
        seen.push(next_message(&mut b_rx).await.text);
    }
    assert!(
        seen == ["hi alice", "hi bob"] || seen == ["hi bob"],
        "{seen:?}"
    );

    // Read receipts: alice reads; bob sees a receipt event and the receipts endpoint agrees.
    a.read(conv, 2).unwrap();
    match next_inbox_event(&mut b_rx, |b| matches!(b, EventBody::Receipt { .. })).await {
        EventBody::Receipt {
            user_id, read_seq, ..
        } => assert_eq!((user_id, read_seq), (alice.id, 2)),
        _ => unreachable!(),
    }
    // Receipts for bob's message (seq 1); the sender is never in the lists.
    let receipts = bob.client.receipts(conv, 1).await.unwrap();
    assert_eq!(receipts.read, [alice.id.to_string()]);
    assert!(receipts.unread.is_empty());
    let rows = bob.client.conversations().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].conversation_id, rows[0].last_seq),
        (conv, 2),
        "{rows:?}"
    );
    assert!(rows[0].unread_count >= 1, "{rows:?}");
    assert_eq!(bob.client.mark_read(conv, 2).await.unwrap(), 2);
    let rows = bob.client.conversations().await.unwrap();
    assert_eq!(rows[0].unread_count, 0, "{rows:?}");
    assert!(bob.client.set_muted(conv, true).await.unwrap());
    let presence = bob.client.presence(&[alice.id]).await.unwrap();
    assert_eq!(presence.len(), 1);
    assert!(presence[0].online);

    // Unfriending closes the conversation for new messages.
    alice.client.remove_friend(bob.id).await.unwrap();
    let id = a.send(conv, "still there?").unwrap();
    let e = next_where(&mut a_rx, |e| matches!(e, SessionEvent::SendFailed { .. })).await;
    assert!(
        matches!(&e, SessionEvent::SendFailed { client_msg_id, code: ErrorCode::NotFriends | ErrorCode::Forbidden, .. } if *client_msg_id == id),
        "{e:?}"
    );
    a.close().await;
    b.close().await;
    server.stop().await;
}

#[tokio::test]
async fn users_chat_both_ways_in_real_time() {
    let server = open_server().await;
    let alice = user(&server.base_url(), "alice").await;
    let bob = user(&server.base_url(), "bob").await;
    let conv = open(&alice, &bob).await;
    assert_eq!(
        open(&bob, &alice).await,
        conv,
        "same conversation from either side"
    );

    let (a, mut a_rx) = start(&alice.client, Arc::new(MemoryCursorStore::new()), config());
    let (b, mut b_rx) = start(&bob.client, Arc::new(MemoryCursorStore::new()), config());
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
    let message = next_message(&mut a_rx).await;
    assert_eq!(message.text, "hi alice");
    assert_eq!(message.sender_id, bob.id);
    assert_eq!(message.client_msg_id, id);
    assert_eq!(message.kind, "text");

    let id = a.send(conv, "hi bob").unwrap();
    assert_eq!(sent(&mut a_rx, &id).await, (2, false));
    // Bob's stream also holds his own message (write fan-out covers the sender's devices).
    let mut texts = Vec::new();
    while texts.last().map(String::as_str) != Some("hi bob") {
        texts.push(next_message(&mut b_rx).await.text);
    }

    // Definitive refusals are reported, not retried: a conversation alice is not in.
    let carol = user(&server.base_url(), "carol").await;
    let foreign = open(&bob, &carol).await;
    let id = a.send(foreign, "let me in").unwrap();
    let e = next_where(&mut a_rx, |e| matches!(e, SessionEvent::SendFailed { .. })).await;
    assert!(
        matches!(e, SessionEvent::SendFailed { client_msg_id, code: ErrorCode::Forbidden, .. } if client_msg_id == id)
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
    let conv = befriend(&bob, &alice).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FileCursorStore::new(dir.path().join("cursor")));

    let (a, mut a_rx) = start(&alice.client, store.clone(), config());
    connected(&mut a_rx).await;
    bob.client.send_http(conv, "m1", "first").await.unwrap();
    let first = next_message(&mut a_rx).await;
    assert_eq!(first.text, "first");
    a.close().await;
    let first_cursor = cursor_of(&alice.client, conv, first.seq).await;
    assert_eq!(
        store.load().unwrap(),
        Some(first_cursor),
        "close persists the processed cursor"
    );
    assert_eq!(
        store.load_seqs().unwrap(),
        [(conv, first.seq)],
        "and the stream position"
    );

    // While alice is offline.
    bob.client.send_http(conv, "m2", "second").await.unwrap();
    bob.client.send_http(conv, "m3", "third").await.unwrap();

    let (a, mut a_rx) = start(&alice.client, store.clone(), config());
    match connected(&mut a_rx).await {
        SessionEvent::Connected {
            server_cursor,
            resumed_from,
            ..
        } => {
            assert_eq!(resumed_from, first_cursor);
            assert_eq!(
                server_cursor, first_cursor,
                "the close also acked to the server"
            );
        }
        _ => unreachable!(),
    }
    let second = next_message(&mut a_rx).await;
    let third = next_message(&mut a_rx).await;
    assert_eq!(
        (second.text.as_str(), third.text.as_str()),
        ("second", "third")
    );
    assert_eq!((second.seq, third.seq), (first.seq + 1, first.seq + 2));

    // The debounced auto-ack persists without a close.
    let third_cursor = cursor_of(&alice.client, conv, third.seq).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while store.load().unwrap() != Some(third_cursor) {
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
    let server = open_server().await;
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

    let (a, mut a_rx) = start(&alice.client, Arc::new(MemoryCursorStore::new()), config());
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
        .unwrap()
        .messages;
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
    let conv = befriend(&alice, &bob).await;

    let (a, mut a_rx) = start(&alice.client, Arc::new(MemoryCursorStore::new()), config());
    let (b, mut b_rx) = start(&bob.client, Arc::new(MemoryCursorStore::new()), config());
    connected(&mut a_rx).await;
    connected(&mut b_rx).await;
    let id = b.send(conv, "before").unwrap();
    sent(&mut b_rx, &id).await;
    assert_eq!(next_message(&mut a_rx).await.text, "before");

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
    let mut got: Vec<(u64, String)> = Vec::new();
    while got.last().map(|(_, t)| t.as_str()) != Some("while you were down") {
        let m = next_message(&mut b_rx).await;
        got.push((m.seq, m.text));
    }
    assert!(
        got.windows(2).all(|w| w[0].0 < w[1].0),
        "seqs strictly increase: {got:?}"
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
    let server = open_server().await;
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

    let (a, mut a_rx) = start(&alice.client, store.clone(), manual());
    let one = next_message(&mut a_rx).await;
    next_message(&mut a_rx).await;
    a.ack_message(one.conversation_id, one.seq);
    a.close().await;
    assert_eq!(
        store.load().unwrap(),
        Some(cursor_of(&alice.client, conv, one.seq).await)
    );
    assert_eq!(store.load_seqs().unwrap(), [(conv, one.seq)]);

    // Unacked "two" is delivered again to the next session.
    let (a, mut a_rx) = start(&alice.client, store.clone(), manual());
    assert_eq!(next_message(&mut a_rx).await.text, "two");
    a.close().await;
    server.stop().await;
}

#[tokio::test]
async fn logout_revokes_the_session() {
    let server = TestServer::start().await;
    let alice = user(&server.base_url(), "alice").await;
    let (a, mut a_rx) = start(&alice.client, Arc::new(MemoryCursorStore::new()), config());
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
    let (_a, mut a_rx) = start(&alice.client, Arc::new(MemoryCursorStore::new()), config());
    next_where(&mut a_rx, |e| matches!(e, SessionEvent::Revoked)).await;
    let err = alice.client.user(alice.id).await.unwrap_err();
    assert!(err.is_unauthorized(), "{err}");
    server.stop().await;
}
