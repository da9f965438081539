//! Process statistics from /proc (RSS, CPU time), the file-descriptor limit, and the server's
//! Prometheus counters.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::Context;

/// Which process to look at.
#[derive(Clone, Copy, Debug)]
pub enum Proc {
    /// This bench process.
    Own,
    /// Another process by id (the server).
    Pid(u32),
}

impl Proc {
    fn dir(self) -> String {
        match self {
            Proc::Own => "/proc/self".to_owned(),
            Proc::Pid(pid) => format!("/proc/{pid}"),
        }
    }
}

/// One reading of a process's memory and CPU time.
#[derive(Clone, Copy, Debug)]
pub struct ProcSample {
    /// Resident set size, KiB (`VmRSS`).
    pub rss_kib: u64,
    /// User plus system CPU time, clock ticks.
    pub cpu_ticks: u64,
    /// When the reading was taken.
    pub at: Instant,
}

/// Reads `VmRSS` and CPU time of `proc`.
pub fn sample(proc: Proc) -> anyhow::Result<ProcSample> {
    let dir = proc.dir();
    let status = std::fs::read_to_string(format!("{dir}/status"))
        .with_context(|| format!("reading {dir}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc status")?;
    let stat = std::fs::read_to_string(format!("{dir}/stat"))
        .with_context(|| format!("reading {dir}/stat"))?;
    // The command name may contain spaces and parentheses; fields resume after the last ')'.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state); utime and stime are fields 14 and 15.
    let field = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .context("malformed /proc stat")
    };
    Ok(ProcSample {
        rss_kib,
        cpu_ticks: field(14)? + field(15)?,
        at: Instant::now(),
    })
}

/// Reads a sample if a pid was given; a vanished process is reported as an error.
pub fn sample_opt(pid: Option<u32>) -> anyhow::Result<Option<ProcSample>> {
    pid.map(|p| sample(Proc::Pid(p))).transpose()
}

/// CPU used between two samples, in percent of one core (200% = both cores of two).
pub fn cpu_percent(before: &ProcSample, after: &ProcSample) -> f64 {
    let wall_s = after.at.duration_since(before.at).as_secs_f64();
    if wall_s <= 0.0 {
        return 0.0;
    }
    let cpu_s =
        after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / clock_ticks_per_sec() as f64;
    100.0 * cpu_s / wall_s
}

fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// Raises this process's open-files soft limit to the hard limit; returns `(soft, hard)`.
pub fn raise_nofile_limit() -> anyhow::Result<(libc::rlim_t, libc::rlim_t)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit with soft ≤ hard.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
        }
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Whole-machine CPU time from the first line of /proc/stat, in clock ticks.
#[derive(Clone, Copy, Debug)]
pub struct MachineCpu {
    /// Ticks spent doing anything but idling or waiting for I/O.
    busy: u64,
    /// All ticks (every core).
    total: u64,
}

/// Reads whole-machine CPU time.
pub fn machine_cpu() -> Option<MachineCpu> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|v| v.parse().ok())
        .collect();
    if fields.len() < 8 {
        return None;
    }
    let total: u64 = fields.iter().sum();
    let idle = fields[3] + fields[4];
    Some(MachineCpu {
        busy: total - idle,
        total,
    })
}

/// CPU the whole machine used between two readings, in percent of one core (the same unit as
/// [`cpu_percent`], so subtracting the server's and the bench's share leaves everyone else's).
pub fn machine_cpu_percent(a: &MachineCpu, b: &MachineCpu) -> f64 {
    let total = b.total.saturating_sub(a.total);
    if total == 0 {
        return 0.0;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    100.0 * cores * b.busy.saturating_sub(a.busy) as f64 / total as f64
}

/// Reads the system load averages (1, 5, 15 minutes) from /proc/loadavg.
pub fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// A scrape of `GET /metrics`: un-labelled sample values by name (labelled series summed),
/// and histogram buckets by name.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// Plain series (`_sum`, `_count`, counters, gauges).
    values: HashMap<String, f64>,
    /// `NAME_bucket` series: (upper bound `le`, cumulative count), in exposition order.
    buckets: HashMap<String, Vec<(f64, f64)>>,
}

