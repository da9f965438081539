//! Offline push over a real webhook: a local HTTP receiver stands in for the push gateway.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::*;
use hmac::{Hmac, Mac};
use magpie_server::testing::TestServer;
use parking_lot::Mutex;
use serde_json::{json, Value};
use sha2::Sha256;

const SECRET: &str = "webhook-secret-for-tests";
const COALESCE_MS: u64 = 300;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Hit {
    at: Instant,
    signature: Option<String>,
    timestamp: Option<String>,
    content_type: Option<String>,
    body: Bytes,
}

impl Hit {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("push body is JSON")
    }

    /// Checks `x-magpie-signature: sha256=<hex HMAC-SHA256(secret, "{ts}.{body}")>` with
    /// `x-magpie-timestamp: {ts}`, a recent Unix time in milliseconds.
    fn assert_signed(&self) {
        let sig = self
            .signature
            .as_deref()
            .expect("x-magpie-signature header");
        let ts = self
            .timestamp
            .as_deref()
            .expect("x-magpie-timestamp header");
        let ts_ms: u64 = ts.parse().expect("timestamp is an integer");
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(
            ts_ms <= now_ms && now_ms - ts_ms < 60_000,
            "timestamp {ts_ms} is recent (now {now_ms})"
        );
        let hex_sig = sig
            .strip_prefix("sha256=")
            .unwrap_or_else(|| panic!("signature format: {sig}"));
        let raw = hex::decode(hex_sig).expect("hex signature");
        let mac_of = |secret: &[u8], ts: &str| {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
            mac.update(ts.as_bytes());
            mac.update(b".");
            mac.update(&self.body);
            mac
        };
        mac_of(SECRET.as_bytes(), ts)
            .verify_slice(&raw)
            .expect("signature verifies against timestamp.body");
        assert!(mac_of(b"another secret", ts).verify_slice(&raw).is_err());
        let other_ts = (ts_ms - 1).to_string();
        assert!(
            mac_of(SECRET.as_bytes(), &other_ts)
                .verify_slice(&raw)
                .is_err(),
            "another timestamp does not verify: a replay cannot claim a fresh time"
        );
    }
}

#[derive(Clone)]
struct Receiver {
    hits: Arc<Mutex<Vec<Hit>>>,
    /// Statuses answered to the first requests; 200 afterwards.
    script: Arc<Mutex<Vec<u16>>>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    r.hits.lock().push(Hit {
        at: Instant::now(),
        signature: header("x-magpie-signature"),
        timestamp: header("x-magpie-timestamp"),
        content_type: header("content-type"),
        body,
    });
    let mut script = r.script.lock();
    let status = if script.is_empty() {
        200
    } else {
        script.remove(0)
    };
    StatusCode::from_u16(status).unwrap()
}

impl Receiver {
    /// Starts a receiver on a free loopback port; returns it and its URL.
    async fn start(script: Vec<u16>) -> (Receiver, String) {
        let r = Receiver {
            hits: Default::default(),
            script: Arc::new(Mutex::new(script)),
        };
        let app = axum::Router::new()
            .route("/push", axum::routing::post(receive))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/push", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (r, url)
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().clone()
    }

