//! The commit thread: the second stage of the writer pipeline.
//!
//! The writer thread stages batch N+1 (reads, encoding, id and seq assignment) while this
//! thread applies batch N to fjall (memtables and journal) and fsyncs it. Staging and
//! committing each took about half of the single writer's time, and the fsync half was
//! mostly waiting on the disk, so running them one after the other left both the CPU and the
//! disk idle half the time.
//!
//! The order of events for each batch is the same as with one thread: apply, fsync, publish
//! the durable snapshot, announce to the sink, reply. Batches are taken in the order the
//! writer sealed them, and several batches queued together share one fsync.
//!
//! The writer must read its own not-yet-applied writes while staging the next batch; it keeps
//! the write sets it handed over (`Sealed::writes`) as overlays until [`Progress`] says they
//! are applied, after which the keyspaces themselves answer.

use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fjall::{PersistMode, Slice};
use magpie_core::UserEvent;
use parking_lot::{Condvar, Mutex};

use crate::fjall::keys::Ks;
use crate::fjall::writer::WriteOp;
use crate::fjall::{FastMap, Shared};
use crate::{CommitSink, ConversationNotice, StoreError};

/// Histogram: apply + fsync time of one commit group (one or more batches), in seconds.
const METRIC_COMMIT_SECONDS: &str = "magpie_store_commit_seconds";
/// Histogram: time to apply one commit group to the memtables and journal buffer, in seconds.
const METRIC_APPLY_SECONDS: &str = "magpie_store_apply_seconds";
/// Histogram: time of the journal fsync of one commit group, in seconds.
const METRIC_FSYNC_SECONDS: &str = "magpie_store_fsync_seconds";
/// Histogram: write ops per batch.
const METRIC_BATCH_OPS: &str = "magpie_store_batch_ops";
/// Counter: batches made durable.
const METRIC_BATCHES_TOTAL: &str = "magpie_store_batches_total";
/// Counter: journal fsyncs (commit groups that wrote anything).
const METRIC_FSYNCS_TOTAL: &str = "magpie_store_fsyncs_total";
/// Counter: new (non-duplicate) messages made durable, system messages included.
const METRIC_MESSAGES_APPENDED_TOTAL: &str = "magpie_store_messages_appended_total";
/// Counter: keys written or deleted (storage writes), for write-amplification reports.
const METRIC_KEYS_WRITTEN_TOTAL: &str = "magpie_store_keys_written_total";

/// Batches the writer may seal ahead of the commit thread (the channel's capacity), and the
/// most batches one fsync covers. Two keep both threads busy without holding much staged
/// memory: each batch is at most `BATCH_BYTES_MAX` of payload, and at most
/// `2 * SEALED_BATCHES_MAX + 1` batches are sealed and unapplied at any time (one group being
/// applied, a full channel, one blocked send).
pub(crate) const SEALED_BATCHES_MAX: usize = 2;

/// Write ops a commit group must have carried for the next commit to keep the minimum
/// interval (`FjallConfig::commit_interval_min`). An op is one call into the store: one
/// connection's queued sends, one HTTP send, one cursor ack. A lightly loaded store (an op or
/// two per commit) never waits; at 61,401 msg/s over 50 pairs a commit carried 40–60. A
/// group holds at most `SEALED_BATCHES_MAX` batches of `batch_ops_max` ops, so with a
/// `batch_ops_max` under 16 the pause never applies.
pub const COMMIT_BUSY_OPS_MIN: usize = 32;
/// Counter: commits that waited for the minimum interval under load.
const METRIC_COMMIT_PAUSES_TOTAL: &str = "magpie_store_commit_pauses_total";

/// How long a commit waits before it starts, so that a busy store spends fewer fsyncs:
/// the rest of `interval` since the previous commit started, if that commit carried at
/// least [`COMMIT_BUSY_OPS_MIN`] ops; otherwise nothing.
pub(crate) fn pause_before_commit(
    previous_ops: usize,
    since_previous_start: Duration,
    interval: Duration,
) -> Duration {
    if previous_ops < COMMIT_BUSY_OPS_MIN {
        return Duration::ZERO;
    }
    interval.saturating_sub(since_previous_start)
}

