//! Where a session remembers how far the application has processed its inbox.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Result, SdkError};

/// Persistent storage for the inbox cursor of one account on one device.
///
/// Called from a blocking thread, so implementations may do synchronous I/O.
pub trait CursorStore: Send + Sync + 'static {
    /// The stored cursor, or `None` if nothing was ever stored.
    fn load(&self) -> Result<Option<u64>>;
    /// Stores `cursor`, replacing the previous value. Must be atomic: after a crash `load`
    /// returns either the old or the new value, never garbage.
    fn save(&self, cursor: u64) -> Result<()>;
}

/// A cursor kept in memory only (tests, or apps that keep no local state).
#[derive(Debug, Default)]
pub struct MemoryCursorStore {
    /// The last saved value.
    value: Mutex<Option<u64>>,
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
}

/// A cursor in a small text file, replaced atomically (write temp file, fsync, rename).
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

    fn temp_path(&self) -> PathBuf {
        let mut name = self
            .path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(".tmp");
        self.path.with_file_name(name)
    }
}

impl CursorStore for FileCursorStore {
    fn load(&self) -> Result<Option<u64>> {
        let raw = match std::fs::read_to_string(&self.path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        raw.trim().parse::<u64>().map(Some).map_err(|_| {
            SdkError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: not a cursor: {:?}", self.path.display(), raw.trim()),
            ))
        })
    }

    fn save(&self, cursor: u64) -> Result<()> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.temp_path();
        {
            let mut f = std::fs::File::create(&tmp)?;
            writeln!(f, "{cursor}")?;
            // Without this, a crash after the rename could leave an empty file in place.
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        Ok(())
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
    fn file_store_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cursor");
        std::fs::write(&path, "not a number").unwrap();
        assert!(FileCursorStore::new(&path).load().is_err());
    }
}
