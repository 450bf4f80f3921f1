//! A small file the service re-reads when it changes (a mounted Secret or
//! ConfigMap that the kubelet swaps in place), keeping the last good value
//! when a new version does not parse.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Result, SignalingError};

/// How often the file's modification time is checked.
const RELOAD_CHECK: Duration = Duration::from_secs(2);

/// Largest file read: these are secrets, keys and short lists, never more
/// than a few KiB; a bigger file is a mistake, refused rather than loaded.
pub const MAX_FILE_BYTES: u64 = 64 * 1024;

/// Turns the file's text into a value, or says why it cannot.
pub type Parse<T> = Box<dyn Fn(&str) -> std::result::Result<T, String> + Send + Sync>;

pub struct WatchedFile<T> {
    /// The flag that names the file, for messages.
    setting: &'static str,
    path: PathBuf,
    parse: Parse<T>,
    state: RwLock<State<T>>,
}

struct State<T> {
    value: Arc<T>,
    modified: Option<SystemTime>,
    checked: Instant,
}

impl<T> WatchedFile<T> {
    /// Reads the file once; a file that cannot be read or parsed at start is
    /// a configuration error naming `setting`.
    pub fn open(
        setting: &'static str,
        path: PathBuf,
        parse: impl Fn(&str) -> std::result::Result<T, String> + Send + Sync + 'static,
    ) -> Result<Self> {
        let parse: Parse<T> = Box::new(parse);
        let (value, modified) = read(setting, &path, &parse)?;
        Ok(Self {
            setting,
            path,
            parse,
            state: RwLock::new(State {
                value: Arc::new(value),
                modified,
                checked: Instant::now(),
            }),
        })
    }

    /// The newest good value; checks the file at most every two seconds.
    pub fn get(&self) -> Arc<T> {
        let stale = self
            .state
            .read()
            .map(|s| s.checked.elapsed() >= RELOAD_CHECK)
            .unwrap_or(true);
        if stale && let Ok(mut state) = self.state.write() {
            state.checked = Instant::now();
            // metadata() follows the kubelet's ..data symlink, so an atomic
            // swap of the mounted object shows as a new modification time.
            let modified = std::fs::metadata(&self.path)
                .and_then(|m| m.modified())
                .ok();
            if modified != state.modified {
                state.modified = modified;
                match read(self.setting, &self.path, &self.parse) {
                    Ok((value, _)) => {
                        tracing::info!(setting = self.setting, path = %self.path.display(), "file reloaded");
                        state.value = Arc::new(value);
                    }
                    // Keep the last good value; say why once per change.
                    Err(error) => {
                        tracing::warn!(setting = self.setting, %error, "file not reloaded; keeping the last good version");
                    }
                }
            }
        }
        match self.state.read() {
            Ok(state) => state.value.clone(),
            Err(poisoned) => poisoned.into_inner().value.clone(),
        }
    }
}

fn read<T>(
    setting: &'static str,
    path: &Path,
    parse: &Parse<T>,
) -> Result<(T, Option<SystemTime>)> {
    let cannot_read = |e: std::io::Error| {
        SignalingError::config(setting, format!("cannot read {}: {e}", path.display()))
    };
    let size = std::fs::metadata(path).map_err(cannot_read)?.len();
    if size > MAX_FILE_BYTES {
        return Err(SignalingError::config(
            setting,
            format!(
                "{} is {size} bytes, over the {MAX_FILE_BYTES} bytes such a file may have",
                path.display()
            ),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(cannot_read)?;
    let value = parse(&text)
        .map_err(|why| SignalingError::config(setting, format!("{} {why}", path.display())))?;
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    Ok((value, modified))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers(text: &str) -> std::result::Result<Vec<u32>, String> {
        text.split_whitespace()
            .map(|w| w.parse().map_err(|_| format!("holds `{w}`, not a number")))
            .collect()
    }

    fn temp_file(text: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("vc-watched-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("file");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    /// Forces the next `get` to look at the file again.
    fn expire<T>(file: &WatchedFile<T>) {
        let mut state = file.state.write().unwrap();
        state.checked = Instant::now() - RELOAD_CHECK;
        // Same-second writes can keep the modification time on coarse
        // clocks; forget it so the content is compared by reading.
        state.modified = None;
    }

    #[test]
    fn a_changed_file_is_read_again_and_a_bad_version_keeps_the_last_good_one() {
        let (dir, path) = temp_file("1 2");
        let file = WatchedFile::open("--numbers-file", path.clone(), numbers).unwrap();
        assert_eq!(*file.get(), vec![1, 2]);
        std::fs::write(&path, "3").unwrap();
        expire(&file);
        assert_eq!(*file.get(), vec![3]);
        std::fs::write(&path, "x").unwrap();
        expire(&file);
        assert_eq!(*file.get(), vec![3], "a bad version is not taken");
        std::fs::remove_file(&path).unwrap();
        expire(&file);
        assert_eq!(*file.get(), vec![3], "a missing file keeps the last value");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_file_over_the_size_limit_is_refused() {
        let (dir, path) = temp_file(&"1 ".repeat(40_000));
        let error = WatchedFile::open("--numbers-file", path, numbers)
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("over the 65536 bytes"), "{error}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_bad_file_at_start_names_the_setting() {
        let (dir, path) = temp_file("x");
        let error = WatchedFile::open("--numbers-file", path, numbers)
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("--numbers-file"), "{error}");
        assert!(error.contains("holds `x`, not a number"), "{error}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