/// A batch's write set, per keyspace (`Ks as usize`): key → new value, or `None` for a delete.
/// Keys are `Slice`s so that handing them to fjall is a reference-count bump, not a copy.
pub(crate) type WriteSet = Vec<FastMap<Slice, Option<Slice>>>;

/// True if `writes` changes nothing.
pub(crate) fn writes_nothing(writes: &WriteSet) -> bool {
    writes.iter().all(FastMap::is_empty)
}

/// Keys `writes` puts or deletes.
pub(crate) fn keys_written(writes: &WriteSet) -> usize {
    writes.iter().map(FastMap::len).sum()
}

/// Calls `f` with every key of keyspace `ks` written by any of `sets` and its value in the
/// last set that writes it, each key once. `sets` are in sealing order.
pub(crate) fn for_each_last_write(
    sets: &[&WriteSet],
    ks: usize,
    mut f: impl FnMut(&Slice, &Option<Slice>),
) {
    for (i, set) in sets.iter().enumerate() {
        let later = &sets[i + 1..];
        for (key, value) in set[ks].iter() {
            // A later set's write of the same key replaces this one; it is passed on when
            // that set's turn comes. A single fjall batch holding both would give them one
            // seqno, and which one then wins is not something to rely on.
            if later.iter().all(|l| !l[ks].contains_key(key)) {
                f(key, value);
            }
        }
    }
}

/// A staged batch handed from the writer to the commit thread.
pub(crate) struct Sealed {
    /// Position in sealing order, from 1; [`Progress`] reports in these numbers.
    pub(crate) n: u64,
    /// What to write. Shared with the writer, which reads it until it is applied.
    pub(crate) writes: Arc<WriteSet>,
    /// New inbox events, in cursor order per user, announced after the fsync.
    pub(crate) events: Vec<UserEvent>,
    /// Read-fan-out notices, announced after the fsync.
    pub(crate) notices: Vec<ConversationNotice>,
    /// The ops of the batch, answered after the fsync, in order.
    pub(crate) ops: Vec<WriteOp>,
    /// New (non-duplicate) messages, for the metric.
    pub(crate) messages_appended: u64,
}

impl Sealed {
    fn is_empty(&self) -> bool {
        writes_nothing(&self.writes)
    }

    fn keys(&self) -> usize {
        keys_written(&self.writes)
    }
}

/// How far the commit thread has got, in batch numbers; the writer waits on it.
#[derive(Default)]
pub(crate) struct Progress {
    state: Mutex<ProgressState>,
    changed: Condvar,
}

#[derive(Default, Clone, Copy)]
struct ProgressState {
    /// Every batch up to this one is in the keyspaces (or failed): the writer's overlays for
    /// them can go, because reading the keyspaces now gives the same answers.
    applied: u64,
    /// Every batch up to this one is answered (durable, or failed).
    finished: u64,
    /// Tests hold the commit thread back to exercise the writer's overlays.
    #[cfg(test)]
    held: bool,
}

impl Progress {
    /// The last batch applied to the keyspaces.
    pub(crate) fn applied(&self) -> u64 {
        self.state.lock().applied
    }

    /// The last batch answered.
    pub(crate) fn finished(&self) -> u64 {
        self.state.lock().finished
    }

    /// Blocks until batch `n` is applied.
    pub(crate) fn wait_applied(&self, n: u64) {
        let mut st = self.state.lock();
        while st.applied < n {
            self.changed.wait(&mut st);
        }
    }

    /// Blocks until batch `n` is answered.
    #[cfg(test)]
    pub(crate) fn wait_finished(&self, n: u64) {
        let mut st = self.state.lock();
        while st.finished < n {
            self.changed.wait(&mut st);
        }
    }

