//! The optional timeline of a traffic run (`--timeline-ms`, `--timeline-out`).
//!
//! A percentile says how long the tail is, not where it comes from. The timeline cuts the
//! measured window into short windows of wall time and records, for each, how many messages
//! were sent in it and delivered, how many of those took longer than [`SLOW_NS`] (the
//! half-rate target's p99), the slowest one, and how the server's threads spent the window:
//! their CPU time and the time they were runnable but waiting for a core (from
//! `/proc/PID/task/*/schedstat`). Together these tell steady queueing (slow messages in
//! every window) from episodes (slow messages bunched in a few windows), and show which
//! threads were busy during the episodes.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;

use super::wire::now_ns;

/// A delivery slower than this counts as slow: the p99 target at half the maximum rate.
pub const SLOW_NS: u64 = 10_000_000;
/// Most windows a run may have (a bound on the memory every connection keeps: 240 KB).
const WINDOWS_MAX: u64 = 10_000;
/// Default window length when only `--timeline-out` is given.
const WINDOW_MS_DEFAULT: u64 = 50;
/// The thread sampler never sleeps longer than this, so it notices the end of the run.
const SAMPLER_NAP_NS: u64 = 5_000_000;

/// Command-line options of the timeline, shared by the traffic scenarios.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TimelineArgs {
    /// Record a timeline with windows of this many milliseconds and summarise it (which
    /// windows had a delivery over 10 ms, and the server threads' CPU in those windows
    /// against the others; the thread columns need `--server-pid`).
    #[arg(long)]
    pub timeline_ms: Option<u64>,
    /// Also write the timeline to this file, one tab-separated line per window (implies
    /// `--timeline-ms 50` if that is not given).
    #[arg(long)]
    pub timeline_out: Option<PathBuf>,
}

impl TimelineArgs {
    /// The window length in nanoseconds, if a timeline was asked for.
    pub fn window_ns(&self) -> anyhow::Result<Option<u64>> {
        let ms = match (self.timeline_ms, &self.timeline_out) {
            (Some(ms), _) => ms,
            (None, Some(_)) => WINDOW_MS_DEFAULT,
            (None, None) => return Ok(None),
        };
        anyhow::ensure!(ms >= 1, "--timeline-ms must be at least 1");
        let ns = ms
            .checked_mul(1_000_000)
            .context("--timeline-ms is too large")?;
        Ok(Some(ns))
    }

    /// Refuses a run that would need more than [`WINDOWS_MAX`] windows (they would otherwise
    /// be cut off silently).
    pub fn check_span(window_ns: u64, span_ns: u64) -> anyhow::Result<()> {
        let windows = span_ns.div_ceil(window_ns.max(1));
        anyhow::ensure!(
            windows <= WINDOWS_MAX,
            "the timeline would need {windows} windows; at most {WINDOWS_MAX}: use a longer --timeline-ms"
        );
        Ok(())
    }
}

/// Deliveries of one window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cell {
    /// Messages sent in the window and delivered to the peer.
    pub delivered: u64,
    /// Of those, how many took longer than [`SLOW_NS`].
    pub slow: u64,
    /// The slowest, in nanoseconds.
    pub max_ns: u64,
}

/// The windows of a run, by send time; each connection keeps its own and they are merged at
/// the end, so recording costs no shared state.
#[derive(Clone, Debug, Default)]
pub struct Windows {
    /// Start of the first window, nanoseconds since the bench's epoch.
    start_ns: u64,
    /// Length of each window.
    window_ns: u64,
    /// One cell per window.
    cells: Vec<Cell>,
}

impl Windows {
    /// Windows of `window_ns` covering `start_ns..stop_ns` (at most [`WINDOWS_MAX`]).
    pub fn new(start_ns: u64, stop_ns: u64, window_ns: u64) -> Windows {
        let window_ns = window_ns.max(1);
        let n = stop_ns.saturating_sub(start_ns).div_ceil(window_ns);
        Windows {
            start_ns,
            window_ns,
            cells: vec![Cell::default(); n.min(WINDOWS_MAX) as usize],
        }
    }

