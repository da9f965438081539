//! Crash test: the real `magpie` binary under concurrent sends is killed with SIGKILL and
//! restarted, several times. Every acknowledged message must survive with its original seq,
//! seqs must be gap-free, inbox cursors gap-free with each message exactly once, and a retry
//! of an acknowledged message must be reported as a duplicate. The same harness checks the
//! clean SIGTERM shutdown and the process settings of the real binary (`src/memory.rs`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Kill/restart rounds.
const ROUNDS: usize = 5;
/// Concurrent sending connections per round.
const SENDERS: usize = 4;
/// Unacknowledged sends each sender keeps in flight.
const WINDOW: usize = 32;

struct ServerProc {
    child: Child,
}

impl ServerProc {
    fn start(addr: SocketAddr, dir: &Path) -> ServerProc {
        let child = Command::new(env!("CARGO_BIN_EXE_magpie"))
            .args(["serve", "--listen", &addr.to_string(), "--data-dir"])
            .arg(dir)
            .env("MAGPIE_ARGON2_M_KIB", "64")
            .env("MAGPIE_STORE_JOURNAL_MIB", "1")
            .env("MAGPIE_ARGON2_T", "1")
            .env("MAGPIE_LOG", "warn")
            .env("MAGPIE_ALLOW_STRANGERS", "true")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn magpie");
        ServerProc { child }
    }

