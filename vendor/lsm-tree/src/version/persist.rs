use crate::{
    checksum::ChecksummedWriter,
    file::{fsync_directory, retry_transient_io, rewrite_atomic, CURRENT_VERSION_FILE},
    version::Version,
};
use byteorder::{LittleEndian, WriteBytesExt};
use std::{
    io::{BufWriter, Write},
    path::Path,
};

pub fn persist_version(folder: &Path, version: &Version) -> crate::Result<()> {
    #[cfg(test)]
    gate::pass(folder);

    log::trace!(
        "Persisting version {} in {}",
        version.id(),
        folder.display(),
    );

    let path = folder.join(format!("v{}", version.id()));
    let file = retry_transient_io(|| std::fs::File::create(&path))?;
    let writer = BufWriter::new(&file);
    let mut writer = ChecksummedWriter::new(writer);

    {
        let mut writer = sfa::Writer::from_writer(&mut writer);

        version.encode_into(&mut writer)?;

        writer.finish().map_err(|e| match e {
            sfa::Error::Io(e) => crate::Error::from(e),
            _ => unreachable!(),
        })?;
    }

    writer.flush()?;

    let checksum = writer.checksum();

    drop(writer);

    file.sync_all()?;

    // IMPORTANT: fsync folder on Unix
    fsync_directory(folder)?;

    let mut current_file_content = vec![];
    current_file_content.write_u64::<LittleEndian>(version.id())?;
    current_file_content.write_u128::<LittleEndian>(checksum.into_u128())?;
    current_file_content.write_u8(0)?; // 0 = xxh3

    rewrite_atomic(&folder.join(CURRENT_VERSION_FILE), &current_file_content)?;

    Ok(())
}

/// Patched (Magpie): lets a test hold `persist_version` for one folder, to check what other
/// threads can do while a new version is being written.
#[cfg(test)]
#[allow(
    clippy::expect_used,
    clippy::significant_drop_tightening,
    reason = "test only"
)]
mod gate {
    use std::path::{Path, PathBuf};
    use std::sync::{Condvar, Mutex};

    /// The folder being held, and whether a writer of it has arrived.
    static HELD: Mutex<Option<(PathBuf, bool)>> = Mutex::new(None);
    static CHANGED: Condvar = Condvar::new();

    /// Holds every later `persist_version` of `folder` until [`release`].
    pub fn hold(folder: &Path) {
        *HELD.lock().expect("gate") = Some((folder.to_path_buf(), false));
    }

    /// Waits until a `persist_version` of the held folder is waiting at the gate; panics
    /// (after releasing the gate) if `worker` ends first or nothing arrives in 10 s, so a
    /// worker that never writes a version fails the test instead of hanging it.
    pub fn wait_arrival<T>(worker: &std::thread::JoinHandle<T>) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut held = HELD.lock().expect("gate");
        while !matches!(&*held, Some((_, true))) {
            let now = std::time::Instant::now();
            if worker.is_finished() || now >= deadline {
                *held = None;
                drop(held);
                panic!("no version write reached the gate");
            }
            let step = (deadline - now).min(std::time::Duration::from_millis(50));
            held = CHANGED.wait_timeout(held, step).expect("gate").0;
        }
    }

    pub fn release() {
        *HELD.lock().expect("gate") = None;
        CHANGED.notify_all();
    }

    pub(super) fn pass(folder: &Path) {
        let mut held = HELD.lock().expect("gate");
        loop {
            match &mut *held {
                Some((path, arrived)) if path == folder => {
                    *arrived = true;
                    CHANGED.notify_all();
                }
                _ => return,
            }
            held = CHANGED.wait(held).expect("gate");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TreeType;
    use test_log::test;

    /// Patched (Magpie): while a flush's or a compaction's new version is being written (and
    /// synced), the tree still takes writes and answers reads; before, that happened under the
    /// version-history write lock every write and read needs, and all of them waited 1-5 ms.
    #[test]
    fn writes_and_reads_go_on_while_a_new_version_is_written() -> crate::Result<()> {
        use crate::{AbstractTree, Config, SequenceNumberCounter};
        use std::sync::{mpsc, Arc};
        use std::time::Duration;

        let dir = tempfile::tempdir()?;
        let tree = Config::new(
            dir.path(),
            SequenceNumberCounter::default(),
            SequenceNumberCounter::default(),
        )
        .open()?;
        for i in 0..100u32 {
            tree.insert(i.to_be_bytes(), "before", u64::from(i));
        }

        let strategy = Arc::new(crate::compaction::major::Strategy::new(u64::MAX));

        // First a flush, then a compaction of the two tables, each held while it writes.
        for round in 0..2u32 {
            if round == 1 {
                tree.flush_active_memtable(0)?;
                assert_eq!(2, tree.table_count());
            }
            // The tree's own (absolute) folder, which is what `persist_version` is given.
            gate::hold(&tree.tree_config().path);
            let worker = {
                let tree = tree.clone();
                let strategy = strategy.clone();
                std::thread::spawn(move || {
                    if round == 0 {
                        tree.flush_active_memtable(0)
                    } else {
                        tree.compact(strategy, 0)
                    }
                })
            };
            gate::wait_arrival(&worker);

            let (done, finished) = mpsc::channel();
            let other = tree.clone();
            std::thread::spawn(move || {
                let key = (1_000 + round).to_be_bytes();
                other.insert(key, "during", 1_000 + u64::from(round));
                let read = other.get(key, u64::MAX).map(|v| v.is_some());
                let old = other.get(7u32.to_be_bytes(), u64::MAX).map(|v| v.is_some());
                done.send((read, old)).ok();
            });
            let answer = finished.recv_timeout(Duration::from_secs(10));
            gate::release();
            worker.join().expect("worker")?;
            let (read, old) = answer.expect("a write and two reads waited for the version file");
            assert!(read?, "the write made during round {round} is readable");
            assert!(old?, "an older key is readable during round {round}");
        }

        assert_eq!(1, tree.table_count(), "the compaction was installed");
        for i in (0..100u32).chain([1_000, 1_001]) {
            assert!(tree.get(i.to_be_bytes(), u64::MAX)?.is_some(), "key {i}");
        }
        Ok(())
    }

    #[test]
    fn version_persist_replaces_orphaned_file() -> crate::Result<()> {
        let dir = tempfile::tempdir()?;
        let version = Version::new(0, TreeType::Standard);

        // Simulates the leftover of a persist that failed midway
        std::fs::write(dir.path().join("v0"), b"partial")?;

        persist_version(dir.path(), &version)?;

        assert_ne!(
            b"partial".as_slice(),
            &*std::fs::read(dir.path().join("v0"))?
        );
        assert!(dir.path().join(CURRENT_VERSION_FILE).try_exists()?);

        Ok(())
    }
}