    /// Holds (`true`) or releases the commit thread before its next group.
    #[cfg(test)]
    pub(crate) fn hold(&self, held: bool) {
        self.state.lock().held = held;
        self.changed.notify_all();
    }

    /// Waits while a test holds the commit thread; nothing outside tests.
    fn wait_released(&self) {
        #[cfg(test)]
        {
            let mut st = self.state.lock();
            while st.held {
                self.changed.wait(&mut st);
            }
        }
    }

    /// The commit thread is gone: release every waiter for good.
    fn abandon(&self) {
        let mut st = self.state.lock();
        st.applied = u64::MAX;
        st.finished = u64::MAX;
        self.changed.notify_all();
    }

    fn set_applied(&self, n: u64) {
        let mut st = self.state.lock();
        debug_assert!(n >= st.applied, "batches are applied in order");
        st.applied = n;
        self.changed.notify_all();
    }

    fn set_finished(&self, n: u64) {
        let mut st = self.state.lock();
        debug_assert!(n >= st.finished, "batches are answered in order");
        st.applied = st.applied.max(n);
        st.finished = n;
        self.changed.notify_all();
    }
}

/// The commit thread's state.
pub(crate) struct Committer {
    /// Database and keyspaces; the durable snapshot and poison flag readers look at.
    pub(crate) shared: Arc<Shared>,
    /// Told about every durable inbox event and read-fan-out notice.
    pub(crate) sink: Arc<dyn CommitSink>,
    /// Published after each batch is applied and after it is answered.
    pub(crate) progress: Arc<Progress>,
    /// Under load, the least time between the starts of two commits (see
    /// [`pause_before_commit`]).
    pub(crate) commit_interval_min: Duration,
}

impl Committer {
    /// The thread body: commit sealed batches until the writer hangs up.
    pub(crate) fn run(self, rx: Receiver<Sealed>) {
        // If this thread dies (a panic in the sink, say), nothing may wait for it any more and
        // nothing more may be written: the writer would otherwise block on `Progress` forever.
        let _guard = PanicGuard {
            shared: self.shared.clone(),
            progress: self.progress.clone(),
        };
        let mut group = Vec::with_capacity(SEALED_BATCHES_MAX);
        // The previous commit's start and its ops, for the minimum interval under load.
        let mut previous: Option<(Instant, usize)> = None;
        while let Ok(first) = rx.recv() {
            if let Some((started, ops)) = previous {
                let pause = pause_before_commit(ops, started.elapsed(), self.commit_interval_min);
                if !pause.is_zero() {
                    metrics::counter!(METRIC_COMMIT_PAUSES_TOTAL).increment(1);
                    // Batches the writer seals meanwhile join this commit below.
                    std::thread::sleep(pause);
                }
            }
            group.push(first);
            // Tests hold the thread here, so that batches sealed meanwhile form one group.
            self.progress.wait_released();
            // Whatever else is already sealed shares this fsync, up to a bound.
            while group.len() < SEALED_BATCHES_MAX {
                match rx.try_recv() {
                    Ok(next) => group.push(next),
                    Err(_) => break,
                }
            }
            let ops = group.iter().map(|b| b.ops.len()).sum();
            let started = Instant::now();
            // Only a commit that fsynced counts: one that wrote nothing (duplicates only) or
            // failed must not delay the next.
            previous = self.commit_group(&mut group).then_some((started, ops));
        }
    }

    /// Applies, fsyncs, publishes and answers `group`, in order. Drains it. True if it
    /// wrote and fsynced something.
    fn commit_group(&self, group: &mut Vec<Sealed>) -> bool {
        self.shared
            .commit_started_ms
            .store(self.shared.clock_ms(), Ordering::Release);
        let wrote = self.commit_group_inner(group);
        self.shared.commit_started_ms.store(0, Ordering::Release);
        wrote
    }

