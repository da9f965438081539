// Copyright (c) 2024-present, fjall-rs
// This source code is licensed under both the Apache 2.0 and MIT License
// (found in the LICENSE-* files in the repository)

use crate::{
    memtable::Memtable,
    tree::sealed::SealedMemtables,
    version::{persist_version, Version},
    SeqNo, SequenceNumberCounter,
};
use std::{
    collections::VecDeque,
    path::Path,
    sync::{Arc, RwLock, RwLockWriteGuard},
};

/// A super version is a point-in-time snapshot of memtables and a [`Version`] (list of disk files)
#[derive(Clone)]
pub struct SuperVersion {
    /// Active memtable that is being written to
    #[doc(hidden)]
    pub active_memtable: Arc<Memtable>,

    /// Frozen memtables that are being flushed
    pub(crate) sealed_memtables: Arc<SealedMemtables>,

    /// Current tree version
    pub(crate) version: Version,

    pub(crate) seqno: SeqNo,
}

pub struct SuperVersions(VecDeque<SuperVersion>, Retirements);

/// Patched (Magpie): the threads retiring old versions (see `SuperVersions::maintenance`).
/// Joined when the version history is dropped, i.e. with the tree, so that a tree reopened in
/// the same process never races them: its recovery removes orphaned files itself, and a
/// table id whose file such a thread unlinks may be handed out again after a reopen.
#[derive(Default)]
pub struct Retirements(Vec<std::thread::JoinHandle<()>>);

/// Retiring threads alive at once per tree; beyond, the oldest is waited for first.
const RETIRING_THREADS_MAX: usize = 4;

impl Retirements {
    fn add(&mut self, handle: std::thread::JoinHandle<()>) {
        self.0.retain(|h| !h.is_finished());
        if self.0.len() >= RETIRING_THREADS_MAX {
            let oldest = self.0.remove(0);
            let _ = oldest.join();
        }
        self.0.push(handle);
    }
}

impl Drop for Retirements {
    fn drop(&mut self) {
        for handle in self.0.drain(..) {
            let _ = handle.join();
        }
    }
}

impl SuperVersions {
    pub fn new(version: Version) -> Self {
        Self(
            vec![SuperVersion {
                active_memtable: Arc::new(Memtable::new(0)),
                sealed_memtables: Arc::default(),
                version,
                seqno: 0,
            }]
            .into(),
            Retirements::default(),
        )
    }

