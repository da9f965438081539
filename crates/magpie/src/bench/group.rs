//! `magpie bench group`: one message at a time into a large read-fan-out group, measuring how
//! long until every online member has it (notify → pull → messages), and the storage writes
//! each message costs.
//!
//! Every online member runs the client side of read fan-out: on `notify` it pulls after the
//! last seq it has, and records when each new message arrives. The sender sends the next
//! message only after every online member has the previous one (or a timeout), so each sample
//! is the fan-out time of one message to the whole group.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use magpie_core::ConversationId;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

use super::report::SharedHistogram;
use super::setup::{self, Http};
use super::wire::now_ns;
use super::{sys, wsconn, CommonArgs, Target};

/// How long one message may take to reach everyone before the sample counts as a timeout.
const FANOUT_TIMEOUT_MS: u64 = 15_000;
/// How long the owner waits for the `sent` ack of one message.
const ACK_TIMEOUT_MS: u64 = 15_000;
/// Most messages one run may send (arrival times are kept per message and online member).
const MESSAGES_MAX: usize = 10_000;

/// Arguments of `magpie bench group`.
#[derive(clap::Args, Debug)]
pub struct GroupArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Members of the group (the sender included).
    #[arg(long, default_value_t = 10_000)]
    pub members: usize,
    /// Members with an open, synced WebSocket (at most `members - 1`; the sender is extra).
    #[arg(long, default_value_t = 9_999)]
    pub online: usize,
    /// Messages to send, one at a time.
    #[arg(long, default_value_t = 50)]
    pub messages: usize,
    /// Pause between messages, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub interval_ms: u64,
    /// Local addresses to bind client sockets to, round-robin.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1,127.0.0.2,127.0.0.3"
    )]
    pub source_ips: Vec<IpAddr>,
    /// Connection attempts in flight.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
}

/// Arrival bookkeeping shared by all member tasks.
#[derive(Default)]
struct Arrivals {
    /// seq → (members that have it, latest arrival in ns since the bench epoch).
    by_seq: Mutex<HashMap<u64, (usize, u64)>>,
    /// seq → every arrival time, for the per-member latency distribution.
    times: Mutex<HashMap<u64, Vec<u64>>>,
    /// Woken on every arrival, so the sender can wait for "everyone has it".
    changed: Notify,
    /// Pull requests sent by all members.
    pulls: std::sync::atomic::AtomicU64,
}

impl Arrivals {
    fn record(&self, seq: u64, at: u64) {
        {
            let mut by = lock(&self.by_seq);
            let e = by.entry(seq).or_insert((0, 0));
            e.0 += 1;
            e.1 = e.1.max(at);
        }
        lock(&self.times).entry(seq).or_default().push(at);
        self.changed.notify_waiters();
    }

    fn count(&self, seq: u64) -> (usize, u64) {
        lock(&self.by_seq).get(&seq).copied().unwrap_or((0, 0))
    }
}

