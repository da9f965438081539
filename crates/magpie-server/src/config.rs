//! Server configuration: command-line flags, `MAGPIE_*` environment variables and an optional
//! TOML file, in that order of precedence.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where the server listens when nothing else is configured.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:8080";
/// Where the embedded store lives when nothing else is configured.
pub const DATA_DIR_DEFAULT: &str = "./magpie-data";
/// Interval at which clients should ping; the server closes sockets silent for 3× this.
pub const HEARTBEAT_MS_DEFAULT: u64 = 30_000;
/// Sustained sends per second allowed per connection (token bucket rate).
pub const SEND_RATE_PER_SEC_DEFAULT: u32 = 5_000;
/// Burst size of the per-connection token bucket.
pub const SEND_BURST_DEFAULT: u32 = 10_000;
/// Argon2id memory cost in KiB (OWASP's recommended 19 MiB).
pub const ARGON2_M_KIB_DEFAULT: u32 = 19_456;
/// Argon2id iterations (OWASP's recommended 2).
pub const ARGON2_T_DEFAULT: u32 = 2;
/// How long a user whose last device dropped still counts as online, so that a quick
/// reconnect announces nothing.
pub const PRESENCE_GRACE_MS_DEFAULT: u64 = 30_000;
/// Offline pushes for one user within this window become one push.
pub const PUSH_COALESCE_MS_DEFAULT: u64 = 1_000;
/// Store journal file size: fjall's own journal size. Each is zero-filled on a background
/// thread before use (see `vendor/README.md`), so a new data directory writes this much twice.
pub const STORE_JOURNAL_MIB_DEFAULT: u32 = 64;
/// Journal size of test servers: small, so tests rotate journals and stay light on the disk.
pub const STORE_JOURNAL_MIB_TESTS: u32 = 1;
/// Longest heartbeat interval accepted: one hour. Connections are closed after three silent
/// intervals, and deadlines computed from much larger values would overflow the clock.
pub const HEARTBEAT_MS_MAX: u64 = 3_600_000;
/// Longest presence grace period accepted: one day.
pub const PRESENCE_GRACE_MS_MAX: u64 = 86_400_000;
/// Longest push coalescing window accepted: one minute (a push later than that is useless).
pub const PUSH_COALESCE_MS_MAX: u64 = 60_000;
/// Largest journal file accepted.
pub const STORE_JOURNAL_MIB_MAX: u32 = 1_024;
/// Largest minimum commit interval accepted (the store's own bound): every message of a busy
/// store may wait this long for its fsync, on top of the fsync itself.
pub const STORE_COMMIT_INTERVAL_US_MAX: u32 = magpie_store::COMMIT_INTERVAL_MAX.as_micros() as u32;
/// The store's own default minimum commit interval, in µs.
pub const STORE_COMMIT_INTERVAL_US_DEFAULT: u32 =
    magpie_store::COMMIT_INTERVAL_MIN_DEFAULT.as_micros() as u32;

