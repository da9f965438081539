//! Helpers shared by the server's integration tests: HTTP calls and a small WebSocket client.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for a frame before failing.
pub const FRAME_WAIT_MS: u64 = 5_000;

pub struct Account {
    pub user_id: String,
    pub token: String,
    pub device_id: String,
}

pub async fn register(base: &str, name: &str) -> String {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/accounts"))
        .json(&json!({"username": name, "password": "password123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "register {name}");
    r.json::<Value>().await.unwrap()["user_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

pub async fn login(base: &str, name: &str) -> Account {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/sessions"))
        .json(&json!({"username": name, "password": "password123", "device_name": "test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "login {name}");
    let v: Value = r.json().await.unwrap();
    Account {
        user_id: v["user_id"].as_str().unwrap().to_owned(),
        token: v["token"].as_str().unwrap().to_owned(),
        device_id: v["device_id"].as_str().unwrap().to_owned(),
    }
}

pub async fn account(base: &str, name: &str) -> Account {
    register(base, name).await;
    login(base, name).await
}

pub async fn get(base: &str, token: &str, path: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

pub async fn post(base: &str, token: &str, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

/// A fresh HTTP client. Tests do not share one: every test has its own runtime and a pooled
/// connection must not outlive the runtime that opened it.
pub fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// Any request with an optional JSON body; returns the status and the JSON body (or `Null`).
pub async fn call(
    base: &str,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http()
        .request(method, format!("{base}{path}"))
        .bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let body = r.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

pub async fn put(base: &str, token: &str, path: &str, body: Value) -> (u16, Value) {
    call(base, token, reqwest::Method::PUT, path, Some(body)).await
}

pub async fn patch(base: &str, token: &str, path: &str, body: Value) -> (u16, Value) {
    call(base, token, reqwest::Method::PATCH, path, Some(body)).await
}

pub async fn delete(base: &str, token: &str, path: &str) -> (u16, Value) {
    call(base, token, reqwest::Method::DELETE, path, None).await
}

/// The error code of an error body.
pub fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// `a` asks `b` to be friends and `b` accepts; returns their direct conversation.
pub async fn befriend(base: &str, a: &Account, b: &Account) -> String {
    let (st, v) = post(
        base,
        &a.token,
        "/v1/friends/requests",
        json!({"user_id": b.user_id}),
    )
    .await;
    assert_eq!(st, 201, "friend request: {v}");
    let request_id = v["request_id"].as_str().expect("request_id").to_owned();
    let (st, v) = post(
        base,
        &b.token,
        &format!("/v1/friends/requests/{request_id}/accept"),
        json!({}),
    )
    .await;
    assert_eq!(st, 200, "accept: {v}");
    v["conversation_id"]
        .as_str()
        .expect("conversation_id")
        .to_owned()
}

/// The direct conversation of `a` and `b`. Direct conversations need friendship unless the
/// server allows strangers, so a `not_friends` refusal is answered by befriending first (and a
/// server with `allow_strangers` gets no friend events in anyone's inbox).
pub async fn direct(base: &str, a: &Account, b: &Account) -> String {
    let open = || async {
        post(
            base,
            &a.token,
            "/v1/conversations/direct",
            json!({"peer_id": b.user_id}),
        )
        .await
    };
    let (mut status, mut v) = open().await;
    if status == 403 && code(&v) == "not_friends" {
        let conv = befriend(base, a, b).await;
        (status, v) = open().await;
        assert_eq!(v["conversation_id"].as_str(), Some(conv.as_str()), "{v}");
    }
    assert_eq!(status, 200, "{v}");
    v["conversation_id"].as_str().unwrap().to_owned()
}

/// Registers alice and bob and opens their direct conversation: (alice, bob, conversation).
pub async fn alice_and_bob(base: &str) -> (Account, Account, String) {
    let alice = account(base, "alice").await;
    let bob = account(base, "bob").await;
    let conv = direct(base, &alice, &bob).await;
    (alice, bob, conv)
}

/// Sends a message over HTTP.
pub async fn send_http(base: &str, token: &str, conv: &str, id: &str, text: &str) -> (u16, Value) {
    post(
        base,
        token,
        &format!("/v1/conversations/{conv}/messages"),
        json!({"client_msg_id": id, "text": text}),
    )
    .await
}

/// Registers `names` with at most `concurrency` requests in flight; returns their user ids in
/// the order of `names`.
pub async fn register_many(base: &str, names: &[String], concurrency: usize) -> Vec<String> {
    use futures_util::stream::{self, StreamExt as _};
    let base = base.to_owned();
    let client = http();
    stream::iter(names.iter().cloned())
        .map(|name| {
            let (base, client) = (base.clone(), client.clone());
            async move {
                let r = client
                    .post(format!("{base}/v1/accounts"))
                    .json(&json!({"username": name, "password": "password123"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201, "register {name}");
                r.json::<Value>().await.unwrap()["user_id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            }
        })
        .buffered(concurrency)
        .collect()
        .await
}

/// The seqs of a `messages` array (HTTP page or WS `messages` frame).
pub fn seqs(v: &Value) -> Vec<u64> {
    v["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages in {v}"))
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

pub struct Ws {
    pub inner: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    pub async fn connect(ws_url: &str, token: &str) -> (Ws, Value) {
        let (inner, _) = tokio_tungstenite::connect_async(format!("{ws_url}?token={token}"))
            .await
            .expect("ws connects");
        let mut ws = Ws { inner };
        let ready = ws.next().await;
        assert_eq!(ready["type"], "ready", "{ready}");
        (ws, ready)
    }

    pub async fn send(&mut self, v: Value) {
        self.inner
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    /// Sends a text frame and returns the write error instead of panicking.
    pub async fn try_send_raw(
        &mut self,
        text: &str,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.inner.send(Message::Text(text.to_owned().into())).await
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.inner
            .send(Message::Text(text.to_owned().into()))
            .await
            .unwrap();
    }

    /// The next JSON frame; panics on timeout or close.
    pub async fn next(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(Duration::from_millis(FRAME_WAIT_MS), self.inner.next())
                .await
                .expect("frame within timeout")
                .expect("socket open")
                .expect("frame ok");
            match msg {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                Message::Close(c) => panic!("unexpected close: {c:?}"),
                _ => continue,
            }
        }
    }

    /// Waits for the close frame and returns its code.
    pub async fn closed_with(&mut self) -> u16 {
        loop {
            let msg = tokio::time::timeout(Duration::from_millis(FRAME_WAIT_MS), self.inner.next())
                .await
                .expect("close within timeout");
            match msg {
                Some(Ok(Message::Close(Some(c)))) => return c.code.into(),
                Some(Ok(Message::Close(None))) | None => return 0,
                Some(Ok(_)) => continue,
                Some(Err(_)) => return 0,
            }
        }
    }

    /// Asserts no frame arrives within `ms`.
    pub async fn quiet_for(&mut self, ms: u64) {
        if let Ok(Some(Ok(Message::Text(t)))) =
            tokio::time::timeout(Duration::from_millis(ms), self.inner.next()).await
        {
            panic!("unexpected frame: {t}");
        }
    }

    pub async fn sync(&mut self, cursor: u64) {
        self.send(json!({"type": "sync", "cursor": cursor})).await;
    }

    pub async fn send_text(&mut self, conv: &str, id: &str, text: &str) {
        self.send(
            json!({"type": "send", "client_msg_id": id, "conversation_id": conv, "text": text}),
        )
        .await;
    }

    /// Closes the socket politely (the server sees a close frame at once).
    pub async fn close(mut self) {
        let _ = self.inner.close(None).await;
        // Drain until the server's close arrives or the socket ends.
        let _ = tokio::time::timeout(Duration::from_millis(FRAME_WAIT_MS), async {
            while let Some(Ok(_)) = self.inner.next().await {}
        })
        .await;
    }

    /// The next frame for which `pred` holds, skipping others; panics on timeout.
    /// The answer to a send: the next `sent` or `error` frame.
    pub async fn send_answer(&mut self) -> Value {
        self.next_where("send answer", |f| {
            f["type"] == "sent" || f["type"] == "error"
        })
        .await
    }

    pub async fn next_where(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(FRAME_WAIT_MS);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let msg = tokio::time::timeout(left, self.inner.next())
                .await
                .unwrap_or_else(|_| panic!("no {what} within {FRAME_WAIT_MS} ms"))
                .expect("socket open")
                .expect("frame ok");
            match msg {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if pred(&v) {
                        return v;
                    }
                }
                Message::Close(c) => panic!("unexpected close waiting for {what}: {c:?}"),
                _ => continue,
            }
        }
    }

    /// The next frame of type `ty`, skipping others.
    pub async fn next_type(&mut self, ty: &str) -> Value {
        self.next_where(ty, |v| v["type"] == ty).await
    }

    /// The next event of kind `kind`, skipping other frames.
    pub async fn next_event(&mut self, kind: &str) -> Value {
        self.next_where(kind, |v| v["type"] == "event" && v["kind"] == kind)
            .await
    }

    /// Every text frame that arrives within `ms`.
    pub async fn frames_for(&mut self, ms: u64) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.inner.next()).await {
                Err(_) | Ok(None) => return out,
                Ok(Some(Ok(Message::Text(t)))) => {
                    out.push(serde_json::from_str(t.as_str()).unwrap())
                }
                Ok(Some(Ok(Message::Close(c)))) => panic!("unexpected close: {c:?}"),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => panic!("socket error: {e}"),
            }
        }
    }

    /// Sends `pull` and returns the `messages` answer (other frames are skipped).
    pub async fn pull(&mut self, conv: &str, after_seq: u64, limit: usize) -> Value {
        self.send(
            json!({"type":"pull","conversation_id":conv,"after_seq":after_seq,"limit":limit}),
        )
        .await;
        let conv = conv.to_owned();
        self.next_where("messages", move |v| {
            (v["type"] == "messages" && v["conversation_id"] == conv.as_str())
                || v["type"] == "error"
        })
        .await
    }

    /// Reads `n` event frames and returns them.
    pub async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::new();
        while out.len() < n {
            let f = self.next().await;
            if f["type"] == "event" {
                out.push(f);
            }
        }
        out
    }
}

// --- A client-side merger for groups ---------------------------------------------------------

/// What one observer saw of the group.
#[derive(Debug, Default)]
pub struct Seen {
    /// Every seq delivered, deduplicated.
    pub have: BTreeSet<u64>,
    /// Seqs seen as message events (the inbox never repeats one).
    pub by_event: BTreeSet<u64>,
    /// Message events that repeated a seq.
    pub event_dups: Vec<u64>,
    /// Messages older than the join that reached the observer.
    pub before_join: Vec<u64>,
    pub events: usize,
    pub notifies: usize,
    pub pulls: usize,
    pub errors: Vec<Value>,
}

/// A small client-side merger: message events for the group, plus `notify` → `pull` after the
/// highest gap-free seq, plus gap filling; dedups by seq. Runs until it holds every seq up to
/// the target (once the target is known) or the deadline passes.
pub async fn observe(
    mut ws: Ws,
    conv: String,
    joined: u64,
    target: tokio::sync::watch::Receiver<u64>,
    deadline: Instant,
) -> Seen {
    let mut seen = Seen::default();
    let mut head = joined - 1; // highest seq with everything from `joined` up to it
    let mut wanted = 0u64; // highest seq known to exist
    let mut pulling = false;
    loop {
        let t = *target.borrow();
        if t > 0 && head >= t {
            return seen;
        }
        if Instant::now() >= deadline {
            return seen;
        }
        if !pulling && wanted > head {
            ws.send(json!({"type":"pull","conversation_id": conv,"after_seq": head,"limit": 200}))
                .await;
            pulling = true;
            seen.pulls += 1;
        }
        let msg = match tokio::time::timeout(Duration::from_millis(200), ws.inner.next()).await {
            Err(_) => continue,
            Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str::<Value>(t.as_str()).unwrap(),
            Ok(Some(Ok(Message::Close(c)))) => {
                seen.errors.push(json!({"closed": format!("{c:?}")}));
                return seen;
            }
            Ok(Some(Ok(_))) => continue,
            Ok(other) => {
                seen.errors.push(json!({"socket": format!("{other:?}")}));
                return seen;
            }
        };
        let add = |seen: &mut Seen, seq: u64| {
            if seq < joined {
                seen.before_join.push(seq);
            } else {
                seen.have.insert(seq);
            }
        };
        match msg["type"].as_str() {
            Some("event")
                if msg["kind"] == "message"
                    && msg["message"]["conversation_id"] == conv.as_str() =>
            {
                let seq = msg["message"]["seq"].as_u64().unwrap();
                seen.events += 1;
                if !seen.by_event.insert(seq) {
                    seen.event_dups.push(seq);
                }
                add(&mut seen, seq);
                wanted = wanted.max(seq);
            }
            Some("notify") if msg["conversation_id"] == conv.as_str() => {
                seen.notifies += 1;
                wanted = wanted.max(msg["last_seq"].as_u64().unwrap());
            }
            Some("messages") if msg["conversation_id"] == conv.as_str() => {
                pulling = false;
                for m in msg["messages"].as_array().unwrap() {
                    add(&mut seen, m["seq"].as_u64().unwrap());
                }
            }
            Some("error") => {
                pulling = false;
                seen.errors.push(msg);
            }
            _ => {}
        }
        while seen.have.contains(&(head + 1)) {
            head += 1;
        }
    }
}

impl Seen {
    /// Asserts the observer holds every seq from `joined` to `last`, nothing else, no event
    /// twice, nothing from before its join, and no errors.
    pub fn check(&self, who: &str, joined: u64, last: u64) {
        eprintln!(
            "{who}: {} events, {} notifies, {} pulls, {} seqs ({joined}..={last})",
            self.events,
            self.notifies,
            self.pulls,
            self.have.len()
        );
        assert!(self.errors.is_empty(), "{who}: {:?}", self.errors);
        assert!(
            self.event_dups.is_empty(),
            "{who} got repeated events {:?}",
            self.event_dups
        );
        assert!(
            self.before_join.is_empty(),
            "{who} got seqs before its join: {:?}",
            self.before_join
        );
        let missing: Vec<u64> = (joined..=last).filter(|q| !self.have.contains(q)).collect();
        assert!(
            missing.is_empty(),
            "{who} is missing {} seqs: {:?}",
            missing.len(),
            &missing[..missing.len().min(20)]
        );
        let extra: Vec<u64> = self.have.iter().copied().filter(|q| *q > last).collect();
        assert!(extra.is_empty(), "{who} got seqs past the end {extra:?}");
    }
}

/// Asserts that `frame` refuses the send `client_msg_id` with the error `code`.
#[track_caller]
pub fn assert_send_refused(frame: &Value, code: &str, client_msg_id: &str, what: &str) {
    assert_eq!(
        (
            frame["type"].as_str(),
            frame["code"].as_str(),
            frame["client_msg_id"].as_str()
        ),
        (Some("error"), Some(code), Some(client_msg_id)),
        "{what}: {frame}"
    );
}

/// Asserts that `frame` answers a resend of `client_msg_id` with the original `seq`.
#[track_caller]
pub fn assert_duplicate(frame: &Value, client_msg_id: &str, seq: u64) {
    assert_eq!(
        (
            frame["type"].as_str(),
            frame["client_msg_id"].as_str(),
            frame["seq"].as_u64(),
            frame["duplicate"].as_bool()
        ),
        (Some("sent"), Some(client_msg_id), Some(seq), Some(true)),
        "{frame}"
    );
}

/// Asserts that `frame` acknowledges a send with `seq`.
#[track_caller]
pub fn assert_sent(frame: &Value, seq: u64) {
    assert_eq!(
        (frame["type"].as_str(), frame["seq"].as_u64()),
        (Some("sent"), Some(seq)),
        "{frame}"
    );
}