/// `magpie bench group`.
pub async fn run(args: GroupArgs) -> anyhow::Result<Value> {
    anyhow::ensure!(
        args.members >= 2 && args.online < args.members,
        "need online < members"
    );
    anyhow::ensure!(
        (1..=MESSAGES_MAX).contains(&args.messages),
        "--messages must be 1..={MESSAGES_MAX}"
    );
    let (soft, _) = sys::raise_nofile_limit()?;
    anyhow::ensure!(
        (args.online as u64 + 64) < soft,
        "open-files limit {soft} is too low for {} sockets",
        args.online
    );
    let target = Target::resolve(&args.common.server).await?;
    let http = Http::new(&target)?;
    let prefix = setup::users_prefix(args.common.users_prefix.as_deref())?;

    let t = std::time::Instant::now();
    let accounts =
        setup::accounts(&http, &prefix, args.members, args.common.setup_concurrency).await?;
    let setup_accounts_s = t.elapsed().as_secs_f64();
    eprintln!("{} accounts in {setup_accounts_s:.1} s", accounts.len());

    let owner = &accounts[0];
    let member_ids: Vec<String> = accounts.iter().map(|a| a.user_id.to_string()).collect();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let t = std::time::Instant::now();
    let created: Value = client
        .post(format!("{}/v1/groups", target.base))
        .bearer_auth(&owner.token)
        .json(&json!({"name": "bench group", "member_ids": member_ids}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let create_group_s = t.elapsed().as_secs_f64();
    let conv: ConversationId = created["conversation_id"]
        .as_str()
        .context("conversation_id")?
        .parse()
        .map_err(|_| anyhow::anyhow!("bad conversation id"))?;
    let info: Value = client
        .get(format!("{}/v1/groups/{conv}", target.base))
        .bearer_auth(&owner.token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    eprintln!(
        "group {conv} of {} members created in {create_group_s:.2} s, fanout {}",
        info["member_count"], info["fanout"]
    );

    // Members start after the group's current last seq (the creation message).
    let start_seq = 1u64;
    let arrivals = Arc::new(Arrivals::default());
    let t = std::time::Instant::now();
    let members = &accounts[1..=args.online];
    let sockets =
        setup::bounded(members.len(), args.connect_concurrency, |i| {
            let target = target.clone();
            let token = members[i].token.clone();
            let source = args.source_ips[i % args.source_ips.len()];
            async move {
                wsconn::connect(&target, &token, Some(source), wsconn::idle_config(), true).await
            }
        })
        .await?;
    let connect_s = t.elapsed().as_secs_f64();
    eprintln!("{} members online in {connect_s:.1} s", sockets.len());
    let mut tasks = Vec::with_capacity(sockets.len());
    for c in sockets {
        tasks.push(tokio::spawn(member(c, conv, start_seq, arrivals.clone())));
    }

    let before = setup_metrics(&http).await;
    let proc_before = sys::sample_opt(args.common.server_pid)?;
    let mut sender = wsconn::connect(
        &target,
        &owner.token,
        None,
        wsconn::busy_config(wsconn::READ_BUFFER_BYTES_PIPELINED),
        false,
    )
    .await?;
    let all_have = SharedHistogram::new();
    let mut all_rec = all_have.recorder();
    let mut send_ns_by_seq = HashMap::new();
    let mut timeouts = 0usize;
    let wall = std::time::Instant::now();
    for i in 0..args.messages {
        let sent_at = now_ns();
        let frame = json!({"type":"send","client_msg_id": format!("g{i}-{prefix}"),"conversation_id": conv.to_string(),"text": format!("fan-out probe {i}")});
        sender.ws.send(Message::text(frame.to_string())).await?;
        let ack = tokio::time::timeout(Duration::from_millis(ACK_TIMEOUT_MS), async {
            loop {
                let msg = sender.ws.next().await.context("sender closed")??;
                let Message::Text(t) = msg else { continue };
                let v: Value = serde_json::from_str(t.as_str())?;
                match v["type"].as_str() {
                    Some("sent") => return v["seq"].as_u64().context("seq"),
                    Some("error") => anyhow::bail!("send refused: {v}"),
                    _ => {}
                }
            }
        });
        let seq = ack
            .await
            .map_err(|_| anyhow::anyhow!("no ack for message {i} within {ACK_TIMEOUT_MS} ms"))??;
        send_ns_by_seq.insert(seq, sent_at);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(FANOUT_TIMEOUT_MS);
        loop {
            let changed = arrivals.changed.notified();
            let (n, last) = arrivals.count(seq);
            if n >= args.online {
                all_rec.record(last.saturating_sub(sent_at));
                break;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                timeouts += 1;
                eprintln!(
                    "message seq {seq}: only {n}/{} members after {FANOUT_TIMEOUT_MS} ms",
                    args.online
                );
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    }
    all_rec.flush();
    let wall_s = wall.elapsed().as_secs_f64();
    let proc_after = sys::sample_opt(args.common.server_pid)?;
    let after = setup_metrics(&http).await;

    let per_member = SharedHistogram::new();
    {
        let mut rec = per_member.recorder();
        let times = lock(&arrivals.times);
        for (seq, sent) in &send_ns_by_seq {
            for at in times.get(seq).into_iter().flatten() {
                rec.record(at.saturating_sub(*sent));
            }
        }
    }
    for t in tasks {
        t.abort();
    }
    let all = all_have.summary();
    let each = per_member.summary();
    let keys = after.0 - before.0;
    let appended = after.1 - before.1;
    let writes_per_message = if appended > 0.0 {
        keys / appended
    } else {
        f64::NAN
    };
    let cpu = match (&proc_before, &proc_after) {
        (Some(a), Some(b)) => Some(sys::cpu_percent(a, b)),
        _ => None,
    };
    eprintln!(
        "\ngroup fan-out: {} members, {} online, {} messages, {timeouts} timeouts",
        args.members, args.online, args.messages
    );
    eprintln!("{}", all.row("every online member has it"));
    eprintln!("{}", each.row("each member has it"));
    eprintln!(
        "pulls {}, storage writes per message {writes_per_message:.2} ({keys} keys / {appended} messages), server CPU {}",
        arrivals.pulls.load(std::sync::atomic::Ordering::Relaxed),
        cpu.map_or("n/a".into(), |c| format!("{c:.0}%"))
    );
    Ok(json!({
        "scenario": "group",
        "members": args.members,
        "online": args.online,
        "messages": args.messages,
        "timeouts": timeouts,
        "setup_accounts_s": setup_accounts_s,
        "create_group_s": create_group_s,
        "connect_s": connect_s,
        "wall_s": wall_s,
        "all_online_have_it_us": all,
        "per_member_us": each,
        "pulls": arrivals.pulls.load(std::sync::atomic::Ordering::Relaxed),
        "storage_writes_per_message": writes_per_message,
        "server_cpu_percent": cpu,
    }))
}

/// (keys written, messages appended) from the server's metrics.
async fn setup_metrics(http: &Http) -> (f64, f64) {
    match http.metrics().await {
        Ok(m) => (
            m.get("magpie_store_keys_written_total"),
            m.get("magpie_store_messages_appended_total"),
        ),
        Err(_) => (f64::NAN, f64::NAN),
    }
}

/// One online member: pull on notify, record each new message's arrival, ping to stay alive.
async fn member(
    c: wsconn::Connected,
    conv: ConversationId,
    start_seq: u64,
    arrivals: Arc<Arrivals>,
) {
    let (mut tx, mut rx) = c.ws.split();
    let conv_s = conv.to_string();
    let mut seen = start_seq;
    let mut wanted = start_seq;
    let mut pulling = false;
    let mut ping = tokio::time::interval(Duration::from_millis((c.heartbeat_ms / 2).max(100)));
    loop {
        let frame = tokio::select! {
            f = rx.next() => f,
            _ = ping.tick() => {
                if tx.send(Message::text(r#"{"type":"ping"}"#)).await.is_err() { return }
                continue;
            }
        };
        let Some(Ok(Message::Text(text))) = frame else {
            if matches!(frame, None | Some(Err(_))) {
                return;
            }
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        match v["type"].as_str() {
            Some("notify") if v["conversation_id"] == conv_s.as_str() => {
                wanted = wanted.max(v["last_seq"].as_u64().unwrap_or(0));
            }
            Some("messages") => {
                let now = now_ns();
                for m in v["messages"].as_array().into_iter().flatten() {
                    let seq = m["seq"].as_u64().unwrap_or(0);
                    if seq == seen + 1 {
                        seen = seq;
                        arrivals.record(seq, now);
                    }
                }
                pulling = false;
            }
            _ => continue,
        }
        if !pulling && wanted > seen {
            let pull =
                json!({"type":"pull","conversation_id": conv_s,"after_seq": seen,"limit": 200});
            if tx.send(Message::text(pull.to_string())).await.is_err() {
                return;
            }
            arrivals
                .pulls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            pulling = true;
        }
    }
}

/// Locks, ignoring poisoning: a panicked member task leaves the counters usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
