//! Token buckets: sends per device, typing frames per user, store frames per connection, each
//! limited to a rate with a burst allowance.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Instant;

use magpie_core::{DeviceId, UserId};
use parking_lot::Mutex;

/// Tokens refill continuously at `rate_per_sec` up to `burst`.
pub struct TokenBucket {
    /// Tokens available now (fractional, for smooth refill).
    tokens: f64,
    /// Refill rate.
    rate_per_sec: f64,
    /// Capacity.
    burst: f64,
    /// Last refill time.
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate_per_sec: u32, burst: u32) -> Self {
        Self {
            tokens: burst as f64,
            rate_per_sec: rate_per_sec as f64,
            burst: burst as f64,
            last: Instant::now(),
        }
    }

    /// Takes one token if available.
    pub fn try_take(&mut self) -> bool {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until a token is available (zero if one is now).
    pub fn wait_for_token(&mut self) -> std::time::Duration {
        self.refill();
        if self.tokens >= 1.0 || self.rate_per_sec <= 0.0 {
            return std::time::Duration::ZERO;
        }
        std::time::Duration::from_secs_f64((1.0 - self.tokens) / self.rate_per_sec)
    }

    /// True if the bucket has refilled completely: forgetting it then changes nothing.
    fn is_full(&mut self) -> bool {
        self.refill();
        self.tokens >= self.burst
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate_per_sec).min(self.burst);
    }
}

/// Lock shards of [`SendLimits`], so sends of unrelated devices do not contend.
const SEND_LIMIT_SHARDS: usize = 16;
/// Devices one shard tracks. Only devices part-way through their burst need an entry (a full
/// bucket is the same as none), so entries are dropped once refilled.
const SEND_LIMIT_DEVICES_PER_SHARD_MAX: usize = 8192;

/// What [`SendLimits`] limits: a device (sends) or a user (typing).
pub trait LimitKey: Copy + Eq + Hash {
    /// Spreads keys over the lock shards.
    fn shard(&self) -> usize;
}

impl LimitKey for DeviceId {
    fn shard(&self) -> usize {
        (self.0 as usize) % SEND_LIMIT_SHARDS
    }
}

impl LimitKey for UserId {
    fn shard(&self) -> usize {
        (self.0 as usize) % SEND_LIMIT_SHARDS
    }
}

/// A rate limit per key shared by all of the key's connections: sends per device (socket and
/// HTTP path), typing frames per user. Per connection it could be reset by reconnecting (every
/// socket started with a full burst) or multiplied by opening more sockets, and HTTP sends had
/// none at all.
pub struct SendLimits<K: LimitKey = DeviceId> {
    /// key → its bucket, for keys that used some of their allowance recently.
    shards: Vec<Mutex<HashMap<K, TokenBucket>>>,
    /// Refill rate of every bucket.
    rate_per_sec: u32,
    /// Capacity of every bucket.
    burst: u32,
}

impl<K: LimitKey> SendLimits<K> {
    /// Limits of `rate_per_sec` with bursts of `burst`, per key.
    pub fn new(rate_per_sec: u32, burst: u32) -> Self {
        Self {
            shards: (0..SEND_LIMIT_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            rate_per_sec,
            burst,
        }
    }

    /// Takes one from `device`'s allowance (a device, or a user), if it has one left.
    pub fn try_take(&self, device: K) -> bool {
        let mut shard = self.shards[device.shard()].lock();
        if !shard.contains_key(&device) && shard.len() >= SEND_LIMIT_DEVICES_PER_SHARD_MAX {
            shard.retain(|_, bucket| !bucket.is_full());
            if shard.len() >= SEND_LIMIT_DEVICES_PER_SHARD_MAX {
                // Every tracked device is mid-burst: forget one of them (it gets a full burst
                // again on its next send) rather than grow without bound or leave the new
                // device unlimited.
                metrics::counter!("magpie_send_limit_evictions_total").increment(1);
                if let Some(victim) = shard.keys().next().copied() {
                    shard.remove(&victim);
                }
            }
        }
        shard
            .entry(device)
            .or_insert_with(|| TokenBucket::new(self.rate_per_sec, self.burst))
            .try_take()
    }

    /// Devices tracked now (tests).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_are_limited_per_device_and_refilled_buckets_are_forgotten() {
        let limits = SendLimits::new(1_000_000, 2);
        let (a, b) = (DeviceId(1), DeviceId(2));
        assert!(limits.try_take(a) && limits.try_take(a));
        assert!(limits.try_take(b), "another device has its own allowance");
        // Buckets that refilled are forgotten when a shard fills up (at this rate they
        // refill within microseconds).
        let in_shard = |i: u64| DeviceId(i * SEND_LIMIT_SHARDS as u64);
        for i in 0..SEND_LIMIT_DEVICES_PER_SHARD_MAX as u64 {
            limits.try_take(in_shard(i));
        }
        let before = limits.tracked();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(limits.try_take(in_shard(1_000_000)));
        assert!(limits.tracked() < before, "{} tracked", limits.tracked());
        // A shard full of devices mid-burst still tracks (and limits) a newcomer.
        let busy = SendLimits::new(1, 1);
        for i in 0..SEND_LIMIT_DEVICES_PER_SHARD_MAX as u64 {
            assert!(busy.try_take(in_shard(i)));
        }
        let newcomer = in_shard(1_000_000);
        assert!(busy.try_take(newcomer));
        assert!(!busy.try_take(newcomer), "the newcomer is limited too");
        assert_eq!(busy.tracked(), SEND_LIMIT_DEVICES_PER_SHARD_MAX);
        let slow = SendLimits::new(1, 1);
        assert!(slow.try_take(a));
        assert!(!slow.try_take(a), "the burst is spent and refills at 1/s");
        assert!(slow.try_take(b), "another device has its own allowance");
    }

    #[test]
    fn burst_then_refuse() {
        let mut b = TokenBucket::new(1, 3);
        assert_eq!(b.wait_for_token(), std::time::Duration::ZERO);
        assert!(b.try_take() && b.try_take() && b.try_take());
        assert!(!b.try_take());
        let wait = b.wait_for_token();
        assert!(wait > std::time::Duration::from_millis(900), "{wait:?}");
        assert!(wait <= std::time::Duration::from_secs(1), "{wait:?}");
    }
}
