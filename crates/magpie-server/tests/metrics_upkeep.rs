//! The metrics recorder drains pending histogram samples on its own, so a server that nobody
//! scrapes does not grow without bound. Its own test binary: the recorder is global to a
//! process, and this test must be the one that installs it (with a short upkeep period).

use std::time::Duration;

/// Samples recorded per round; four rounds of 8 bytes each would hold 160 MiB if kept.
const SAMPLES_PER_ROUND: usize = 5_000_000;
const ROUNDS: usize = 4;
/// Upkeep period used by this test (the server's default is 5 s).
const UPKEEP_INTERVAL_MS: u64 = 50;
/// Growth allowed over the rounds: about one round's samples plus slack. Without upkeep the
/// process keeps all four rounds (over 150 MiB).
const GROWTH_BYTES_MAX: u64 = 90 * 1024 * 1024;
/// Samples the exporter may lose to drains that race a record (see the end of the test); one
/// per drain at most, and the test runs a few dozen drains.
const SAMPLES_LOST_MAX: u64 = 100;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

#[test]
fn histogram_samples_are_drained_without_a_scrape() {
    let handle = magpie_server::metrics_setup::install(Duration::from_millis(UPKEEP_INTERVAL_MS))
        .expect("recorder installed");
    // A new thread takes its name when it first runs, which on a busy machine can be after
    // `install` returns (CI once counted none), so give it a moment to show up.
    let upkeep_threads = || {
        std::fs::read_dir("/proc/self/task")
            .expect("list threads")
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.trim() == "magpie-metrics")
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while upkeep_threads() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(1, upkeep_threads(), "one upkeep thread runs");

    let histogram = metrics::histogram!("magpie_test_upkeep_seconds");
    histogram.record(0.001);
    std::thread::sleep(Duration::from_millis(4 * UPKEEP_INTERVAL_MS));
    let before = rss_bytes();
    for _ in 0..ROUNDS {
        for i in 0..SAMPLES_PER_ROUND {
            histogram.record((i % 1000) as f64 * 1e-6);
        }
        // Several upkeep periods, and no render of /metrics.
        std::thread::sleep(Duration::from_millis(6 * UPKEEP_INTERVAL_MS));
    }
    let grown = rss_bytes().saturating_sub(before);
    assert!(
        grown < GROWTH_BYTES_MAX,
        "RSS grew {} MiB over {} samples that nobody scraped",
        grown / (1024 * 1024),
        ROUNDS * SAMPLES_PER_ROUND
    );

    // The samples were kept as counts, not dropped. The exporter's lock-free sample bucket can
    // lose a sample that is being recorded at the instant a drain swaps the bucket out (a
    // scrape has the same race), so a handful of losses is the exporter's. Before the patch in
    // vendor/metrics-util a drain could lose whole blocks (CI rendered 19,887,165 of
    // 20,000,001 under load); tests/metrics_bucket.rs tests that patch directly.
    let text = handle.render();
    let count = text
        .lines()
        .find_map(|line| line.strip_prefix("magpie_test_upkeep_seconds_count "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .expect("histogram count rendered");
    let recorded = (ROUNDS * SAMPLES_PER_ROUND + 1) as u64;
    assert!(
        count <= recorded && recorded - count <= SAMPLES_LOST_MAX,
        "rendered {count} of {recorded} samples"
    );
}
