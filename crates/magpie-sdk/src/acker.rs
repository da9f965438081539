//! Debounced acknowledgement of processed events.
//!
//! Acking every event would mean a frame and an fsync per message; acking rarely means
//! re-delivering more after a crash. The tracker batches: it flushes once the oldest unflushed
//! progress is `debounce` old, or once `batch_max` events have piled up.

use std::time::Duration;

use tokio::time::Instant;

/// How long processed progress may wait before it is acked and persisted, in milliseconds.
pub const ACK_DEBOUNCE_MS_DEFAULT: u64 = 500;
/// How many processed-but-unflushed events force an immediate flush.
pub const ACK_BATCH_MAX_DEFAULT: u64 = 256;

/// Processed vs. flushed (acked + persisted) cursor.
#[derive(Debug, Clone)]
pub struct AckTracker {
    /// Highest cursor the application has processed.
    processed: u64,
    /// Highest cursor acked to the server and saved to the cursor store.
    flushed: u64,
    /// When `processed` first moved past `flushed`; `None` when nothing is pending.
    dirty_since: Option<Instant>,
    /// Maximum age of unflushed progress.
    debounce: Duration,
    /// Maximum amount of unflushed progress, in events.
    batch_max: u64,
}

impl AckTracker {
    /// A tracker whose cursor store already holds `flushed`.
    pub fn new(flushed: u64, debounce: Duration, batch_max: u64) -> Self {
        Self {
            processed: flushed,
            flushed,
            dirty_since: None,
            debounce,
            batch_max: batch_max.max(1),
        }
    }

    /// Records that everything up to `cursor` was processed.
    pub fn note_processed(&mut self, cursor: u64, now: Instant) {
        if cursor > self.processed {
            self.processed = cursor;
            self.dirty_since.get_or_insert(now);
        }
    }

    /// When the next flush is due, if anything is pending.
    pub fn deadline(&self) -> Option<Instant> {
        let since = self.dirty_since?;
        if self.processed - self.flushed >= self.batch_max {
            Some(since)
        } else {
            Some(since + self.debounce)
        }
    }

    /// The cursor to flush if a flush is due at `now`; marks it flushed.
    pub fn take_due(&mut self, now: Instant) -> Option<u64> {
        match self.deadline() {
            Some(at) if at <= now => self.take_now(),
            _ => None,
        }
    }

    /// The cursor to flush regardless of timing (closing down); marks it flushed.
    pub fn take_now(&mut self) -> Option<u64> {
        self.dirty_since.take()?;
        self.flushed = self.processed;
        Some(self.flushed)
    }

    /// The highest flushed cursor.
    pub fn flushed(&self) -> u64 {
        self.flushed
    }

    /// The highest processed cursor.
    pub fn processed(&self) -> u64 {
        self.processed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debounces_by_age() {
        let t0 = Instant::now();
        let mut a = AckTracker::new(3, Duration::from_millis(500), 100);
        assert_eq!(a.deadline(), None);
        a.note_processed(2, t0);
        assert_eq!(a.deadline(), None, "older than flushed is no progress");
        a.note_processed(4, t0);
        a.note_processed(5, t0 + Duration::from_millis(300));
        assert_eq!(
            a.deadline(),
            Some(t0 + Duration::from_millis(500)),
            "age of the oldest"
        );
        assert_eq!(a.take_due(t0 + Duration::from_millis(499)), None);
        assert_eq!(a.take_due(t0 + Duration::from_millis(500)), Some(5));
        assert_eq!(a.take_due(t0 + Duration::from_secs(9)), None);
        assert_eq!((a.flushed(), a.processed()), (5, 5));
    }

    #[test]
    fn flushes_at_once_when_batch_is_full() {
        let t0 = Instant::now();
        let mut a = AckTracker::new(0, Duration::from_secs(60), 10);
        a.note_processed(9, t0);
        assert_eq!(a.take_due(t0), None);
        a.note_processed(10, t0);
        assert_eq!(a.take_due(t0), Some(10));
    }

    #[test]
    fn take_now_ignores_timing_but_needs_progress() {
        let mut a = AckTracker::new(7, Duration::from_secs(60), 10);
        assert_eq!(a.take_now(), None);
        a.note_processed(8, Instant::now());
        assert_eq!(a.take_now(), Some(8));
        assert_eq!(a.take_now(), None);
    }
}