impl Metrics {
    /// Parses Prometheus text exposition format.
    pub fn parse(text: &str) -> Metrics {
        let mut m = Metrics::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((key, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let name = key.split('{').next().unwrap_or(key).trim();
            if let Some(le) = label(key, "le") {
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::NAN)
                };
                m.buckets
                    .entry(name.to_owned())
                    .or_default()
                    .push((le, value));
                continue;
            }
            *m.values.entry(name.to_owned()).or_insert(0.0) += value;
        }
        m
    }

    /// A value, 0 when absent.
    pub fn get(&self, name: &str) -> f64 {
        self.values.get(name).copied().unwrap_or(0.0)
    }

    /// The buckets of histogram `name` (without the `_bucket` suffix).
    fn buckets(&self, name: &str) -> &[(f64, f64)] {
        self.buckets
            .get(&format!("{name}_bucket"))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

/// The value of label `name` in a series key like `x{a="1",le="0.5"}`.
fn label<'a>(key: &'a str, name: &str) -> Option<&'a str> {
    let labels = key.split_once('{')?.1.trim_end_matches('}');
    labels.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

/// Upper bounds of quantiles of a histogram's increase between two scrapes: for each `q`,
/// the smallest bucket bound holding at least that share of the new samples (`None` without
/// samples; infinite when past the largest bound).
pub fn bucket_quantiles(a: &Metrics, b: &Metrics, name: &str, qs: &[f64]) -> Vec<Option<f64>> {
    let before = a.buckets(name);
    let after = b.buckets(name);
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|&(le, n)| {
            let old = before
                .iter()
                .find(|(l, _)| *l == le)
                .map_or(0.0, |&(_, n)| n);
            (le, n - old)
        })
        .collect();
    let total = delta.iter().map(|&(_, n)| n).fold(0.0, f64::max);
    qs.iter()
        .map(|&q| {
            if total <= 0.0 {
                return None;
            }
            delta
                .iter()
                .find(|&&(_, n)| n >= q * total)
                .map(|&(le, _)| le)
        })
        .collect()
}

/// What the store did between two scrapes.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct StoreDelta {
    /// Commit groups (one fsync each) per second.
    pub commits_per_s: f64,
    /// Mean operations per batch.
    pub mean_batch_ops: f64,
    /// Mean commit time (apply + fsync), milliseconds.
    pub mean_commit_ms: f64,
    /// Mean fsync time, milliseconds.
    pub mean_fsync_ms: f64,
    /// Upper bound of the median commit time (a histogram bucket), milliseconds.
    pub commit_p50_le_ms: Option<f64>,
    /// Upper bound of the 99th-percentile commit time, milliseconds (infinite: > last bucket).
    pub commit_p99_le_ms: Option<f64>,
    /// Upper bound of the slowest commit, milliseconds.
    pub commit_max_le_ms: Option<f64>,
    /// Fraction of the wall time spent committing (1.0 = the commit thread was never idle).
    pub commit_busy: f64,
    /// Upper bound of the median time a connection's append batch took from submission to
    /// its durable answer (`magpie_ws_append_seconds`), milliseconds.
    pub append_p50_le_ms: Option<f64>,
    /// Upper bound of its 99th percentile, milliseconds.
    pub append_p99_le_ms: Option<f64>,
    /// `magpie_messages_sent_total` per second.
    pub server_sent_per_s: f64,
    /// `magpie_events_delivered_total` per second.
    pub server_events_per_s: f64,
    /// `magpie_ws_overflow_kicks_total` increase.
    pub overflow_kicks: f64,
    /// `magpie_ws_rate_limited_total` increase.
    pub rate_limited: f64,
}

