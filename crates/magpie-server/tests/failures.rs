//! How the server behaves once its store refuses writes: the state a failed commit or fsync
//! leaves the embedded store in (injected here, since a real disk failure cannot be arranged
//! in a test).

mod common;

use common::*;
use magpie_server::testing::TestServer;
use serde_json::json;

async fn health(base: &str) -> (u16, String) {
    let r = http()
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz");
    let status = r.status().as_u16();
    (status, r.text().await.expect("healthz body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_store_makes_the_node_unhealthy_and_refuses_writes_without_spinning() {
    let s = TestServer::start_with(|c| c.allow_strangers = true).await;
    let base = s.base_url();
    let alice = account(&base, "alice").await;
    let bob = account(&base, "bob").await;
    let conv = direct(&base, &alice, &bob).await;
    assert_eq!(health(&base).await, (200, "ok".to_owned()));

    let (mut a, _) = Ws::connect(&s.ws_url(), &alice.token).await;
    a.sync(0).await;
    a.send_text(&conv, "before", "stored before the failure")
        .await;
    // The ack and the echo event may arrive in either order.
    let (mut sent, mut cursor) = (None, None);
    while sent.is_none() || cursor.is_none() {
        let f = a
            .next_where("sent or echo", |f| {
                f["type"] == "sent" || (f["type"] == "event" && f["kind"] == "message")
            })
            .await;
        if f["type"] == "sent" {
            sent = Some(f);
        } else {
            cursor = f["cursor"].as_u64();
        }
    }
    assert_sent(&sent.expect("sent"), 1);
    let cursor = cursor.expect("cursor");

    s.server().store().inject_poison();

    // A load balancer or supervisor sees the node as down.
    let (status, body) = health(&base).await;
    assert_eq!(status, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("error body");
    assert_eq!(code(&body), "unavailable", "{body}");

    // Writes are refused with a code that says "try elsewhere or later", not a generic 500.
    let (status, body) = send_http(&base, &bob.token, &conv, "http-after", "refused").await;
    assert_eq!((status, code(&body)), (503, "unavailable"), "{body}");
    a.send_text(&conv, "ws-after", "refused").await;
    assert_send_refused(
        &a.send_answer().await,
        "unavailable",
        "ws-after",
        "socket send",
    );

    // What was acknowledged stays readable.
    let (status, page) = get(
        &base,
        &alice.token,
        &format!("/v1/conversations/{conv}/messages"),
    )
    .await;
    assert_eq!((status, seqs(&page)), (200, vec![1]), "{page}");

    // A cursor ack cannot be recorded: the socket closes with 1011 (the client reconnects with
    // backoff and acks again) instead of retrying the refused write in a busy loop, which
    // would hold a worker thread forever.
    a.send(json!({"type":"ack","cursor":cursor})).await;
    assert_eq!(a.closed_with().await, 1011);
    assert_eq!(health(&base).await.0, 503, "the server still answers");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_and_methods_get_the_v1_error_body() {
    let s = TestServer::start().await;
    let base = s.base_url();
    // No token: neither answer depends on one.
    let (status, body) = get(&base, "", "/v1/nope").await;
    assert_eq!(status, 404);
    assert_eq!(code(&body), "not_found", "{body}");
    let (status, body) = get(&base, "", "/v1/accounts").await;
    assert_eq!(status, 405);
    assert_eq!(code(&body), "method_not_allowed", "{body}");
    // A path segment that is not UTF-8 once decoded names nothing: 404 in JSON, not axum's
    // plain text; the same for a web asset that does not exist.
    let alice = account(&base, "alice").await;
    for path in [
        "/v1/users/%FF",
        "/v1/conversations/%C3%28/messages",
        "/app/%FF",
        "/app/nope.js",
    ] {
        let (status, body) = get(&base, &alice.token, path).await;
        assert_eq!((status, code(&body)), (404, "not_found"), "{path}: {body}");
    }
    // A request to the socket endpoint that is not a WebSocket handshake: 400 in JSON.
    let (status, body) = get(&base, &alice.token, "/v1/ws").await;
    assert_eq!((status, code(&body)), (400, "invalid_request"), "{body}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_after_the_silence_limit() {
    let s = TestServer::start_with(|c| {
        c.allow_strangers = true;
        c.heartbeat_ms = 200;
    })
    .await;
    let base = s.base_url();
    let alice = account(&base, "alice").await;
    let bob = account(&base, "bob").await;
    let conv = direct(&base, &alice, &bob).await;
    let (mut b, _) = Ws::connect(&s.ws_url(), &bob.token).await;
    b.sync(0).await;
    assert_eq!(s.server().online_users(), 1);
    // Bob never reads again. About 18 MB of events (30 messages of ~600 KB of JSON) fill his
    // socket's buffers, so the server's writes to him stop completing.
    let huge = "\u{1}".repeat(100_000);
    for i in 0..30 {
        let (status, v) = send_http(&base, &alice.token, &conv, &format!("m{i}"), &huge).await;
        assert_eq!(status, 200, "{v}");
    }
    // A write stuck longer than the silence limit (3 × 200 ms) ends the connection; before,
    // the task waited on the write forever, deaf to its heartbeat deadline.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while s.server().online_users() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stuck connection was never dropped"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop(b);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_forever_for_a_silent_http_client() {
    use tokio::io::AsyncWriteExt;
    let s = TestServer::start().await;
    // Half a request, then silence: graceful shutdown waits for such a connection to finish.
    let mut silent = tokio::net::TcpStream::connect(s.addr())
        .await
        .expect("connect");
    silent
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    tokio::time::timeout(std::time::Duration::from_secs(30), s.stop())
        .await
        .expect("stop finishes although a client never completes its request");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    drop(silent);
}

/// A client that never finishes its request's headers is dropped after the header read
/// timeout (slowloris); before, `axum::serve` ran hyper without a timer, which silently turned
/// hyper's header timeout off, and such a connection stayed forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_trickles_its_headers_is_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start_with(|c| c.http_header_read_ms = 300).await;
    let mut slow = tokio::net::TcpStream::connect(s.addr())
        .await
        .expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    // The server answers 408 or just closes; either way the connection ends.
    let mut buf = Vec::new();
    let ended = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        slow.read_to_end(&mut buf),
    )
    .await;
    assert!(ended.is_ok(), "the connection was still open after 5 s");
    // A complete request on a new connection is still served.
    let (status, _) = get(&s.base_url(), "", "/healthz").await;
    assert_eq!(status, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_during_a_long_catch_up_closes_the_socket_between_pages() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    const MESSAGES: usize = 3_000;
    let s = TestServer::start_with(|c| {
        c.allow_strangers = true;
        c.send_rate_per_sec = 1_000_000;
        c.send_burst = 1_000_000;
    })
    .await;
    let base = s.base_url();
    let alice = account(&base, "alice").await;
    let bob = account(&base, "bob").await;
    let conv = direct(&base, &alice, &bob).await;
    // A backlog of ~30 MB for bob: 15 catch-up pages of ~2 MB, far more than socket buffers.
    let (mut a, _) = Ws::connect(&s.ws_url(), &alice.token).await;
    let text = "a".repeat(10_000);
    for i in 0..MESSAGES {
        a.send(json!({"type":"send","client_msg_id":format!("m{i}"),"conversation_id":conv,"text":text}))
            .await;
    }
    for _ in 0..MESSAGES {
        assert_eq!(a.send_answer().await["type"], "sent");
    }
    // Bob starts catching up but does not read yet, so the server is partway through.
    let (mut b, _) = Ws::connect(&s.ws_url(), &bob.token).await;
    b.sync(0).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (status, _) = delete(&base, &bob.token, "/v1/sessions/current").await;
    assert_eq!(status, 204);
    // Now bob reads: the socket closes with 4001 after the page in progress, not after the
    // whole backlog.
    let mut events = 0;
    let code = loop {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(20), b.inner.next())
            .await
            .expect("frames keep coming until the close");
        match frame {
            Some(Ok(Message::Text(_))) => events += 1,
            Some(Ok(Message::Close(c))) => break c.map_or(0, |c| u16::from(c.code)),
            Some(Ok(_)) => {}
            other => panic!("socket ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(code, magpie_protocol::close::CLOSE_REVOKED);
    assert!(
        events < MESSAGES,
        "{events} events streamed after the logout: the whole backlog"
    );
    s.stop().await;
}
