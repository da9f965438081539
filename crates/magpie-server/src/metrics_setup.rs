//! Prometheus metrics: the recorder is installed once per process and rendered at `/metrics`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the global recorder on first call and returns its handle. Tests start several
/// servers in one process; they share the recorder.
pub fn handle() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ];
            PrometheusBuilder::new()
                .set_buckets(&buckets)
                .ok()?
                .install_recorder()
                .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
                .ok()
        })
        .clone()
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
