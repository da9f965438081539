//! Social graph over real sockets: friend requests, friendship-gated direct conversations,
//! presence, typing, the conversation list, unread counts and read receipts.

mod common;

use std::time::{Duration, Instant};

use common::*;
use magpie_server::testing::TestServer;
use serde_json::{json, Value};

/// A server where direct conversations need friendship (the default, stated explicitly).
async fn server() -> TestServer {
    TestServer::start_with(|c| c.allow_strangers = false).await
}

/// All events of `token`'s inbox, via `GET /v1/sync`.
async fn inbox(base: &str, token: &str) -> Vec<Value> {
    let (st, page) = get(base, token, "/v1/sync?cursor=0&limit=200").await;
    assert_eq!(st, 200, "{page}");
    page["events"].as_array().unwrap().clone()
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["kind"].as_str().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn friend_requests_accept_decline_and_errors() {
    let s = server().await;
    let base = s.base_url();
    let alice = account(&base, "alice").await;
    let bob = account(&base, "bob").await;
    let carol = account(&base, "carol").await;
    let dave = account(&base, "dave").await;

    // Bob listens live.
    let (mut b, _) = Ws::connect(&s.ws_url(), &bob.token).await;
    b.sync(0).await;

    let (st, v) = post(
        &base,
        &alice.token,
        "/v1/friends/requests",
        json!({"user_id": alice.user_id}),
    )
    .await;
    assert_eq!(
        (st, code(&v)),
        (400, "invalid_request"),
        "request to self: {v}"
    );
    let (st, v) = post(
        &base,
        &alice.token,
        "/v1/friends/requests",
        json!({"user_id": "999999"}),
    )
    .await;
    assert_eq!((st, code(&v)), (404, "not_found"), "unknown user: {v}");
    let (st, v) = post(
        &base,
        &alice.token,
        "/v1/friends/requests",
        json!({"user_id": bob.user_id, "message": "m".repeat(501)}),
    )
    .await;
    assert_eq!(
        (st, code(&v)),
        (400, "invalid_request"),
        "501-character message: {v}"
    );

    let (st, v) = post(
        &base,
        &alice.token,
        "/v1/friends/requests",
        json!({"user_id": bob.user_id, "message": "hi, it's alice"}),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let req_id = v["request_id"]
        .as_str()
        .expect("request_id is a string")
        .to_owned();
    let (st, v) = post(
        &base,
        &alice.token,
        "/v1/friends/requests",
        json!({"user_id": bob.user_id}),
    )
    .await;
    assert!(st == 201 || st == 200, "repeat request: {st} {v}");
    assert_eq!(
        v["request_id"],
        req_id.as_str(),
        "a pending request is returned as is"
    );

    // Live event for the addressee, exactly once (the repeat made no new event).
    let e = b.next_event("friend_request").await;
    assert_eq!(e["request"]["request_id"], req_id.as_str());
    assert_eq!(e["request"]["from_id"], alice.user_id.as_str());
    assert_eq!(e["request"]["to_id"], bob.user_id.as_str());
    assert_eq!(e["request"]["message"], "hi, it's alice");
    assert!(e["request"]["ts_ms"].as_u64().unwrap() > 0);
    let events = inbox(&base, &bob.token).await;
    assert_eq!(kinds(&events), vec!["friend_request"], "{events:?}");
    assert_eq!(events[0]["cursor"], 1);
    assert_eq!(events[0]["request"]["request_id"], req_id.as_str());

    // Request lists on both sides.
    let (st, v) = get(&base, &bob.token, "/v1/friends/requests").await;
    assert_eq!(st, 200);
    assert_eq!(v["outgoing"].as_array().unwrap().len(), 0, "{v}");
    let incoming = v["incoming"].as_array().unwrap();
    assert_eq!(incoming.len(), 1, "{v}");
    assert_eq!(incoming[0]["request_id"], req_id.as_str());
    assert_eq!(incoming[0]["from_id"], alice.user_id.as_str());
    assert_eq!(incoming[0]["to_id"], bob.user_id.as_str());
    assert_eq!(incoming[0]["message"], "hi, it's alice");
    let (_, v) = get(&base, &alice.token, "/v1/friends/requests").await;
    assert_eq!(v["incoming"].as_array().unwrap().len(), 0, "{v}");
    assert_eq!(v["outgoing"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["outgoing"][0]["request_id"], req_id.as_str());

    // Only the addressee may answer.
    for (who, tok) in [("requester", &alice.token), ("third party", &carol.token)] {
        let (st, v) = post(
            &base,
            tok,
            &format!("/v1/friends/requests/{req_id}/accept"),
            json!({}),
        )
        .await;
        assert_eq!((st, code(&v)), (403, "forbidden"), "{who} accepting: {v}");
        let (st, v) = post(
            &base,
            tok,
            &format!("/v1/friends/requests/{req_id}/decline"),
            json!({}),
        )
        .await;
        assert_eq!((st, code(&v)), (403, "forbidden"), "{who} declining: {v}");
    }
    let (st, _) = post(
        &base,
        &bob.token,
        "/v1/friends/requests/424242/accept",
        json!({}),
    )
    .await;
    assert_eq!(st, 404, "unknown request");

    // Alice listens too before the accept.
    let (mut a, _) = Ws::connect(&s.ws_url(), &alice.token).await;
    a.sync(0).await;
    let (st, v) = post(
        &base,
        &bob.token,
        &format!("/v1/friends/requests/{req_id}/accept"),
        json!({}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let conv = v["conversation_id"]
        .as_str()
        .expect("conversation_id")
        .to_owned();
    for (ws, peer) in [(&mut a, &bob), (&mut b, &alice)] {
        let e = ws.next_event("friend_added").await;
        assert_eq!(e["user_id"], peer.user_id.as_str(), "{e}");
        assert_eq!(e["conversation_id"], conv.as_str(), "{e}");
    }
    let (st, v) = post(
        &base,
        &bob.token,
        &format!("/v1/friends/requests/{req_id}/accept"),
        json!({}),
    )
    .await;
    assert_eq!(st, 404, "an answered request is gone: {v}");
    let (_, v) = get(&base, &bob.token, "/v1/friends/requests").await;
    assert_eq!(v["incoming"].as_array().unwrap().len(), 0, "{v}");
    assert_eq!(
        kinds(&inbox(&base, &alice.token).await),
        vec!["friend_added"]
    );
    assert_eq!(
        kinds(&inbox(&base, &bob.token).await),
        vec!["friend_request", "friend_added"]
    );

    // Already friends, either direction.
    for (from, to) in [(&alice, &bob), (&bob, &alice)] {
        let (st, v) = post(
            &base,
            &from.token,
            "/v1/friends/requests",
            json!({"user_id": to.user_id}),
        )
        .await;
        assert_eq!((st, code(&v)), (409, "already_friends"), "{v}");
    }
    // The direct conversation is the one the accept returned.
    assert_eq!(direct(&base, &alice, &bob).await, conv);

    // Decline path.
    let (st, v) = post(
        &base,
        &dave.token,
        "/v1/friends/requests",
        json!({"user_id": carol.user_id}),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let req2 = v["request_id"].as_str().unwrap().to_owned();
    assert_ne!(req2, req_id);
    let r = http()
        .post(format!("{base}/v1/friends/requests/{req2}/decline"))
        .bearer_auth(&carol.token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    for tok in [&carol.token, &dave.token] {
        let (_, v) = get(&base, tok, "/v1/friends/requests").await;
        assert_eq!(v["incoming"].as_array().unwrap().len(), 0, "{v}");
        assert_eq!(v["outgoing"].as_array().unwrap().len(), 0, "{v}");
    }
    let (_, v) = get(&base, &carol.token, "/v1/friends").await;
    assert_eq!(v["friends"].as_array().unwrap().len(), 0, "{v}");
    // A declined request can be made again (new id).
    let (st, v) = post(
        &base,
        &dave.token,
        "/v1/friends/requests",
        json!({"user_id": carol.user_id}),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    assert_ne!(v["request_id"], req2.as_str());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_settles_the_reverse_request() {
    let s = server().await;
    let base = s.base_url();
    let alice = account(&base, "alice").await;
    let bob = account(&base, "bob").await;
    let (_, v) = post(
        &base,
        &alice.token,
        "/v1/friends/requests",
        json!({"user_id": bob.user_id}),
    )
    .await;
    let ab = v["request_id"].as_str().unwrap().to_owned();
    let (st, v) = post(
        &base,
        &bob.token,
        "/v1/friends/requests",
        json!({"user_id": alice.user_id}),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = post(
        &base,
        &bob.token,
        &format!("/v1/friends/requests/{ab}/accept"),
        json!({}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    for tok in [&alice.token, &bob.token] {
        let (_, v) = get(&base, tok, "/v1/friends/requests").await;
        assert_eq!(v["incoming"].as_array().unwrap().len(), 0, "{v}");
        assert_eq!(v["outgoing"].as_array().unwrap().len(), 0, "{v}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn friend_list_removal_and_direct_gating() {
    let s = server().await;
    let base = s.base_url();
    let alice = account(&base, "alice").await;
    let bob = account(&base, "bob").await;
    let carol = account(&base, "carol").await;

    // Strangers cannot open or use a direct conversation.
    let (st, v) = post(
        &base,
        &alice.token,
        "/v1/conversations/direct",
        json!({"peer_id": carol.user_id}),
    )
    .await;
    assert_eq!((st, code(&v)), (403, "not_friends"), "{v}");

    let conv = befriend(&base, &alice, &bob).await;
    let (st, v) = get(&base, &alice.token, "/v1/friends").await;
    assert_eq!(st, 200);
    let friends = v["friends"].as_array().unwrap();
    assert_eq!(friends.len(), 1, "{v}");
    assert_eq!(friends[0]["user_id"], bob.user_id.as_str());
    assert_eq!(friends[0]["username"], "bob");
    assert_eq!(friends[0]["online"], false, "bob has no socket: {v}");
    assert!(friends[0]["last_seen_ms"].is_u64(), "{v}");

    // Online while a socket is open.
    let (mut b, _) = Ws::connect(&s.ws_url(), &bob.token).await;
    b.sync(0).await;
    let (_, v) = get(&base, &alice.token, "/v1/friends").await;
    assert_eq!(v["friends"][0]["online"], true, "{v}");
    assert!(v["friends"][0]["last_seen_ms"].as_u64().unwrap() > 0, "{v}");
    let (_, v) = get(&base, &bob.token, "/v1/friends").await;
    assert_eq!(v["friends"][0]["user_id"], alice.user_id.as_str());
    assert_eq!(v["friends"][0]["username"], "alice");

    // Sending works while friends, over both paths (this also warms any per-connection cache).
    let (mut a, _) = Ws::connect(&s.ws_url(), &alice.token).await;
    a.sync(0).await;
    let (st, v) = send_http(&base, &alice.token, &conv, "h1", "hello").await;
    assert_eq!(st, 200, "{v}");
    a.send_text(&conv, "w1", "hello again").await;
    let ack = a.next_type("sent").await;
    assert_eq!(ack["seq"], 2);

    let (st, _) = delete(&base, &alice.token, &format!("/v1/friends/{}", bob.user_id)).await;
    assert_eq!(st, 204);
    let (st, v) = delete(&base, &alice.token, &format!("/v1/friends/{}", bob.user_id)).await;
    assert_eq!(st, 404, "no friendship left: {v}");
    for tok in [&alice.token, &bob.token] {
        let (_, v) = get(&base, tok, "/v1/friends").await;
        assert_eq!(v["friends"].as_array().unwrap().len(), 0, "both sides: {v}");
    }
    for (who, tok) in [("alice", &alice.token), ("bob", &bob.token)] {
        let (st, v) = send_http(&base, tok, &conv, &format!("after-{who}"), "still there?").await;
        assert_eq!((st, code(&v)), (403, "not_friends"), "{who} HTTP send: {v}");
    }
    a.send_text(&conv, "w2", "still there?").await;
    let e = a.send_answer().await;
    assert_send_refused(&e, "not_friends", "w2", "WS send after unfriending");
    b.send_text(&conv, "wb", "me neither").await;
    let e = b.send_answer().await;
    assert_eq!(e["code"], "not_friends", "{e}");
    // Resends of messages stored while they were friends are duplicates, not refusals (over
    // either path, whichever path sent the original).
    a.send_text(&conv, "h1", "hello").await;
    let ack = a.send_answer().await;
    assert_duplicate(&ack, "h1", 1);
    let (st, v) = send_http(&base, &alice.token, &conv, "w1", "hello again").await;
    assert_eq!(
        (st, v["seq"].as_u64(), v["duplicate"].as_bool()),
        (200, Some(2), Some(true)),
        "HTTP resend after unfriending: {v}"
    );
    let (st, v) = post(
        &base,
        &alice.token,
        "/v1/conversations/direct",
        json!({"peer_id": bob.user_id}),
    )
    .await;
    assert_eq!((st, code(&v)), (403, "not_friends"), "{v}");
    // History stays readable.
    let (st, v) = get(
        &base,
        &bob.token,
        &format!("/v1/conversations/{conv}/messages"),
    )
    .await;
    assert_eq!((st, seqs(&v)), (200, vec![1, 2]));

    // Befriending again reopens the same conversation.
    assert_eq!(befriend(&base, &bob, &alice).await, conv);
    a.send_text(&conv, "w3", "back").await;
    let ack = a.send_answer().await;
    assert_sent(&ack, 3);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_may_talk_when_allowed() {
    let s = TestServer::start_with(|c| c.allow_strangers = true).await;
    let base = s.base_url();
    let alice = account(&base, "alice").await;
    let bob = account(&base, "bob").await;
    let (st, v) = post(
        &base,
        &alice.token,
        "/v1/conversations/direct",
        json!({"peer_id": bob.user_id}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let conv = v["conversation_id"].as_str().unwrap().to_owned();
    let (st, v) = send_http(&base, &alice.token, &conv, "s1", "hi stranger").await;
    assert_eq!((st, v["seq"].as_u64()), (200, Some(1)), "{v}");
    let (mut b, _) = Ws::connect(&s.ws_url(), &bob.token).await;
    b.sync(0).await;
    let e = b.next_event("message").await;
    assert_eq!(e["cursor"], 1, "no friend events: {e}");
    b.send_text(&conv, "s2", "hello").await;
    assert_eq!(b.next_type("sent").await["seq"], 2);
    let (_, v) = get(&base, &alice.token, "/v1/friends").await;
    assert_eq!(v["friends"].as_array().unwrap().len(), 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_damped_and_shared_with_friends_only() {
    const GRACE_MS: u64 = 300;
    let s = TestServer::start_with(|c| {
        c.allow_strangers = false;
        c.presence_grace_ms = GRACE_MS;
    })
    .await;
    let base = s.base_url();
    let alice = account(&base, "alice").await;
    let bob = account(&base, "bob").await;
    let carol = account(&base, "carol").await;
    befriend(&base, &alice, &bob).await;

    let (mut a, _) = Ws::connect(&s.ws_url(), &alice.token).await;
    a.sync(0).await;
    // Drain alice's catch-up (friend_added) and make sure the sync finished.
    a.send(json!({"type":"ping"})).await;
    a.next_type("pong").await;

    let (b, _) = Ws::connect(&s.ws_url(), &bob.token).await;
    let p = a.next_type("presence").await;
    assert_eq!(
        (p["user_id"].as_str(), p["online"].as_bool()),
        (Some(bob.user_id.as_str()), Some(true)),
        "{p}"
    );
    assert!(p["last_seen_ms"].is_u64(), "{p}");

    // A quick reconnect announces nothing.
    b.close().await;
    let (b2, _) = Ws::connect(&s.ws_url(), &bob.token).await;
    let quiet = a.frames_for(GRACE_MS * 2).await;
    assert!(
        quiet.iter().all(|f| f["type"] != "presence"),
        "reconnect within grace announced: {quiet:?}"
    );
    let (_, v) = get(&base, &alice.token, "/v1/friends").await;
    assert_eq!(v["friends"][0]["online"], true, "{v}");

    // A real disconnect is announced after the grace period.
    let closed_at = Instant::now();
    b2.close().await;
    let p = a.next_type("presence").await;
    let after = closed_at.elapsed();
    assert_eq!(
        (p["user_id"].as_str(), p["online"].as_bool()),
        (Some(bob.user_id.as_str()), Some(false)),
        "{p}"
    );
    assert!(p["last_seen_ms"].as_u64().unwrap() > 0, "{p}");
    assert!(
        after >= Duration::from_millis(GRACE_MS - 100),
        "offline announced after {after:?}, before the grace period"
    );
    let (_, v) = get(&base, &alice.token, "/v1/friends").await;
    assert_eq!(v["friends"][0]["online"], false, "{v}");
    assert_eq!(v["friends"][0]["last_seen_ms"], p["last_seen_ms"], "{v}");

    // Presence by id: friends only.
    let (mut c, _) = Ws::connect(&s.ws_url(), &carol.token).await;
    c.sync(0).await;
    let (st, v) = get(
        &base,
        &alice.token,
        &format!("/v1/presence?user_ids={},{}", bob.user_id, carol.user_id),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let list = v["presence"].as_array().unwrap();
    assert_eq!(list.len(), 1, "non-friends are omitted: {v}");
    assert_eq!(list[0]["user_id"], bob.user_id.as_str());
    assert_eq!(list[0]["online"], false);
    assert_eq!(list[0]["last_seen_ms"], p["last_seen_ms"]);
    // Carol (a stranger) came online: alice is not told.
    let frames = a.frames_for(200).await;
    assert!(frames.iter().all(|f| f["type"] != "presence"), "{frames:?}");

    // Former friends are not told either.
    let (st, _) = delete(&base, &alice.token, &format!("/v1/friends/{}", bob.user_id)).await;
    assert_eq!(st, 204);
    let (_b3, _) = Ws::connect(&s.ws_url(), &bob.token).await;
    let frames = a.frames_for(300).await;
    assert!(
        frames.iter().all(|f| f["type"] != "presence"),
        "presence after unfriending: {frames:?}"
    );
    let (_, v) = get(
        &base,
        &alice.token,
        &format!("/v1/presence?user_ids={}", bob.user_id),
    )
    .await;
    assert_eq!(v["presence"], json!([]), "{v}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_seen_survives_a_restart() {
    let s = TestServer::start_with(|c| {
        c.allow_strangers = false;
        c.presence_grace_ms = 100;
    })
    .await;
    let base = s.base_url();
    let alice = account(&base, "alice").await;
    let bob = account(&base, "bob").await;
    let carol = account(&base, "carol").await;
    let dave = account(&base, "dave").await;
    befriend(&base, &alice, &bob).await;
    befriend(&base, &alice, &carol).await;
    befriend(&base, &alice, &dave).await;

    let (mut a, _) = Ws::connect(&s.ws_url(), &alice.token).await;
    a.sync(0).await;
    a.send(json!({"type":"ping"})).await;
    a.next_type("pong").await;
    // Bob comes and goes; the announcer records his last-seen time before it tells alice.
    let (b, _) = Ws::connect(&s.ws_url(), &bob.token).await;
    a.next_type("presence").await;
    b.close().await;
    let gone = a.next_type("presence").await;
    assert_eq!(gone["online"], false, "{gone}");
    let bob_seen = gone["last_seen_ms"].as_u64().unwrap();
    assert!(bob_seen > 0);
    // Carol is still connected when the server stops.
    let (_c, _) = Ws::connect(&s.ws_url(), &carol.token).await;
    a.next_type("presence").await;
    let before_stop = now_ms();
    drop(a);

    let s = s.restart().await;
    let (st, v) = get(&base, &alice.token, "/v1/friends").await;
    assert_eq!(st, 200, "{v}");
    let seen = |user: &Account| {
        let f = v["friends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["user_id"] == user.user_id.as_str())
            .cloned()
            .unwrap();
        assert_eq!(f["online"], false, "{f}");
        f["last_seen_ms"].as_u64().unwrap()
    };
    assert_eq!(seen(&bob), bob_seen, "recorded when bob went offline");
    assert!(
        seen(&carol) >= before_stop,
        "recorded at shutdown for a user still online: {v}"
    );
    assert_eq!(seen(&dave), 0, "never connected: {v}");
    let (_, p) = get(
        &base,
        &alice.token,
        &format!("/v1/presence?user_ids={}", bob.user_id),
    )
    .await;
    assert_eq!(p["presence"][0]["last_seen_ms"], bob_seen, "{p}");
    s.stop().await;
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_is_limited_per_user_across_sockets() {
    let s = server().await;
    let base = s.base_url();
    let alice = account(&base, "alice").await;
    let bob = account(&base, "bob").await;
    let conv = befriend(&base, &alice, &bob).await;
    let alice2 = login(&base, "alice").await; // a second device, a second socket
    let (mut b, _) = Ws::connect(&s.ws_url(), &bob.token).await;
    let (mut a1, _) = Ws::connect(&s.ws_url(), &alice.token).await;
    let (mut a2, _) = Ws::connect(&s.ws_url(), &alice2.token).await;
    for ws in [&mut a1, &mut a2, &mut b] {
        ws.sync(0).await;
        ws.send(json!({"type":"ping"})).await;
        ws.next_type("pong").await;
    }
    b.frames_for(200).await; // presence from the connects
    let typing = json!({"type": "typing", "conversation_id": conv});
    for _ in 0..15 {
        a1.send(typing.clone()).await;
        a2.send(typing.clone()).await;
    }
    for ws in [&mut a1, &mut a2] {
        ws.send(json!({"type":"ping"})).await;
        ws.next_type("pong").await;
    }
    let relayed = b
        .frames_for(500)
        .await
        .iter()
        .filter(|f| f["type"] == "typing")
        .count();
    // One burst of 10 for alice, not one per socket (plus at most a refill during the test).
    assert!((10..=12).contains(&relayed), "relayed {relayed} of 30");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_is_relayed_to_the_peer_only() {
    let s = server().await;
    let base = s.base_url();
    let alice = account(&base, "alice").await;
    let bob = account(&base, "bob").await;
    let carol = account(&base, "carol").await;
    let conv = befriend(&base, &alice, &bob).await;
    let (mut a, _) = Ws::connect(&s.ws_url(), &alice.token).await;
    let (mut b, _) = Ws::connect(&s.ws_url(), &bob.token).await;
    let (mut c, _) = Ws::connect(&s.ws_url(), &carol.token).await;
    for ws in [&mut a, &mut b, &mut c] {
        ws.sync(0).await;
        ws.send(json!({"type":"ping"})).await;
        ws.next_type("pong").await;
    }
    // Presence frames from the connects may still be in flight; let them pass.
    a.frames_for(200).await;
    b.frames_for(50).await;

    b.send(json!({"type":"typing","conversation_id": conv}))
        .await;
    let t = a.next_type("typing").await;
    assert_eq!(t["conversation_id"], conv.as_str(), "{t}");
    assert_eq!(t["user_id"], bob.user_id.as_str(), "{t}");
    let echoed = b.frames_for(300).await;
    assert!(
        echoed.iter().all(|f| f["type"] != "typing"),
        "typing echoed to sender: {echoed:?}"
    );
    // Not a member: not relayed to anyone.
    c.send(json!({"type":"typing","conversation_id": conv}))
        .await;
    let frames = a.frames_for(300).await;
    assert!(
        frames.iter().all(|f| f["type"] != "typing"),
        "outsider's typing relayed: {frames:?}"
    );
    // The outsider is told why, with the conversation named.
    let e = c.next_type("error").await;
    assert_eq!(
        (e["code"].as_str(), e["conversation_id"].as_str()),
        (Some("forbidden"), Some(conv.as_str())),
        "{e}"
    );
    // Former friends may not type at each other either (as they may not send).
    let (st, _) = delete(&base, &alice.token, &format!("/v1/friends/{}", bob.user_id)).await;
    assert_eq!(st, 204);
    b.frames_for(200).await;
    b.send(json!({"type":"typing","conversation_id": conv}))
        .await;
    let e = b.next_type("error").await;
    assert_eq!(
        (e["code"].as_str(), e["conversation_id"].as_str()),
        (Some("not_friends"), Some(conv.as_str())),
        "{e}"
    );
    let frames = a.frames_for(300).await;
    assert!(
        frames.iter().all(|f| f["type"] != "typing"),
        "a former friend's typing relayed: {frames:?}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_list_unread_and_read_receipts() {
    let s = server().await;
    let base = s.base_url();
    let alice = account(&base, "alice").await;
    let bob1 = account(&base, "bob").await;
    let bob2 = login(&base, "bob").await;
    let carol = account(&base, "carol").await;
    let ab = befriend(&base, &alice, &bob1).await;
    let cb = befriend(&base, &carol, &bob1).await;

    let (st, v) = send_http(&base, &carol.token, &cb, "c1", "carol first").await;
    assert_eq!(st, 200, "{v}");
    tokio::time::sleep(Duration::from_millis(5)).await;
    for i in 1..=3 {
        let (st, v) = send_http(
            &base,
            &alice.token,
            &ab,
            &format!("a{i}"),
            &format!("alice {i}"),
        )
        .await;
        assert_eq!((st, v["seq"].as_u64()), (200, Some(i)), "{v}");
    }

    let (st, v) = get(&base, &bob1.token, "/v1/conversations").await;
    assert_eq!(st, 200, "{v}");
    let rows = v["conversations"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{v}");
    assert_eq!(
        rows[0]["conversation_id"],
        ab.as_str(),
        "most recent first: {v}"
    );
    assert_eq!(rows[1]["conversation_id"], cb.as_str(), "{v}");
    let row = &rows[0];
    assert_eq!(row["kind"], "direct");
    assert_eq!(row["peer_id"], alice.user_id.as_str());
    assert_eq!(row["member_count"], 2);
    assert_eq!(row["fanout"], "write");
    assert_eq!(row["last_seq"], 3);
    assert_eq!(row["last_message"]["seq"], 3);
    assert_eq!(row["last_message"]["text"], "alice 3");
    assert_eq!(row["last_message"]["kind"], "text");
    assert_eq!(row["read_seq"], 0);
    assert_eq!(row["unread_count"], 3);
    assert_eq!(row["muted"], false);
    assert_eq!(rows[1]["peer_id"], carol.user_id.as_str());
    assert_eq!(rows[1]["unread_count"], 1);

    // Own messages never count as unread.
    let (_, v) = get(&base, &alice.token, "/v1/conversations").await;
    let row = &v["conversations"][0];
    assert_eq!(
        (
            row["conversation_id"].as_str(),
            row["unread_count"].as_u64()
        ),
        (Some(ab.as_str()), Some(0)),
        "{v}"
    );
    assert_eq!(row["peer_id"], bob1.user_id.as_str());

    // New activity reorders the list.
    send_http(&base, &carol.token, &cb, "c2", "carol again").await;
    let (_, v) = get(&base, &bob1.token, "/v1/conversations").await;
    assert_eq!(v["conversations"][0]["conversation_id"], cb.as_str(), "{v}");
    assert_eq!(v["conversations"][0]["unread_count"], 2, "{v}");

    // Read over the socket: bob's other device is told, alice gets one receipt.
    let (mut a, _) = Ws::connect(&s.ws_url(), &alice.token).await;
    let (mut b1, _) = Ws::connect(&s.ws_url(), &bob1.token).await;
    let (mut b2, _) = Ws::connect(&s.ws_url(), &bob2.token).await;
    let heads = [
        inbox(&base, &alice.token).await.len() as u64,
        inbox(&base, &bob1.token).await.len() as u64,
    ];
    a.sync(heads[0]).await;
    b1.sync(heads[1]).await;
    b2.sync(heads[1]).await;
    for ws in [&mut a, &mut b1, &mut b2] {
        ws.send(json!({"type":"ping"})).await;
        ws.next_type("pong").await;
    }
    b1.send(json!({"type":"read","conversation_id": ab, "seq": 2}))
        .await;
    let r = b2.next_event("read").await;
    assert_eq!(
        (r["conversation_id"].as_str(), r["read_seq"].as_u64()),
        (Some(ab.as_str()), Some(2)),
        "{r}"
    );
    let r = b1.next_event("read").await;
    assert_eq!(
        r["read_seq"], 2,
        "the reading device's inbox has it too: {r}"
    );
    let rc = a.next_event("receipt").await;
    assert_eq!(rc["conversation_id"], ab.as_str(), "{rc}");
    assert_eq!(rc["user_id"], bob1.user_id.as_str(), "{rc}");
    assert_eq!(rc["read_seq"], 2, "{rc}");
    let more = a.frames_for(300).await;
    assert!(
        more.iter().all(|f| f["kind"] != "receipt"),
        "one receipt only: {more:?}"
    );
    let (_, v) = get(&base, &bob1.token, "/v1/conversations").await;
    let row = v["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["conversation_id"] == ab.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        (row["read_seq"].as_u64(), row["unread_count"].as_u64()),
        (Some(2), Some(1)),
        "{row}"
    );

    // HTTP read clamps to the last seq.
    let (st, v) = post(
        &base,
        &bob2.token,
        &format!("/v1/conversations/{ab}/read"),
        json!({"seq": 99}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v["conversation_id"].as_str(), v["read_seq"].as_u64()),
        (Some(ab.as_str()), Some(3)),
        "{v}"
    );
    assert_eq!(a.next_event("receipt").await["read_seq"], 3);
    assert_eq!(b1.next_event("read").await["read_seq"], 3);
    assert_eq!(b2.next_event("read").await["read_seq"], 3);
    let (_, v) = get(&base, &bob1.token, "/v1/conversations").await;
    let row = v["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["conversation_id"] == ab.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        (row["read_seq"].as_u64(), row["unread_count"].as_u64()),
        (Some(3), Some(0)),
        "{row}"
    );

    // A lower read does not move it back and says nothing.
    let heads = [
        inbox(&base, &alice.token).await.len(),
        inbox(&base, &bob1.token).await.len(),
    ];
    let (st, v) = post(
        &base,
        &bob1.token,
        &format!("/v1/conversations/{ab}/read"),
        json!({"seq": 1}),
    )
    .await;
    assert_eq!((st, v["read_seq"].as_u64()), (200, Some(3)), "{v}");
    b1.send(json!({"type":"read","conversation_id": ab, "seq": 2}))
        .await;
    let (fa, fb) = tokio::join!(a.frames_for(400), b2.frames_for(400));
    assert!(fa.iter().all(|f| f["type"] != "event"), "alice: {fa:?}");
    assert!(fb.iter().all(|f| f["type"] != "event"), "bob2: {fb:?}");
    assert_eq!(inbox(&base, &alice.token).await.len(), heads[0]);
    assert_eq!(inbox(&base, &bob1.token).await.len(), heads[1]);
    let (_, v) = get(&base, &bob1.token, "/v1/conversations").await;
    let row = v["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["conversation_id"] == ab.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        (row["read_seq"].as_u64(), row["unread_count"].as_u64()),
        (Some(3), Some(0)),
        "{row}"
    );

    // Reading someone else's conversation is refused, over HTTP and the socket.
    let (st, _) = post(
        &base,
        &carol.token,
        &format!("/v1/conversations/{ab}/read"),
        json!({"seq": 1}),
    )
    .await;
    assert_eq!(st, 403);
    let (mut c, _) = Ws::connect(&s.ws_url(), &carol.token).await;
    c.send(json!({"type":"read","conversation_id": ab, "seq": 1}))
        .await;
    let e = c.next_type("error").await;
    assert_eq!(e["code"], "forbidden", "{e}");

    // Receipts of a direct message: the peer.
    let (st, v) = get(
        &base,
        &alice.token,
        &format!("/v1/conversations/{ab}/receipts?seq=3"),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (
            v["seq"].as_u64(),
            v["read_count"].as_u64(),
            v["unread_count"].as_u64()
        ),
        (Some(3), Some(1), Some(0)),
        "{v}"
    );
    assert_eq!(
        (v["read"].clone(), v["unread"].clone()),
        (json!([bob1.user_id]), json!([])),
        "{v}"
    );
    send_http(&base, &alice.token, &ab, "a4", "alice 4").await;
    let (_, v) = get(
        &base,
        &alice.token,
        &format!("/v1/conversations/{ab}/receipts?seq=4"),
    )
    .await;
    assert_eq!(
        (v["read"].clone(), v["unread"].clone()),
        (json!([]), json!([bob1.user_id])),
        "{v}"
    );
    let (st, _) = get(
        &base,
        &carol.token,
        &format!("/v1/conversations/{ab}/receipts?seq=3"),
    )
    .await;
    assert_eq!(st, 403);

    // Muting shows in the list.
    let (st, v) = put(
        &base,
        &bob1.token,
        &format!("/v1/conversations/{ab}/settings"),
        json!({"muted": true}),
    )
    .await;
    assert_eq!((st, v["muted"].as_bool()), (200, Some(true)), "{v}");
    let (_, v) = get(&base, &bob1.token, "/v1/conversations").await;
    for r in v["conversations"].as_array().unwrap() {
        let expect = r["conversation_id"] == ab.as_str();
        assert_eq!(r["muted"], expect, "{r}");
    }
    let (_, v) = get(&base, &alice.token, "/v1/conversations").await;
    assert_eq!(
        v["conversations"][0]["muted"], false,
        "muting is per user: {v}"
    );
    let (st, _) = put(
        &base,
        &carol.token,
        &format!("/v1/conversations/{ab}/settings"),
        json!({"muted": true}),
    )
    .await;
    assert_eq!(st, 403);
    s.stop().await;
}