/// `magpie serve` flags. Every flag can also come from `MAGPIE_<NAME>` or the config file.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "MAGPIE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory of the embedded store (created if missing).
    #[arg(long, env = "MAGPIE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Optional TOML file with the same keys as the flags (snake_case).
    #[arg(long, env = "MAGPIE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Heartbeat interval announced to clients, in milliseconds.
    #[arg(long, env = "MAGPIE_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Sustained sends per second per connection.
    #[arg(long, env = "MAGPIE_SEND_RATE_PER_SEC")]
    pub send_rate_per_sec: Option<u32>,
    /// Token-bucket burst per connection.
    #[arg(long, env = "MAGPIE_SEND_BURST")]
    pub send_burst: Option<u32>,
    /// Argon2id memory cost in KiB (lower only for tests).
    #[arg(long, env = "MAGPIE_ARGON2_M_KIB")]
    pub argon2_m_kib: Option<u32>,
    /// Argon2id iterations (lower only for tests).
    #[arg(long, env = "MAGPIE_ARGON2_T")]
    pub argon2_t: Option<u32>,
    /// Log filter, e.g. `info` or `magpie_server=debug`.
    #[arg(long, env = "MAGPIE_LOG")]
    pub log: Option<String>,
    /// Allow direct conversations between users who are not friends.
    #[arg(long, env = "MAGPIE_ALLOW_STRANGERS")]
    pub allow_strangers: Option<bool>,
    /// Largest group that uses write fan-out, in members.
    #[arg(long, env = "MAGPIE_FANOUT_WRITE_MAX")]
    pub fanout_write_max: Option<u32>,
    /// Largest group whose read receipts are pushed to the other members as events, in
    /// members; larger groups answer receipt queries only.
    #[arg(long, env = "MAGPIE_RECEIPT_EVENTS_MAX")]
    pub receipt_events_max: Option<u32>,
    /// Largest group, in members.
    #[arg(long, env = "MAGPIE_GROUP_MEMBERS_MAX")]
    pub group_members_max: Option<u32>,
    /// Grace period before a disconnected user is announced offline, in milliseconds.
    #[arg(long, env = "MAGPIE_PRESENCE_GRACE_MS")]
    pub presence_grace_ms: Option<u64>,
    /// Webhook that receives offline push notifications (`push.webhook_url` in the file).
    #[arg(long, env = "MAGPIE_PUSH_WEBHOOK_URL")]
    pub push_webhook_url: Option<String>,
    /// HMAC-SHA256 key for the webhook signature (`push.secret` in the file).
    #[arg(long, env = "MAGPIE_PUSH_SECRET")]
    pub push_secret: Option<String>,
    /// Push coalescing window per user, in milliseconds (`push.coalesce_ms` in the file).
    #[arg(long, env = "MAGPIE_PUSH_COALESCE_MS")]
    pub push_coalesce_ms: Option<u64>,
    /// Size of each store journal file, in MiB (zero-filled ahead of use; tests use 1).
    #[arg(long, env = "MAGPIE_STORE_JOURNAL_MIB")]
    pub store_journal_mib: Option<u32>,
    /// Under load (a commit of at least 32 store operations), the least time between two
    /// fsyncs of the store, in microseconds; 0 commits back to back (default 500).
    #[arg(long, env = "MAGPIE_STORE_COMMIT_INTERVAL_US")]
    pub store_commit_interval_us: Option<u32>,
}

/// The `[push]` table of the config file.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct PushFileConfig {
    webhook_url: Option<String>,
    secret: Option<String>,
    coalesce_ms: Option<u64>,
}

/// The TOML file: every key optional, same names as the flags.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    heartbeat_ms: Option<u64>,
    send_rate_per_sec: Option<u32>,
    send_burst: Option<u32>,
    argon2_m_kib: Option<u32>,
    argon2_t: Option<u32>,
    log: Option<String>,
    allow_strangers: Option<bool>,
    fanout_write_max: Option<u32>,
    receipt_events_max: Option<u32>,
    group_members_max: Option<u32>,
    presence_grace_ms: Option<u64>,
    store_journal_mib: Option<u32>,
    store_commit_interval_us: Option<u32>,
    #[serde(default)]
    push: PushFileConfig,
}

/// The resolved configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listening address.
    pub listen: SocketAddr,
    /// Embedded store directory.
    pub data_dir: PathBuf,
    /// Heartbeat interval announced in `ready`.
    pub heartbeat_ms: u64,
    /// Per-connection send rate (tokens per second).
    pub send_rate_per_sec: u32,
    /// Per-connection burst (bucket size).
    pub send_burst: u32,
    /// Argon2id memory cost, KiB.
    pub argon2_m_kib: u32,
    /// Argon2id iterations.
    pub argon2_t: u32,
    /// Log filter.
    pub log: String,
    /// Direct conversations without friendship are allowed.
    pub allow_strangers: bool,
    /// Group size and fan-out policy.
    pub policy: magpie_store::GroupPolicy,
    /// Presence offline-announcement delay.
    pub presence_grace_ms: u64,
    /// Offline push webhook, if configured.
    pub push_webhook_url: Option<String>,
    /// Webhook signing key.
    pub push_secret: String,
    /// Push coalescing window.
    pub push_coalesce_ms: u64,
    /// Longest a client may take to send a request's headers (`serve::HTTP_HEADER_READ_MS`;
    /// not a setting, tests shorten it).
    pub http_header_read_ms: u64,
    /// Size of each store journal file, MiB.
    pub store_journal_mib: u32,
    /// Least time between two fsyncs under load, µs (0: off).
    pub store_commit_interval_us: u32,
}