    /// Waits until at least `n` requests arrived.
    async fn wait_for(&self, n: usize, within: Duration) -> Vec<Hit> {
        let until = Instant::now() + within;
        loop {
            let hits = self.hits();
            if hits.len() >= n {
                return hits;
            }
            assert!(
                Instant::now() < until,
                "{} of {n} pushes after {within:?}",
                hits.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn server(url: &str) -> TestServer {
    let url = url.to_owned();
    TestServer::start_with(move |c| {
        c.push_webhook_url = Some(url);
        c.push_secret = SECRET.into();
        c.push_coalesce_ms = COALESCE_MS;
    })
    .await
}

/// Sends `texts` over one socket, pipelined, and returns the acked seqs.
async fn send_burst(ws: &mut Ws, conv: &str, prefix: &str, texts: &[String]) -> Vec<u64> {
    for (i, t) in texts.iter().enumerate() {
        ws.send_text(conv, &format!("{prefix}{i}"), t).await;
    }
    let mut seqs = Vec::new();
    while seqs.len() < texts.len() {
        let f = ws
            .next_where("ack", |f| f["type"] == "sent" || f["type"] == "error")
            .await;
        assert_eq!(f["type"], "sent", "{f}");
        seqs.push(f["seq"].as_u64().unwrap());
    }
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_burst_becomes_one_signed_push() {
    let (rx, url) = Receiver::start(vec![]).await;
    let s = server(&url).await;
    let base = s.base_url();
    let alice = account(&base, "alice").await;
    let bob = account(&base, "bob").await;
    let conv = direct(&base, &alice, &bob).await;
    let (mut a, _) = Ws::connect(&s.ws_url(), &alice.token).await;
    let long = format!("{}{}", "é".repeat(60), "x".repeat(90));
    let mut texts: Vec<String> = (1..5).map(|i| format!("short {i}")).collect();
    texts.push(long.clone());
    let sent_at = Instant::now();
    assert_eq!(
        send_burst(&mut a, &conv, "p", &texts).await,
        vec![1, 2, 3, 4, 5]
    );

    let hits = rx.wait_for(1, Duration::from_secs(5)).await;
    eprintln!("first push {:?} after the burst", hits[0].at - sent_at);
    tokio::time::sleep(Duration::from_millis(COALESCE_MS * 3)).await;
    let hits = rx.hits();
    assert_eq!(
        hits.len(),
        1,
        "a burst is one push: {:?}",
        hits.iter().map(Hit::json).collect::<Vec<_>>()
    );
    let hit = &hits[0];
    hit.assert_signed();
    assert!(
        hit.content_type
            .as_deref()
            .unwrap_or("")
            .starts_with("application/json"),
        "{hit:?}"
    );
    let body = hit.json();
    assert_eq!(body["user_id"], bob.user_id.as_str(), "{body}");
    assert_eq!(body["conversation_id"], conv.as_str(), "{body}");
    assert_eq!(body["seq"], 5, "{body}");
    assert_eq!(body["sender_id"], alice.user_id.as_str(), "{body}");
    assert_eq!(body["sender_name"], "alice", "{body}");
    let preview: String = long.chars().take(100).collect();
    assert_eq!(
        body["preview"],
        preview.as_str(),
        "first 100 characters: {body}"
    );
    assert_eq!(body["preview"].as_str().unwrap().chars().count(), 100);
    assert_eq!(body["unread_count"], 5, "{body}");
    // Alice's own device never triggers a push for her own messages.
    assert!(hits
        .iter()
        .all(|h| h.json()["user_id"] != alice.user_id.as_str()));

    // After the window, the next message is a new push with the new unread count.
    let mut more = send_burst(&mut a, &conv, "q", &["later".to_owned()]).await;
    assert_eq!(more.pop(), Some(6));
    let hits = rx.wait_for(2, Duration::from_secs(5)).await;
    hits[1].assert_signed();
    let body = hits[1].json();
    assert_eq!(
        (
            body["seq"].as_u64(),
            body["preview"].as_str(),
            body["unread_count"].as_u64()
        ),
        (Some(6), Some("later"), Some(6)),
        "{body}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_or_muted_recipients_get_no_push() {
    let (rx, url) = Receiver::start(vec![]).await;
    let s = server(&url).await;
    let base = s.base_url();
    let alice = account(&base, "alice").await;
    let bob = account(&base, "bob").await;
    let conv = direct(&base, &alice, &bob).await;
    let (mut a, _) = Ws::connect(&s.ws_url(), &alice.token).await;

    // Online: delivered on the socket, no push.
    let (mut b, _) = Ws::connect(&s.ws_url(), &bob.token).await;
    b.sync(0).await;
    send_burst(&mut a, &conv, "on", &["you there?".to_owned()]).await;
    let e = b.next_event("message").await;
    assert_eq!(e["message"]["text"], "you there?");
    tokio::time::sleep(Duration::from_millis(COALESCE_MS * 3)).await;
    assert_eq!(rx.hits().len(), 0, "pushed to an online user");
    // Acknowledged before closing: a close offers a push for what was handed to the socket
    // and never acknowledged.
    b.send(json!({"type": "ack", "cursor": e["cursor"]})).await;
    b.send(json!({"type": "ping"})).await;
    b.next_type("pong").await;
    b.close().await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Offline but muted: no push.
    let (st, v) = put(
        &base,
        &bob.token,
        &format!("/v1/conversations/{conv}/settings"),
        json!({"muted": true}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    send_burst(&mut a, &conv, "mu", &["muted one".to_owned()]).await;
    tokio::time::sleep(Duration::from_millis(COALESCE_MS * 4)).await;
    assert_eq!(rx.hits().len(), 0, "pushed a muted conversation");

    // Unmuted: pushed (so the silences above were real).
    let (st, _) = put(
        &base,
        &bob.token,
        &format!("/v1/conversations/{conv}/settings"),
        json!({"muted": false}),
    )
    .await;
    assert_eq!(st, 200);
    send_burst(&mut a, &conv, "un", &["unmuted".to_owned()]).await;
    let hits = rx.wait_for(1, Duration::from_secs(5)).await;
    let body = hits[0].json();
    assert_eq!(
        (
            body["seq"].as_u64(),
            body["preview"].as_str(),
            body["unread_count"].as_u64()
        ),
        (Some(3), Some("unmuted"), Some(3)),
        "{body}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_webhook_calls_are_retried_with_backoff() {
    let (rx, url) = Receiver::start(vec![500, 500]).await;
    let s = server(&url).await;
    let base = s.base_url();
    let alice = account(&base, "alice").await;
    let bob = account(&base, "bob").await;
    let conv = direct(&base, &alice, &bob).await;
    let (st, _) = send_http(&base, &alice.token, &conv, "r1", "please arrive").await;
    assert_eq!(st, 200);
    let hits = rx.wait_for(3, Duration::from_secs(8)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let hits_after = rx.hits();
    assert_eq!(
        hits_after.len(),
        3,
        "delivered on the third attempt, then no more"
    );
    for h in &hits {
        h.assert_signed();
        assert_eq!(h.body, hits[0].body, "retries carry the same notification");
    }
    let body = hits[0].json();
    assert_eq!(
        (body["seq"].as_u64(), body["preview"].as_str()),
        (Some(1), Some("please arrive")),
        "{body}"
    );
    let gaps: Vec<Duration> = hits.windows(2).map(|w| w[1].at - w[0].at).collect();
    eprintln!("retry gaps {gaps:?}");
    assert!(
        gaps[0] >= Duration::from_millis(400),
        "first retry after ~500 ms: {gaps:?}"
    );
    assert!(
        gaps[1] >= Duration::from_millis(900),
        "second retry after ~1000 ms: {gaps:?}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_webhook_does_not_slow_delivery() {
    // A port that nothing listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/push", l.local_addr().unwrap())
    };
    let s = server(&dead).await;
    let base = s.base_url();
    let alice = account(&base, "alice").await;
    let bob = account(&base, "bob").await;
    let carol = account(&base, "carol").await;
    let ab = direct(&base, &alice, &bob).await;
    let ac = direct(&base, &alice, &carol).await;
    let (mut a, _) = Ws::connect(&s.ws_url(), &alice.token).await;
    let started = Instant::now();
    for round in 0..5 {
        let texts: Vec<String> = (0..10).map(|i| format!("r{round} m{i}")).collect();
        let got = send_burst(&mut a, &ab, &format!("b{round}-"), &texts).await;
        assert_eq!(
            got,
            ((round * 10 + 1)..=(round * 10 + 10)).collect::<Vec<_>>()
        );
        send_burst(&mut a, &ac, &format!("c{round}-"), &texts[..1]).await;
        tokio::time::sleep(Duration::from_millis(COALESCE_MS)).await;
    }
    let elapsed = started.elapsed();
    eprintln!("55 sends with a dead webhook took {elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(15),
        "sends slowed by push: {elapsed:?}"
    );
    let (_, v) = get(
        &base,
        &bob.token,
        &format!("/v1/conversations/{ab}/messages?after_seq=0&limit=200"),
    )
    .await;
    assert_eq!(seqs(&v), (1..=50).collect::<Vec<_>>());
    let (mut b, _) = Ws::connect(&s.ws_url(), &bob.token).await;
    b.sync(0).await;
    let e = b
        .next_where("last message", |f| {
            f["kind"] == "message" && f["message"]["seq"] == 50
        })
        .await;
    assert_eq!(e["message"]["text"], "r4 m9");
    // Live delivery still works while pushes keep failing in the background.
    send_burst(&mut a, &ab, "live", &["still here".to_owned()]).await;
    assert_eq!(
        b.next_event("message").await["message"]["text"],
        "still here"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_push_texts_but_not_system_messages_or_read_fanout() {
    let (rx, url) = Receiver::start(vec![]).await;
    let s = TestServer::start_with(move |c| {
        c.push_webhook_url = Some(url);
        c.push_secret = SECRET.into();
        c.push_coalesce_ms = COALESCE_MS;
        c.policy.fanout_write_max = 3;
    })
    .await;
    let base = s.base_url();
    let alice = account(&base, "alice").await;
    let bob = account(&base, "bob").await;
    let carol = register(&base, "carol").await;
    let dave = register(&base, "dave").await;
    let (st, v) = post(
        &base,
        &alice.token,
        "/v1/groups",
        json!({"name": "g", "member_ids": [bob.user_id, carol]}),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let conv = v["conversation_id"].as_str().unwrap().to_owned();
    let (st, _) = patch(
        &base,
        &alice.token,
        &format!("/v1/groups/{conv}"),
        json!({"name": "renamed"}),
    )
    .await;
    assert_eq!(st, 200);
    tokio::time::sleep(Duration::from_millis(COALESCE_MS * 3)).await;
    assert_eq!(
        rx.hits().len(),
        0,
        "system messages are not pushed: {:?}",
        rx.hits().iter().map(Hit::json).collect::<Vec<_>>()
    );

    // A text in the write-fan-out group is pushed to both offline members, one push each.
    let (st, _) = send_http(&base, &alice.token, &conv, "g1", "group text").await;
    assert_eq!(st, 200);
    let hits = rx.wait_for(2, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(COALESCE_MS * 2)).await;
    assert_eq!(rx.hits().len(), 2);
    let mut users: Vec<String> = hits
        .iter()
        .map(|h| h.json()["user_id"].as_str().unwrap().to_owned())
        .collect();
    users.sort();
    let mut want = vec![bob.user_id.clone(), carol.clone()];
    want.sort();
    assert_eq!(users, want);
    for h in &hits {
        h.assert_signed();
        let b = h.json();
        assert_eq!(
            (
                b["conversation_id"].as_str(),
                b["seq"].as_u64(),
                b["sender_name"].as_str(),
                b["preview"].as_str()
            ),
            (
                Some(conv.as_str()),
                Some(3),
                Some("alice"),
                Some("group text")
            ),
            "{b}"
        );
    }

    // Grown past the threshold: read fan-out, no inbox events, no pushes.
    let (st, v) = post(
        &base,
        &alice.token,
        &format!("/v1/groups/{conv}/members"),
        json!({"user_ids": [dave]}),
    )
    .await;
    assert_eq!((st, v["fanout"].as_str()), (200, Some("read")), "{v}");
    let (st, _) = send_http(&base, &alice.token, &conv, "g2", "wide text").await;
    assert_eq!(st, 200);
    tokio::time::sleep(Duration::from_millis(COALESCE_MS * 3)).await;
    assert_eq!(rx.hits().len(), 2, "read fan-out is not pushed");
    s.stop().await;
}

/// A push receiver and a server (strangers allowed, pushes coalesced over `coalesce_ms`) with
/// alice and bob and their direct conversation.
async fn alice_and_bob(coalesce_ms: u64) -> (Receiver, TestServer, Account, Account, String) {
    let (rx, url) = Receiver::start(vec![]).await;
    let s = TestServer::start_with(move |c| {
        c.push_webhook_url = Some(url);
        c.push_secret = SECRET.into();
        c.push_coalesce_ms = coalesce_ms;
        c.allow_strangers = true;
    })
    .await;
    let base = s.base_url();
    let alice = account(&base, "alice").await;
    let bob = account(&base, "bob").await;
    let dm = direct(&base, &alice, &bob).await;
    (rx, s, alice, bob, dm)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_muted_conversation_posting_last_does_not_hide_a_push_from_another() {
    // A window long enough that sends made one after the other fall into one window.
    let (rx, s, alice, bob, dm) = alice_and_bob(1_000).await;
    let base = s.base_url();
    let (st, v) = post(
        &base,
        &alice.token,
        "/v1/groups",
        json!({"name": "noisy", "member_ids": [bob.user_id]}),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let group = v["conversation_id"].as_str().unwrap().to_owned();
    let (st, _) = put(
        &base,
        &bob.token,
        &format!("/v1/conversations/{group}/settings"),
        json!({"muted": true}),
    )
    .await;
    assert_eq!(st, 200);

    // Bob is offline. A direct message, then (last in the window) a muted group's message.
    let (st, _) = send_http(&base, &alice.token, &dm, "d1", "for you").await;
    assert_eq!(st, 200);
    let (st, _) = send_http(&base, &alice.token, &group, "g1", "muted chatter").await;
    assert_eq!(st, 200);
    let hits = rx.wait_for(1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(rx.hits().len(), 1, "one push for the window");
    let body = hits[0].json();
    assert_eq!(
        (body["conversation_id"].as_str(), body["preview"].as_str()),
        (Some(dm.as_str()), Some("for you")),
        "{body}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_a_closed_socket_never_acknowledged_is_pushed() {
    let (rx, s, alice, bob, dm) = alice_and_bob(COALESCE_MS).await;
    let base = s.base_url();

    // Acknowledged before the socket closes: no push.
    let (mut b, _) = Ws::connect(&s.ws_url(), &bob.token).await;
    b.sync(0).await;
    let (st, _) = send_http(&base, &alice.token, &dm, "d1", "seen and acknowledged").await;
    assert_eq!(st, 200);
    let e = b.next_event("message").await;
    b.send(json!({"type": "ack", "cursor": e["cursor"]})).await;
    b.send(json!({"type": "ping"})).await;
    b.next_type("pong").await;
    b.close().await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(
        rx.hits().len(),
        0,
        "pushed a message the device acknowledged"
    );

    // Handed to a socket whose device never acknowledged it (as a phone that lost its
    // network would not): no push while it is connected, one once it is gone.
    let (mut b, _) = Ws::connect(&s.ws_url(), &bob.token).await;
    b.sync(e["cursor"].as_u64().unwrap()).await;
    let (st, _) = send_http(&base, &alice.token, &dm, "d2", "handed to a dying socket").await;
    assert_eq!(st, 200);
    b.next_event("message").await;
    tokio::time::sleep(Duration::from_millis(3 * COALESCE_MS)).await;
    assert_eq!(rx.hits().len(), 0, "pushed while the device was connected");
    b.close().await;
    let hits = rx.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(hits[0].json()["preview"], "handed to a dying socket");

    // A connection that comes and goes without acknowledging anything was handed nothing new:
    // the message pushed above is not pushed again.
    let (mut b, _) = Ws::connect(&s.ws_url(), &bob.token).await;
    b.sync(e["cursor"].as_u64().unwrap()).await;
    b.send(json!({"type": "ping"})).await;
    b.next_type("pong").await;
    b.close().await;
    tokio::time::sleep(Duration::from_millis(3 * COALESCE_MS)).await;
    assert_eq!(rx.hits().len(), 1, "pushed again on a reconnect");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_read_before_the_window_ends_is_not_pushed() {
    let (rx, s, alice, bob, dm) = alice_and_bob(1_000).await;
    let base = s.base_url();
    let (st, v) = send_http(&base, &alice.token, &dm, "d1", "read it over HTTP").await;
    assert_eq!(st, 200, "{v}");
    // Bob, offline on every socket, reads it over HTTP within the window.
    let (st, v) = post(
        &base,
        &bob.token,
        &format!("/v1/conversations/{dm}/read"),
        json!({"seq": v["seq"]}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(rx.hits().len(), 0, "pushed a message already read");
    // The next, unread one is pushed (so the silence above was real).
    let (st, _) = send_http(&base, &alice.token, &dm, "d2", "not read yet").await;
    assert_eq!(st, 200);
    let hits = rx.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(hits[0].json()["preview"], "not read yet");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_comes_online_within_the_window_gets_no_push() {
    // A window long enough that sends made one after the other fall into one window.
    let (rx, s, alice, bob, dm) = alice_and_bob(1_000).await;
    let base = s.base_url();
    let (st, _) = send_http(&base, &alice.token, &dm, "d1", "while you were away").await;
    assert_eq!(st, 200);
    // Bob connects before the window ends and reads the message on his socket.
    let (mut b, _) = Ws::connect(&s.ws_url(), &bob.token).await;
    b.sync(0).await;
    assert_eq!(
        b.next_event("message").await["message"]["text"],
        "while you were away"
    );
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert_eq!(rx.hits().len(), 0, "pushed to a user who is online");
    // Offline again: the next message is pushed (so the silence above was real).
    b.close().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (st, _) = send_http(&base, &alice.token, &dm, "d2", "now you are away").await;
    assert_eq!(st, 200);
    let hits = rx.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(hits[0].json()["preview"], "now you are away");
    s.stop().await;
}
