//! What the store's benchmarks share: environment knobs, where the store lives, the runtime,
//! and the users and direct conversations they fill.

use std::path::PathBuf;

use magpie_core::{ConversationId, UserId};
use magpie_store::{FjallStore, Store};

/// `name` from the environment as a number, or `default` when unset or not a number.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The store's directory: `MAGPIE_BENCH_DIR` if set (to measure on another disk), else a
/// directory inside `tmp`.
pub fn data_dir(tmp: &tempfile::TempDir) -> PathBuf {
    std::env::var("MAGPIE_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(|_| tmp.path().join("db"))
}

/// A multi-threaded tokio runtime with every driver enabled.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Creates `n` pairs of users (`a{i}`, `b{i}`) and the direct conversation of each pair.
pub async fn direct_pairs(store: &FjallStore, n: usize) -> Vec<(ConversationId, UserId, UserId)> {
    let mut pairs = Vec::with_capacity(n);
    for i in 0..n {
        let a = store
            .create_user(format!("a{i}"), "h".into())
            .await
            .expect("user")
            .id;
        let b = store
            .create_user(format!("b{i}"), "h".into())
            .await
            .expect("user")
            .id;
        let conv = store.direct_conversation(a, b).await.expect("direct").id;
        pairs.push((conv, a, b));
    }
    pairs
}
