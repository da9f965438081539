//! Protocol-level integration tests over real sockets against an in-process server.

mod common;

use common::*;
use magpie_server::testing::TestServer;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_sessions_and_user_lookup() {
    let s = TestServer::start_with(|c| c.allow_strangers = true).await;
    let base = s.base_url();
    let c = reqwest::Client::new();
    let r = c
        .post(format!("{base}/v1/accounts"))
        .json(&json!({"username":"alice","password":"password123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: serde_json::Value = r.json().await.unwrap();
    assert_eq!(created["username"], "alice");
    assert!(created["user_id"].is_string());
    let r = c
        .post(format!("{base}/v1/accounts"))
        .json(&json!({"username":"alice","password":"password123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"]["code"],
        "username_taken"
    );
    for bad in [
        json!({"username":"Al","password":"password123"}),
        json!({"username":"bob","password":"short"}),
        json!({"username":"bob"}),
    ] {
        let r = c
            .post(format!("{base}/v1/accounts"))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        assert_eq!(
            r.json::<serde_json::Value>().await.unwrap()["error"]["code"],
            "invalid_request"
        );
    }
    let r = c
        .post(format!("{base}/v1/sessions"))
        .json(&json!({"username":"alice","password":"wrongpass1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"]["code"],
        "unauthorized"
    );
    let a1 = login(&base, "alice").await;
    let a2 = login(&base, "alice").await;
    assert_ne!(a1.device_id, a2.device_id, "each login is a new device");
    assert_ne!(a1.token, a2.token);
    let (st, v) = get(&base, &a1.token, &format!("/v1/users/{}", a1.user_id)).await;
    assert_eq!((st, v["username"].as_str()), (200, Some("alice")));
    let (st, v) = get(&base, &a1.token, "/v1/users?username=alice").await;
    assert_eq!(
        (st, v["user_id"].as_str()),
        (200, Some(a1.user_id.as_str()))
    );
    let (st, _) = get(&base, &a1.token, "/v1/users?username=nobody").await;
    assert_eq!(st, 404);
    let (st, v) = get(&base, "not-a-token", "/v1/users?username=alice").await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_three_devices_get_ordered_delivery() {
    let s = TestServer::start_with(|c| c.allow_strangers = true).await;
    let base = s.base_url();
    let alice1 = account(&base, "alice").await;
    let alice2 = login(&base, "alice").await;
    let bob = account(&base, "bob").await;
    let conv = direct(&base, &alice1, &bob).await;
    assert_eq!(
        direct(&base, &bob, &alice1).await,
        conv,
        "same conversation from either side"
    );
    let (mut a1, _) = Ws::connect(&s.ws_url(), &alice1.token).await;
    let (mut a2, _) = Ws::connect(&s.ws_url(), &alice2.token).await;
    let (mut b, _) = Ws::connect(&s.ws_url(), &bob.token).await;
    for ws in [&mut a1, &mut a2, &mut b] {
        ws.sync(0).await;
    }
    const N: usize = 30;
    for i in 0..N {
        a1.send_text(&conv, &format!("m{i}"), &format!("hello {i}"))
            .await;
    }
    // The sender's acks come in send order with gap-free seqs; its own device also gets events.
    let mut acks = Vec::new();
    let mut own_events = Vec::new();
    while acks.len() < N || own_events.len() < N {
        let f = a1.next().await;
        match f["type"].as_str() {
            Some("sent") => acks.push(f),
            Some("event") => own_events.push(f),
            other => panic!("unexpected {other:?}: {f}"),
        }
    }
    for (i, ack) in acks.iter().enumerate() {
        assert_eq!(ack["client_msg_id"], format!("m{i}"));
        assert_eq!(ack["seq"], i as u64 + 1);
        assert_eq!(ack["duplicate"], false);
    }
    for ws_events in [own_events, a2.events(N).await, b.events(N).await] {
        for (i, e) in ws_events.iter().enumerate() {
            assert_eq!(e["cursor"], i as u64 + 1);
            assert_eq!(e["kind"], "message");
            assert_eq!(e["message"]["seq"], i as u64 + 1);
            assert_eq!(e["message"]["text"], format!("hello {i}"));
            assert_eq!(e["message"]["sender_id"], alice1.user_id.as_str());
            assert_eq!(e["message"]["conversation_id"], conv.as_str());
        }
    }
    b.send_text(&conv, "r1", "hi alice").await;
    let ack = loop {
        let f = b.next().await;
        if f["type"] == "sent" {
            break f;
        }
    };
    assert_eq!(ack["seq"], N as u64 + 1);
    for ws in [&mut a1, &mut a2] {
        let e = ws.events(1).await.remove(0);
        assert_eq!(e["message"]["text"], "hi alice");
        assert_eq!(e["cursor"], N as u64 + 1);
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_device_catches_up_from_its_cursor() {
    let s = TestServer::start_with(|c| c.allow_strangers = true).await;
    let base = s.base_url();
    let alice = account(&base, "alice").await;
    let bob = account(&base, "bob").await;
    let conv = direct(&base, &alice, &bob).await;
    for i in 0..5 {
        let (st, v) = post(
            &base,
            &alice.token,
            &format!("/v1/conversations/{conv}/messages"),
            json!({"client_msg_id": format!("c{i}"), "text": format!("t{i}")}),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["seq"], i + 1);
    }
    let (mut b, ready) = Ws::connect(&s.ws_url(), &bob.token).await;
    assert_eq!(ready["cursor"], 0);
    assert_eq!(ready["inbox_head"], 5, "five events wait in bob's inbox");
    assert_eq!(ready["user_id"], bob.user_id.as_str());
    assert_eq!(ready["device_id"], bob.device_id.as_str());
    assert!(ready["heartbeat_ms"].as_u64().unwrap() > 0);
    b.quiet_for(200).await; // nothing until the client asks
    b.sync(0).await;
    let events = b.events(5).await;
    assert_eq!(
        events
            .iter()
            .map(|e| e["cursor"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    b.send(json!({"type":"ack","cursor":3})).await;
    b.send(json!({"type":"ping"})).await;
    assert_eq!(b.next().await["type"], "pong");
    drop(b);
    // The ack is recorded asynchronously; poll until the next ready carries it.
    let mut cursor = 0;
    for _ in 0..50 {
        let (mut b, ready) = Ws::connect(&s.ws_url(), &bob.token).await;
        cursor = ready["cursor"].as_u64().unwrap();
        if cursor == 3 {
            b.sync(3).await;
            let events = b.events(2).await;
            assert_eq!(events[0]["cursor"], 4);
            assert_eq!(events[1]["cursor"], 5);
            post(
                &base,
                &alice.token,
                &format!("/v1/conversations/{conv}/messages"),
                json!({"client_msg_id":"live","text":"live one"}),
            )
            .await;
            let e = b.events(1).await.remove(0);
            assert_eq!(
                (e["cursor"].as_u64(), e["message"]["text"].as_str()),
                (Some(6), Some("live one"))
            );
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(cursor, 3, "device cursor persisted");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_resend_returns_original_seq_and_no_new_event() {
    let s = TestServer::start_with(|c| c.allow_strangers = true).await;
    let base = s.base_url();
    let alice = account(&base, "alice").await;
    let bob = account(&base, "bob").await;
    let conv = direct(&base, &alice, &bob).await;
    let (mut a, _) = Ws::connect(&s.ws_url(), &alice.token).await;
    let (mut b, _) = Ws::connect(&s.ws_url(), &bob.token).await;
    b.sync(0).await;
    a.send_text(&conv, "same", "once").await;
    a.send_text(&conv, "same", "once").await;
    let first = a.next().await;
    let second = a.next().await;
    assert_eq!(
        (
            first["type"].as_str(),
            first["seq"].as_u64(),
            first["duplicate"].as_bool()
        ),
        (Some("sent"), Some(1), Some(false))
    );
    assert_eq!(
        (
            second["type"].as_str(),
            second["seq"].as_u64(),
            second["duplicate"].as_bool()
        ),
        (Some("sent"), Some(1), Some(true))
    );
    let (st, v) = post(
        &base,
        &alice.token,
        &format!("/v1/conversations/{conv}/messages"),
        json!({"client_msg_id":"same","text":"once"}),
    )
    .await;
    assert_eq!(
        (st, v["seq"].as_u64(), v["duplicate"].as_bool()),
        (200, Some(1), Some(true))
    );
    assert_eq!(b.events(1).await[0]["cursor"], 1);
    b.quiet_for(300).await;
    let (_, page) = get(&base, &bob.token, "/v1/sync?cursor=0").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_in_both_directions() {
    let s = TestServer::start_with(|c| c.allow_strangers = true).await;
    let base = s.base_url();
    let alice = account(&base, "alice").await;
    let bob = account(&base, "bob").await;
    let carol = account(&base, "carol").await;
    let conv = direct(&base, &alice, &bob).await;
    let (mut a, _) = Ws::connect(&s.ws_url(), &alice.token).await;
    for i in 1..=120 {
        a.send_text(&conv, &format!("h{i}"), &format!("n{i}")).await;
    }
    let mut acked = 0;
    while acked < 120 {
        if a.next().await["type"] == "sent" {
            acked += 1;
        }
    }
    let seqs = |v: &serde_json::Value| {
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    let (st, v) = get(
        &base,
        &bob.token,
        &format!("/v1/conversations/{conv}/messages"),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(seqs(&v), (71..=120).collect::<Vec<_>>());
    let (_, v) = get(
        &base,
        &bob.token,
        &format!("/v1/conversations/{conv}/messages?before_seq=71&limit=50"),
    )
    .await;
    assert_eq!(seqs(&v), (21..=70).collect::<Vec<_>>());
    let (_, v) = get(
        &base,
        &bob.token,
        &format!("/v1/conversations/{conv}/messages?before_seq=21&limit=50"),
    )
    .await;
    assert_eq!(seqs(&v), (1..=20).collect::<Vec<_>>());
    let (_, v) = get(
        &base,
        &bob.token,
        &format!("/v1/conversations/{conv}/messages?after_seq=100&limit=10"),
    )
    .await;
    assert_eq!(seqs(&v), (101..=110).collect::<Vec<_>>());
    let (_, v) = get(
        &base,
        &bob.token,
        &format!("/v1/conversations/{conv}/messages?after_seq=0&limit=200"),
    )
    .await;
    assert_eq!(seqs(&v), (1..=120).collect::<Vec<_>>());
    assert_eq!(v["messages"][0]["text"], "n1");
    let (st, v) = get(
        &base,
        &bob.token,
        &format!("/v1/conversations/{conv}/messages?limit=201"),
    )
    .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("invalid_request"))
    );
    let (st, v) = get(
        &base,
        &carol.token,
        &format!("/v1/conversations/{conv}/messages"),
    )
    .await;
    assert_eq!((st, v["error"]["code"].as_str()), (403, Some("forbidden")));
    let (st, _) = get(&base, &carol.token, "/v1/conversations/999999/messages").await;
    assert_eq!(st, 403);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_send_and_long_poll_sync() {
    let s = TestServer::start_with(|c| c.allow_strangers = true).await;
    let base = s.base_url();
    let alice = account(&base, "alice").await;
    let bob = account(&base, "bob").await;
    let conv = direct(&base, &alice, &bob).await;
    let (st, v) = get(&base, &bob.token, "/v1/sync?cursor=0").await;
    assert_eq!(
        (
            st,
            v["next_cursor"].as_u64(),
            v["events"].as_array().map(|a| a.len())
        ),
        (200, Some(0), Some(0))
    );
    let poll_base = base.clone();
    let token = bob.token.clone();
    let started = std::time::Instant::now();
    let poll =
        tokio::spawn(
            async move { get(&poll_base, &token, "/v1/sync?cursor=0&wait_ms=10000").await },
        );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (st, sent) = post(
        &base,
        &alice.token,
        &format!("/v1/conversations/{conv}/messages"),
        json!({"client_msg_id":"lp","text":"wake up"}),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(sent["duplicate"], false);
    assert!(sent["ts_ms"].as_u64().unwrap() > 0);
    let (st, page) = poll.await.unwrap();
    assert_eq!(st, 200);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(9),
        "long-poll woke on the event"
    );
    assert_eq!(page["events"][0]["message"]["text"], "wake up");
    assert_eq!(page["next_cursor"], 1);
    let (st, v) = get(&base, &bob.token, "/v1/sync?cursor=99").await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("invalid_request")),
        "cursor ahead of head"
    );
    let (mut b, _) = Ws::connect(&s.ws_url(), &bob.token).await;
    b.sync(99).await;
    assert_eq!(b.next().await["code"], "invalid_request");
    // A long-poll with nothing new returns empty when the wait ends.
    let (st, page) = get(&base, &bob.token, "/v1/sync?cursor=1&wait_ms=200").await;
    assert_eq!(
        (
            st,
            page["events"].as_array().unwrap().len(),
            page["next_cursor"].as_u64()
        ),
        (200, 0, Some(1))
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_error_codes_keep_the_connection_open() {
    let s = TestServer::start_with(|c| {
        c.allow_strangers = true;
        c.send_rate_per_sec = 1;
        c.send_burst = 8;
    })
    .await;
    let base = s.base_url();
    let alice = account(&base, "alice").await;
    let bob = account(&base, "bob").await;
    let carol = account(&base, "carol").await;
    let conv = direct(&base, &alice, &bob).await;
    let (mut c, _) = Ws::connect(&s.ws_url(), &carol.token).await;
    c.send_text(&conv, "x1", "intruder").await;
    let e = c.next().await;
    assert_eq!(
        (
            e["type"].as_str(),
            e["code"].as_str(),
            e["client_msg_id"].as_str()
        ),
        (Some("error"), Some("forbidden"), Some("x1"))
    );
    c.send_text("424242", "x2", "nowhere").await;
    assert_eq!(c.next().await["code"], "forbidden");
    let (mut a, _) = Ws::connect(&s.ws_url(), &alice.token).await;
    a.send_text(&conv, "long", &"y".repeat(100_001)).await;
    let e = a.next().await;
    assert_eq!(
        (e["code"].as_str(), e["client_msg_id"].as_str()),
        (Some("message_too_long"), Some("long"))
    );
    a.send_text(&conv, "max", &"é".repeat(100_000)).await;
    let ok = a.next().await;
    assert_eq!(
        (ok["type"].as_str(), ok["seq"].as_u64()),
        (Some("sent"), Some(1)),
        "100,000 characters fit"
    );
    a.send_text(&conv, "empty", "").await;
    assert_eq!(a.next().await["code"], "invalid_request");
    a.send_text(&conv, "bad id with spaces", "x").await;
    assert_eq!(a.next().await["code"], "invalid_request");
    a.send_raw("{not json").await;
    assert_eq!(a.next().await["code"], "bad_frame");
    a.send_raw(r#"{"type":"teleport"}"#).await;
    assert_eq!(a.next().await["code"], "bad_frame");
    a.send_raw(r#"{"type":"send","conversation_id":5}"#).await;
    assert_eq!(a.next().await["code"], "bad_frame");
    a.send(json!({"type":"ping"})).await;
    assert_eq!(
        a.next().await["type"],
        "pong",
        "connection stays open after bad frames"
    );
    // Burst is 8 and one token was used per send above (4 sends); exhaust the rest.
    let mut limited = 0;
    for i in 0..10 {
        a.send_text(&conv, &format!("r{i}"), "spam").await;
    }
    for _ in 0..10 {
        let f = a.next().await;
        if f["code"] == "rate_limited" {
            limited += 1;
        }
    }
    assert!(limited >= 5, "rate limit kicked in ({limited})");
    s.stop().await;
}

/// The send limit belongs to the device: a new socket does not bring a new burst, and HTTP
/// sends draw on the same allowance; another device of the same user has its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_send_limit_follows_the_device_across_sockets_and_http() {
    // A burst of 20 refilling at 1/s: a few seconds of slowness on a busy machine refill a
    // few sends, not the burst.
    const BURST: usize = 20;
    let s = TestServer::start_with(|c| {
        c.allow_strangers = true;
        c.send_rate_per_sec = 1;
        c.send_burst = BURST as u32;
    })
    .await;
    let base = s.base_url();
    let (alice, _bob, conv) = alice_and_bob(&base).await;
    let (mut a, _) = Ws::connect(&s.ws_url(), &alice.token).await;
    for i in 0..BURST {
        a.send_text(&conv, &format!("s{i}"), "hi").await;
    }
    for _ in 0..BURST {
        assert_eq!(a.send_answer().await["type"], "sent");
    }
    a.close().await;
    // A new socket of the same device: no new burst.
    let (mut a, _) = Ws::connect(&s.ws_url(), &alice.token).await;
    for i in 0..10 {
        a.send_text(&conv, &format!("again{i}"), "hi").await;
    }
    let mut limited = 0;
    for _ in 0..10 {
        limited += usize::from(a.send_answer().await["code"] == "rate_limited");
    }
    assert!(
        limited >= 5,
        "a reconnect refilled the burst: {limited} of 10 limited"
    );
    // HTTP sends draw on the same allowance.
    let mut refused = 0;
    for i in 0..10 {
        let (status, v) = send_http(&base, &alice.token, &conv, &format!("h{i}"), "hi").await;
        if status == 429 {
            assert_eq!(code(&v), "rate_limited", "{v}");
            refused += 1;
        }
    }
    assert!(
        refused >= 5,
        "HTTP sends are not limited: {refused} of 10 refused"
    );
    // Another device of the same user has its own allowance.
    let other = login(&base, "alice").await;
    let (status, v) = send_http(&base, &other.token, &conv, "other-device", "hi").await;
    assert_eq!(status, 200, "{v}");
    s.stop().await;
}

/// `read`, `pull` and `sync` frames are paced per connection (500/s after a burst of 1,000):
/// each costs a store read or a writer op, and a flood from one socket would slow everyone's
/// writes. Frames beyond the rate wait instead of being refused, so nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_read_frames_is_paced_and_nothing_is_refused() {
    let s = TestServer::start_with(|c| c.allow_strangers = true).await;
    let base = s.base_url();
    let (alice, _bob, conv) = alice_and_bob(&base).await;
    let (mut a, _) = Ws::connect(&s.ws_url(), &alice.token).await;
    let started = std::time::Instant::now();
    // 2,000 frames: 1,000 at once, the other 1,000 at 500/s, so about 2 s.
    for _ in 0..2_000 {
        a.send(json!({"type":"read","conversation_id": conv, "seq": 1}))
            .await;
    }
    a.send(json!({"type":"ping"})).await;
    let f = a
        .next_where("pong", |f| f["type"] == "pong" || f["type"] == "error")
        .await;
    assert_eq!(f["type"], "pong", "a read frame was refused: {f}");
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(1_500),
        "2,000 read frames were served in {took:?}, faster than the pace allows"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_closes_with_1009_and_server_survives() {
    let s = TestServer::start_with(|c| c.allow_strangers = true).await;
    let base = s.base_url();
    let alice = account(&base, "alice").await;
    let (mut a, _) = Ws::connect(&s.ws_url(), &alice.token).await;
    let oversized = "z".repeat(magpie_server::ws::FRAME_BYTES_MAX + 1);
    match a.try_send_raw(&oversized).await {
        // The server read the frame's header, refused it and said why.
        Ok(()) => assert_eq!(a.closed_with().await, 1009),
        // The server refused the frame while we were still writing its body: closing a socket
        // with unread input makes the kernel answer with a reset, which can overtake the close
        // frame. Either way the frame was refused and the connection is gone.
        Err(e) => assert!(
            matches!(&e, tokio_tungstenite::tungstenite::Error::Io(io)
                if io.kind() == std::io::ErrorKind::ConnectionReset
                    || io.kind() == std::io::ErrorKind::BrokenPipe),
            "unexpected write error: {e}"
        ),
    }
    let (mut a, _) = Ws::connect(&s.ws_url(), &alice.token).await;
    a.send(json!({"type":"ping"})).await;
    assert_eq!(a.next().await["type"], "pong");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_token_and_closes_sockets() {
    let s = TestServer::start_with(|c| c.allow_strangers = true).await;
    let base = s.base_url();
    let alice = account(&base, "alice").await;
    let other = login(&base, "alice").await;
    let (mut a, _) = Ws::connect(&s.ws_url(), &alice.token).await;
    a.sync(0).await;
    let (mut o, _) = Ws::connect(&s.ws_url(), &other.token).await;
    let r = reqwest::Client::new()
        .delete(format!("{base}/v1/sessions/current"))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(a.closed_with().await, magpie_protocol::close::CLOSE_REVOKED);
    let (st, _) = get(&base, &alice.token, "/v1/users?username=alice").await;
    assert_eq!(st, 401);
    let err = tokio_tungstenite::connect_async(format!("{}?token={}", s.ws_url(), alice.token))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 401),
        other => panic!("expected 401, got {other}"),
    }
    // The other device is unaffected.
    o.send(json!({"type":"ping"})).await;
    assert_eq!(o.next().await["type"], "pong");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_token_is_refused_at_upgrade() {
    let s = TestServer::start_with(|c| c.allow_strangers = true).await;
    for url in [
        s.ws_url(),
        format!("{}?token=deadbeef", s.ws_url()),
        format!("{}?token={}", s.ws_url(), "a".repeat(64)),
    ] {
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 401)
            }
            other => panic!("expected 401, got {:?}", other.map(|_| ())),
        }
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_is_closed_after_three_heartbeats() {
    let s = TestServer::start_with(|c| {
        c.allow_strangers = true;
        c.heartbeat_ms = 100;
    })
    .await;
    let alice = account(&s.base_url(), "alice").await;
    let (mut a, ready) = Ws::connect(&s.ws_url(), &alice.token).await;
    assert_eq!(ready["heartbeat_ms"], 100);
    let started = std::time::Instant::now();
    assert_eq!(
        a.closed_with().await,
        magpie_protocol::close::CLOSE_HEARTBEAT_TIMEOUT
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(250));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_history_cursors_and_dedup() {
    let s = TestServer::start_with(|c| c.allow_strangers = true).await;
    let base = s.base_url();
    let alice = account(&base, "alice").await;
    let bob = account(&base, "bob").await;
    let conv = direct(&base, &alice, &bob).await;
    for i in 0..3 {
        post(
            &base,
            &alice.token,
            &format!("/v1/conversations/{conv}/messages"),
            json!({"client_msg_id": format!("k{i}"), "text": "before"}),
        )
        .await;
    }
    let s = s.restart().await;
    let (st, v) = post(
        &base,
        &alice.token,
        &format!("/v1/conversations/{conv}/messages"),
        json!({"client_msg_id":"k1","text":"before"}),
    )
    .await;
    assert_eq!(
        (st, v["seq"].as_u64(), v["duplicate"].as_bool()),
        (200, Some(2), Some(true))
    );
    let (_, v) = post(
        &base,
        &alice.token,
        &format!("/v1/conversations/{conv}/messages"),
        json!({"client_msg_id":"k9","text":"after"}),
    )
    .await;
    assert_eq!(
        (v["seq"].as_u64(), v["duplicate"].as_bool()),
        (Some(4), Some(false))
    );
    let (_, page) = get(&base, &bob.token, "/v1/sync?cursor=0").await;
    let cursors: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["cursor"].as_u64().unwrap())
        .collect();
    assert_eq!(cursors, vec![1, 2, 3, 4]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_report_connections_messages_latencies_and_fsync_batches() {
    let s = TestServer::start_with(|c| c.allow_strangers = true).await;
    let base = s.base_url();
    let alice = account(&base, "alice").await;
    let bob = account(&base, "bob").await;
    let conv = direct(&base, &alice, &bob).await;
    let (mut a, _) = Ws::connect(&s.ws_url(), &alice.token).await;
    a.send_text(&conv, "m1", "hello").await;
    assert_eq!(a.next_type("sent").await["seq"], 1);

    let r = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    for name in [
        "magpie_ws_connections",            // connections
        "magpie_messages_sent_total",       // messages
        "magpie_ws_append_seconds_count",   // send latency as the server sees it
        "magpie_ws_send_ack_seconds_count", // and from frame read to ack written
        "magpie_store_commit_seconds_count",
        "magpie_store_fsync_seconds_count",
        "magpie_store_batch_ops_count", // fsync batches and their size
        "magpie_store_fsyncs_total",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} missing from /metrics:\n{text}"
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_huge_messages_stop_at_the_byte_budget_and_say_so() {
    let s = TestServer::start_with(|c| c.allow_strangers = true).await;
    let base = s.base_url();
    let alice = account(&base, "alice").await;
    let bob = account(&base, "bob").await;
    let conv = direct(&base, &alice, &bob).await;
    // 100,000 control characters: about 600 KB of JSON each, so two never share a page, and
    // five in one frame would pass the socket's write buffer bound.
    let huge = "\u{1}".repeat(100_000);
    for i in 1..=5u64 {
        let (status, v) = send_http(&base, &alice.token, &conv, &format!("h{i}"), &huge).await;
        assert_eq!(status, 200, "{v}");
    }
    let path = |q: &str| format!("/v1/conversations/{conv}/messages?limit=200{q}");

    // Forward pages keep the oldest, backward and latest pages the newest; each says it was cut.
    let mut seen: Vec<u64> = Vec::new();
    let mut after = 0;
    loop {
        let (status, page) = get(&base, &bob.token, &path(&format!("&after_seq={after}"))).await;
        assert_eq!(status, 200);
        let got = seqs(&page);
        if got.is_empty() {
            assert_eq!(
                page["truncated"],
                serde_json::Value::Null,
                "an empty page is not cut"
            );
            break;
        }
        assert_eq!(got.len(), 1);
        assert_eq!(
            page["messages"][0]["text"].as_str().map(str::len),
            Some(100_000)
        );
        let truncated = page["truncated"].as_bool().unwrap_or(false);
        assert_eq!(truncated, got[0] < 5, "page after {after}");
        seen.extend(&got);
        after = got[0];
    }
    assert_eq!(seen, [1, 2, 3, 4, 5]);
    let (_, latest) = get(&base, &bob.token, &path("")).await;
    assert_eq!(
        (seqs(&latest), latest["truncated"].as_bool()),
        (vec![5], Some(true))
    );
    let (_, older) = get(&base, &bob.token, &path("&before_seq=5")).await;
    assert_eq!(
        (seqs(&older), older["truncated"].as_bool()),
        (vec![4], Some(true))
    );

    // The socket's pull answers one message and stays open (the whole page would be ~3 MB).
    let (mut b, _) = Ws::connect(&s.ws_url(), &bob.token).await;
    let answer = b.pull(&conv, 0, 200).await;
    assert_eq!(
        (seqs(&answer), answer["truncated"].as_bool()),
        (vec![1], Some(true)),
        "{}",
        answer["type"]
    );
    let answer = b.pull(&conv, 4, 200).await;
    assert_eq!((seqs(&answer), answer.get("truncated")), (vec![5], None));
    b.send(json!({"type":"ping"})).await;
    assert_eq!(b.next_type("pong").await["type"], "pong");

    // HTTP sync pages are simply shorter; next_cursor continues where they stopped.
    let (status, page) = get(&base, &bob.token, "/v1/sync?cursor=0&limit=200").await;
    assert_eq!(status, 200);
    let events = page["events"].as_array().expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(page["next_cursor"], events[0]["cursor"]);
    s.stop().await;
}

/// Pages of messages whose text is 4-byte characters stop in the store (at 1 MiB of text), not
/// only on the wire: history pages still say they were cut, and a socket's catch-up goes on
/// past such a page instead of taking it for the end of the inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_wide_characters_stop_in_the_store_and_catch_up_goes_on() {
    let s = TestServer::start_with(|c| c.allow_strangers = true).await;
    let base = s.base_url();
    let (alice, bob, conv) = alice_and_bob(&base).await;
    // 400,000 bytes each: the store stops a page at the third, the wire keeps two.
    let wide = "😀".repeat(100_000);
    for i in 1..=8u64 {
        let (status, v) = send_http(&base, &alice.token, &conv, &format!("w{i}"), &wide).await;
        assert_eq!(status, 200, "{v}");
    }
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let path = format!("/v1/conversations/{conv}/messages?limit=200&after_seq={after}");
        let (status, page) = get(&base, &bob.token, &path).await;
        assert_eq!(status, 200);
        let got = seqs(&page);
        let Some(&last) = got.last() else { break };
        assert_eq!(got.len(), 2, "page after {after}");
        let truncated = page["truncated"].as_bool().unwrap_or(false);
        assert_eq!(truncated, last < 8, "page after {after}");
        seen.extend(got);
        after = last;
    }
    assert_eq!(seen, (1..=8).collect::<Vec<u64>>());
    // Catch-up over the socket delivers all eight events, in cursor order.
    let (mut b, _) = Ws::connect(&s.ws_url(), &bob.token).await;
    b.sync(0).await;
    let events = b.events(8).await;
    let cursors: Vec<u64> = events.iter().filter_map(|e| e["cursor"].as_u64()).collect();
    assert_eq!(cursors, (1..=8).collect::<Vec<u64>>());
    s.stop().await;
}
