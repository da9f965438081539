//! Exponential reconnect backoff with full jitter.
//!
//! Full jitter (a uniform delay in `[0, min(cap, base·2^attempt)]`) spreads reconnecting
//! clients out after a server restart instead of having them return in synchronized waves.

use std::time::Duration;

use rand::Rng;

/// The first retry's upper bound, in milliseconds.
pub const BACKOFF_BASE_MS: u64 = 250;
/// The largest delay ever chosen, in milliseconds.
pub const BACKOFF_CAP_MS: u64 = 30_000;
/// A connection that stayed up this long counts as stable and resets the backoff.
pub const STABLE_CONNECTION_MS: u64 = 10_000;

/// Backoff state: the number of consecutive failed attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// Upper bound of the first delay.
    base_ms: u64,
    /// Upper bound of every delay.
    cap_ms: u64,
    /// Consecutive failures since the last reset.
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(BACKOFF_BASE_MS, BACKOFF_CAP_MS)
    }
}

impl Backoff {
    /// A backoff with the given base and cap (milliseconds).
    pub fn new(base_ms: u64, cap_ms: u64) -> Self {
        Self {
            base_ms: base_ms.max(1),
            cap_ms: cap_ms.max(1),
            attempt: 0,
        }
    }

    /// The upper bound of the next delay: `min(cap, base·2^attempt)`, overflow-safe.
    pub fn ceiling_ms(&self) -> u64 {
        let factor = 1u64.checked_shl(self.attempt.min(63)).unwrap_or(u64::MAX);
        self.base_ms.saturating_mul(factor).min(self.cap_ms)
    }

    /// Picks the next delay with `rng` and counts the attempt.
    pub fn next_delay<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        let ceiling = self.ceiling_ms();
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_millis(rng.random_range(0..=ceiling))
    }

    /// Forgets past failures (after a stable connection).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Consecutive failures since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn ceiling_doubles_then_caps() {
        let mut b = Backoff::default();
        let mut rng = StdRng::seed_from_u64(1);
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            ceilings.push(b.ceiling_ms());
            b.next_delay(&mut rng);
        }
        assert_eq!(&ceilings[..4], &[250, 500, 1_000, 2_000]);
        assert_eq!(ceilings[7], 30_000, "250·2^7 = 32 000 is capped");
        assert!(ceilings.iter().all(|&c| c <= BACKOFF_CAP_MS));
    }

    #[test]
    fn delays_stay_within_full_jitter_window_and_vary() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut seen = std::collections::HashSet::new();
        for attempt in 0..200u32 {
            let mut b = Backoff::default();
            for _ in 0..attempt % 10 {
                b.next_delay(&mut rng);
            }
            let ceiling = b.ceiling_ms();
            let d = b.next_delay(&mut rng).as_millis() as u64;
            assert!(d <= ceiling);
            seen.insert(d);
        }
        assert!(seen.len() > 50, "jitter must spread delays");
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::new(250, 30_000);
        b.attempt = u32::MAX;
        assert_eq!(b.ceiling_ms(), 30_000);
        b.next_delay(&mut StdRng::seed_from_u64(0));
        assert_eq!(b.attempt(), u32::MAX);
        b.reset();
        assert_eq!(b.ceiling_ms(), 250);
    }
}
