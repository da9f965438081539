//! `/metrics` on a fresh server (its own test binary, so no other test has touched the
//! process-wide recorder first).

use magpie_server::testing::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_counters_are_there_from_the_start() {
    let s = TestServer::start().await;
    let text = reqwest::get(format!("{}/metrics", s.base_url()))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("body");
    for name in [
        "magpie_ws_connections",
        "magpie_messages_sent_total",
        "magpie_events_delivered_total",
        "magpie_ws_overflow_kicks_total",
        "magpie_ws_rate_limited_total",
        "magpie_push_dropped_total",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{name} "))),
            "{name} missing from /metrics:\n{text}"
        );
    }
    s.stop().await;
}
