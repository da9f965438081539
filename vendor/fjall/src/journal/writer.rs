// Copyright (c) 2024-present, fjall-rs
// This source code is licensed under both the Apache 2.0 and MIT License
// (found in the LICENSE-* files in the repository)

use super::entry::{serialize_marker_item, Entry};
use crate::{
    batch::item::Item as BatchItem, file::fsync_directory, journal::recovery::JournalId,
    keyspace::InternalKeyspaceId,
};
use lsm_tree::{CompressionType, SeqNo, ValueType};
use std::{
    fs::{File, OpenOptions},
    hash::Hasher,
    io::{BufWriter, Seek, Write},
    path::{Path, PathBuf},
};

// TODO: this should be a database configuration
pub const PRE_ALLOCATED_BYTES: u64 = 64 * 1_024 * 1_024;

/// Patched (Magpie): 1 MiB instead of 8 KiB. `write_batch` writes each item through this
/// buffer, so with 8 KiB a commit of a few hundred small messages took one `write` system
/// call per 8 KiB (15.7 per commit at 79,000 msg/s, counted with `perf trace`), all on the
/// thread that commits; with 1 MiB a commit of up to 1 MiB is one `write` at the flush
/// before its fsync. One buffer per open database.
pub const JOURNAL_BUFFER_BYTES: usize = 1_024 * 1_024;

/// Patched (Magpie): zeros are written into a spare journal in chunks of this size.
const SPARE_CHUNK_BYTES: usize = 256 * 1_024;

/// Patched (Magpie): the spare journal is made durable every this many chunks, so that its
/// zeros reach the disk 1 MiB at a time instead of in one long burst that would queue ahead
/// of the active journal's syncs.
const SPARE_SYNC_EVERY_CHUNKS: usize = 4;

/// Patched (Magpie): pause after each chunk, which bounds the spare's write rate to about
/// 256 KiB per 3 ms (~85 MB/s), so that it leaves the disk to the active journal; a 64 MiB
/// spare is ready in about a second, long before the active journal fills at Magpie's rates.
const SPARE_CHUNK_PAUSE: std::time::Duration = std::time::Duration::from_millis(3);

