//! Latency histograms and their summaries.

use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency recorded: one minute, in nanoseconds (larger values are clamped).
const LATENCY_NS_MAX: u64 = 60_000_000_000;
/// Samples a connection buffers before taking the shared histogram's lock.
const LOCAL_SAMPLES_MAX: usize = 512;

/// A latency histogram shared by every connection task, in nanoseconds.
#[derive(Clone)]
pub struct SharedHistogram(Arc<Mutex<Histogram<u64>>>);

impl SharedHistogram {
    /// An empty histogram (1 ns to 60 s, 3 significant digits).
    pub fn new() -> SharedHistogram {
        let h = Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("valid histogram bounds");
        SharedHistogram(Arc::new(Mutex::new(h)))
    }

    /// A per-task recorder that batches samples into this histogram.
    pub fn recorder(&self) -> Recorder {
        Recorder {
            shared: self.clone(),
            local: Vec::with_capacity(LOCAL_SAMPLES_MAX),
        }
    }

    /// The summary of what was recorded.
    pub fn summary(&self) -> LatencySummary {
        let h = self.0.lock().unwrap_or_else(|e| e.into_inner());
        LatencySummary::of(&h)
    }
}

/// Buffers samples locally so connection tasks rarely touch the shared lock.
pub struct Recorder {
    shared: SharedHistogram,
    local: Vec<u64>,
}

impl Recorder {
    /// Records one latency in nanoseconds.
    pub fn record(&mut self, ns: u64) {
        self.local.push(ns.clamp(1, LATENCY_NS_MAX));
        if self.local.len() >= LOCAL_SAMPLES_MAX {
            self.flush();
        }
    }

    /// Moves buffered samples into the shared histogram.
    pub fn flush(&mut self) {
        if self.local.is_empty() {
            return;
        }
        let mut h = self.shared.0.lock().unwrap_or_else(|e| e.into_inner());
        for &v in &self.local {
            // Values are clamped into the histogram's range, so this cannot fail.
            let _ = h.record(v);
        }
        self.local.clear();
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Percentiles of a latency distribution, in microseconds.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Mean, µs.
    pub mean_us: f64,
    /// Median, µs.
    pub p50_us: f64,
    /// 90th percentile, µs.
    pub p90_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// Largest sample, µs.
    pub max_us: f64,
}

impl LatencySummary {
    fn of(h: &Histogram<u64>) -> LatencySummary {
        let us = |ns: u64| ns as f64 / 1000.0;
        LatencySummary {
            count: h.len(),
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.5)),
            p90_us: us(h.value_at_quantile(0.9)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }

    /// One table row: `label  p50 p90 p99 p99.9 max mean (n)`, in milliseconds.
    pub fn row(&self, label: &str) -> String {
        let ms = |us: f64| us / 1000.0;
        format!(
            "  {label:<22} p50 {:>8.3}  p90 {:>8.3}  p99 {:>8.3}  p99.9 {:>8.3}  max {:>8.3}  mean {:>8.3} ms  (n={})",
            ms(self.p50_us),
            ms(self.p90_us),
            ms(self.p99_us),
            ms(self.p999_us),
            ms(self.max_us),
            ms(self.mean_us),
            self.count
        )
    }
}

/// Formats a rate with thousands separators, e.g. `52,310`.
pub fn thousands(v: f64) -> String {
    let n = v.round().max(0.0) as u64;
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_through_local_buffers() {
        let h = SharedHistogram::new();
        {
            let mut r = h.recorder();
            for i in 1..=1000u64 {
                r.record(i * 1000);
            }
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert!((s.p50_us - 500.0).abs() < 2.0, "{s:?}");
        assert!((s.max_us - 1000.0).abs() < 2.0, "{s:?}");
    }

    #[test]
    fn formats_thousands() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(52_310.0), "52,310");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
    }
}
