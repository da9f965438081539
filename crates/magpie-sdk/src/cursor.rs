//! Where a session remembers how far the application has processed its inbox, and how far
//! each conversation's message stream has been delivered.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use magpie_core::ConversationId;

use crate::error::{Result, SdkError};

/// Most per-conversation entries read back from a seq file (a corrupt or hostile file cannot
/// make `load_seqs` allocate without bound).
pub const SEQ_ENTRIES_MAX: usize = 1_000_000;

/// Persistent storage for the inbox cursor of one account on one device.
///
/// Called from a blocking thread, so implementations may do synchronous I/O.
pub trait CursorStore: Send + Sync + 'static {
    /// The stored cursor, or `None` if nothing was ever stored.
    fn load(&self) -> Result<Option<u64>>;
    /// Stores `cursor`, replacing the previous value. Must be atomic: after a crash `load`
    /// returns either the old or the new value, never garbage.
    fn save(&self, cursor: u64) -> Result<()>;

    /// The last delivered seq per conversation, as saved by [`CursorStore::save_seqs`].
    ///
    /// Read-fan-out groups deliver messages outside the inbox, so the inbox cursor alone
    /// cannot tell a restarted session what it already showed there. A store that does not
    /// keep this (the default) makes a restarted session pull read-fan-out groups it finds in
    /// the conversation list from the beginning.
    fn load_seqs(&self) -> Result<Vec<(ConversationId, u64)>> {
        Ok(Vec::new())
    }

    /// Replaces the saved per-conversation seqs. Called just before `save` with the state
    /// that goes with that cursor. Must be atomic like `save`.
    fn save_seqs(&self, seqs: &[(ConversationId, u64)]) -> Result<()> {
        let _ = seqs;
        Ok(())
    }
}

/// A cursor kept in memory only (tests, or apps that keep no local state).
#[derive(Debug, Default)]
pub struct MemoryCursorStore {
    /// The last saved value.
    value: Mutex<Option<u64>>,
    /// The last saved per-conversation seqs.
    seqs: Mutex<Vec<(ConversationId, u64)>>,
}

impl MemoryCursorStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store that already holds `cursor`.
    pub fn with_cursor(cursor: u64) -> Self {
        Self {
            value: Mutex::new(Some(cursor)),
            seqs: Mutex::new(Vec::new()),
        }
    }
}

impl CursorStore for MemoryCursorStore {
    fn load(&self) -> Result<Option<u64>> {
        Ok(*self.value.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn save(&self, cursor: u64) -> Result<()> {
        *self.value.lock().unwrap_or_else(|p| p.into_inner()) = Some(cursor);
        Ok(())
    }

    fn load_seqs(&self) -> Result<Vec<(ConversationId, u64)>> {
        Ok(self.seqs.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    fn save_seqs(&self, seqs: &[(ConversationId, u64)]) -> Result<()> {
        *self.seqs.lock().unwrap_or_else(|p| p.into_inner()) = seqs.to_vec();
        Ok(())
    }
}

/// A cursor in a small text file, replaced atomically (write temp file, fsync, rename). The
/// per-conversation seqs live next to it in `<file>.seqs`, one `CONVERSATION_ID SEQ` line each.
#[derive(Debug, Clone)]
pub struct FileCursorStore {
    /// The file holding the decimal cursor.
    path: PathBuf,
}

impl FileCursorStore {
    /// A store at `path`; the file and its parent directory are created on first save.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file holding the per-conversation seqs.
    pub fn seqs_path(&self) -> PathBuf {
        self.sibling(".seqs")
    }

    #[cfg(test)]
    fn temp_path(&self) -> PathBuf {
        self.sibling(".tmp")
    }

    fn sibling(&self, suffix: &str) -> PathBuf {
        let mut name = self
            .path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(suffix);
        self.path.with_file_name(name)
    }

    /// Writes `contents` to `path` atomically: temp file, fsync, rename.
    fn replace(&self, path: &Path, contents: &[u8]) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut tmp = path.as_os_str().to_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(contents)?;
            // Without this, a crash after the rename could leave an empty file in place.
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        // The rename is an entry of the directory: sync it too, or a power cut may bring the
        // old file back (a replayed event, never a lost one, but the newest save is the point).
        #[cfg(unix)]
        if let Some(dir) = path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

fn invalid_data(path: &Path, what: &str) -> SdkError {
    SdkError::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("{}: {what}", path.display()),
    ))
}

impl CursorStore for FileCursorStore {
    fn load(&self) -> Result<Option<u64>> {
        let raw = match std::fs::read_to_string(&self.path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        raw.trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|_| invalid_data(&self.path, &format!("not a cursor: {:?}", raw.trim())))
    }

    fn save(&self, cursor: u64) -> Result<()> {
        self.replace(&self.path, format!("{cursor}\n").as_bytes())
    }

    fn load_seqs(&self) -> Result<Vec<(ConversationId, u64)>> {
        let path = self.seqs_path();
        let raw = match std::fs::read_to_string(&path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for line in raw.lines().filter(|l| !l.trim().is_empty()) {
            if out.len() >= SEQ_ENTRIES_MAX {
                return Err(invalid_data(&path, "too many entries"));
            }
            let mut parts = line.split_whitespace();
            let entry = match (parts.next(), parts.next(), parts.next()) {
                (Some(id), Some(seq), None) => id.parse().ok().zip(seq.parse().ok()),
                _ => None,
            };
            let entry = entry.ok_or_else(|| invalid_data(&path, &format!("bad line {line:?}")))?;
            out.push(entry);
        }
        Ok(out)
    }

    fn save_seqs(&self, seqs: &[(ConversationId, u64)]) -> Result<()> {
        let mut text = String::with_capacity(seqs.len() * 16);
        for (id, seq) in seqs {
            text.push_str(&format!("{id} {seq}\n"));
        }
        self.replace(&self.seqs_path(), text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_round_trips() {
        let s = MemoryCursorStore::new();
        assert_eq!(s.load().unwrap(), None);
        s.save(5).unwrap();
        assert_eq!(s.load().unwrap(), Some(5));
        assert_eq!(MemoryCursorStore::with_cursor(9).load().unwrap(), Some(9));
    }

    #[test]
    fn file_store_round_trips_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileCursorStore::new(dir.path().join("nested/cursor"));
        assert_eq!(s.load().unwrap(), None);
        s.save(41).unwrap();
        s.save(42).unwrap();
        assert_eq!(s.load().unwrap(), Some(42));
        assert_eq!(FileCursorStore::new(s.path()).load().unwrap(), Some(42));
        assert!(!s.temp_path().exists(), "temp file is renamed away");
    }

    #[test]
    fn seqs_round_trip_in_both_stores() {
        let dir = tempfile::tempdir().unwrap();
        let file = FileCursorStore::new(dir.path().join("cursor"));
        let memory = MemoryCursorStore::new();
        let seqs = vec![(ConversationId(3), 7), (ConversationId(12), 1)];
        for store in [&file as &dyn CursorStore, &memory] {
            assert!(store.load_seqs().unwrap().is_empty());
            store.save_seqs(&seqs).unwrap();
            assert_eq!(store.load_seqs().unwrap(), seqs);
        }
        assert!(file.seqs_path().exists());
        std::fs::write(file.seqs_path(), "3 x\n").unwrap();
        assert!(file.load_seqs().is_err());
    }

    #[test]
    fn file_store_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cursor");
        std::fs::write(&path, "not a number").unwrap();
        assert!(FileCursorStore::new(&path).load().is_err());
    }
}