    fn commit_group_inner(&self, group: &mut Vec<Sealed>) -> bool {
        if self.shared.poisoned.load(Ordering::Acquire) {
            self.fail(group, StoreError::Poisoned);
            return false;
        }
        let started = Instant::now();
        let wrote = group.iter().any(|b| !b.is_empty());
        if wrote {
            if let Err(e) = self.apply(group) {
                self.poison(group, e);
                return false;
            }
        }
        if let Some(last) = group.last() {
            self.progress.set_applied(last.n);
        }
        if wrote {
            let applied = Instant::now();
            // Data only (`fdatasync`): journals are zero-filled before use, so writing into
            // them changes no metadata a reader needs; where a journal does grow (one created
            // when its zero-filled spare was late), its new size is data that `fdatasync`
            // writes too. A full `fsync` would also write the changed timestamps, a
            // synchronous metadata write that can queue for tens of milliseconds behind the
            // I/O of tables being flushed and deleted.
            if let Err(e) = self.shared.db.persist(PersistMode::SyncData) {
                self.poison(group, e);
                return false;
            }
            let done = Instant::now();
            metrics::histogram!(METRIC_APPLY_SECONDS).record((applied - started).as_secs_f64());
            metrics::histogram!(METRIC_FSYNC_SECONDS).record((done - applied).as_secs_f64());
            metrics::histogram!(METRIC_COMMIT_SECONDS).record((done - started).as_secs_f64());
            metrics::counter!(METRIC_FSYNCS_TOTAL).increment(1);
            // Readers switch to the new state before anyone hears about it, so a reply or an
            // event is always followed by reads that include it. Only this thread commits, so
            // the snapshot holds exactly the batches of this group and those before.
            let snapshot = self.shared.db.snapshot();
            let removes = group.iter().any(|b| crate::removes_members(&b.events));
            let mut durable = self.shared.durable.write();
            if removes {
                // Under the write lock: every read that gets the new snapshot (which may hold
                // messages a removed member must not see) starts after the hook's effect.
                self.sink.members_removed();
            }
            *durable = snapshot;
            drop(durable);
        }
        for batch in group.drain(..) {
            metrics::histogram!(METRIC_BATCH_OPS).record(batch.ops.len() as f64);
            if !batch.is_empty() {
                metrics::counter!(METRIC_BATCHES_TOTAL).increment(1);
                metrics::counter!(METRIC_MESSAGES_APPENDED_TOTAL)
                    .increment(batch.messages_appended);
                metrics::counter!(METRIC_KEYS_WRITTEN_TOTAL).increment(batch.keys() as u64);
            }
            if !batch.events.is_empty() || !batch.notices.is_empty() {
                self.sink.committed(&batch.events, &batch.notices);
            }
            let n = batch.n;
            batch.ops.into_iter().for_each(WriteOp::finish);
            self.progress.set_finished(n);
        }
        wrote
    }

    /// Writes a commit group into the memtables and the journal buffer (no fsync), as **one**
    /// fjall batch: one journal entry, one seqno. The group is made durable by one fsync, so
    /// after a power loss during that fsync only its journal entry can be torn, and fjall's
    /// recovery discards a torn *last* entry (never acknowledged). As two entries, a torn
    /// write that damaged the first and kept the second left a damaged entry in the middle,
    /// which fails the open. A key written by several batches of the group gets the last
    /// batch's value, as applying them one after the other would give.
    fn apply(&self, group: &[Sealed]) -> Result<(), fjall::Error> {
        let sets: Vec<&WriteSet> = group.iter().map(|b| &*b.writes).collect();
        let keys = group.iter().map(Sealed::keys).sum();
        // Sized up front: grown push by push, a large batch reallocated its item list
        // several times per commit, each time into freshly mapped memory.
        let mut b =
            fjall::OwnedWriteBatch::with_capacity(self.shared.db.clone(), keys).durability(None);
        for ks in Ks::ALL {
            let handle = self.shared.ks.get(ks);
            for_each_last_write(&sets, ks as usize, |key, value| match value {
                Some(value) => b.insert(handle, key.clone(), value.clone()),
                None => b.remove(handle, key.clone()),
            });
        }
        b.commit()
    }