    pub fn memtable_size_sum(&self) -> u64 {
        let mut set = crate::HashMap::default();

        for super_version in &self.0 {
            set.entry(super_version.active_memtable.id)
                .and_modify(|bytes| *bytes += super_version.active_memtable.size())
                .or_insert_with(|| super_version.active_memtable.size());

            for sealed in super_version.sealed_memtables.iter() {
                set.entry(sealed.id)
                    .and_modify(|bytes| *bytes += sealed.size())
                    .or_insert_with(|| sealed.size());
            }
        }

        set.into_values().sum()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn free_list_len(&self) -> usize {
        self.len().saturating_sub(1)
    }

    pub fn maintenance(&mut self, folder: &Path, gc_watermark: SeqNo) -> crate::Result<()> {
        if gc_watermark == 0 {
            return Ok(());
        }

        if self.free_list_len() < 1 {
            return Ok(());
        }

        log::trace!("Running manifest GC with watermark={gc_watermark}");

        if let Some(hi_idx) = self.0.iter().rposition(|x| x.seqno < gc_watermark) {
            // Patched (Magpie): the files are unlinked on a short-lived thread instead of here.
            // Callers hold the tree's version-history write lock around this call, and every
            // write to the tree needs its read lock; an unlink that waits on the file system's
            // journal (tens of milliseconds while a flush is writing) stalled all writes.
            // A file left behind by a crash is removed at recovery, which deletes every
            // version file but the current one.
            // Dropping a retired version can free the last reference to a flushed memtable
            // (a skiplist of many thousand nodes), which is slow too, so that happens there.
            let mut paths = Vec::with_capacity(hi_idx);
            let mut retired = Vec::with_capacity(hi_idx);
            for _ in 0..hi_idx {
                let Some(head) = self.0.pop_front() else {
                    break;
                };

                log::trace!(
                    "Removing version #{} (seqno={})",
                    head.version.id(),
                    head.seqno,
                );

                paths.push(folder.join(format!("v{}", head.version.id())));
                retired.push(head);
            }
            if !paths.is_empty() {
                if let Some(handle) = retire_in_background(paths, retired) {
                    self.1.add(handle);
                }
            }
        }

        log::trace!("Manifest GC done, version length now {}", self.0.len());

        Ok(())
    }

    /// Modifies the level manifest atomically.
    ///
    /// The function accepts a transition function that receives the current version
    /// and returns a new version.
    ///
    /// The function takes care of persisting the version changes on disk.
    pub(crate) fn upgrade_version<F: FnOnce(&SuperVersion) -> crate::Result<SuperVersion>>(
        &mut self,
        tree_path: &Path,
        f: F,
        seqno: &SequenceNumberCounter,
        visible_seqno: &SequenceNumberCounter,
    ) -> crate::Result<()> {
        self.upgrade_version_with_seqno(tree_path, f, seqno.next(), visible_seqno)
    }

    /// Like `upgrade_version`, but takes an already-allocated sequence number.
    ///
    /// This is useful when the seqno must be coordinated with other operations
    /// (e.g., bulk ingestion where tables are recovered with the same seqno).
    pub(crate) fn upgrade_version_with_seqno<
        F: FnOnce(&SuperVersion) -> crate::Result<SuperVersion>,
    >(
        &mut self,
        tree_path: &Path,
        f: F,
        seqno: SeqNo,
        visible_seqno: &SequenceNumberCounter,
    ) -> crate::Result<()> {
        let mut next_version = f(&self.latest_version())?;
        next_version.seqno = seqno;
        log::trace!("Next version seqno={}", next_version.seqno);

        persist_version(tree_path, &next_version.version)?;
        self.append_version(next_version);

        visible_seqno.fetch_max(seqno + 1);

        Ok(())
    }

    /// Patched (Magpie): like [`SuperVersions::upgrade_version`], but the new version's files
    /// are written (a version file, `CURRENT`, and the five syncs that make them durable)
    /// while no lock on `history` is held; the write lock is taken only to install it.
    ///
    /// `layout` computes the new [`Version`] (the tables) from the latest super version,
    /// under a read lock held only for that call; `install` then adjusts a copy of the
    /// latest super version as it is at installation (a memtable may have been rotated
    /// meanwhile) whose version is already the new one, e.g. to drop flushed memtables.
    /// Returns the write guard, so that the caller can run maintenance under it.
    ///
    /// The caller must hold the tree's compaction-state mutex, like every other change of the
    /// tables (flushes, compactions, ingestion, `clear`): the new layout is computed from the
    /// latest version and must still extend it when installed. Only memtable rotations, which
    /// leave the version as it is, may happen in between; this is checked, and a violation
    /// rewrites the latest version's files and returns an error instead of installing.
    pub(crate) fn upgrade_version_outside_lock<'a>(
        history: &'a RwLock<SuperVersions>,
        tree_path: &Path,
        layout: impl FnOnce(&SuperVersion) -> crate::Result<Version>,
        install: impl FnOnce(&mut SuperVersion),
        seqno: &SequenceNumberCounter,
        visible_seqno: &SequenceNumberCounter,
    ) -> crate::Result<RwLockWriteGuard<'a, SuperVersions>> {
        #[expect(clippy::expect_used, reason = "lock is expected to not be poisoned")]
        let base = history.read().expect("lock is poisoned").latest_version();
        let version = layout(&base)?;

        // Every reader and every memtable insert of the tree takes the read lock; under flush
        // I/O these syncs took 1-5 ms each time, and all of those waited for them.
        persist_version(tree_path, &version)?;