    /// Records one delivery of a message sent at `sent_ns` that took `latency_ns`; sends
    /// outside the windows are ignored.
    pub fn record(&mut self, sent_ns: u64, latency_ns: u64) {
        let Some(offset) = sent_ns.checked_sub(self.start_ns) else {
            return;
        };
        let Some(cell) = usize::try_from(offset / self.window_ns)
            .ok()
            .and_then(|i| self.cells.get_mut(i))
        else {
            return;
        };
        cell.delivered += 1;
        cell.slow += u64::from(latency_ns > SLOW_NS);
        cell.max_ns = cell.max_ns.max(latency_ns);
    }

    /// Adds `other`'s deliveries (same windows) to these.
    pub fn merge(&mut self, other: &Windows) {
        debug_assert_eq!(
            (self.start_ns, self.window_ns, self.cells.len()),
            (other.start_ns, other.window_ns, other.cells.len()),
            "merging timelines of different runs"
        );
        for (a, b) in self.cells.iter_mut().zip(&other.cells) {
            a.delivered += b.delivered;
            a.slow += b.slow;
            a.max_ns = a.max_ns.max(b.max_ns);
        }
    }

    /// The cells, oldest first.
    pub fn cells(&self) -> &[Cell] {
        &self.cells
    }
}

/// Number of thread groups.
const GROUPS: usize = 8;

/// What a server thread does, judged by its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// tokio's workers and blocking pool (connections, HTTP, reads), and the main thread.
    Tokio,
    /// `magpie-commit`: applies and fsyncs batches.
    Commit,
    /// `magpie-writer`: stages batches.
    Writer,
    /// The storage engine's workers: compactions (`fjall:worker`) and memtable rotations and
    /// flushes (`fjall:flush`).
    Workers,
    /// The engine's version retirement (`lsm:version-gc`): dropping retired versions,
    /// unlinking old version files.
    Retire,
    /// The engine's memtable freeing (`lsm:free`): freeing flushed memtables.
    Free,
    /// The engine's journal preparation (`fjall:jnl*`): zero-filling the next journal.
    Journal,
    /// Anything else.
    Other,
}

impl Group {
    /// Every group, in report order.
    pub const ALL: [Group; GROUPS] = [
        Group::Tokio,
        Group::Commit,
        Group::Writer,
        Group::Workers,
        Group::Retire,
        Group::Free,
        Group::Journal,
        Group::Other,
    ];

    /// The group of a thread named `comm`.
    pub fn of(comm: &str) -> Group {
        match comm {
            "magpie-commit" => Group::Commit,
            "magpie-writer" => Group::Writer,
            "magpie" => Group::Tokio,
            c if c.starts_with("tokio-") => Group::Tokio,
            c if c.starts_with("fjall:jnl") => Group::Journal,
            "lsm:free" => Group::Free,
            c if c.starts_with("lsm") => Group::Retire,
            c if c.starts_with("fjall") => Group::Workers,
            _ => Group::Other,
        }
    }

    /// Short name, for columns.
    pub fn name(self) -> &'static str {
        match self {
            Group::Tokio => "tokio",
            Group::Commit => "commit",
            Group::Writer => "writer",
            Group::Workers => "workers",
            Group::Retire => "retire",
            Group::Free => "free",
            Group::Journal => "journal",
            Group::Other => "other",
        }
    }
}

/// How the server's threads spent one window, in nanoseconds per [`Group`] (`Group as
/// usize`). Threads that ended during a window lose that window's share.
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadUse {
    /// CPU time.
    pub cpu_ns: [u64; GROUPS],
    /// Time runnable but waiting for a core.
    pub wait_ns: [u64; GROUPS],
}

/// Reads `/proc/PID/task/*` once per window, on its own thread, until stopped.
pub struct ThreadSampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<ThreadUse>>,
}

impl ThreadSampler {
    /// Starts sampling `pid`'s threads at the boundaries of `windows`.
    pub fn start(pid: u32, windows: &Windows) -> anyhow::Result<ThreadSampler> {
        let stop = Arc::new(AtomicBool::new(false));
        let (start_ns, window_ns, n) = (windows.start_ns, windows.window_ns, windows.cells.len());
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("bench-timeline".into())
            .spawn(move || sample_loop(pid, start_ns, window_ns, n, &flag))
            .context("starting the timeline sampler")?;
        Ok(ThreadSampler { stop, handle })
    }