    /// A commit or fsync failed: the group may or may not be on disk, so nothing said from now
    /// on could be trusted. Every later write is refused.
    fn poison(&self, group: &mut Vec<Sealed>, e: fjall::Error) {
        tracing::error!(error = %e, "store commit failed; refusing all further writes");
        self.shared.poisoned.store(true, Ordering::Release);
        self.fail(group, StoreError::Engine(e.to_string()));
    }

    fn fail(&self, group: &mut Vec<Sealed>, e: StoreError) {
        for batch in group.drain(..) {
            let n = batch.n;
            batch.ops.into_iter().for_each(|op| op.fail(e.clone()));
            self.progress.set_finished(n);
        }
    }
}

/// Poisons the store and releases every waiter if the commit thread unwinds.
struct PanicGuard {
    shared: Arc<Shared>,
    progress: Arc<Progress>,
}

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("the store commit thread panicked; refusing all further writes");
            self.shared.poisoned.store(true, Ordering::Release);
            self.progress.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_millis(2);

    fn set(puts: &[(&str, Option<&str>)]) -> WriteSet {
        let mut set: WriteSet = (0..Ks::ALL.len()).map(|_| FastMap::default()).collect();
        for (k, v) in puts {
            set[Ks::Inbox as usize]
                .insert(Slice::from(k.as_bytes()), v.map(|v| v.as_bytes().into()));
        }
        set
    }

    #[test]
    fn each_key_of_a_group_is_written_once_with_its_last_value() {
        let first = set(&[("a", Some("a1")), ("b", Some("b1")), ("c", Some("c1"))]);
        let second = set(&[("b", Some("b2")), ("c", None), ("d", Some("d2"))]);
        let third = set(&[("d", Some("d3"))]);
        let mut seen = Vec::new();
        for_each_last_write(&[&first, &second, &third], Ks::Inbox as usize, |k, v| {
            let v = v.as_ref().map(|v| String::from_utf8(v.to_vec()).unwrap());
            seen.push((String::from_utf8(k.to_vec()).unwrap(), v));
        });
        seen.sort();
        let want = [
            ("a", Some("a1")),
            ("b", Some("b2")),
            ("c", None),
            ("d", Some("d3")),
        ];
        let want: Vec<_> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
            .collect();
        assert_eq!(seen, want);
        let mut other = 0;
        for_each_last_write(&[&first, &second], Ks::Messages as usize, |_, _| other += 1);
        assert_eq!(other, 0, "only the keyspace asked for");
    }

    #[test]
    fn a_lightly_loaded_store_commits_at_once() {
        for ops in [0, 1, COMMIT_BUSY_OPS_MIN - 1] {
            assert_eq!(
                pause_before_commit(ops, Duration::ZERO, INTERVAL),
                Duration::ZERO,
                "{ops} ops"
            );
        }
    }

    #[test]
    fn a_busy_store_waits_out_the_rest_of_the_interval_and_no_more() {
        let busy = COMMIT_BUSY_OPS_MIN;
        assert_eq!(
            pause_before_commit(busy, Duration::ZERO, INTERVAL),
            INTERVAL
        );
        assert_eq!(
            pause_before_commit(busy * 10, Duration::from_micros(500), INTERVAL),
            Duration::from_micros(1500)
        );
        assert_eq!(
            pause_before_commit(busy, INTERVAL, INTERVAL),
            Duration::ZERO
        );
        assert_eq!(
            pause_before_commit(busy, Duration::from_secs(1), INTERVAL),
            Duration::ZERO,
            "a commit that started long ago owes nothing"
        );
        assert_eq!(
            pause_before_commit(busy, Duration::ZERO, Duration::ZERO),
            Duration::ZERO,
            "zero turns it off"
        );
    }
}
