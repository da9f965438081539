//! Helpers shared by the server's integration tests: HTTP calls and a small WebSocket client.

#![allow(dead_code)]

use std::time::Duration;

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

pub async fn direct(base: &str, a: &Account, b: &Account) -> String {
    let (status, v) = post(
        base,
        &a.token,
        "/v1/conversations/direct",
        json!({"peer_id": b.user_id}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v["conversation_id"].as_str().unwrap().to_owned()
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