    /// Stops sampling and returns one reading per finished window.
    pub fn finish(self) -> Vec<ThreadUse> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

/// One thread's cumulative counters: (cpu_ns, wait_ns).
type Counters = HashMap<u32, (Group, u64, u64)>;

fn sample_loop(
    pid: u32,
    start_ns: u64,
    window_ns: u64,
    n: usize,
    stop: &AtomicBool,
) -> Vec<ThreadUse> {
    let mut names: HashMap<u32, Group> = HashMap::new();
    let mut out = Vec::with_capacity(n);
    let mut previous: Option<Counters> = None;
    // Reading k is taken at the start of window k; window k's use is reading k+1 − reading k.
    for k in 0..=n as u64 {
        let due = start_ns + k * window_ns;
        loop {
            if stop.load(Ordering::Relaxed) {
                return out;
            }
            let now = now_ns();
            if now >= due {
                break;
            }
            std::thread::sleep(Duration::from_nanos((due - now).min(SAMPLER_NAP_NS)));
        }
        let Some(current) = read_threads(pid, &mut names) else {
            return out;
        };
        if let Some(before) = &previous {
            out.push(difference(before, &current));
        }
        previous = Some(current);
    }
    out
}

/// Every thread's group and schedstat counters; `None` once the process is gone.
fn read_threads(pid: u32, names: &mut HashMap<u32, Group>) -> Option<Counters> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut counters = HashMap::new();
    for entry in dir.flatten() {
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u32>().ok())
        else {
            continue;
        };
        let group = *names.entry(tid).or_insert_with(|| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                .map(|c| Group::of(c.trim_end()))
                .unwrap_or(Group::Other)
        });
        // A thread may end between listing and reading; it is simply left out.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")) else {
            continue;
        };
        if let Some((cpu, wait)) = parse_schedstat(&stat) {
            counters.insert(tid, (group, cpu, wait));
        }
    }
    Some(counters)
}

/// `cpu_ns wait_ns timeslices` → (cpu_ns, wait_ns).
fn parse_schedstat(text: &str) -> Option<(u64, u64)> {
    let mut fields = text.split_whitespace().map(str::parse::<u64>);
    Some((fields.next()?.ok()?, fields.next()?.ok()?))
}

fn difference(before: &Counters, after: &Counters) -> ThreadUse {
    let mut used = ThreadUse::default();
    for (tid, &(group, cpu, wait)) in after {
        // A thread born during the window spent all of its time in it.
        let (cpu0, wait0) = before.get(tid).map_or((0, 0), |&(_, c, w)| (c, w));
        used.cpu_ns[group as usize] += cpu.saturating_sub(cpu0);
        used.wait_ns[group as usize] += wait.saturating_sub(wait0);
    }
    used
}

/// The timeline of a finished run.
pub struct Timeline {
    /// Deliveries per window.
    pub windows: Windows,
    /// The server's threads per window, if `--server-pid` was given (may be shorter than
    /// `windows` if the server ended early).
    pub threads: Option<Vec<ThreadUse>>,
}

impl Timeline {
    /// Percent of one core that `ns` is of a window.
    fn percent(&self, ns: u64) -> f64 {
        100.0 * ns as f64 / self.windows.window_ns as f64
    }

    /// Mean CPU and wait per group, in percent of a core, over the windows `pick` selects.
    fn mean_use(
        &self,
        pick: impl Fn(&Cell) -> bool,
    ) -> Option<([f64; GROUPS], [f64; GROUPS], usize)> {
        let threads = self.threads.as_ref()?;
        let mut cpu = [0u64; GROUPS];
        let mut wait = [0u64; GROUPS];
        let mut n = 0;
        for (cell, used) in self.windows.cells.iter().zip(threads) {
            if pick(cell) {
                n += 1;
                for g in 0..GROUPS {
                    cpu[g] += used.cpu_ns[g];
                    wait[g] += used.wait_ns[g];
                }
            }
        }
        if n == 0 {
            return None;
        }
        let mean = |v: [u64; GROUPS]| v.map(|ns| self.percent(ns) / n as f64);
        Some((mean(cpu), mean(wait), n))
    }

