//! The histogram sample bucket of the metrics exporter (`metrics_util::AtomicBucket`, patched
//! in `vendor/metrics-util`) keeps what is recorded while a drain runs: Magpie drains every
//! histogram every few seconds (the upkeep thread) and on every scrape, concurrently with the
//! tokio workers recording into them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics_util::storage::AtomicBucket;

/// Recording threads; more than this machine's cores, so that they are preempted often, also
/// between installing a new block and linking it to the previous ones (the patched window).
const RECORDERS: u64 = 6;
/// Samples each recording thread pushes.
const SAMPLES_PER_RECORDER: u64 = 1_000_000;
/// Pause between two drains, so that each drain has a few thousand samples to take.
const DRAIN_PAUSE: Duration = Duration::from_micros(200);
/// Rounds of the experiment. Without the patch a single round lost 101,447 and 3,528 samples
/// in two of three runs, and five rounds failed in their first round in both runs tried.
const ROUNDS: usize = 5;
/// Longest run of one recorder's consecutive samples that may be missing. The design's own
/// race loses a sample here and there (see below); losing a block chain, the bug patched,
/// removes every recorder's samples of a whole interval, i.e. runs of consecutive ones.
const MISSING_RUN_MAX: u64 = 2;

#[test]
fn samples_recorded_during_drains_are_kept() {
    for _ in 0..ROUNDS {
        record_while_draining();
    }
}

/// A sample's value: its recorder in the high half, its index in the low half.
fn sample(recorder: u64, index: u64) -> u64 {
    (recorder << 32) | index
}

fn record_while_draining() {
    let bucket = AtomicBucket::<u64>::new();
    let recording = AtomicBool::new(true);
    let (mut drained, drains): (Vec<u64>, u64) = std::thread::scope(|s| {
        let recorders: Vec<_> = (0..RECORDERS)
            .map(|r| {
                let bucket = &bucket;
                s.spawn(move || {
                    for i in 0..SAMPLES_PER_RECORDER {
                        bucket.push(sample(r, i));
                    }
                })
            })
            .collect();
        let drainer = s.spawn(|| {
            let mut drained = Vec::new();
            let mut drains = 0u64;
            while recording.load(Ordering::Acquire) {
                bucket.clear_with(|samples| drained.extend_from_slice(samples));
                drains += 1;
                std::thread::sleep(DRAIN_PAUSE);
            }
            (drained, drains)
        });
        for r in recorders {
            r.join().expect("recorder thread");
        }
        recording.store(false, Ordering::Release);
        drainer.join().expect("drainer thread")
    });
    bucket.clear_with(|samples| drained.extend_from_slice(samples));

    let recorded = RECORDERS * SAMPLES_PER_RECORDER;
    let drained_count = drained.len() as u64;
    assert!(
        drained_count <= recorded,
        "drained {drained_count} samples, more than the {recorded} recorded"
    );
    // A sample whose recorder took the bucket's newest block just before a drain swapped it
    // out, and wrote into it just after the drain read it, is lost: at most one per recorder
    // per drain, and that recorder's next sample goes to a new block (the exporter's own race,
    // see vendor/README.md).
    let lost = recorded - drained_count;
    assert!(
        lost <= drains * RECORDERS,
        "drained {drained_count} of {recorded} samples over {drains} drains"
    );
    // Which samples arrived, by recorder and index: none twice, and no long run missing.
    let mut seen = vec![false; recorded as usize];
    for &v in &drained {
        let (r, i) = (v >> 32, v & 0xffff_ffff);
        assert!(
            r < RECORDERS && i < SAMPLES_PER_RECORDER,
            "sample {v:#x} was never recorded"
        );
        let slot = &mut seen[(r * SAMPLES_PER_RECORDER + i) as usize];
        assert!(!*slot, "sample {v:#x} was drained twice");
        *slot = true;
    }
    for (r, of_recorder) in seen.chunks(SAMPLES_PER_RECORDER as usize).enumerate() {
        let longest = longest_missing_run(of_recorder);
        assert!(
            longest <= MISSING_RUN_MAX,
            "recorder {r} lost {longest} consecutive samples ({lost} lost in all over {drains} drains)"
        );
    }
}

/// The longest run of `false` in `seen`.
fn longest_missing_run(seen: &[bool]) -> u64 {
    let (mut longest, mut run) = (0u64, 0u64);
    for &arrived in seen {
        run = if arrived { 0 } else { run + 1 };
        longest = longest.max(run);
    }
    longest
}
