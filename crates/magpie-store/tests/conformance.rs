//! Every backend against the conformance suite.

use std::sync::atomic::{AtomicUsize, Ordering};

use magpie_store::{conformance, FjallConfig, FjallStore, MemoryStore};

#[tokio::test(flavor = "multi_thread")]
async fn memory_store_conforms() {
    conformance::run_all(MemoryStore::with_policy).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fjall_store_conforms() {
    // One directory per check, all under one temporary root that outlives the suite.
    let root = tempfile::tempdir().expect("tempdir");
    let n = AtomicUsize::new(0);
    conformance::run_all(|sink, policy| {
        let dir = root
            .path()
            .join(n.fetch_add(1, Ordering::Relaxed).to_string());
        let config = FjallConfig {
            policy,
            ..FjallConfig::for_tests(dir)
        };
        FjallStore::open(config, sink).expect("open")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fjall_store_conforms_with_single_op_batches() {
    // batch_ops_max = 1 disables group commit: every op gets its own fsync.
    let root = tempfile::tempdir().expect("tempdir");
    let n = AtomicUsize::new(0);
    conformance::run_all(|sink, policy| {
        let dir = root
            .path()
            .join(n.fetch_add(1, Ordering::Relaxed).to_string());
        let config = FjallConfig {
            batch_ops_max: 1,
            policy,
            ..FjallConfig::for_tests(dir)
        };
        FjallStore::open(config, sink).expect("open")
    })
    .await;
}