    /// The human summary: how many windows had a slow delivery, and the server threads'
    /// mean use in those windows against the others.
    pub fn summary(&self) -> String {
        let cells = self.windows.cells();
        let slow_windows = cells.iter().filter(|c| c.slow > 0).count();
        let slow: u64 = cells.iter().map(|c| c.slow).sum();
        let mut s = format!(
            "  timeline               {slow_windows} of {} windows of {} ms had a delivery over {} ms ({slow} deliveries)",
            cells.len(),
            self.windows.window_ns / 1_000_000,
            SLOW_NS / 1_000_000,
        );
        let rows = [
            ("with", self.mean_use(|c| c.slow > 0)),
            ("without", self.mean_use(|c| c.slow == 0)),
        ];
        for (label, row) in rows {
            let Some((cpu, wait, n)) = row else { continue };
            let _ = write!(s, "\n    server threads, {n} windows {label}: CPU");
            for g in Group::ALL {
                let _ = write!(s, " {} {:.0}%", g.name(), cpu[g as usize]);
            }
            let _ = write!(s, "; waiting for a core");
            for g in Group::ALL {
                let _ = write!(s, " {} {:.0}%", g.name(), wait[g as usize]);
            }
        }
        s
    }

    /// The JSON form: the counts and the two mean rows.
    pub fn json(&self) -> serde_json::Value {
        let cells = self.windows.cells();
        let row = |r: Option<([f64; GROUPS], [f64; GROUPS], usize)>| {
            r.map(|(cpu, wait, n)| {
                let by = |v: [f64; GROUPS]| {
                    Group::ALL
                        .iter()
                        .map(|g| (g.name().to_owned(), json!(v[*g as usize])))
                        .collect::<serde_json::Map<_, _>>()
                };
                json!({"windows": n, "cpu_percent": by(cpu), "wait_percent": by(wait)})
            })
        };
        json!({
            "window_ms": self.windows.window_ns / 1_000_000,
            "windows": cells.len(),
            "windows_with_slow": cells.iter().filter(|c| c.slow > 0).count(),
            "slow_deliveries": cells.iter().map(|c| c.slow).sum::<u64>(),
            "slow_ms": SLOW_NS / 1_000_000,
            "threads_in_slow_windows": row(self.mean_use(|c| c.slow > 0)),
            "threads_in_other_windows": row(self.mean_use(|c| c.slow == 0)),
        })
    }