/// Patched (Magpie): the next journal file, being created on a background thread.
///
/// The original created each new journal at rotation time, under the journal lock, as a
/// sparse file (`set_len`) followed by `fsync` of the file and of the folder. Every batch
/// written into a sparse file allocates blocks and grows the file, so each later `fsync` of
/// it must also write file-system metadata synchronously (on ext4, a journal commit, or
/// without a journal the inode itself), which queues behind the I/O of table files being
/// flushed, compacted and deleted at the same time (tens to over a hundred milliseconds under
/// load). A spare is
/// written with real zeros and made durable (file and folder) ahead of time, so batches
/// written into it overwrite allocated blocks and `PersistMode::SyncData` only writes data.
/// The spare carries the next journal's own name: if the process stops before the rotation,
/// recovery takes the all-zero spare as the (empty) active journal and the real active one as
/// sealed, exactly as after a rotation, and truncates the spare's zeros like any torn tail.
struct Spare {
    path: PathBuf,
    handle: std::thread::JoinHandle<std::io::Result<File>>,
    /// Set when the writer goes away first: the thread stops and removes its file.
    cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Spare {
    /// Starts creating the journal that follows `active` (`<id + 1>.jnl` in the same folder).
    fn prepare(active: &Path, bytes: u64) -> Option<Self> {
        let folder = active.parent()?.to_path_buf();
        let id = active
            .file_name()?
            .to_str()?
            .strip_suffix(".jnl")?
            .parse::<JournalId>()
            .ok()?;
        let path = folder.join(format!("{}.jnl", id + 1));
        let thread_path = path.clone();
        let cancel = std::sync::Arc::<std::sync::atomic::AtomicBool>::default();
        let thread_cancel = cancel.clone();
        let handle = std::thread::Builder::new()
            .name("fjall:jnl-spare".into())
            .spawn(move || {
                // Patched (Magpie): preparing the next journal is background work.
                lsm_tree::background::lower_current_thread();
                Self::create(&thread_path, &folder, bytes, &thread_cancel)
            })
            .ok()?;
        Some(Self {
            path,
            handle,
            cancel,
        })
    }

    fn create(
        path: &Path,
        folder: &Path,
        bytes: u64,
        cancel: &std::sync::atomic::AtomicBool,
    ) -> std::io::Result<File> {
        // `create_new`: never touch a file this thread did not create.
        let mut file = OpenOptions::new().create_new(true).write(true).open(path)?;
        let filled = fill_with_zeros(&mut file, bytes, Some(cancel))
            .and_then(|()| file.sync_all())
            .and_then(|()| fsync_directory(folder))
            .and_then(|()| file.rewind());
        if let Err(e) = filled {
            drop(file);
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        Ok(file)
    }

    /// The spare, if it is ready and for `path`. Rotation holds the journal lock that every
    /// write needs, so a spare still being written is cancelled rather than waited for: the
    /// wait is then at most the chunk being written (or the spare's final syncs, if it is
    /// already in them), and the caller creates the journal the original way.
    fn finish(self, path: &Path) -> Option<File> {
        // Rotation always takes the next id, which is the name the spare was made for.
        debug_assert_eq!(self.path, path);
        if self.path != path {
            self.discard();
            return None;
        }
        let finished = self.handle.is_finished();
        if !finished {
            log::debug!("Journal spare {} not ready at rotation", self.path.display());
        }
        self.stop(!finished)
    }

    /// Stops the thread and waits for it, and removes whatever it made.
    fn discard(self) {
        let path = self.path.clone();
        if self.stop(true).is_some() {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Stops the thread (if `cancel`) and waits for it: the spare, if it was finished. A
    /// cancelled or failed thread removed its own file; one that panicked may have left its
    /// file, which is removed here.
    fn stop(self, cancel: bool) -> Option<File> {
        if cancel {
            self.cancel
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        match self.handle.join() {
            Ok(Ok(file)) => Some(file),
            Ok(Err(e)) => {
                if !cancel {
                    log::warn!("Failed to prepare journal {}: {e:?}", self.path.display());
                }
                None
            }
            Err(_) => {
                let _ = std::fs::remove_file(&self.path);
                None
            }
        }
    }
}

/// Patched (Magpie): writes `bytes` of zeros at `file`'s position. With `cancel` (a spare,
/// written in the background), paced and synced a few chunks at a time, and stopped with an
/// error when `cancel` is set; without it (a new database's first journal), at full speed.
fn fill_with_zeros(
    file: &mut File,
    bytes: u64,
    cancel: Option<&std::sync::atomic::AtomicBool>,
) -> std::io::Result<()> {
    let zeros = vec![0u8; SPARE_CHUNK_BYTES];
    let mut written = 0u64;
    let mut chunks = 0usize;
    while written < bytes {
        let chunk = (bytes - written).min(SPARE_CHUNK_BYTES as u64) as usize;
        file.write_all(&zeros[..chunk])?;
        written += chunk as u64;
        chunks += 1;
        if let Some(cancel) = cancel {
            if cancel.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(std::io::Error::other(
                    "journal closed before its spare was ready",
                ));
            }
            if chunks % SPARE_SYNC_EVERY_CHUNKS == 0 {
                file.sync_data()?;
            }
            std::thread::sleep(SPARE_CHUNK_PAUSE);
        }
    }
    Ok(())
}

/// Patched (Magpie): a spare still being written when its journal closes is stopped and
/// removed, and waited for, so that nothing writes into the folder once the journal is gone
/// (a reopen in the same process would otherwise find a file still growing).
impl Drop for Writer {
    fn drop(&mut self) {
        self.cancel_spare();
    }
}

pub struct Writer {
    pub(crate) path: PathBuf,
    file: BufWriter<File>,
    buf: Vec<u8>,
    is_buffer_dirty: bool,

    /// Patched (Magpie): a write, flush or sync of this journal failed. Every later write and
    /// persist fails too. Linux reports a failed writeback to one `fsync` only, and a failed
    /// flush clears `is_buffer_dirty`'s reason to flush again, so a later persist (the commit
    /// thread's, after a flush worker's failed one) would otherwise return Ok for data that
    /// never reached the disk; and a batch written after a torn one is invisible to recovery.
    failed: bool,

    /// Patched (Magpie): the journal that rotation switches to, prepared ahead of time.
    spare: Option<Spare>,
    /// Patched (Magpie): size of each spare, and the journal size at which the database
    /// rotates to it; `None` until [`Writer::set_file_bytes`], and then no spares are made.
    file_bytes: Option<u64>,
    /// Patched (Magpie): this journal was created by this writer and nothing is written to it
    /// yet, so [`Writer::set_file_bytes`] may still fill it with zeros.
    fresh: bool,
    /// Patched (Magpie): bytes this writer has written into this journal (for a reopened
    /// journal, from [`Writer::set_file_bytes`] on, its length then too).
    written: u64,
    /// Patched (Magpie): this journal existed before this open; it is appended to.
    reopened: bool,
    /// Patched (Magpie): the spare for this journal has been started (it is started once).
    spare_started: bool,

    compression: CompressionType,
    compression_threshold: usize,
}

/// The persist mode allows setting the durability guarantee of previous writes
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub enum PersistMode {
    /// Flushes data to OS buffers. This allows the OS to write out data in case of an
    /// application crash.
    ///
    /// When this function returns, data is **not** guaranteed to be persisted in case
    /// of a power loss event or OS crash.
    Buffer,

    /// Flushes data using `fdatasync`.
    ///
    /// Use if you know that `fdatasync` is sufficient for your file system and/or operating system.
    SyncData,

    /// Flushes data + metadata using `fsync`.
    SyncAll,
}

impl Writer {
    pub fn set_compression(&mut self, comp: CompressionType, threshold: usize) {
        self.compression = comp;
        self.compression_threshold = threshold;
    }

    /// Patched (Magpie): sets the size of the pre-zeroed journals to rotate into; the next
    /// one is prepared once this one is a quarter full ([`Writer::note_written`]).
    ///
    /// A journal this writer has just created (a new database's first) is filled with zeros
    /// here, before any write, so that it too is written in place from the start.
    pub fn set_file_bytes(&mut self, bytes: u64) -> std::io::Result<()> {
        self.cancel_spare();
        if std::mem::take(&mut self.fresh) {
            fill_with_zeros(self.file.get_mut(), bytes, None)?;
            // Also cut off the sparse rest of a smaller journal.
            self.file.get_mut().set_len(bytes)?;
            self.file.get_mut().sync_all()?;
            self.file.rewind()?;
        }
        self.file_bytes = Some(bytes);
        // A journal from before this open is counted by `fill_tail`, once recovery has cut it
        // to its last valid batch: its length now may be a spare's zeros.
        if !self.reopened {
            self.note_written(0);
        }
        Ok(())
    }

    /// Patched (Magpie): after recovery has replayed a journal from before this open and cut
    /// it to its last valid batch, fills the rest of it (up to the journal size) with zeros and
    /// writes on in place from its end, so that a restarted database syncs data only too,
    /// instead of growing this journal until its next rotation. Does nothing for a journal
    /// this open created, without `journal_file_bytes`, or for a journal already that large.
    /// The zeros past the valid end are a torn tail to any later recovery.
    pub fn fill_tail(&mut self) -> std::io::Result<()> {
        let Some(bytes) = self.file_bytes else {
            return Ok(());
        };
        if !std::mem::take(&mut self.reopened) {
            return Ok(());
        }
        self.file.flush()?;
        let len = self.file.get_ref().metadata()?.len();
        if len < bytes {
            let mut file = OpenOptions::new().write(true).open(&self.path)?;
            file.seek(std::io::SeekFrom::Start(len))?;
            let filled = fill_with_zeros(&mut file, bytes - len, None)
                .and_then(|()| file.sync_all())
                .and_then(|()| file.seek(std::io::SeekFrom::Start(len)).map(drop));
            match filled {
                Ok(()) => self.file = BufWriter::with_capacity(JOURNAL_BUFFER_BYTES, file),
                Err(e) => {
                    // A full disk, say: open anyway, appending to the journal as unpatched
                    // fjall does, after cutting off the zeros written so far (batches
                    // appended after zeros would be invisible to recovery). If even that
                    // fails, the open fails.
                    log::warn!(
                        "could not zero-fill journal {} ({e}); appending to it instead",
                        self.path.display()
                    );
                    file.set_len(len)?;
                    file.sync_all()?;
                }
            }
        }
        // What it holds counts towards starting its spare.
        self.note_written(usize::try_from(len).unwrap_or(usize::MAX));
        Ok(())
    }

    /// Patched (Magpie): counts journal bytes, and starts the spare once a quarter of this
    /// journal is used. Not at once: a server that writes little never writes a spare, and a
    /// new one does not write two journals' worth of zeros while it starts; a quarter leaves
    /// the spare (about a second of paced writing at 64 MiB) three quarters of a journal to
    /// get ready in.
    fn note_written(&mut self, bytes: usize) {
        self.written = self.written.saturating_add(bytes as u64);
        if let Some(file_bytes) = self.file_bytes {
            if !self.spare_started && self.written >= file_bytes / 4 {
                self.spare_started = true;
                self.spare = Spare::prepare(&self.path, file_bytes);
            }
        }
    }

    /// Patched (Magpie): the journal size at which the database rotates to a new journal.
    pub fn rotate_at_bytes(&self) -> u64 {
        // The original's fixed threshold, a little under its 64 MiB preallocation; with
        // spares, the same margin under the spare's size, so batches written between the
        // check and the rotation usually still land in zeroed blocks.
        self.file_bytes
            .map_or(64_000_000, |bytes| bytes - bytes / 16)
    }

    /// Patched (Magpie): stops a spare still being prepared, waits for it, and removes its
    /// file (one that was finished but never used, too: it holds only zeros, and leaving it
    /// would make it the active journal of the next open, cut to nothing and then grown).
    fn cancel_spare(&mut self) {
        if let Some(spare) = self.spare.take() {
            spare.discard();
        }
    }

    pub fn pos(&mut self) -> crate::Result<u64> {
        self.file.stream_position().map_err(Into::into)
    }

    pub fn len(&self) -> crate::Result<u64> {
        Ok(self.file.get_ref().metadata()?.len())
    }

    pub fn rotate(&mut self) -> crate::Result<(PathBuf, PathBuf)> {
        // Patched (Magpie): data only; a spare journal's size and blocks are durable already,
        // and a grown (sparse or appended) file's size is data `fdatasync` also writes.
        self.persist(PersistMode::SyncData)?;

        log::debug!(
            "Sealing active journal at {}, len={}B",
            self.path.display(),
            self.path
                .metadata()
                .inspect_err(|e| {
                    log::error!(
                        "Failed to get file metadata of journal file at {}: {e:?}",
                        self.path.display()
                    );
                })?
                .len(),
        );

        let prev_path = self.path.clone();

        let folder = self
            .path
            .parent()
            .expect("should have parent")
            .to_path_buf();

        let Some(basename) = self
            .path
            .file_name()
            .expect("should be valid file name")
            .to_str()
            .expect("should be valid utf-8")
            .strip_suffix(".jnl")
        else {
            log::error!("Invalid journal file name: {}", self.path.display());
            return Err(crate::Error::JournalRecovery(
                crate::JournalRecoveryError::InvalidFileName,
            ));
        };

        let journal_id = basename.parse::<JournalId>().map_err(|_| {
            log::error!("Invalid journal file name: {}", self.path.display());
            crate::Error::JournalRecovery(crate::JournalRecoveryError::InvalidFileName)
        })?;

        let new_path = folder.join(format!("{}.jnl", journal_id + 1));
        log::debug!("Rotating active journal to {}", new_path.display());

        let comp = self.compression;
        let compt = self.compression_threshold;
        let file_bytes = self.file_bytes;
        // Patched (Magpie): switch to the spare if it is ready for this name; otherwise create
        // the journal here, as the original always did.
        match self.spare.take().and_then(|spare| spare.finish(&new_path)) {
            Some(file) => {
                *self = Self::with_file(new_path.clone(), file);
            }
            None => {
                *self = Self::create_new(new_path.clone())?;
                // Sparse, as the original's: filling it here would hold up every writer. Sized
                // like the others, since the journal manager counts journals by their length.
                if let Some(bytes) = file_bytes {
                    self.file.get_mut().set_len(bytes)?;
                }
                // IMPORTANT: fsync folder on Unix
                fsync_directory(&folder)?;
                self.fresh = false;
            }
        }
        self.set_compression(comp, compt);
        if let Some(bytes) = file_bytes {
            self.set_file_bytes(bytes)?;
        }

        Ok((prev_path, new_path))
    }

    pub fn create_new<P: Into<PathBuf>>(path: P) -> crate::Result<Self> {
        let path = path.into();

        let file = File::create_new(&path).inspect_err(|e| {
            log::error!("Failed to create journal file at {}: {e:?}", path.display());
        })?;

        file.set_len(PRE_ALLOCATED_BYTES).inspect_err(|e| {
            log::error!(
                "Failed to set journal file size to {PRE_ALLOCATED_BYTES}B at {}: {e:?}",
                path.display(),
            );
        })?;

        file.sync_all().inspect_err(|e| {
            log::error!("Failed to fsync journal file at {}: {e:?}", path.display());
        })?;

        let mut writer = Self::with_file(path, file);
        writer.fresh = true;
        Ok(writer)
    }

    /// Patched (Magpie): a writer at `file`'s current position, without a spare.
    pub(crate) fn with_file(path: PathBuf, file: File) -> Self {
        Self {
            path,
            file: BufWriter::with_capacity(JOURNAL_BUFFER_BYTES, file),
            buf: Vec::new(),
            is_buffer_dirty: false,
            failed: false,
            spare: None,
            file_bytes: None,
            fresh: false,
            written: 0,
            reopened: false,
            spare_started: false,
            compression: CompressionType::None,
            compression_threshold: 0,
        }
    }

    pub fn from_file<P: AsRef<Path>>(path: P) -> crate::Result<Self> {
        let path = path.as_ref();

        if !path.try_exists()? {
            let file = OpenOptions::new()
                .create_new(true)
                .write(true)
                .open(path)
                .inspect_err(|e| {
                    log::error!("Failed to create journal file at {}: {e:?}", path.display());
                })?;

            file.set_len(PRE_ALLOCATED_BYTES).inspect_err(|e| {
                log::error!(
                    "Failed to set journal file size to {PRE_ALLOCATED_BYTES}B at {}: {e:?}",
                    path.display(),
                );
            })?;

            file.sync_all().inspect_err(|e| {
                log::error!("Failed to fsync journal file at {}: {e:?}", path.display());
            })?;

            return Ok(Self::with_file(path.into(), file));
        }

        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .inspect_err(|e| {
                log::error!("Failed to open journal file at {}: {e:?}", path.display());
            })?;

        let mut writer = Self::with_file(path.into(), file);
        writer.reopened = true;
        Ok(writer)
    }

    /// Patched (Magpie): the error of every write and persist after one failed.
    fn failed_before(&self) -> std::io::Error {
        std::io::Error::other(format!(
            "an earlier write or sync of journal {} failed; what it holds may not be durable",
            self.path.display()
        ))
    }

    /// Persists the journal file.
    pub(crate) fn persist(&mut self, mode: PersistMode) -> std::io::Result<()> {
        // Patched (Magpie): failures are sticky (see `failed`).
        if self.failed {
            return Err(self.failed_before());
        }
        let result = self.persist_once(mode);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn persist_once(&mut self, mode: PersistMode) -> std::io::Result<()> {
        log::trace!(
            "Persisting journal at {} with mode={mode:?}",
            self.path.display(),
        );

        if self.is_buffer_dirty {
            self.file.flush().inspect_err(|e| {
                log::error!(
                    "Failed to flush journal IO buffers at {}: {e:?}",
                    self.path.display(),
                );
            })?;
            self.is_buffer_dirty = false;
        }

        match mode {
            PersistMode::SyncAll => self.file.get_mut().sync_all().inspect_err(|e| {
                log::error!(
                    "Failed to fsync journal file at {}: {e:?}",
                    self.path.display(),
                );
            }),
            PersistMode::SyncData => self.file.get_mut().sync_data().inspect_err(|e| {
                log::error!(
                    "Failed to fsyncdata journal file at {}: {e:?}",
                    self.path.display(),
                );
            }),
            PersistMode::Buffer => Ok(()),
        }
    }

    /// Writes a batch start marker to the journal
    fn write_start(&mut self, item_count: u32, seqno: SeqNo) -> Result<usize, crate::Error> {
        debug_assert!(self.buf.is_empty());

        Entry::Start { item_count, seqno }.encode_into(&mut self.buf)?;

        self.file.write_all(&self.buf)?;

        Ok(self.buf.len())
    }

    /// Writes a batch end marker to the journal
    fn write_end(&mut self, checksum: u64) -> Result<usize, crate::Error> {
        debug_assert!(self.buf.is_empty());

        Entry::End(checksum).encode_into(&mut self.buf)?;

        self.file.write_all(&self.buf)?;

        Ok(self.buf.len())
    }

    pub(crate) fn write_raw(
        &mut self,
        keyspace_id: InternalKeyspaceId,
        key: &[u8],
        value: &[u8],
        value_type: ValueType,
        seqno: u64,
    ) -> crate::Result<usize> {
        self.is_buffer_dirty = true;

        let mut hasher = xxhash_rust::xxh3::Xxh3::default();
        let mut byte_count = 0;

        self.buf.clear();
        byte_count += self.write_start(1, seqno)?;
        self.buf.clear();

        serialize_marker_item(
            &mut self.buf,
            keyspace_id,
            key,
            value,
            value_type,
            if self.compression_threshold > 0 && value.len() >= self.compression_threshold {
                self.compression
            } else {
                CompressionType::None
            },
        )?;

        self.file.write_all(&self.buf)?;

        hasher.update(&self.buf);
        byte_count += self.buf.len();

        self.buf.clear();
        let checksum = hasher.finish();
        byte_count += self.write_end(checksum)?;
        self.note_written(byte_count);

        Ok(byte_count)
    }

    pub(crate) fn write_clear(
        &mut self,
        keyspace_id: InternalKeyspaceId,
        seqno: SeqNo,
    ) -> crate::Result<usize> {
        self.is_buffer_dirty = true;

        let mut hasher = xxhash_rust::xxh3::Xxh3::default();
        let mut byte_count = 0;

        self.buf.clear();
        byte_count += self.write_start(1, seqno)?;
        self.buf.clear();

        Entry::Clear { keyspace_id }.encode_into(&mut self.buf)?;
        self.file.write_all(&self.buf)?;
        hasher.update(&self.buf);
        byte_count += self.buf.len();

        self.buf.clear();
        let checksum = hasher.finish();
        byte_count += self.write_end(checksum)?;
        self.note_written(byte_count);

        Ok(byte_count)
    }

    pub fn write_batch<'a>(
        &mut self,
        items: impl Iterator<Item = &'a BatchItem>,
        batch_size: usize,
        seqno: SeqNo,
    ) -> crate::Result<usize> {
        // Patched (Magpie): failures are sticky (see `failed`).
        if self.failed {
            return Err(self.failed_before().into());
        }
        let result = self.write_batch_once(items, batch_size, seqno);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn write_batch_once<'a>(
        &mut self,
        items: impl Iterator<Item = &'a BatchItem>,
        batch_size: usize,
        seqno: SeqNo,
    ) -> crate::Result<usize> {
        if batch_size == 0 {
            return Ok(0);
        }

        self.is_buffer_dirty = true;

        self.buf.clear();

        // NOTE: entries.len() is surely never > u32::MAX
        #[expect(clippy::cast_possible_truncation)]
        let item_count = batch_size as u32;

        let mut hasher = xxhash_rust::xxh3::Xxh3::default();
        let mut byte_count = 0;

        byte_count += self.write_start(item_count, seqno)?;
        self.buf.clear();

        for item in items {
            debug_assert!(self.buf.is_empty());

            serialize_marker_item(
                &mut self.buf,
                item.keyspace.id,
                &item.key,
                &item.value,
                item.value_type,
                if self.compression_threshold > 0 && item.value.len() >= self.compression_threshold
                {
                    self.compression
                } else {
                    CompressionType::None
                },
            )?;

            self.file.write_all(&self.buf)?;

            hasher.update(&self.buf);
            byte_count += self.buf.len();

            self.buf.clear();
        }

        let checksum = hasher.finish();
        byte_count += self.write_end(checksum)?;
        self.note_written(byte_count);

        Ok(byte_count)
    }
}
