//! The `idle` scenario: many authenticated, synced, silent WebSocket connections, to measure
//! what one idle connection costs the server in memory.
//!
//! One source address runs out of ephemeral ports near 28,000 sockets, so client sockets are
//! bound round-robin to several loopback addresses. Each login costs an Argon2 hash, so the
//! connections share a few hundred device tokens (a device may hold several sockets).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::setup::{self, Http};
use super::sys::{self, Proc};
use super::wire;
use super::wsconn::{self, Connected};
use super::{progress, CommonArgs, Outcome, Target};

/// The target for one idle authenticated connection, KiB.
const TARGET_KIB_PER_CONNECTION: f64 = 8.0;
/// Connection errors described in the report (the rest are only counted).
const ERROR_EXAMPLES_MAX: usize = 5;

/// `magpie bench idle`.
#[derive(clap::Args, Clone, Debug)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Idle connections to open.
    #[arg(long, default_value_t = 15_000)]
    pub connections: usize,
    /// Local addresses to bind client sockets to, round-robin (each gives ~28k ports).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1,127.0.0.2,127.0.0.3"
    )]
    pub source_ips: Vec<IpAddr>,
    /// Seconds to keep all connections open once the last one is up (at least `settle_s`).
    #[arg(long, default_value_t = 5.0)]
    pub hold_s: f64,
    /// Seconds to wait after the last connection opened before reading the server's RSS.
    #[arg(long, default_value_t = 2.0)]
    pub settle_s: f64,
    /// Devices (logins) the connections are spread over.
    #[arg(long, default_value_t = 200)]
    pub tokens: usize,
    /// Do not send `sync` (no live event queue on the server), to measure that part apart.
    #[arg(long)]
    pub no_sync: bool,
    /// Connection attempts in flight.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
}