    /// One tab-separated line per window, with a header.
    pub fn tsv(&self) -> String {
        let mut out = String::from("start_ms\tdelivered\tslow\tmax_ms");
        for g in Group::ALL {
            let _ = write!(out, "\t{0}_cpu_pct\t{0}_wait_pct", g.name());
        }
        out.push('\n');
        let window_ms = self.windows.window_ns as f64 / 1e6;
        for (k, cell) in self.windows.cells().iter().enumerate() {
            let _ = write!(
                out,
                "{:.0}\t{}\t{}\t{:.3}",
                k as f64 * window_ms,
                cell.delivered,
                cell.slow,
                cell.max_ns as f64 / 1e6
            );
            if let Some(used) = self.threads.as_ref().and_then(|t| t.get(k)) {
                for g in Group::ALL {
                    let i = g as usize;
                    let _ = write!(
                        out,
                        "\t{:.0}\t{:.0}",
                        self.percent(used.cpu_ns[i]),
                        self.percent(used.wait_ns[i])
                    );
                }
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn deliveries_land_in_the_window_of_their_send_and_merge() {
        let mut a = Windows::new(1_000 * MS, 1_100 * MS, 50 * MS);
        assert_eq!(a.cells().len(), 2);
        a.record(1_000 * MS, 2 * MS);
        a.record(1_049 * MS, 12 * MS);
        a.record(1_050 * MS, 3 * MS);
        a.record(999 * MS, 50 * MS); // before the first window
        a.record(1_100 * MS, 50 * MS); // after the last
        let mut b = Windows::new(1_000 * MS, 1_100 * MS, 50 * MS);
        b.record(1_060 * MS, 30 * MS);
        a.merge(&b);
        assert_eq!(
            a.cells(),
            &[
                Cell {
                    delivered: 2,
                    slow: 1,
                    max_ns: 12 * MS
                },
                Cell {
                    delivered: 2,
                    slow: 1,
                    max_ns: 30 * MS
                }
            ]
        );
    }

    #[test]
    fn threads_are_grouped_by_name() {
        assert_eq!(Group::of("tokio-rt-worker"), Group::Tokio);
        assert_eq!(Group::of("magpie"), Group::Tokio);
        assert_eq!(Group::of("magpie-commit"), Group::Commit);
        assert_eq!(Group::of("magpie-writer"), Group::Writer);
        assert_eq!(Group::of("fjall:worker"), Group::Workers);
        assert_eq!(Group::of("fjall:flush"), Group::Workers);
        assert_eq!(Group::of("fjall:jnl-spare"), Group::Journal);
        assert_eq!(Group::of("lsm:version-gc"), Group::Retire);
        assert_eq!(Group::of("lsm:free"), Group::Free);
        assert_eq!(Group::of("kworker"), Group::Other);
    }

    #[test]
    fn schedstat_and_differences() {
        assert_eq!(parse_schedstat("123 456 7\n"), Some((123, 456)));
        assert_eq!(parse_schedstat("garbage"), None);
        let before: Counters = [(1, (Group::Commit, 100, 10))].into_iter().collect();
        let after: Counters = [
            (1, (Group::Commit, 250, 15)),
            (2, (Group::Workers, 40, 4)), // born during the window
        ]
        .into_iter()
        .collect();
        let used = difference(&before, &after);
        assert_eq!(used.cpu_ns[Group::Commit as usize], 150);
        assert_eq!(used.wait_ns[Group::Commit as usize], 5);
        assert_eq!(used.cpu_ns[Group::Workers as usize], 40);
    }

    #[test]
    fn the_summary_compares_slow_windows_with_the_others() {
        let mut windows = Windows::new(0, 100 * MS, 50 * MS);
        windows.record(MS, 20 * MS);
        windows.record(60 * MS, MS);
        let mut slow = ThreadUse::default();
        slow.cpu_ns[Group::Workers as usize] = 40 * MS;
        let mut calm = ThreadUse::default();
        calm.cpu_ns[Group::Workers as usize] = 5 * MS;
        let t = Timeline {
            windows,
            threads: Some(vec![slow, calm]),
        };
        let s = t.summary();
        assert!(
            s.contains("1 of 2 windows of 50 ms had a delivery over 10 ms (1 deliveries)"),
            "{s}"
        );
        assert!(
            s.contains("1 windows with: CPU tokio 0% commit 0% writer 0% workers 80%"),
            "{s}"
        );
        assert!(
            s.contains("1 windows without: CPU tokio 0% commit 0% writer 0% workers 10%"),
            "{s}"
        );
        let j = t.json();
        assert_eq!(j["windows_with_slow"], 1);
        assert_eq!(j["threads_in_slow_windows"]["cpu_percent"]["workers"], 80.0);
        let tsv = t.tsv();
        assert_eq!(tsv.lines().count(), 3, "{tsv}");
        assert!(
            tsv.lines()
                .nth(1)
                .is_some_and(|l| l.starts_with("0\t1\t1\t20.000\t")),
            "{tsv}"
        );
    }

    #[test]
    fn window_length_defaults_when_only_a_file_is_given() {
        let none = TimelineArgs::default();
        assert_eq!(none.window_ns().ok(), Some(None));
        let file = TimelineArgs {
            timeline_ms: None,
            timeline_out: Some("t.tsv".into()),
        };
        assert_eq!(file.window_ns().ok(), Some(Some(50 * MS)));
        let zero = TimelineArgs {
            timeline_ms: Some(0),
            timeline_out: None,
        };
        assert!(zero.window_ns().is_err());
        let huge = TimelineArgs {
            timeline_ms: Some(u64::MAX),
            timeline_out: None,
        };
        assert!(huge.window_ns().is_err());
        assert!(TimelineArgs::check_span(MS, 10_000 * MS).is_ok());
        assert!(TimelineArgs::check_span(MS, 10_001 * MS).is_err());
    }
}
