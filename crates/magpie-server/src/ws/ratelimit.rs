//! A token bucket: sends per connection are limited to a rate with a burst allowance.

use std::time::Instant;

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
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate_per_sec).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refuse() {
        let mut b = TokenBucket::new(1, 3);
        assert!(b.try_take() && b.try_take() && b.try_take());
        assert!(!b.try_take());
    }
}
