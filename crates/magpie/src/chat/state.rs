//! The chat client's state directory: the saved login and the inbox cursor.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use magpie_sdk::{ConversationId, FileCursorStore, SessionCreated, UserId};
use serde::{Deserialize, Serialize};

/// File holding the saved login (token, ids).
const SESSION_FILE: &str = "session.json";
/// File holding the inbox cursor (written by `FileCursorStore`).
const CURSOR_FILE: &str = "cursor";
/// File holding the id of the conversation the chat was in.
const CURRENT_FILE: &str = "current";

/// What is remembered between runs so a restart does not create a new device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedLogin {
    /// The account name the token belongs to.
    pub username: String,
    /// Bearer token; the file is created user-readable only.
    pub token: String,
    /// The account.
    pub user_id: String,
    /// The device this token logged in as.
    pub device_id: String,
}

impl SavedLogin {
    /// The login the server just created.
    pub fn new(username: &str, created: &SessionCreated) -> Self {
        Self {
            username: username.to_owned(),
            token: created.token.clone(),
            user_id: created.user_id.to_string(),
            device_id: created.device_id.to_string(),
        }
    }

    /// The typed user id, if the file held a valid one.
    pub fn user_id(&self) -> Option<UserId> {
        self.user_id.parse().ok()
    }
}

/// `~/.magpie/<user>@<host:port>` or the directory given with `--state-dir`.
pub struct StateDir {
    /// The directory (created on open).
    dir: PathBuf,
}

impl StateDir {
    /// Opens (creating) the directory.
    pub fn open(dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating state dir {}", dir.display()))?;
        Ok(Self { dir })
    }

    /// The default directory for `user` on the server at `host_port`.
    pub fn default_path(user: &str, host_port: &str) -> anyhow::Result<PathBuf> {
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .context("HOME is not set; pass --state-dir")?;
        // ':' is legal on Unix file systems; keep the name readable.
        Ok(Path::new(&home)
            .join(".magpie")
            .join(format!("{user}@{host_port}")))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The saved login, if there is a readable one for `username`.
    pub fn load_login(&self, username: &str) -> Option<SavedLogin> {
        let raw = std::fs::read(self.dir.join(SESSION_FILE)).ok()?;
        let saved: SavedLogin = serde_json::from_slice(&raw).ok()?;
        (saved.username == username && saved.user_id().is_some()).then_some(saved)
    }

    /// Replaces the saved login atomically.
    pub fn save_login(&self, login: &SavedLogin) -> anyhow::Result<()> {
        let path = self.dir.join(SESSION_FILE);
        let tmp = self.dir.join(format!("{SESSION_FILE}.tmp"));
        {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options
                .open(&tmp)
                .with_context(|| format!("writing {}", tmp.display()))?;
            f.write_all(&serde_json::to_vec_pretty(login)?)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// Forgets the saved login (after logout or revocation).
    pub fn forget_login(&self) {
        let _ = std::fs::remove_file(self.dir.join(SESSION_FILE));
    }

    /// The conversation this account was in when the chat last ended, if any.
    pub fn load_current(&self) -> Option<ConversationId> {
        std::fs::read_to_string(self.dir.join(CURRENT_FILE))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Remembers the conversation the chat is in, so the next start resumes there. Best
    /// effort: losing it only means typing `/to` or `/switch` again.
    pub fn save_current(&self, conversation: ConversationId) {
        let path = self.dir.join(CURRENT_FILE);
        if let Err(e) = std::fs::write(&path, conversation.to_string()) {
            tracing::debug!(error = %e, "could not save the current conversation");
        }
    }

    /// Forgets the remembered conversation (it no longer exists for this user).
    pub fn forget_current(&self) {
        let _ = std::fs::remove_file(self.dir.join(CURRENT_FILE));
    }

    /// The cursor store for this account on this machine.
    pub fn cursor_store(&self) -> FileCursorStore {
        FileCursorStore::new(self.dir.join(CURSOR_FILE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_round_trips_and_is_per_user() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::open(tmp.path().join("a@h:1")).unwrap();
        assert!(state.load_login("alice").is_none());
        let login = SavedLogin {
            username: "alice".into(),
            token: "t".into(),
            user_id: "3".into(),
            device_id: "4".into(),
        };
        state.save_login(&login).unwrap();
        let back = state.load_login("alice").unwrap();
        assert_eq!(back.user_id(), Some(UserId(3)));
        assert_eq!(back.device_id, "4");
        assert!(state.load_login("bob").is_none());
        state.forget_login();
        assert!(state.load_login("alice").is_none());
    }
}
