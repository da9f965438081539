//! The histogram sample bucket of the metrics exporter (`metrics_util::AtomicBucket`, patched
//! in `vendor/metrics-util`) keeps what is recorded while a drain runs: Magpie drains every
//! histogram every few seconds (the upkeep thread) and on every scrape, concurrently with the
//! tokio workers recording into them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use metrics_util::storage::AtomicBucket;

/// Recording threads; more than this machine's cores, so that they are preempted often, also
/// between installing a new block and linking it to the previous ones (the patched window).
const RECORDERS: u64 = 6;
/// Samples each recording thread pushes.
const SAMPLES_PER_RECORDER: u64 = 1_000_000;
/// Pause between two drains, so that each drain has a few thousand samples to take.
const DRAIN_PAUSE: Duration = Duration::from_micros(200);
/// Rounds of the experiment. Without the patch one round of this size lost samples in two of
/// three runs (up to 101,447 of 6,000,000), so five rounds miss it rarely.
const ROUNDS: usize = 5;

#[test]
fn samples_recorded_during_drains_are_kept() {
    for _ in 0..ROUNDS {
        record_while_draining();
    }
}

fn record_while_draining() {
    let bucket = AtomicBucket::<u64>::new();
    let recording = AtomicBool::new(true);
    let drained = AtomicU64::new(0);
    let drains = AtomicU64::new(0);
    std::thread::scope(|s| {
        let recorders: Vec<_> = (0..RECORDERS)
            .map(|_| {
                s.spawn(|| {
                    for i in 0..SAMPLES_PER_RECORDER {
                        bucket.push(i);
                    }
                })
            })
            .collect();
        s.spawn(|| {
            while recording.load(Ordering::Acquire) {
                bucket.clear_with(|samples| {
                    drained.fetch_add(samples.len() as u64, Ordering::Relaxed);
                });
                drains.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(DRAIN_PAUSE);
            }
        });
        for r in recorders {
            r.join().expect("recorder thread");
        }
        recording.store(false, Ordering::Release);
    });
    bucket.clear_with(|samples| {
        drained.fetch_add(samples.len() as u64, Ordering::Relaxed);
    });

    let recorded = RECORDERS * SAMPLES_PER_RECORDER;
    let drained = drained.into_inner();
    let drains = drains.into_inner();
    // A sample whose recorder took the bucket's newest block just before a drain swapped it
    // out, and wrote into it just after the drain read it, is lost: at most one per recorder
    // per drain (the exporter's own, unpatched race, see vendor/README.md). Losing a block
    // chain (the bug patched) drops everything recorded since the previous drain at once.
    let lost = recorded - drained;
    assert!(
        drained <= recorded && lost <= drains * RECORDERS,
        "drained {drained} of {recorded} samples over {drains} drains"
    );
    eprintln!("drained {drained} of {recorded} samples over {drains} drains");
}
