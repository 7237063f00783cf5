//! A keyring kept in a file (one key per line, or comma-separated; `#` comments), re-read on
//! `SIGHUP`: rotate the key by editing the file and signalling the node.

use std::io;
use std::path::{Path, PathBuf};

use super::ClusterKey;

/// The keyring in `path`.
///
/// # Errors
/// The file cannot be read, or holds no key (`InvalidData`).
pub fn load(path: &Path) -> io::Result<ClusterKey> {
    let text = std::fs::read_to_string(path)?;
    ClusterKey::parse(&text).map_err(|e| no_keys(path, e))
}

fn no_keys(path: &Path, e: super::NoKeys) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {e}", path.display()),
    )
}

impl ClusterKey {
    /// Replaces the keys with those in `path` (see [`ClusterKey::reload`]); nothing changes
    /// when it cannot be read or holds no key.
    ///
    /// # Errors
    /// As [`load`].
    pub fn reload_from_file(&self, path: &Path) -> io::Result<()> {
        let text = std::fs::read_to_string(path)?;
        self.reload(&text).map_err(|e| no_keys(path, e))
    }
}

/// Re-reads `path` into `key` on every `SIGHUP`, for as long as the task runs (abort it to
/// stop). A file that cannot be read or holds no key is logged and the keys stay as they were.
#[cfg(unix)]
pub fn reload_on_sighup(key: ClusterKey, path: PathBuf) -> io::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match key.reload_from_file(&path) {
                Ok(()) => tracing::info!(
                    file = %path.display(),
                    keys = key.len(),
                    primary = %key.key_ids().first().cloned().unwrap_or_default(),
                    "cluster keyring reloaded"
                ),
                Err(e) => {
                    tracing::error!(file = %path.display(), "cluster keyring not reloaded: {e}")
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_loads_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "# the cluster's keys\nk1\n").unwrap();
        let key = load(&path).unwrap();
        let running = key.clone();
        let before = key.key_ids();
        std::fs::write(&path, "k2\nk1\n").unwrap();
        key.reload_from_file(&path).unwrap();
        assert_eq!(running.len(), 2);
        assert_eq!(running.key_ids()[1], before[0]);
        std::fs::write(&path, "# nothing\n").unwrap();
        assert!(key.reload_from_file(&path).is_err());
        assert_eq!(running.len(), 2);
        assert!(load(&dir.path().join("missing")).is_err());
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_reload_task_starts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "k1").unwrap();
        let task = reload_on_sighup(load(&path).unwrap(), path).unwrap();
        task.abort();
    }
}
