//! Prometheus metrics: the recorder is installed once per process and rendered at `/metrics`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// How often pending histogram samples are folded into their buckets, in milliseconds.
///
/// The recorder keeps every recorded sample until a scrape of `/metrics` or an upkeep drains
/// it (`PrometheusHandle::run_upkeep`; `install_recorder` leaves upkeep to its caller). A
/// server nobody scraped grew without bound: its RSS went from 100 to 793 MiB over 150 s at
/// 60,000 msg/s and to 1.25 GiB over 480 s at 40,000 msg/s, against 200-420 MiB over 140 s
/// when `/metrics` was scraped every 2 s. Five seconds is the exporter's own default upkeep
/// period; at 150,000 msg/s it bounds the pending samples to a few tens of MiB.
pub const METRICS_UPKEEP_INTERVAL_MS: u64 = 5_000;

/// Histogram: time from handing a connection's queued sends to the store until their durable
/// outcome, in seconds (the server's share of send→ack latency, less socket and queue time).
pub const METRIC_APPEND_SECONDS: &str = "magpie_ws_append_seconds";
/// Histogram: time from reading a `send` frame to writing its `sent` ack, in seconds: the
/// server's whole share of send→ack latency (queueing behind the connection's batch in flight
/// included), which tells server delays from socket and client delays.
pub const METRIC_SEND_ACK_SECONDS: &str = "magpie_ws_send_ack_seconds";

/// Handles of the metrics updated for every message, looked up once. `metrics::counter!` and
/// its kin find their metric in the recorder's registry on every call (hashing the key, taking
/// a shard lock, cloning and dropping the handle): four such lookups per message were about
/// 1.5% of the server's CPU samples at 82,000 msg/s. Resolve this after [`handle`] installed
/// the recorder: handles taken before that are bound to the no-op recorder for good.
pub struct HotMetrics {
    /// `magpie_events_delivered_total`: events written to sockets.
    pub events_delivered: Counter,
    /// `magpie_messages_sent_total`: sends acknowledged over sockets.
    pub messages_sent: Counter,
    /// [`METRIC_APPEND_SECONDS`].
    pub append_seconds: Histogram,
    /// [`METRIC_SEND_ACK_SECONDS`].
    pub send_ack_seconds: Histogram,
}

impl HotMetrics {
    /// Looks the handles up in the global recorder.
    pub fn resolve() -> Self {
        Self {
            events_delivered: metrics::counter!("magpie_events_delivered_total"),
            messages_sent: metrics::counter!("magpie_messages_sent_total"),
            append_seconds: metrics::histogram!(METRIC_APPEND_SECONDS),
            send_ack_seconds: metrics::histogram!(METRIC_SEND_ACK_SECONDS),
        }
    }
}

/// Installs the global recorder on first call and returns its handle. Tests start several
/// servers in one process; they share the recorder.
pub fn handle() -> Option<PrometheusHandle> {
    install(Duration::from_millis(METRICS_UPKEEP_INTERVAL_MS))
}

/// Like [`handle`], but if this call installs the recorder, its upkeep runs every
/// `upkeep_interval` (a test uses a short one; the first call in a process decides).
pub fn install(upkeep_interval: Duration) -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ];
            let handle = PrometheusBuilder::new()
                .set_buckets(&buckets)
                .ok()?
                .install_recorder()
                .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
                .ok()?;
            spawn_upkeep(handle.clone(), upkeep_interval);
            Some(handle)
        })
        .clone()
}

/// Drains pending histogram samples every `interval`, for the life of the process (the
/// recorder is global and never uninstalled). A thread, not a task: the recorder may be
/// installed before or outside a runtime, and the work is a few microseconds per period.
fn spawn_upkeep(handle: PrometheusHandle, interval: Duration) {
    let spawned = std::thread::Builder::new()
        .name("magpie-metrics".to_owned())
        .spawn(move || loop {
            std::thread::sleep(interval);
            handle.run_upkeep();
        });
    if let Err(e) = spawned {
        // Metrics still work; only a server nobody scrapes keeps its samples longer.
        tracing::warn!(error = %e, "metrics upkeep thread not started; histograms drain only when /metrics is scraped");
    }
}

/// Counters docs/protocol.md names (and the push pipeline's), registered at zero when a server
/// starts: Prometheus shows a metric only once it exists, and a dashboard or alert on, say,
/// `magpie_ws_overflow_kicks_total` should see 0 rather than nothing on a healthy node.
const COUNTERS_AT_START: [&str; 14] = [
    "magpie_messages_sent_total",
    "magpie_events_delivered_total",
    "magpie_ws_overflow_kicks_total",
    "magpie_ws_rate_limited_total",
    "magpie_push_enqueued_total",
    "magpie_push_coalesced_total",
    "magpie_push_dropped_total",
    "magpie_push_online_total",
    "magpie_push_muted_total",
    "magpie_push_read_total",
    "magpie_push_stale_total",
    "magpie_push_delivered_total",
    "magpie_push_retries_total",
    "magpie_push_failed_total",
];

/// Registers [`COUNTERS_AT_START`] and the connection gauge at zero.
pub fn register_at_start() {
    for name in COUNTERS_AT_START {
        metrics::counter!(name).increment(0);
    }
    metrics::gauge!("magpie_ws_connections").increment(0.0);
}
