//! Read latency of FjallStore's timelines once they live in many tables.
//!
//! `cargo bench -p magpie-store --bench reads`. Fills a store with messages spread over many
//! direct conversations (so every table spans every timeline, as in production), then times,
//! one at a time, the three reads a chat server serves from disk: the newest page of a
//! conversation's history, an older page (`before_seq`), and an inbox catch-up from a cursor
//! (whose events reference messages, each resolved by a point read). It compares the two
//! timeline compaction strategies only in the sense that it runs one of them; run it once
//! with each.
//!
//! Environment: `MAGPIE_BENCH_COMPACTION` (`tiered`, the default, or `leveled`),
//! `MAGPIE_BENCH_CONVS` (default 2000), `MAGPIE_BENCH_MESSAGES` (default 3,000,000),
//! `MAGPIE_BENCH_READS` (default 20,000 of each kind), `MAGPIE_BENCH_DIR` (default: a fresh
//! directory under the system temp dir). Without `--bench` (as `cargo test --all-targets`
//! runs it) it does a small smoke run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use magpie_core::{ClientMsgId, Cursor, Seq};
use magpie_store::{
    AppendRequest, FjallConfig, FjallStore, MessageRange, NoopSink, Store, TimelineCompaction,
};

mod support;
use support::{data_dir, direct_pairs, env_usize, runtime};

/// Messages per append call while filling: large batches keep the fill fast.
const FILL_BATCH_MESSAGES: usize = 512;
/// Messages and events per page, as the HTTP API's default page.
const PAGE_LIMIT: usize = 50;

/// A small deterministic generator, so both strategies see the same read sequence.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn report(name: &str, mut samples: Vec<Duration>, items: usize) {
    samples.sort_unstable();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    let total: Duration = samples.iter().sum();
    println!(
        "  {name:<22} p50 {:>7.1} µs  p99 {:>7.1} µs  max {:>8.1} µs  mean {:>7.1} µs  ({} reads, {items} items)",
        at(0.50).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
        at(1.0).as_secs_f64() * 1e6,
        total.as_secs_f64() * 1e6 / samples.len() as f64,
        samples.len(),
    );
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let compaction = match std::env::var("MAGPIE_BENCH_COMPACTION").as_deref() {
        Ok("leveled") => TimelineCompaction::Leveled,
        _ => TimelineCompaction::Tiered,
    };
    let convs_n = env_usize("MAGPIE_BENCH_CONVS", if full { 2000 } else { 20 });
    let messages_n = env_usize("MAGPIE_BENCH_MESSAGES", if full { 3_000_000 } else { 4000 });
    let reads_n = env_usize("MAGPIE_BENCH_READS", if full { 20_000 } else { 200 });

    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = data_dir(&tmp);
    let rt = runtime();
    rt.block_on(async {
        let config = FjallConfig {
            timeline_compaction: compaction,
            ..FjallConfig::new(&dir)
        };
        let store = Arc::new(FjallStore::open(config, Arc::new(NoopSink)).expect("open"));
        let convs = direct_pairs(&store, convs_n).await;

        // Round-robin over the conversations, so every memtable holds every timeline.
        let fill_started = Instant::now();
        let mut batch = Vec::with_capacity(FILL_BATCH_MESSAGES);
        for i in 0..messages_n {
            let (conv, a, b) = convs[i % convs_n];
            let sender = if (i / convs_n).is_multiple_of(2) { a } else { b };
            batch.push(AppendRequest {
                conversation_id: conv,
                sender_id: sender,
                client_msg_id: ClientMsgId::new(format!("m{i}")).expect("id"),
                text: format!("message {i}, padded to the length of a typical chat line ......"),
            });
            if batch.len() == FILL_BATCH_MESSAGES || i + 1 == messages_n {
                let results = store.append(std::mem::take(&mut batch)).await.expect("append");
                assert!(results.iter().all(|r| matches!(r, Ok(a) if !a.duplicate)));
            }
        }
        let fill = fill_started.elapsed();
        println!(
            "reads bench ({compaction:?} timelines): {messages_n} messages over {convs_n} conversations filled in {:.1} s ({:.0} msgs/s) into {}",
            fill.as_secs_f64(),
            messages_n as f64 / fill.as_secs_f64(),
            dir.display()
        );

        let per_conv = messages_n / convs_n;
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        let (mut latest, mut older, mut catch_up) = (Vec::new(), Vec::new(), Vec::new());
        let (mut latest_items, mut older_items, mut catch_up_items) = (0, 0, 0);
        for _ in 0..reads_n {
            let (conv, a, _) = convs[rng.below(convs_n)];

            let t = Instant::now();
            let page = store
                .messages(conv, MessageRange::Latest, PAGE_LIMIT)
                .await
                .expect("latest");
            latest.push(t.elapsed());
            latest_items += page.len();
            assert_eq!(page.len(), PAGE_LIMIT.min(per_conv));

            let before = Seq(1 + rng.below(per_conv.max(1)) as u64);
            let t = Instant::now();
            let page = store
                .messages(conv, MessageRange::Before(before), PAGE_LIMIT)
                .await
                .expect("before");
            older.push(t.elapsed());
            older_items += page.len();
            assert!(page.iter().all(|m| m.seq < before));

            // Each message of the conversation is one event in `a`'s inbox.
            let after = Cursor(rng.below(per_conv.max(1)) as u64);
            let t = Instant::now();
            let events = store.events(a, after, PAGE_LIMIT).await.expect("events");
            catch_up.push(t.elapsed());
            catch_up_items += events.len();
            assert!(events.iter().all(|e| e.cursor > after));
        }
        report("history, newest page", latest, latest_items);
        report("history, older page", older, older_items);
        report("inbox catch-up", catch_up, catch_up_items);
        store.close();
    });
}
