//! What the store's benchmarks share: environment knobs and the users and direct
//! conversations they fill.

use magpie_core::{ConversationId, UserId};
use magpie_store::{FjallStore, Store};

/// `name` from the environment as a number, or `default` when unset or not a number.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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
