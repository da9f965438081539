//! The minimum commit interval under load (`FjallConfig::commit_interval_min`): a commit that
//! follows a busy one (at least `COMMIT_BUSY_OPS_MIN` write ops) waits out the rest of the
//! interval, and a lightly loaded store never waits.
//!
//! The pauses are counted through the store's own metric, read by a tiny global recorder
//! (this test file is its own process, so the recorder is its alone).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use magpie_core::{ClientMsgId, ConversationId, UserId};
use magpie_store::{
    AppendRequest, FjallConfig, FjallStore, NoopSink, Store, COMMIT_BUSY_OPS_MIN,
    COMMIT_INTERVAL_MAX,
};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

/// The longest the store allows, so that a commit following a busy one falls inside it even
/// on a slow disk.
const INTERVAL: Duration = COMMIT_INTERVAL_MAX;

/// Counts `magpie_store_commit_pauses_total`.
#[derive(Default, Clone)]
struct Pauses(Arc<AtomicU64>);

impl Recorder for Pauses {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        match key.name() {
            "magpie_store_commit_pauses_total" => Counter::from_arc(self.0.clone()),
            _ => Counter::noop(),
        }
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

/// One message as its own store call (its own write op).
async fn send(store: &Arc<dyn Store>, conv: ConversationId, sender: UserId, n: usize) {
    let request = AppendRequest {
        conversation_id: conv,
        sender_id: sender,
        client_msg_id: ClientMsgId::new(format!("m{n}")).expect("id"),
        text: format!("message {n}"),
    };
    let mut results = store.append(vec![request]).await.expect("append");
    results.remove(0).expect("accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_after_busy_ones_keep_the_interval_and_light_ones_never_wait() {
    let pauses = Pauses::default();
    metrics::set_global_recorder(pauses.clone()).expect("the only recorder of this process");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = FjallConfig {
        commit_interval_min: INTERVAL,
        ..FjallConfig::for_tests(dir.path())
    };
    let store: Arc<dyn Store> =
        Arc::new(FjallStore::open(config, Arc::new(NoopSink)).expect("open"));
    let a = store
        .create_user("a".into(), "h".into())
        .await
        .expect("user");
    let b = store
        .create_user("b".into(), "h".into())
        .await
        .expect("user");
    let conv = store
        .direct_conversation(a.id, b.id)
        .await
        .expect("direct")
        .id;

    // Light load: one op per commit, so no commit waits.
    for n in 0..5 {
        send(&store, conv, a.id, n).await;
    }
    assert_eq!(
        pauses.0.load(Ordering::Relaxed),
        0,
        "no pause at light load"
    );

    // Busy: waves of many concurrent single-message calls. Some commit carries at least
    // COMMIT_BUSY_OPS_MIN of them, and the commit after it waits.
    let mut next = 5;
    for _ in 0..3 {
        let wave: Vec<_> = (0..4 * COMMIT_BUSY_OPS_MIN)
            .map(|k| {
                let store = store.clone();
                let n = next + k;
                tokio::spawn(async move { send(&store, conv, a.id, n).await })
            })
            .collect();
        next += 4 * COMMIT_BUSY_OPS_MIN;
        for task in wave {
            task.await.expect("send task");
        }
    }
    // One more commit right after the waves, so that even if only the last group was busy
    // some commit follows it within the interval; that one waits.
    let started = Instant::now();
    send(&store, conv, a.id, next).await;
    next += 1;
    eprintln!("the send after the busy waves took {:?}", started.elapsed());
    assert!(
        pauses.0.load(Ordering::Relaxed) >= 1,
        "a commit after a busy one waited"
    );
    // Every message is there, in order, once.
    let last = store
        .messages(conv, magpie_store::MessageRange::Latest, 1)
        .await
        .expect("read");
    assert_eq!(last[0].seq.0, next as u64, "every send stored once");
}