impl StoreDelta {
    /// Differences of the counters over `wall_s` seconds.
    pub fn between(a: &Metrics, b: &Metrics, wall_s: f64) -> StoreDelta {
        let d = |n: &str| b.get(n) - a.get(n);
        let commits = d("magpie_store_commit_seconds_count");
        let per_s = |v: f64| if wall_s > 0.0 { v / wall_s } else { 0.0 };
        let ratio = |num: f64, den: f64| if den > 0.0 { num / den } else { 0.0 };
        let q = bucket_quantiles(a, b, "magpie_store_commit_seconds", &[0.5, 0.99, 1.0]);
        let ms = |v: Option<f64>| v.map(|s| s * 1000.0);
        let append = bucket_quantiles(a, b, "magpie_ws_append_seconds", &[0.5, 0.99]);
        StoreDelta {
            commits_per_s: per_s(commits),
            mean_batch_ops: ratio(
                d("magpie_store_batch_ops_sum"),
                d("magpie_store_batch_ops_count"),
            ),
            mean_commit_ms: 1000.0 * ratio(d("magpie_store_commit_seconds_sum"), commits),
            mean_fsync_ms: 1000.0
                * ratio(
                    d("magpie_store_fsync_seconds_sum"),
                    d("magpie_store_fsync_seconds_count"),
                ),
            commit_p50_le_ms: ms(q[0]),
            commit_p99_le_ms: ms(q[1]),
            commit_max_le_ms: ms(q[2]),
            commit_busy: per_s(d("magpie_store_commit_seconds_sum")),
            append_p50_le_ms: ms(append[0]),
            append_p99_le_ms: ms(append[1]),
            server_sent_per_s: per_s(d("magpie_messages_sent_total")),
            server_events_per_s: per_s(d("magpie_events_delivered_total")),
            overflow_kicks: d("magpie_ws_overflow_kicks_total"),
            rate_limited: d("magpie_ws_rate_limited_total"),
        }
    }
}

/// Formats a bucket bound in milliseconds: `≤ 2.5 ms`, or `> last bucket`.
pub fn le_ms(v: Option<f64>) -> String {
    match v {
        None => "n/a".to_owned(),
        Some(ms) if ms.is_infinite() => "> 1 s".to_owned(),
        Some(ms) => {
            let fixed = format!("{ms:.3}");
            format!("≤ {} ms", fixed.trim_end_matches('0').trim_end_matches('.'))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let s = sample(Proc::Own).expect("own /proc entry");
        assert!(s.rss_kib > 0);
    }

    #[test]
    fn parses_prometheus_text() {
        let text = "# TYPE x counter\nmagpie_messages_sent_total 42\n\
                    magpie_store_commit_seconds_bucket{le=\"0.001\"} 3\n\
                    magpie_store_commit_seconds_sum 0.5\nmagpie_store_commit_seconds_count 10\n\
                    labelled{a=\"1\"} 2\nlabelled{a=\"2\"} 3\n";
        let m = Metrics::parse(text);
        assert_eq!(m.get("magpie_messages_sent_total"), 42.0);
        assert_eq!(m.get("magpie_store_commit_seconds_count"), 10.0);
        assert_eq!(m.get("magpie_store_commit_seconds_sum"), 0.5);
        assert_eq!(m.get("labelled"), 5.0);
        assert_eq!(m.get("missing"), 0.0);
    }

    #[test]
    fn histogram_quantiles_from_bucket_increases() {
        let scrape = |counts: [u32; 4]| {
            Metrics::parse(&format!(
                "h_bucket{{le=\"0.001\"}} {}\nh_bucket{{le=\"0.01\"}} {}\n\
                 h_bucket{{le=\"0.1\"}} {}\nh_bucket{{le=\"+Inf\"}} {}\n",
                counts[0], counts[1], counts[2], counts[3]
            ))
        };
        let a = scrape([10, 10, 10, 10]);
        let b = scrape([60, 108, 109, 110]);
        let q = bucket_quantiles(&a, &b, "h", &[0.5, 0.99, 1.0]);
        assert_eq!(q, vec![Some(0.001), Some(0.1), Some(f64::INFINITY)]);
        assert_eq!(bucket_quantiles(&a, &a, "h", &[0.5]), vec![None]);
        assert_eq!(le_ms(Some(2.5)), "≤ 2.5 ms");
    }
}
