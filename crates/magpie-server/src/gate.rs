//! Hot-conversation protection: a bound on sends in flight per conversation.
//!
//! All appends share one writer queue; without a bound, a 10,000-member group where everyone
//! sends at once could fill it and delay every other conversation. Sends beyond the bound are
//! answered `rate_limited` at once (clients retry with backoff), so a hot group slows itself
//! down instead of the server.

use std::collections::HashMap;
use std::sync::Arc;

use magpie_core::ConversationId;
use parking_lot::Mutex;

/// Sends one conversation may have in flight at the writer at once.
pub const SENDS_IN_FLIGHT_PER_CONVERSATION_MAX: u32 = 1024;
/// Lock shards, so unrelated conversations do not contend.
const SHARDS: usize = 32;

/// Counts in-flight sends per conversation.
pub struct ConversationGate {
    /// conversation → sends in flight; entries vanish at zero, so memory follows activity.
    shards: Vec<Mutex<HashMap<ConversationId, u32>>>,
    /// The bound.
    max: u32,
}

/// One admitted send; leaving the gate happens on drop.
pub struct GatePermit {
    gate: Arc<ConversationGate>,
    conversation: ConversationId,
}

impl Drop for GatePermit {
    fn drop(&mut self) {
        let mut shard = self.gate.shard(self.conversation).lock();
        if let Some(n) = shard.get_mut(&self.conversation) {
            *n -= 1;
            if *n == 0 {
                shard.remove(&self.conversation);
            }
        }
    }
}

impl ConversationGate {
    /// A gate admitting `max` sends per conversation.
    pub fn new(max: u32) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            max,
        }
    }

    fn shard(&self, c: ConversationId) -> &Mutex<HashMap<ConversationId, u32>> {
        &self.shards[(c.0 % SHARDS as u64) as usize]
    }

    /// Admits one send, or `None` when the conversation is at its bound.
    pub fn try_enter(self: &Arc<Self>, conversation: ConversationId) -> Option<GatePermit> {
        let mut shard = self.shard(conversation).lock();
        let n = shard.entry(conversation).or_insert(0);
        if *n >= self.max {
            metrics::counter!("magpie_gate_refusals_total").increment(1);
            return None;
        }
        *n += 1;
        Some(GatePermit {
            gate: self.clone(),
            conversation,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_and_releases() {
        let gate = Arc::new(ConversationGate::new(2));
        let c = ConversationId(1);
        let a = gate.try_enter(c).unwrap();
        let _b = gate.try_enter(c).unwrap();
        assert!(gate.try_enter(c).is_none());
        assert!(
            gate.try_enter(ConversationId(2)).is_some(),
            "other conversations unaffected"
        );
        drop(a);
        assert!(gate.try_enter(c).is_some());
    }
}
