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

/// Reads the system load averages (1, 5, 15 minutes) from /proc/loadavg.
pub fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// A scrape of `GET /metrics`: un-labelled sample values by name (labelled series summed).
#[derive(Clone, Debug, Default)]
pub struct Metrics(HashMap<String, f64>);

impl Metrics {
    /// Parses Prometheus text exposition format.
    pub fn parse(text: &str) -> Metrics {
        let mut map = HashMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((key, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let name = key.split('{').next().unwrap_or(key).trim();
            // Keep histogram buckets apart from the plain series: only `_sum`/`_count` matter.
            if key.contains("le=\"") {
                continue;
            }
            *map.entry(name.to_owned()).or_insert(0.0) += value;
        }
        Metrics(map)
    }

    /// A value, 0 when absent.
    pub fn get(&self, name: &str) -> f64 {
        self.0.get(name).copied().unwrap_or(0.0)
    }
}

/// What the store did between two scrapes.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct StoreDelta {
    /// Commit batches (one fsync each) per second.
    pub commits_per_s: f64,
    /// Mean operations per batch.
    pub mean_batch_ops: f64,
    /// Mean commit time (write + fsync), milliseconds.
    pub mean_commit_ms: f64,
    /// Fraction of the wall time spent committing (1.0 = the writer was never idle).
    pub commit_busy: f64,
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
        StoreDelta {
            commits_per_s: per_s(commits),
            mean_batch_ops: ratio(
                d("magpie_store_batch_ops_sum"),
                d("magpie_store_batch_ops_count"),
            ),
            mean_commit_ms: 1000.0 * ratio(d("magpie_store_commit_seconds_sum"), commits),
            commit_busy: per_s(d("magpie_store_commit_seconds_sum")),
            server_sent_per_s: per_s(d("magpie_messages_sent_total")),
            server_events_per_s: per_s(d("magpie_events_delivered_total")),
            overflow_kicks: d("magpie_ws_overflow_kicks_total"),
            rate_limited: d("magpie_ws_rate_limited_total"),
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
}
