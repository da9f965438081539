//! Helpers shared by the SDK's end-to-end tests.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use magpie_sdk::{
    Client, ConversationId, CursorStore, EventBody, HistoryRange, Session, SessionConfig,
    SessionEvent, UserId, WireMessage,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::Receiver;
use tokio::sync::Notify;

pub const PASSWORD: &str = "correct horse battery";
/// Generous: CI machines are small and shared.
pub const WAIT: Duration = Duration::from_secs(30);

/// A registered, logged-in user.
pub struct User {
    pub id: UserId,
    pub name: String,
    pub client: Client,
}

pub async fn user(base_url: &str, name: &str) -> User {
    let anon = Client::new(base_url).unwrap();
    anon.register(name, PASSWORD).await.unwrap();
    let creds = anon.login(name, PASSWORD, Some("test")).await.unwrap();
    User {
        id: creds.user_id,
        name: name.to_owned(),
        client: anon.with_token(creds.token),
    }
}

/// The same user logged in through another base URL (e.g. a proxy), as a second device.
pub async fn login_via(base_url: &str, u: &User) -> Client {
    let anon = Client::new(base_url).unwrap();
    let creds = anon.login(&u.name, PASSWORD, Some("second")).await.unwrap();
    anon.with_token(creds.token)
}

/// Makes `a` and `b` friends through the HTTP API; returns their direct conversation.
pub async fn befriend(a: &User, b: &User) -> ConversationId {
    let request = a
        .client
        .send_friend_request(b.id, Some("hi"))
        .await
        .unwrap();
    b.client.accept_friend_request(request).await.unwrap()
}

/// Fast reconnects so restart tests do not wait on a long backoff.
pub fn config() -> SessionConfig {
    SessionConfig {
        backoff_cap_ms: 500,
        ..SessionConfig::default()
    }
}

pub fn start(
    client: &Client,
    store: Arc<dyn CursorStore>,
    config: SessionConfig,
) -> (Session, Receiver<SessionEvent>) {
    Session::start(client.clone(), store, config).unwrap()
}

/// The next event satisfying `pred`, skipping others; panics after `WAIT`.
pub async fn next_where(
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

pub async fn next_message(rx: &mut Receiver<SessionEvent>) -> WireMessage {
    match next_where(rx, |e| matches!(e, SessionEvent::Message(_))).await {
        SessionEvent::Message(m) => m,
        _ => unreachable!(),
    }
}

/// The next inbox event of a kind `pred` accepts.
pub async fn next_inbox_event(
    rx: &mut Receiver<SessionEvent>,
    mut pred: impl FnMut(&EventBody) -> bool,
) -> EventBody {
    match next_where(
        rx,
        |e| matches!(e, SessionEvent::Event(ev) if pred(&ev.body)),
    )
    .await
    {
        SessionEvent::Event(e) => e.body,
        _ => unreachable!(),
    }
}

pub async fn connected(rx: &mut Receiver<SessionEvent>) -> SessionEvent {
    next_where(rx, |e| matches!(e, SessionEvent::Connected { .. })).await
}

/// Waits for `Sent` for `id`; fails on `SendFailed`.
pub async fn sent(rx: &mut Receiver<SessionEvent>, id: &str) -> (u64, bool) {
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

/// The inbox cursor of the `message` event carrying `seq` of `conversation`.
pub async fn cursor_of(client: &Client, conversation: ConversationId, seq: u64) -> u64 {
    let page = client.sync(0, Some(200), None).await.unwrap();
    page.events
        .iter()
        .find(|e| {
            matches!(&e.body, EventBody::Message { message }
                if message.conversation_id == conversation && message.seq == seq)
        })
        .map(|e| e.cursor)
        .expect("message not in the inbox")
}

/// Every seq of a conversation's timeline visible to `client`, ascending.
pub async fn timeline(client: &Client, conversation: ConversationId) -> Vec<u64> {
    let mut out = Vec::new();
    loop {
        let after = out.last().copied().unwrap_or(0);
        let page = client
            .messages(conversation, HistoryRange::After(after), Some(200))
            .await
            .unwrap();
        if page.messages.is_empty() {
            return out;
        }
        out.extend(page.messages.iter().map(|m| m.seq));
    }
}

/// Collects messages of `conversation` from `rx` until one with `last` arrives; asserts on the
/// way that each arrives once and in order.
pub async fn collect_until(
    rx: &mut Receiver<SessionEvent>,
    conversation: ConversationId,
    last: u64,
    who: &str,
) -> Vec<u64> {
    let mut got: Vec<u64> = Vec::new();
    while got.last() != Some(&last) {
        let m = next_message(rx).await;
        if m.conversation_id != conversation {
            continue;
        }
        if let Some(&prev) = got.last() {
            assert!(
                m.seq > prev,
                "{who}: seq {} after {prev} (repeat or out of order); got {got:?}",
                m.seq
            );
        }
        got.push(m.seq);
    }
    got
}

/// A TCP proxy in front of the server that the test can cut, to take one client offline
/// while everyone else stays connected.
pub struct Cuttable {
    pub addr: SocketAddr,
    online: Arc<AtomicBool>,
    cut: Arc<Notify>,
}

impl Cuttable {
    pub async fn start(target: SocketAddr) -> Cuttable {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let online = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(Notify::new());
        let (online2, cut2) = (online.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !online2.load(Ordering::Acquire) {
                    continue; // dropped: connection refused in effect
                }
                let cut = cut2.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.notified() => {}
                    }
                });
            }
        });
        Cuttable { addr, online, cut }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drops every proxied connection and refuses new ones.
    pub fn go_offline(&self) {
        self.online.store(false, Ordering::Release);
        self.cut.notify_waiters();
    }

    pub fn go_online(&self) {
        self.online.store(true, Ordering::Release);
    }
}