/// `magpie bench idle`.
pub async fn run(args: IdleArgs) -> anyhow::Result<Outcome> {
    anyhow::ensure!(args.connections >= 1, "--connections must be at least 1");
    anyhow::ensure!(args.tokens >= 1, "--tokens must be at least 1");
    anyhow::ensure!(
        !args.source_ips.is_empty(),
        "--source-ips must name at least one address"
    );
    anyhow::ensure!(
        args.hold_s >= args.settle_s && args.settle_s >= 0.0,
        "--hold-s must be at least --settle-s"
    );
    for ip in &args.source_ips {
        anyhow::ensure!(
            ip.is_loopback(),
            "source address {ip} is not a loopback address"
        );
    }
    let (soft, hard) = sys::raise_nofile_limit()?;
    progress!("open files limit {soft} (hard {hard})");
    anyhow::ensure!(
        (args.connections as u64) + 256 <= soft,
        "{} connections need more open files than the limit {soft} allows",
        args.connections
    );
    let target = Target::resolve(&args.common.server).await?;
    let http = Http::new(&target)?;
    let prefix = setup::users_prefix(args.common.users_prefix.as_deref())?;
    let tokens = args.tokens.min(args.connections);
    progress!("registering and logging in {tokens} users ({prefix}_*)");
    let accounts = setup::accounts(&http, &prefix, tokens, args.common.setup_concurrency).await?;

    // Let the setup's allocations settle before the baseline reading.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let server_before = sys::sample_opt(args.common.server_pid)?;
    let own_before = sys::sample(Proc::Own).ok();

    progress!(
        "opening {} connections from {:?}",
        args.connections,
        args.source_ips
    );
    let opened_at = Instant::now();
    let closed = Arc::new(AtomicU64::new(0));
    let mut errors: Vec<String> = Vec::new();
    let mut failed = 0u64;
    let mut holders = Vec::with_capacity(args.connections);
    let mut heartbeat_ms = 0;
    let sync = !args.no_sync;
    let mut attempts = futures_util::stream::iter(0..args.connections)
        .map(|i| {
            let target = target.clone();
            let token = accounts[i % accounts.len()].token.clone();
            let source = args.source_ips[i % args.source_ips.len()];
            async move {
                wsconn::connect(&target, &token, Some(source), wsconn::idle_config(), sync).await
            }
        })
        .buffer_unordered(args.connect_concurrency.max(1));
    // A second reading halfway: the growth from there to the end is the marginal cost of a
    // connection, free of what the process keeps from the setup (freed Argon2 buffers the
    // allocator holds on to, say), which the from-the-start figure includes.
    let half = args.connections / 2;
    let mut server_half: Option<(usize, sys::ProcSample)> = None;
    while let Some(result) = attempts.next().await {
        match result {
            Ok(conn) => {
                heartbeat_ms = conn.heartbeat_ms;
                holders.push(tokio::spawn(hold(conn, closed.clone())));
                if holders.len() == half && half > 0 {
                    tokio::time::sleep(Duration::from_secs_f64(args.settle_s)).await;
                    server_half = sys::sample_opt(args.common.server_pid)?.map(|s| (half, s));
                }
                if holders.len() % 5000 == 0 {
                    progress!("{} open", holders.len());
                }
            }
            Err(e) => {
                failed += 1;
                if errors.len() < ERROR_EXAMPLES_MAX {
                    errors.push(format!("{e:#}"));
                }
            }
        }
    }
    drop(attempts);
    let open = holders.len();
    let open_s = opened_at.elapsed().as_secs_f64();
    progress!(
        "{open} connections open in {open_s:.1} s ({failed} failed); settling {:.1} s",
        args.settle_s
    );
    let hold_until = tokio::time::Instant::now() + Duration::from_secs_f64(args.hold_s);

    tokio::time::sleep(Duration::from_secs_f64(args.settle_s)).await;
    let server_after = sys::sample_opt(args.common.server_pid)?;
    let own_after = sys::sample(Proc::Own).ok();
    let gauge = http
        .metrics()
        .await
        .ok()
        .map(|m| m.get("magpie_ws_connections"));
    let load = sys::load_average();
    tokio::time::sleep_until(hold_until).await;
    for h in &holders {
        h.abort();
    }
    let closed_early = closed.load(Ordering::Relaxed);

    let per_conn =
        |before: &Option<sys::ProcSample>, after: &Option<sys::ProcSample>| match (before, after) {
            (Some(b), Some(a)) if open > 0 => {
                Some((a.rss_kib as f64 - b.rss_kib as f64) / open as f64)
            }
            _ => None,
        };
    let server_kib = per_conn(&server_before, &server_after);
    let server_marginal_kib = match (&server_half, &server_after) {
        (Some((n, h)), Some(a)) if open > *n => {
            Some((a.rss_kib as f64 - h.rss_kib as f64) / (open - n) as f64)
        }
        _ => None,
    };
    let own_kib = per_conn(&own_before, &own_after);
    let violations = failed + closed_early;

    let mut human = format!(
        "idle: {open} of {} connections open ({failed} failed){} over {} devices from {} source addresses, opened in {open_s:.1} s ({:.0}/s)\n",
        args.connections,
        if sync { ", synced" } else { ", NOT synced" },
        tokens,
        args.source_ips.len(),
        open as f64 / open_s.max(1e-9),
    );
    match (server_before, server_after, server_kib) {
        (Some(b), Some(a), Some(kib)) => human.push_str(&format!(
            "  server RSS             {:.1} MiB before, {:.1} MiB after → {kib:.2} KiB per connection (target ≤ {TARGET_KIB_PER_CONNECTION} KiB)\n",
            b.rss_kib as f64 / 1024.0,
            a.rss_kib as f64 / 1024.0
        )),
        _ => human.push_str("  server RSS             (pass --server-pid to measure)\n"),
    }
    if let (Some((n, h)), Some(a), Some(kib)) = (&server_half, &server_after, server_marginal_kib) {
        human.push_str(&format!(
            "  server RSS, 2nd half   {:.1} MiB at {n}, {:.1} MiB at {open} → {kib:.2} KiB per added connection\n",
            h.rss_kib as f64 / 1024.0,
            a.rss_kib as f64 / 1024.0
        ));
    }
    if let Some(kib) = own_kib {
        human.push_str(&format!(
            "  bench client RSS       {kib:.2} KiB per connection\n"
        ));
    }
    if let Some(g) = gauge {
        human.push_str(&format!("  magpie_ws_connections  {g}\n"));
    }
    if let Some(l) = load {
        human.push_str(&format!(
            "  load average           {:.2} {:.2} {:.2}\n",
            l[0], l[1], l[2]
        ));
    }
    human.push_str(&format!("  checks                 {failed} failed connects, {closed_early} closed by the server while held"));
    for e in &errors {
        human.push_str(&format!("\n    ! {e}"));
    }
    let json = json!({
        "scenario": "idle",
        "synced": sync,
        "connections": args.connections,
        "open": open,
        "failed": failed,
        "closed_early": closed_early,
        "tokens": tokens,
        "source_ips": args.source_ips,
        "open_s": open_s,
        "heartbeat_ms": heartbeat_ms,
        "server_rss_kib_before": server_before.map(|s| s.rss_kib),
        "server_rss_kib_after": server_after.map(|s| s.rss_kib),
        "server_kib_per_connection": server_kib,
        "server_rss_kib_half": server_half.as_ref().map(|(_, s)| s.rss_kib),
        "server_kib_per_added_connection": server_marginal_kib,
        "client_kib_per_connection": own_kib,
        "target_kib_per_connection": TARGET_KIB_PER_CONNECTION,
        "ws_connections_gauge": gauge,
        "load_average": load,
        "errors": errors,
    });
    Ok(Outcome {
        human,
        json,
        violations,
    })
}

/// Holds one connection open until aborted: reads (to notice a close) and pings every half
/// heartbeat, so holds longer than the server's silence limit (3 heartbeats) also work.
async fn hold(conn: Connected, closed: Arc<AtomicU64>) {
    let Connected {
        mut ws,
        heartbeat_ms,
        ..
    } = conn;
    let ping_every = Duration::from_millis((heartbeat_ms / 2).max(100));
    let mut pings = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    loop {
        tokio::select! {
            _ = pings.tick() => {
                if ws.send(Message::text(wire::ping_frame())).await.is_err() {
                    break;
                }
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    closed.fetch_add(1, Ordering::Relaxed);
}
