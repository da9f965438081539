//! Append throughput of FjallStore with group commit.
//!
//! `cargo bench -p magpie-store --bench append`. Many concurrent tasks each append single-message
//! batches to their own direct conversation and wait for each to be durable before sending the
//! next, like clients waiting for their acks. Reports messages/s, append latency and the mean
//! batch size, read back from the store's own metrics through a tiny in-process recorder.
//!
//! Environment: `MAGPIE_BENCH_TASKS` (default 64), `MAGPIE_BENCH_APPENDS_PER_TASK` (default
//! 2000), `MAGPIE_BENCH_BATCH_OPS_MAX` (default 1024; 1 disables group commit),
//! `MAGPIE_BENCH_DIR` (default: a fresh directory under the system temp dir; note that
//! a tmpfs makes fsync free and the numbers meaningless).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use magpie_core::{ClientMsgId, UserId};
use magpie_store::{AppendRequest, FjallConfig, FjallStore, NoopSink, Store};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use parking_lot::Mutex;

mod support;
use support::{data_dir, direct_pairs, env_usize, runtime};

/// Sum and count of a histogram; all the bench needs.
#[derive(Default)]
struct Mean(Mutex<(f64, u64)>);

impl metrics::HistogramFn for Mean {
    fn record(&self, value: f64) {
        let mut m = self.0.lock();
        m.0 += value;
        m.1 += 1;
    }
}

impl Mean {
    fn get(&self) -> (f64, u64) {
        *self.0.lock()
    }
}

/// Captures the store's metrics of interest.
#[derive(Default, Clone)]
struct Captured {
    batches: Arc<AtomicU64>,
    messages: Arc<AtomicU64>,
    batch_ops: Arc<Mean>,
    commit_seconds: Arc<Mean>,
}

impl Recorder for Captured {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        match key.name() {
            "magpie_store_batches_total" => Counter::from_arc(self.batches.clone()),
            "magpie_store_messages_appended_total" => Counter::from_arc(self.messages.clone()),
            _ => Counter::noop(),
        }
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        match key.name() {
            "magpie_store_batch_ops" => Histogram::from_arc(self.batch_ops.clone()),
            "magpie_store_commit_seconds" => Histogram::from_arc(self.commit_seconds.clone()),
            _ => Histogram::noop(),
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    // `cargo test --all-targets` runs this binary without `--bench`: do a small smoke run then,
    // so the test suite checks the bench still works without paying for a full measurement.
    let full = std::env::args().any(|a| a == "--bench");
    let tasks = env_usize("MAGPIE_BENCH_TASKS", if full { 64 } else { 4 });
    let per_task = env_usize(
        "MAGPIE_BENCH_APPENDS_PER_TASK",
        if full { 2000 } else { 50 },
    );
    let captured = Captured::default();
    metrics::set_global_recorder(captured.clone()).expect("first recorder");

    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = data_dir(&tmp);
    let rt = runtime();
    rt.block_on(async {
        let config = FjallConfig {
            batch_ops_max: env_usize("MAGPIE_BENCH_BATCH_OPS_MAX", 1024),
            ..FjallConfig::new(&dir)
        };
        let store = Arc::new(FjallStore::open(config, Arc::new(NoopSink)).expect("open"));
        let convs = direct_pairs(&store, tasks).await;
        let batches0 = captured.batches.load(Ordering::Relaxed);
        let ops0 = captured.batch_ops.get();
        let commit0 = captured.commit_seconds.get();

        let started = Instant::now();
        let handles: Vec<_> = convs
            .into_iter()
            .enumerate()
            .map(|(t, (conv, a, b))| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut latencies = Vec::with_capacity(per_task);
                    for i in 0..per_task {
                        let sender: UserId = if i % 2 == 0 { a } else { b };
                        let req = AppendRequest {
                            conversation_id: conv,
                            sender_id: sender,
                            client_msg_id: ClientMsgId::new(format!("t{t}-{i}")).expect("id"),
                            text: format!("message {i} of task {t}, about as long as a chat line"),
                        };
                        let t0 = Instant::now();
                        let r = store.append(vec![req]).await.expect("append");
                        latencies.push(t0.elapsed());
                        assert!(matches!(&r[..], [Ok(a)] if !a.duplicate));
                    }
                    latencies
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for h in handles {
            latencies.extend(h.await.expect("task"));
        }
        let elapsed = started.elapsed();
        latencies.sort_unstable();

        let total = (tasks * per_task) as f64;
        let batches = captured.batches.load(Ordering::Relaxed) - batches0;
        let ops = captured.batch_ops.get();
        let commit = captured.commit_seconds.get();
        let (ops_sum, commit_sum) = (ops.0 - ops0.0, commit.0 - commit0.0);
        println!(
            "append bench: {tasks} tasks × {per_task} single-message appends into {}",
            dir.display()
        );
        println!(
            "  {total:.0} messages in {:.2} s = {:.0} msgs/s",
            elapsed.as_secs_f64(),
            total / elapsed.as_secs_f64()
        );
        println!(
            "  {batches} batches, mean {:.1} ops/batch, mean commit+fsync {:.2} ms",
            ops_sum / batches.max(1) as f64,
            commit_sum * 1e3 / batches.max(1) as f64
        );
        println!(
            "  append latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            percentile(&latencies, 0.50).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            percentile(&latencies, 1.0).as_secs_f64() * 1e3
        );
        println!(
            "  messages counted by the store: {}",
            captured.messages.load(Ordering::Relaxed)
        );
        store.close();
    });
}
