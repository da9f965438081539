//! `magpie bench`: a load generator that drives a running server with real WebSocket clients.
//!
//! Three scenarios, each a subcommand:
//!
//! - `throughput`: pairs of users pipeline sends to each other with a window of un-acked sends
//!   and the tool reports acked sends/s, delivered events/s and send→deliver latency.
//! - `latency`: the same pairs, but paced at a fixed total rate on an absolute schedule, to
//!   measure send→deliver and send→ack latency below saturation.
//! - `idle`: many authenticated idle sockets, to measure the server's memory per connection.
//! - `group`: one message at a time into a 10,000-member read-fan-out group, to measure the
//!   time until every online member has it.
//! - `disk`: no server; how long the disk under a directory takes to make a small write
//!   durable, which bounds every latency above.
//!
//! Setup (accounts, logins, conversations) goes through the HTTP API with bounded concurrency;
//! the measured traffic is WebSocket only. Every run is bounded in time and count, and only
//! talks to loopback addresses. `docs/benchmarks.md` has the commands and the results.

mod disk;
mod group;
mod idle;
mod report;
mod setup;
mod sys;
mod timeline;
mod traffic;
mod wire;
mod wsconn;

use std::net::SocketAddr;

use anyhow::Context;

/// Arguments of `magpie bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// The scenario to run.
    #[command(subcommand)]
    scenario: Scenario,
}

/// The scenarios.
#[derive(clap::Subcommand)]
enum Scenario {
    /// Pipelined sends between pairs of users: maximum acked sends/s and delivered events/s.
    Throughput(traffic::ThroughputArgs),
    /// Paced sends at a fixed total rate: send→deliver and send→ack latency.
    Latency(traffic::LatencyArgs),
    /// Many idle authenticated sockets: server memory per connection.
    Idle(idle::IdleArgs),
    /// One message at a time into a large read-fan-out group: time until every online member
    /// has it, and storage writes per message.
    Group(group::GroupArgs),
    /// No server: the fsync latency of the disk under a directory (run it next to latency
    /// runs, since every acknowledged message waits for one fsync).
    Disk(disk::DiskArgs),
}

/// Flags every scenario takes.
#[derive(clap::Args, Clone, Debug)]
pub struct CommonArgs {
    /// Base URL of the server; it must be a loopback address (127.0.0.0/8 or [::1]).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Prefix of the bench usernames; random by default so reruns against one server do not
    /// collide. At most 20 characters of `[a-z0-9_]`.
    #[arg(long)]
    pub users_prefix: Option<String>,
    /// The server's process id, to read its RSS and CPU time from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print one JSON object on stdout; the human summary then goes to stderr.
    #[arg(long)]
    pub json: bool,
    /// HTTP requests in flight during setup (registrations, logins, conversations).
    #[arg(long, default_value_t = 32)]
    pub setup_concurrency: usize,
}

/// Where the server is, parsed from `--server`.
#[derive(Clone, Debug)]
pub struct Target {
    /// `http://host:port` without a trailing slash.
    pub base: String,
    /// `host:port`, for the WebSocket URL.
    pub authority: String,
    /// The resolved socket address (always loopback).
    pub addr: SocketAddr,
}

impl Target {
    /// Parses and resolves `--server`, refusing anything that is not loopback.
    pub async fn resolve(server: &str) -> anyhow::Result<Target> {
        let authority = server
            .strip_prefix("http://")
            .context("--server must start with http:// (TLS is not supported by the bench)")?
            .trim_end_matches('/');
        anyhow::ensure!(
            !authority.is_empty() && !authority.contains('/'),
            "--server must be http://HOST:PORT"
        );
        let addr = tokio::net::lookup_host(authority)
            .await
            .with_context(|| format!("resolving {authority}"))?
            .next()
            .with_context(|| format!("{authority} resolves to nothing"))?;
        anyhow::ensure!(
            addr.ip().is_loopback(),
            "the bench only targets loopback addresses; {addr} is not one"
        );
        Ok(Target {
            base: format!("http://{authority}"),
            authority: authority.to_owned(),
            addr,
        })
    }

    /// The WebSocket URL for a token.
    pub fn ws_url(&self, token: &str) -> String {
        format!(
            "ws://{}{}?token={token}",
            self.authority,
            magpie_protocol::WS_PATH
        )
    }
}

/// What a scenario hands back: a summary for people, the same data as JSON, and whether a
/// correctness check failed (which makes the command exit non-zero after printing).
pub struct Outcome {
    /// Multi-line human summary.
    pub human: String,
    /// Machine-readable results.
    pub json: serde_json::Value,
    /// Protocol or ordering violations seen (0 for a clean run).
    pub violations: u64,
}

/// Runs the load generator.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let (json, outcome) = match args.scenario {
        Scenario::Throughput(a) => (a.common.json, traffic::run_throughput(a).await?),
        Scenario::Latency(a) => (a.common.json, traffic::run_latency(a).await?),
        Scenario::Idle(a) => (a.common.json, idle::run(a).await?),
        Scenario::Disk(a) => (a.json, disk::run(a).await?),
        Scenario::Group(a) => {
            let common_json = a.common.json;
            let json = group::run(a).await?;
            let human = format!("group scenario done ({} timeouts)", json["timeouts"]);
            let violations = json["timeouts"].as_u64().unwrap_or(0);
            (
                common_json,
                Outcome {
                    human,
                    json,
                    violations,
                },
            )
        }
    };
    if json {
        eprintln!("{}", outcome.human);
        println!("{}", serde_json::to_string(&outcome.json)?);
    } else {
        println!("{}", outcome.human);
    }
    anyhow::ensure!(
        outcome.violations == 0,
        "{} correctness violations (see above)",
        outcome.violations
    );
    Ok(())
}

/// Logs progress to stderr (kept off stdout so `--json` output stays parseable).
macro_rules! progress {
    ($($arg:tt)*) => { eprintln!("[bench] {}", format_args!($($arg)*)) };
}
pub(crate) use progress;
