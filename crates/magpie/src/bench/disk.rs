//! `magpie bench disk`: how long the disk under a directory takes to make a small write
//! durable.
//!
//! Every acknowledged message waits for one fsync of the store's journal, so the light-load
//! latency target is bounded by this number, and it moves a lot on shared virtual disks.
//! Recording it next to each latency run tells whether a result was the server or the disk.
//!
//! Two ways of making a record durable are measured, interleaved round by round so that both
//! see the same disk weather:
//! - `append + fsync`: what fjall's journal does (the file grows, so the file system must
//!   journal the new size as well);
//! - `overwrite + fdatasync`: a write into a file that was filled with zeros beforehand (no
//!   metadata changes), which is what a pre-allocated write-ahead log would do.
//!
//! Besides the wait, it reports the CPU time each way costs the calling thread, kernel
//! included. On a virtual machine that cost varies between hosts far more than on bare metal
//! (a virtio notification is a VM exit), and the commit thread pays it once per commit: it is
//! part of why the same build measures differently on two machines of the same kind.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::report::{LatencySummary, SharedHistogram};
use super::Outcome;

/// Most rounds one run may take (each sleeps `--interval-ms`).
const ROUNDS_MAX: u32 = 100_000;
/// Largest record, in bytes.
const RECORD_BYTES_MAX: usize = 1024 * 1024;
/// Bytes of zeros written into the pre-allocated file per write while filling it.
const FILL_CHUNK_BYTES: usize = 1024 * 1024;

/// Arguments of `magpie bench disk`.
#[derive(clap::Args, Debug)]
pub struct DiskArgs {
    /// A directory on the file system to probe (the server's data directory, say). Two
    /// temporary files are created in it and removed afterwards.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Rounds; each makes one record durable both ways.
    #[arg(long, default_value_t = 2000)]
    pub rounds: u32,
    /// Pause between rounds, in milliseconds (a paced load, like 2 users × 100 msg/s).
    #[arg(long, default_value_t = 2)]
    pub interval_ms: u64,
    /// Bytes per record (a journal entry of one small message is about 600).
    #[arg(long, default_value_t = 600)]
    pub bytes: usize,
    /// Print one JSON object on stdout; the human summary then goes to stderr.
    #[arg(long)]
    pub json: bool,
}

/// Runs the probe on a blocking thread.
pub async fn run(args: DiskArgs) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        (1..=ROUNDS_MAX).contains(&args.rounds),
        "--rounds must be 1..={ROUNDS_MAX}"
    );
    anyhow::ensure!(
        (1..=RECORD_BYTES_MAX).contains(&args.bytes),
        "--bytes must be 1..={RECORD_BYTES_MAX}"
    );
    tokio::task::spawn_blocking(move || probe(&args))
        .await
        .context("disk probe thread failed")?
}

fn probe(args: &DiskArgs) -> anyhow::Result<Outcome> {
    let dir = tempfile::Builder::new()
        .prefix("magpie-disk-probe")
        .tempdir_in(&args.dir)
        .with_context(|| format!("cannot create a probe directory in {}", args.dir.display()))?;
    let record = vec![b'x'; args.bytes];
    let mut appended = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("append.log"))?;
    let region_bytes = args.bytes * args.rounds as usize;
    let overwritten = zero_filled(dir.path().join("overwrite.log"), region_bytes)?;

    let (append, overwrite) = (SharedHistogram::new(), SharedHistogram::new());
    let (mut append_rec, mut overwrite_rec) = (append.recorder(), overwrite.recorder());
    let (mut append_cpu_ns, mut overwrite_cpu_ns) = (0u64, 0u64);
    let pause = Duration::from_millis(args.interval_ms);
    for round in 0..args.rounds as usize {
        let (started, cpu) = (Instant::now(), thread_cpu_ns()?);
        appended.write_all(&record)?;
        appended.sync_all()?;
        append_rec.record(started.elapsed().as_nanos() as u64);
        append_cpu_ns += thread_cpu_ns()?.saturating_sub(cpu);

        let (started, cpu) = (Instant::now(), thread_cpu_ns()?);
        overwritten.write_all_at(&record, (round * args.bytes) as u64)?;
        overwritten.sync_data()?;
        overwrite_rec.record(started.elapsed().as_nanos() as u64);
        overwrite_cpu_ns += thread_cpu_ns()?.saturating_sub(cpu);

        std::thread::sleep(pause);
    }
    drop((append_rec, overwrite_rec));
    let per_round_us = |ns: u64| ns as f64 / 1000.0 / f64::from(args.rounds);
    let cpu = CpuPerWrite {
        append_us: per_round_us(append_cpu_ns),
        overwrite_us: per_round_us(overwrite_cpu_ns),
    };
    Ok(outcome(args, append.summary(), overwrite.summary(), cpu))
}