impl Config {
    /// Resolves flags/env over the file over defaults.
    pub fn resolve(args: ServeArgs) -> anyhow::Result<Config> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let default_listen: SocketAddr = LISTEN_DEFAULT.parse()?;
        let config = Config {
            listen: args.listen.or(file.listen).unwrap_or(default_listen),
            data_dir: args
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| DATA_DIR_DEFAULT.into()),
            heartbeat_ms: args
                .heartbeat_ms
                .or(file.heartbeat_ms)
                .unwrap_or(HEARTBEAT_MS_DEFAULT),
            send_rate_per_sec: args
                .send_rate_per_sec
                .or(file.send_rate_per_sec)
                .unwrap_or(SEND_RATE_PER_SEC_DEFAULT),
            send_burst: args
                .send_burst
                .or(file.send_burst)
                .unwrap_or(SEND_BURST_DEFAULT),
            argon2_m_kib: args
                .argon2_m_kib
                .or(file.argon2_m_kib)
                .unwrap_or(ARGON2_M_KIB_DEFAULT),
            argon2_t: args.argon2_t.or(file.argon2_t).unwrap_or(ARGON2_T_DEFAULT),
            log: args.log.or(file.log).unwrap_or_else(|| "info".into()),
            allow_strangers: args
                .allow_strangers
                .or(file.allow_strangers)
                .unwrap_or(false),
            policy: magpie_store::GroupPolicy {
                members_max: args
                    .group_members_max
                    .or(file.group_members_max)
                    .unwrap_or(magpie_core::limits::GROUP_MEMBERS_MAX_DEFAULT),
                fanout_write_max: args
                    .fanout_write_max
                    .or(file.fanout_write_max)
                    .unwrap_or(magpie_core::limits::FANOUT_WRITE_MAX_DEFAULT),
                receipt_events_max: args
                    .receipt_events_max
                    .or(file.receipt_events_max)
                    .unwrap_or(magpie_core::limits::RECEIPT_EVENTS_MAX_DEFAULT),
            },
            presence_grace_ms: args
                .presence_grace_ms
                .or(file.presence_grace_ms)
                .unwrap_or(PRESENCE_GRACE_MS_DEFAULT),
            push_webhook_url: args.push_webhook_url.or(file.push.webhook_url),
            push_secret: args.push_secret.or(file.push.secret).unwrap_or_default(),
            push_coalesce_ms: args
                .push_coalesce_ms
                .or(file.push.coalesce_ms)
                .unwrap_or(PUSH_COALESCE_MS_DEFAULT),
            store_journal_mib: args
                .store_journal_mib
                .or(file.store_journal_mib)
                .unwrap_or(STORE_JOURNAL_MIB_DEFAULT),
            store_commit_interval_us: args
                .store_commit_interval_us
                .or(file.store_commit_interval_us)
                .unwrap_or(STORE_COMMIT_INTERVAL_US_DEFAULT),
            http_header_read_ms: crate::serve::HTTP_HEADER_READ_MS,
        };
        config.check()?;
        Ok(config)
    }

    /// A configuration for tests: given address and directory, cheap Argon2, short heartbeat.
    pub fn for_tests(listen: SocketAddr, data_dir: PathBuf) -> Config {
        Config {
            listen,
            data_dir,
            heartbeat_ms: HEARTBEAT_MS_DEFAULT,
            send_rate_per_sec: SEND_RATE_PER_SEC_DEFAULT,
            send_burst: SEND_BURST_DEFAULT,
            argon2_m_kib: 64,
            argon2_t: 1,
            log: "warn".into(),
            allow_strangers: false,
            policy: magpie_store::GroupPolicy::default(),
            presence_grace_ms: PRESENCE_GRACE_MS_DEFAULT,
            push_webhook_url: None,
            push_secret: String::new(),
            push_coalesce_ms: PUSH_COALESCE_MS_DEFAULT,
            store_journal_mib: STORE_JOURNAL_MIB_TESTS,
            store_commit_interval_us: STORE_COMMIT_INTERVAL_US_DEFAULT,
            http_header_read_ms: crate::serve::HTTP_HEADER_READ_MS,
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (100..=HEARTBEAT_MS_MAX).contains(&self.heartbeat_ms),
            "heartbeat_ms must be between 100 and {HEARTBEAT_MS_MAX}"
        );
        anyhow::ensure!(
            self.presence_grace_ms <= PRESENCE_GRACE_MS_MAX,
            "presence_grace_ms must be at most {PRESENCE_GRACE_MS_MAX}"
        );
        anyhow::ensure!(
            self.push_coalesce_ms <= PUSH_COALESCE_MS_MAX,
            "push.coalesce_ms must be at most {PUSH_COALESCE_MS_MAX}"
        );
        anyhow::ensure!(
            self.send_rate_per_sec >= 1,
            "send_rate_per_sec must be at least 1"
        );
        anyhow::ensure!(self.send_burst >= 1, "send_burst must be at least 1");
        anyhow::ensure!(self.argon2_m_kib >= 8, "argon2_m_kib must be at least 8");
        anyhow::ensure!(self.argon2_t >= 1, "argon2_t must be at least 1");
        anyhow::ensure!(
            (1..=STORE_JOURNAL_MIB_MAX).contains(&self.store_journal_mib),
            "store_journal_mib must be between 1 and {STORE_JOURNAL_MIB_MAX}"
        );
        anyhow::ensure!(
            self.store_commit_interval_us <= STORE_COMMIT_INTERVAL_US_MAX,
            "store_commit_interval_us must be at most {STORE_COMMIT_INTERVAL_US_MAX}"
        );
        anyhow::ensure!(
            self.policy.members_max >= 2,
            "group_members_max must be at least 2"
        );
        anyhow::ensure!(
            self.policy.fanout_write_max <= self.policy.members_max,
            "fanout_write_max must not exceed group_members_max"
        );
        if self.push_webhook_url.is_some() {
            anyhow::ensure!(
                !self.push_secret.is_empty(),
                "push.secret is required with push.webhook_url"
            );
        }
        Ok(())
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading config {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("parsing config {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_flags_then_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("magpie.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\nfanout_write_max = 7\nreceipt_events_max = 50\nallow_strangers = true\nstore_commit_interval_us = 700\n\n[push]\nwebhook_url = \"http://127.0.0.1:1/hook\"\nsecret = \"s\"\ncoalesce_ms = 50\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            heartbeat_ms: Some(1234),
            fanout_write_max: Some(9),
            ..Default::default()
        };
        let c = Config::resolve(args).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9000", "from the file");
        assert_eq!(c.policy.fanout_write_max, 9, "flag beats file");
        assert_eq!(c.policy.receipt_events_max, 50, "from the file");
        assert_eq!(
            Config::resolve(ServeArgs::default())
                .unwrap()
                .policy
                .receipt_events_max,
            magpie_core::limits::RECEIPT_EVENTS_MAX_DEFAULT
        );
        assert_eq!(c.heartbeat_ms, 1234);
        assert!(c.allow_strangers);
        assert_eq!(
            c.push_webhook_url.as_deref(),
            Some("http://127.0.0.1:1/hook")
        );
        assert_eq!(c.push_coalesce_ms, 50);
        assert_eq!(c.store_commit_interval_us, 700, "from the file");
        assert_eq!(
            Config::resolve(ServeArgs::default())
                .unwrap()
                .store_commit_interval_us,
            500,
            "the store's default"
        );
        assert_eq!(
            c.data_dir,
            std::path::PathBuf::from(DATA_DIR_DEFAULT),
            "default"
        );
        assert_eq!(
            c.policy.members_max,
            magpie_core::limits::GROUP_MEMBERS_MAX_DEFAULT
        );
    }

    #[test]
    fn bad_files_and_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "no_such_key = 1\n").unwrap();
        assert!(Config::resolve(ServeArgs {
            config: Some(path),
            ..Default::default()
        })
        .is_err());
        let no_secret = ServeArgs {
            push_webhook_url: Some("http://x".into()),
            ..Default::default()
        };
        assert!(
            Config::resolve(no_secret).is_err(),
            "a webhook needs a secret"
        );
        let inverted = ServeArgs {
            fanout_write_max: Some(20),
            group_members_max: Some(10),
            ..Default::default()
        };
        assert!(Config::resolve(inverted).is_err());
        let too_long = ServeArgs {
            store_commit_interval_us: Some(STORE_COMMIT_INTERVAL_US_MAX + 1),
            ..Default::default()
        };
        assert!(Config::resolve(too_long).is_err());
        for (heartbeat, grace, coalesce) in [
            (HEARTBEAT_MS_MAX + 1, 0, 0),
            (u64::MAX, 0, 0),
            (99, 0, 0),
            (1_000, PRESENCE_GRACE_MS_MAX + 1, 0),
            (1_000, 0, PUSH_COALESCE_MS_MAX + 1),
        ] {
            let args = ServeArgs {
                heartbeat_ms: Some(heartbeat),
                presence_grace_ms: Some(grace),
                push_coalesce_ms: Some(coalesce),
                ..Default::default()
            };
            assert!(
                Config::resolve(args).is_err(),
                "{heartbeat} {grace} {coalesce}"
            );
        }
        let at_bounds = ServeArgs {
            heartbeat_ms: Some(HEARTBEAT_MS_MAX),
            presence_grace_ms: Some(PRESENCE_GRACE_MS_MAX),
            push_coalesce_ms: Some(PUSH_COALESCE_MS_MAX),
            ..Default::default()
        };
        assert!(Config::resolve(at_bounds).is_ok());
    }
}
