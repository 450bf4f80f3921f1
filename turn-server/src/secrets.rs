//! The shared secrets that TURN REST API credentials are checked against.
//!
//! File format: one secret per line; blank lines and lines starting with `#`
//! are ignored; surrounding whitespace is trimmed. Several secrets are valid
//! at once so that a secret can be rotated without refusing live clients.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::error::TurnError;
use crate::metrics::Metrics;

/// Parses the secret file format.
pub fn parse_secrets(text: &str) -> Vec<Vec<u8>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.as_bytes().to_vec())
        .collect()
}

/// Reads and parses a secret file; a missing, unreadable or empty file is an error.
pub fn read_secret_file(path: &Path) -> Result<Vec<Vec<u8>>, TurnError> {
    let text = std::fs::read_to_string(path).map_err(|e| TurnError::SecretFile {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let secrets = parse_secrets(&text);
    if secrets.is_empty() {
        return Err(TurnError::SecretFile {
            path: path.to_owned(),
            reason: "holds no secret (one per line; blank and # lines are ignored)".into(),
        });
    }
    Ok(secrets)
}

/// The secrets currently accepted: those given in memory plus those in the file.
pub struct SecretStore {
    fixed: Vec<Vec<u8>>,
    file: Option<PathBuf>,
    current: RwLock<Arc<Vec<Vec<u8>>>>,
}

impl SecretStore {
    /// Loads the store; fails when there is no secret at all.
    pub fn load(fixed: Vec<Vec<u8>>, file: Option<PathBuf>) -> Result<Self, TurnError> {
        let mut all = fixed.clone();
        if let Some(path) = &file {
            all.extend(read_secret_file(path)?);
        }
        if all.is_empty() {
            return Err(TurnError::config(
                "--secret-file",
                "no secret configured: give --secret-file or VIDEOCHAT_TURN_SECRET",
            ));
        }
        Ok(SecretStore {
            fixed,
            file,
            current: RwLock::new(Arc::new(all)),
        })
    }

    /// The secrets valid now.
    pub fn current(&self) -> Arc<Vec<Vec<u8>>> {
        match self.current.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Re-reads the file. Returns true when the set changed. A file that is
    /// missing or empty for a moment (a Kubernetes Secret volume swaps a
    /// symlink) keeps the previous secrets rather than locking everyone out.
    pub fn reload(&self) -> Result<bool, TurnError> {
        let Some(path) = &self.file else {
            return Ok(false);
        };
        let mut all = self.fixed.clone();
        all.extend(read_secret_file(path)?);
        let mut guard = match self.current.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if **guard == all {
            return Ok(false);
        }
        *guard = Arc::new(all);
        Ok(true)
    }

    pub fn has_file(&self) -> bool {
        self.file.is_some()
    }
}

/// Polls the secret file every `interval` and swaps the set when it changes.
/// Polling, rather than inotify, because Secret volumes update through an
/// atomic symlink swap that watchers on the file itself miss.
pub(crate) async fn watch_secret_file(
    store: Arc<SecretStore>,
    metrics: Arc<Metrics>,
    interval: Duration,
) {
    if !store.has_file() {
        return;
    }
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match store.reload() {
            Ok(true) => {
                metrics.secret_reload(true);
                metrics.secrets_loaded.set(store.current().len() as i64);
                tracing::info!(
                    secrets = store.current().len(),
                    "secret file changed, reloaded"
                );
            }
            Ok(false) => {}
            Err(err) => {
                metrics.secret_reload(false);
                tracing::warn!(error = %err, "secret file reload failed, keeping previous secrets");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_and_blank_lines_are_ignored() {
        let s = parse_secrets("# rotated 2026-01\n\n  first  \nsecond\n#old\n");
        assert_eq!(s, vec![b"first".to_vec(), b"second".to_vec()]);
    }

    #[test]
    fn missing_or_empty_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("vt-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let missing = dir.join("missing");
        let err = SecretStore::load(vec![], Some(missing))
            .err()
            .expect("error");
        assert!(err.to_string().starts_with("--secret-file"), "{err}");
        let empty = dir.join("empty");
        std::fs::write(&empty, "# nothing\n\n").expect("write");
        let err = SecretStore::load(vec![], Some(empty)).err().expect("error");
        assert!(err.to_string().contains("holds no secret"), "{err}");
        assert!(SecretStore::load(vec![], None).is_err());
    }

    #[test]
    fn reload_picks_up_changes_and_keeps_old_set_on_error() {
        let dir = std::env::temp_dir().join(format!("vt-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let f = dir.join("secrets");
        std::fs::write(&f, "a\n").expect("write");
        let store = SecretStore::load(vec![b"mem".to_vec()], Some(f.clone())).expect("load");
        assert_eq!(store.current().len(), 2);
        assert!(!store.reload().expect("reload"));
        std::fs::write(&f, "a\nb\n").expect("write");
        assert!(store.reload().expect("reload"));
        assert_eq!(store.current().len(), 3);
        std::fs::write(&f, "").expect("write");
        assert!(store.reload().is_err());
        assert_eq!(store.current().len(), 3);
    }
}