/// Mean CPU time of one durable write each way, in µs, kernel time included.
struct CpuPerWrite {
    append_us: f64,
    overwrite_us: f64,
}

/// CPU time the calling thread has used so far (user and kernel), in nanoseconds.
fn thread_cpu_ns() -> anyhow::Result<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    anyhow::ensure!(
        rc == 0,
        "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed: {}",
        std::io::Error::last_os_error()
    );
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// A file of `bytes` zeros, durable, so that later writes into it change no metadata.
fn zero_filled(path: PathBuf, bytes: usize) -> anyhow::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)?;
    let zeros = vec![0u8; FILL_CHUNK_BYTES];
    let mut written = 0;
    while written < bytes {
        let n = FILL_CHUNK_BYTES.min(bytes - written);
        file.write_all_at(&zeros[..n], written as u64)?;
        written += n;
    }
    file.sync_all()?;
    Ok(file)
}

fn outcome(
    args: &DiskArgs,
    append: LatencySummary,
    overwrite: LatencySummary,
    cpu: CpuPerWrite,
) -> Outcome {
    let human = format!(
        "disk: {} rounds of {} bytes, {} ms apart, in {}\n{}\n{}\n  CPU per durable write    append + fsync {:.1} µs, overwrite + fdatasync {:.1} µs (this thread, kernel included)",
        args.rounds,
        args.bytes,
        args.interval_ms,
        args.dir.display(),
        append.row("append + fsync"),
        overwrite.row("overwrite + fdatasync"),
        cpu.append_us,
        cpu.overwrite_us,
    );
    let json = serde_json::json!({
        "scenario": "disk",
        "rounds": args.rounds,
        "bytes": args.bytes,
        "interval_ms": args.interval_ms,
        "append_fsync": append,
        "overwrite_fdatasync": overwrite,
        "append_fsync_cpu_us": cpu.append_us,
        "overwrite_fdatasync_cpu_us": cpu.overwrite_us,
    });
    Outcome {
        human,
        json,
        violations: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn measures_both_ways_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let out = run(DiskArgs {
            dir: dir.path().into(),
            rounds: 20,
            interval_ms: 0,
            bytes: 100,
            json: false,
        })
        .await
        .unwrap();
        assert_eq!(out.json["append_fsync"]["count"], 20);
        assert_eq!(out.json["overwrite_fdatasync"]["count"], 20);
        assert!(out.json["append_fsync"]["p50_us"].as_f64().unwrap() > 0.0);
        // A durable write is a system call: it always costs the thread some CPU time.
        for key in ["append_fsync_cpu_us", "overwrite_fdatasync_cpu_us"] {
            let cpu_us = out.json[key].as_f64().unwrap();
            assert!(cpu_us > 0.0 && cpu_us < 1e6, "{key}: {cpu_us}");
        }
        assert!(out.human.contains("overwrite + fdatasync"));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "probe files removed"
        );
    }

    #[tokio::test]
    async fn refuses_unbounded_runs() {
        let args = |rounds, bytes| DiskArgs {
            dir: ".".into(),
            rounds,
            interval_ms: 0,
            bytes,
            json: false,
        };
        assert!(run(args(ROUNDS_MAX + 1, 10)).await.is_err());
        assert!(run(args(10, RECORD_BYTES_MAX + 1)).await.is_err());
        assert!(run(args(0, 10)).await.is_err());
    }
}