    fn kill9(mut self) {
        // std's Child::kill sends SIGKILL on Unix: no shutdown code runs.
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn wait_healthy(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::get(format!("{base}/healthz")).await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server did not become healthy");
}

async fn post(base: &str, token: Option<&str>, path: &str, body: Value) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn get(base: &str, token: &str, path: &str) -> Value {
    let r = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn account(base: &str, name: &str) -> (String, String) {
    let (st, _) = post(
        base,
        None,
        "/v1/accounts",
        json!({"username": name, "password": "password123"}),
    )
    .await;
    assert_eq!(st, 201);
    let (st, v) = post(
        base,
        None,
        "/v1/sessions",
        json!({"username": name, "password": "password123"}),
    )
    .await;
    assert_eq!(st, 201);
    (
        v["user_id"].as_str().unwrap().to_owned(),
        v["token"].as_str().unwrap().to_owned(),
    )
}

/// Sends pipelined messages until the socket dies, recording every acknowledged (id → seq).
async fn sender(
    ws_url: String,
    token: String,
    conv: String,
    prefix: String,
    acked: Arc<Mutex<HashMap<String, u64>>>,
) {
    let Ok((ws, _)) = tokio_tungstenite::connect_async(format!("{ws_url}?token={token}")).await
    else {
        return;
    };
    let (mut tx, mut rx) = ws.split();
    let mut next = 0usize;
    let mut in_flight = std::collections::VecDeque::new();
    loop {
        while in_flight.len() < WINDOW {
            let id = format!("{prefix}-{next}");
            next += 1;
            let frame = json!({"type":"send","client_msg_id": id,"conversation_id": conv,"text": format!("payload {id}")});
            if tx
                .send(Message::Text(frame.to_string().into()))
                .await
                .is_err()
            {
                return;
            }
            in_flight.push_back(id);
        }
        match rx.next().await {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "sent" {
                    let id = v["client_msg_id"].as_str().unwrap().to_owned();
                    assert_eq!(
                        in_flight.pop_front().as_deref(),
                        Some(id.as_str()),
                        "acks in send order"
                    );
                    acked.lock().unwrap().insert(id, v["seq"].as_u64().unwrap());
                }
            }
            Some(Ok(_)) => {}
            _ => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let base = format!("http://{addr}");
    let ws_url = format!("ws://{addr}/v1/ws");
    let mut server = ServerProc::start(addr, dir.path());
    wait_healthy(&base).await;
    let (_alice_id, alice) = account(&base, "alice").await;
    let (bob_id, bob) = account(&base, "bob").await;
    let (st, v) = post(
        &base,
        Some(&alice),
        "/v1/conversations/direct",
        json!({"peer_id": bob_id}),
    )
    .await;
    assert_eq!(st, 200);
    let conv = v["conversation_id"].as_str().unwrap().to_owned();
    let acked: Arc<Mutex<HashMap<String, u64>>> = Arc::default();

    for round in 0..ROUNDS {
        let tasks: Vec<_> = (0..SENDERS)
            .map(|i| {
                let token = if i % 2 == 0 {
                    alice.clone()
                } else {
                    bob.clone()
                };
                tokio::spawn(sender(
                    ws_url.clone(),
                    token,
                    conv.clone(),
                    format!("r{round}s{i}"),
                    acked.clone(),
                ))
            })
            .collect();
        // Let traffic build, then kill mid-stream.
        let before = acked.lock().unwrap().len();
        let deadline = Instant::now() + Duration::from_secs(10);
        while acked.lock().unwrap().len() < before + 300 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.kill9();
        for t in tasks {
            let _ = t.await;
        }
        server = ServerProc::start(addr, dir.path());
        wait_healthy(&base).await;
        let snapshot = acked.lock().unwrap().clone();
        eprintln!(
            "round {round}: {} messages acknowledged so far; verifying after SIGKILL",
            snapshot.len()
        );
        verify(&base, &alice, &bob, &conv, &snapshot).await;
    }
    assert!(
        acked.lock().unwrap().len() >= ROUNDS * 300,
        "enough traffic was acknowledged"
    );
    drop(server);
}

async fn verify(base: &str, alice: &str, bob: &str, conv: &str, acked: &HashMap<String, u64>) {
    // Full history, paged forward: gap-free seqs, each client id once.
    let mut stored: BTreeMap<u64, String> = BTreeMap::new();
    let mut after = 0;
    loop {
        let page = get(
            base,
            alice,
            &format!("/v1/conversations/{conv}/messages?after_seq={after}&limit=200"),
        )
        .await;
        let msgs = page["messages"].as_array().unwrap();
        if msgs.is_empty() {
            break;
        }
        for m in msgs {
            let seq = m["seq"].as_u64().unwrap();
            assert_eq!(seq, after + 1, "seqs are gap-free");
            after = seq;
            stored.insert(seq, m["client_msg_id"].as_str().unwrap().to_owned());
        }
    }
    let unique: HashSet<&String> = stored.values().collect();
    assert_eq!(unique.len(), stored.len(), "no message stored twice");
    let by_id: HashMap<&String, u64> = stored.iter().map(|(s, id)| (id, *s)).collect();
    for (id, seq) in acked {
        assert_eq!(by_id.get(id), Some(seq), "acknowledged {id} kept its seq");
    }
    // Bob's inbox: gap-free cursors, every stored message exactly once.
    let mut seen = HashSet::new();
    let mut cursor = 0;
    loop {
        let page = get(base, bob, &format!("/v1/sync?cursor={cursor}&limit=200")).await;
        let events = page["events"].as_array().unwrap();
        if events.is_empty() {
            break;
        }
        for e in events {
            assert_eq!(
                e["cursor"].as_u64().unwrap(),
                cursor + 1,
                "cursors are gap-free"
            );
            cursor += 1;
            assert!(
                seen.insert(e["message"]["seq"].as_u64().unwrap()),
                "event delivered once"
            );
        }
    }
    assert_eq!(seen.len(), stored.len(), "inbox holds every stored message");
    // Retrying acknowledged sends reports duplicates with the original seq.
    for (id, seq) in acked.iter().take(25) {
        let token = if id.contains("s0") || id.contains("s2") {
            alice
        } else {
            bob
        };
        let (st, v) = post(
            base,
            Some(token),
            &format!("/v1/conversations/{conv}/messages"),
            json!({"client_msg_id": id, "text": format!("payload {id}")}),
        )
        .await;
        assert_eq!(st, 200);
        assert_eq!(
            (v["seq"].as_u64(), v["duplicate"].as_bool()),
            (Some(*seq), Some(true)),
            "retry of {id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_cleanly_and_keeps_acknowledged_data() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let base = format!("http://{addr}");
    let server = ServerProc::start(addr, dir.path());
    wait_healthy(&base).await;
    let (_alice_id, alice) = account(&base, "alice").await;
    let (bob_id, bob) = account(&base, "bob").await;
    let (_, v) = post(
        &base,
        Some(&alice),
        "/v1/conversations/direct",
        json!({"peer_id": bob_id}),
    )
    .await;
    let conv = v["conversation_id"].as_str().unwrap().to_owned();
    for i in 0..20 {
        let (st, _) = post(
            &base,
            Some(&alice),
            &format!("/v1/conversations/{conv}/messages"),
            json!({"client_msg_id": format!("t{i}"), "text": "before sigterm"}),
        )
        .await;
        assert_eq!(st, 200);
    }
    // An open socket must be closed with 1001 (going away), not dropped.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws?token={bob}"))
        .await
        .unwrap();
    // Wait until the server has registered the socket (it sends `ready` then).
    match ws.next().await {
        Some(Ok(Message::Text(t))) => assert!(t.as_str().contains("\"ready\""), "{t}"),
        other => panic!("expected ready, got {other:?}"),
    }
    let pid = server.child.id() as libc::pid_t;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Close(frame) = msg {
                return frame.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .expect("socket closed within 10 s");
    assert_eq!(
        close,
        Some(1001),
        "clients are told the server is going away"
    );
    let mut server = server;
    let status = tokio::task::spawn_blocking(move || {
        let s = server.child.wait().expect("wait");
        (server, s)
    })
    .await
    .unwrap();
    assert!(
        status.1.success(),
        "exit status after SIGTERM: {:?}",
        status.1
    );
    drop(status.0);
    let restarted = ServerProc::start(addr, dir.path());
    wait_healthy(&base).await;
    let page = get(
        &base,
        &bob,
        &format!("/v1/conversations/{conv}/messages?after_seq=0&limit=200"),
    )
    .await;
    assert_eq!(
        page["messages"].as_array().unwrap().len(),
        20,
        "every acknowledged message survived"
    );
    drop(restarted);
}

/// `THP_enabled` from a process's `/proc/PID/status` (Linux 5.0+).
#[cfg(target_os = "linux")]
fn thp_enabled(pid: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(|v| v.trim().to_owned())
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_process_runs_without_transparent_huge_pages() {
    // A child inherits the flag, and a kernel without huge pages reports 0 everywhere: only
    // where this test process may use them does the server's 0 show the server's own doing.
    if thp_enabled("self").as_deref() != Some("1") {
        eprintln!("skipped: transparent huge pages are off for the test process already");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let server = ServerProc::start(addr, dir.path());
    wait_healthy(&format!("http://{addr}")).await;
    let thp = thp_enabled(&server.child.id().to_string());
    assert_eq!(thp.as_deref(), Some("0"), "the server's THP_enabled");
}