        #[expect(clippy::expect_used, reason = "lock is expected to not be poisoned")]
        let mut lock = history.write().expect("lock is poisoned");
        let mut next = lock.latest_version();
        if next.version.id() != base.version.id() {
            // A change of the tables was made without the compaction-state mutex: the file just
            // written describes a version built on a stale one, and `CURRENT` names it. Put the
            // latest version back on disk and fail, rather than install it or panic (a panic
            // here would poison the lock every insert and read takes).
            log::error!(
                "the tables changed while version {} was written (based on {}, latest {}): a change of the tables was made without the compaction-state mutex",
                version.id(),
                base.version.id(),
                next.version.id(),
            );
            persist_version(tree_path, &next.version)?;
            return Err(crate::Error::Io(std::io::Error::other(
                "the tables changed while a new version was written",
            )));
        }
        next.version = version;
        install(&mut next);
        let seqno = seqno.next();
        next.seqno = seqno;
        lock.append_version(next);
        visible_seqno.fetch_max(seqno + 1);
        Ok(lock)
    }

    pub fn append_version(&mut self, version: SuperVersion) {
        self.0.push_back(version);
    }

    pub fn replace_latest_version(&mut self, version: SuperVersion) {
        if self.0.pop_back().is_some() {
            self.0.push_back(version);
        }
    }

    pub fn latest_version(&self) -> SuperVersion {
        #[expect(clippy::expect_used, reason = "SuperVersion is expected to exist")]
        self.0
            .iter()
            .last()
            .cloned()
            .expect("should always have a SuperVersion")
    }

    pub fn get_version_for_snapshot(&self, seqno: SeqNo) -> SuperVersion {
        if seqno == 0 {
            #[expect(clippy::expect_used, reason = "SuperVersion is expected to exist")]
            return self
                .0
                .front()
                .cloned()
                .expect("should always find a SuperVersion");
        }

        let version = self
            .0
            .iter()
            .rev()
            .find(|version| version.seqno < seqno)
            .cloned();

        if version.is_none() {
            log::error!("Failed to find a SuperVersion for snapshot with seqno={seqno}");
            log::error!("SuperVersions:");

            for version in self.0.iter().rev() {
                log::error!("-> {}, seqno={}", version.version.id(), version.seqno);
            }
        }

        #[expect(clippy::expect_used, reason = "SuperVersion is expected to exist")]
        version.expect("should always find a SuperVersion")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_log::test;

    /// Patched (Magpie): the version a `CURRENT` file in `folder` names.
    fn current_id(folder: &Path) -> crate::Result<u64> {
        let bytes = std::fs::read(folder.join(crate::file::CURRENT_VERSION_FILE))?;
        let id: [u8; 8] = bytes
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .expect("CURRENT holds a version id");
        Ok(u64::from_le_bytes(id))
    }

    /// Patched (Magpie): a change of the tables made without the compaction-state mutex while
    /// `upgrade_version_outside_lock` writes its file is refused: nothing is installed, the
    /// call fails, and `CURRENT` names the latest version again, not the stale-based one.
    #[test]
    fn a_version_built_on_a_stale_one_is_refused_and_current_restored() -> crate::Result<()> {
        let dir = tempfile::tempdir()?;
        let history = RwLock::new(SuperVersions::new(Version::new(
            0,
            crate::TreeType::Standard,
        )));
        let (seqno, visible) = (
            SequenceNumberCounter::default(),
            SequenceNumberCounter::default(),
        );

        // Well-behaved: installed, and CURRENT names it.
        let lock = SuperVersions::upgrade_version_outside_lock(
            &history,
            dir.path(),
            |latest| {
                Ok(Version::new(
                    latest.version.id() + 1,
                    crate::TreeType::Standard,
                ))
            },
            |_| {},
            &seqno,
            &visible,
        )?;
        assert_eq!(1, lock.latest_version().version.id());
        drop(lock);
        assert_eq!(1, current_id(dir.path())?);

        // Another change lands while the new version is being built from version 1.
        let result = SuperVersions::upgrade_version_outside_lock(
            &history,
            dir.path(),
            |latest| {
                let mut other = latest.clone();
                other.version = Version::new(7, crate::TreeType::Standard);
                persist_version(dir.path(), &other.version)?;
                history.write().expect("lock").append_version(other);
                Ok(Version::new(
                    latest.version.id() + 1,
                    crate::TreeType::Standard,
                ))
            },
            |_| panic!("a stale version must not be installed"),
            &seqno,
            &visible,
        );
        assert!(result.is_err());
        let latest = history.read().expect("lock").latest_version();
        assert_eq!(7, latest.version.id());
        assert_eq!(7, current_id(dir.path())?);
        Ok(())
    }

    #[test]
    fn super_version_gc_above_watermark() -> crate::Result<()> {
        let mut history = SuperVersions(
            vec![
                SuperVersion {
                    active_memtable: Arc::new(Memtable::new(0)),
                    sealed_memtables: Arc::default(),
                    version: Version::new(0, crate::TreeType::Standard),
                    seqno: 0,
                },
                SuperVersion {
                    active_memtable: Arc::new(Memtable::new(0)),
                    sealed_memtables: Arc::default(),
                    version: Version::new(0, crate::TreeType::Standard),
                    seqno: 1,
                },
                SuperVersion {
                    active_memtable: Arc::new(Memtable::new(0)),
                    sealed_memtables: Arc::default(),
                    version: Version::new(0, crate::TreeType::Standard),
                    seqno: 2,
                },
            ]
            .into(),
            Retirements::default(),
        );

        history.maintenance(Path::new("."), 0)?;

        assert_eq!(history.free_list_len(), 2);

        Ok(())
    }

    #[test]
    fn super_version_gc_below_watermark_simple() -> crate::Result<()> {
        let mut history = SuperVersions(
            vec![
                SuperVersion {
                    active_memtable: Arc::new(Memtable::new(0)),
                    sealed_memtables: Arc::default(),
                    version: Version::new(0, crate::TreeType::Standard),
                    seqno: 0,
                },
                SuperVersion {
                    active_memtable: Arc::new(Memtable::new(0)),
                    sealed_memtables: Arc::default(),
                    version: Version::new(0, crate::TreeType::Standard),
                    seqno: 1,
                },
                SuperVersion {
                    active_memtable: Arc::new(Memtable::new(0)),
                    sealed_memtables: Arc::default(),
                    version: Version::new(0, crate::TreeType::Standard),
                    seqno: 2,
                },
            ]
            .into(),
            Retirements::default(),
        );

        history.maintenance(Path::new("."), 3)?;

        assert_eq!(history.len(), 1);

        Ok(())
    }

    #[test]
    fn super_version_gc_below_watermark_simple_2() -> crate::Result<()> {
        let mut history = SuperVersions(
            vec![
                SuperVersion {
                    active_memtable: Arc::new(Memtable::new(0)),
                    sealed_memtables: Arc::default(),
                    version: Version::new(0, crate::TreeType::Standard),
                    seqno: 0,
                },
                SuperVersion {
                    active_memtable: Arc::new(Memtable::new(0)),
                    sealed_memtables: Arc::default(),
                    version: Version::new(0, crate::TreeType::Standard),
                    seqno: 1,
                },
                SuperVersion {
                    active_memtable: Arc::new(Memtable::new(0)),
                    sealed_memtables: Arc::default(),
                    version: Version::new(0, crate::TreeType::Standard),
                    seqno: 2,
                },
                SuperVersion {
                    active_memtable: Arc::new(Memtable::new(0)),
                    sealed_memtables: Arc::default(),
                    version: Version::new(0, crate::TreeType::Standard),
                    seqno: 8,
                },
            ]
            .into(),
            Retirements::default(),
        );

        history.maintenance(Path::new("."), 3)?;

        assert_eq!(history.len(), 2);

        Ok(())
    }

    #[test]
    fn super_version_gc_below_watermark_keep() -> crate::Result<()> {
        let mut history = SuperVersions(
            vec![
                SuperVersion {
                    active_memtable: Arc::new(Memtable::new(0)),
                    sealed_memtables: Arc::default(),
                    version: Version::new(0, crate::TreeType::Standard),
                    seqno: 0,
                },
                SuperVersion {
                    active_memtable: Arc::new(Memtable::new(0)),
                    sealed_memtables: Arc::default(),
                    version: Version::new(0, crate::TreeType::Standard),
                    seqno: 8,
                },
            ]
            .into(),
            Retirements::default(),
        );

        history.maintenance(Path::new("."), 3)?;

        assert_eq!(history.len(), 2);

        Ok(())
    }

    #[test]
    fn super_version_gc_below_watermark_shadowed() -> crate::Result<()> {
        let mut history = SuperVersions(
            vec![
                SuperVersion {
                    active_memtable: Arc::new(Memtable::new(0)),
                    sealed_memtables: Arc::default(),
                    version: Version::new(0, crate::TreeType::Standard),
                    seqno: 0,
                },
                SuperVersion {
                    active_memtable: Arc::new(Memtable::new(0)),
                    sealed_memtables: Arc::default(),
                    version: Version::new(0, crate::TreeType::Standard),
                    seqno: 2,
                },
            ]
            .into(),
            Retirements::default(),
        );

        history.maintenance(Path::new("."), 3)?;

        assert_eq!(history.len(), 1);

        Ok(())
    }
}

/// Unlinks old version files and drops retired versions on a short-lived thread (see
/// `SuperVersions::maintenance`).
fn retire_in_background(
    paths: Vec<std::path::PathBuf>,
    retired: Vec<SuperVersion>,
) -> Option<std::thread::JoinHandle<()>> {
    let remove = move || {
        drop(retired);
        for path in paths {
            if let Err(e) = crate::file::retry_transient_io(|| std::fs::remove_file(&path)) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::warn!("could not remove old version file {}: {e:?}", path.display());
                }
            }
        }
    };
    // If no thread can be started, the closure (and with it the retired versions) is dropped
    // right here, as before the patch; the version files are left to the next recovery.
    match std::thread::Builder::new()
        .name("lsm:version-gc".into())
        .spawn(remove)
    {
        Ok(handle) => Some(handle),
        Err(e) => {
            log::warn!("could not start the version-file remover: {e:?}");
            None
        }
    }
}
