//! ICE servers for clients: TURN URIs with TURN REST API credentials made by
//! `videochat_turn::credentials` under the newest shared secret.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Result, SignalingError};
use crate::protocol::IceServer;
use crate::time::unix_now;

/// How often the secret file's modification time is checked.
const RELOAD_CHECK: Duration = Duration::from_secs(2);

enum Secrets {
    Fixed(Vec<u8>),
    File {
        path: PathBuf,
        state: RwLock<FileState>,
    },
}

struct FileState {
    newest: Vec<u8>,
    modified: Option<SystemTime>,
    checked: Instant,
}

/// Makes the `ice_servers` list.
pub struct IceConfig {
    uris: Vec<String>,
    secrets: Option<Secrets>,
}

fn parse_newest(text: &str) -> Option<Vec<u8>> {
    text.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.as_bytes().to_vec())
}

impl IceConfig {
    /// No TURN: clients get an empty list (host candidates only).
    pub fn none() -> Self {
        Self {
            uris: Vec::new(),
            secrets: None,
        }
    }

    /// URIs with a secret held in memory (the in-process relay).
    pub fn with_secret(uris: Vec<String>, secret: Vec<u8>) -> Self {
        Self {
            uris: in_browser_order(uris),
            secrets: Some(Secrets::Fixed(secret)),
        }
    }

    /// URIs with secrets from a file, newest last, re-read when it changes.
    pub fn with_secret_file(uris: Vec<String>, path: PathBuf) -> Result<Self> {
        let (newest, modified) = read_file(&path)?;
        Ok(Self {
            uris: in_browser_order(uris),
            secrets: Some(Secrets::File {
                path,
                state: RwLock::new(FileState {
                    newest,
                    modified,
                    checked: Instant::now(),
                }),
            }),
        })
    }

    fn newest_secret(&self) -> Option<Arc<[u8]>> {
        match self.secrets.as_ref()? {
            Secrets::Fixed(s) => Some(Arc::from(s.as_slice())),
            Secrets::File { path, state } => {
                let stale = state
                    .read()
                    .map(|s| s.checked.elapsed() >= RELOAD_CHECK)
                    .unwrap_or(true);
                if stale && let Ok(mut st) = state.write() {
                    st.checked = Instant::now();
                    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
                    if modified != st.modified {
                        match read_file(path) {
                            Ok((newest, modified)) => {
                                tracing::info!(path = %path.display(), "TURN secret file reloaded");
                                st.newest = newest;
                                st.modified = modified;
                            }
                            // Keep the last good secret; say why once per change.
                            Err(e) => {
                                st.modified = modified;
                                tracing::warn!(error = %e, "TURN secret file not reloaded");
                            }
                        }
                    }
                }
                state.read().ok().map(|s| Arc::from(s.newest.as_slice()))
            }
        }
    }

    /// The list for `user` (a peer id, or none), valid for `ttl`.
    pub fn ice_servers(&self, user: Option<&str>, ttl: Duration) -> Vec<IceServer> {
        if self.uris.is_empty() {
            return Vec::new();
        }
        match self.newest_secret() {
            Some(secret) => {
                let c =
                    videochat_turn::credentials::generate(&secret, user, unix_now(), ttl.as_secs());
                vec![IceServer {
                    urls: self.uris.clone(),
                    username: Some(c.username),
                    credential: Some(c.password),
                }]
            }
            None => vec![IceServer {
                urls: self.uris.clone(),
                username: None,
                credential: None,
            }],
        }
    }

    pub fn uris(&self) -> &[String] {
        &self.uris
    }
}

fn read_file(path: &PathBuf) -> Result<(Vec<u8>, Option<SystemTime>)> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        SignalingError::config(
            "--turn-secret-file",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let newest = parse_newest(&text).ok_or_else(|| {
        SignalingError::config(
            "--turn-secret-file",
            format!("{} holds no secret", path.display()),
        )
    })?;
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    Ok((newest, modified))
}

/// Orders URIs the way browsers should try them: `stun:`, then `turn:` over
/// UDP, `turn:` over TCP, and `turns:` (TLS over TCP) last; the order of
/// equal kinds is kept.
///
/// Browsers gather candidates from every URI at once, but rank relay
/// candidates by the order of the servers in the list as well as by
/// transport (Chromium lowers the local preference of each later server).
/// UDP has no head-of-line blocking and costs no TLS per packet, so it comes
/// first; TCP next; TLS, often on 443, is the fallback for networks that
/// block everything but web ports and is used only when nothing above it
/// connects. A URI without `?transport=` is UDP for `turn:` and TCP for
/// `turns:` (RFC 7065).
pub fn in_browser_order(mut uris: Vec<String>) -> Vec<String> {
    uris.sort_by_key(|u| uri_rank(u));
    uris
}

fn uri_rank(uri: &str) -> u8 {
    let lower = uri.to_ascii_lowercase();
    let tcp = lower.contains("transport=tcp");
    if lower.starts_with("stun:") || lower.starts_with("stuns:") {
        0
    } else if lower.starts_with("turns:") {
        3
    } else if tcp {
        2
    } else {
        1
    }
}

/// `turn:` URIs for UDP and TCP of a relay at `host:port`.
pub fn turn_uris(host: &str, udp_port: u16, tcp_port: Option<u16>) -> Vec<String> {
    let mut uris = vec![format!("turn:{host}:{udp_port}?transport=udp")];
    if let Some(tcp) = tcp_port {
        uris.push(format!("turn:{host}:{tcp}?transport=tcp"));
    }
    uris
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_use_the_newest_secret_and_verify() {
        let dir = std::env::temp_dir().join(format!("vc-ice-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secrets");
        std::fs::write(&path, "# rotation\nold\nnew\n").unwrap();
        let ice =
            IceConfig::with_secret_file(turn_uris("127.0.0.1", 3478, Some(3478)), path).unwrap();
        let list = ice.ice_servers(Some("p-1"), Duration::from_secs(600));
        assert_eq!(list.len(), 1);
        assert_eq!(
            list[0].urls,
            vec![
                "turn:127.0.0.1:3478?transport=udp",
                "turn:127.0.0.1:3478?transport=tcp"
            ]
        );
        let user = list[0].username.clone().unwrap();
        assert!(user.ends_with(":p-1"));
        let pass = list[0].credential.clone().unwrap();
        assert!(matches!(
            videochat_turn::credentials::verify(&[b"new"], &user, &pass, unix_now()),
            Ok(0)
        ));
        assert!(videochat_turn::credentials::verify(&[b"old"], &user, &pass, unix_now()).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn turns_uris_come_after_turn_udp_and_tcp() {
        let ice = IceConfig::with_secret(
            vec![
                "turns:turn.example.com:443?transport=tcp".into(),
                "turn:turn.example.com:3478?transport=tcp".into(),
                "turns:turn.example.com:5349".into(),
                "turn:turn.example.com:3478".into(),
                "stun:turn.example.com:3478".into(),
            ],
            b"s".to_vec(),
        );
        assert_eq!(
            ice.ice_servers(Some("p"), Duration::from_secs(60))[0].urls,
            vec![
                "stun:turn.example.com:3478",
                "turn:turn.example.com:3478",
                "turn:turn.example.com:3478?transport=tcp",
                "turns:turn.example.com:443?transport=tcp",
                "turns:turn.example.com:5349",
            ]
        );
    }

    #[test]
    fn empty_secret_file_is_a_config_error() {
        let dir = std::env::temp_dir().join(format!("vc-ice-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secrets");
        std::fs::write(&path, "\n# nothing\n").unwrap();
        let err = IceConfig::with_secret_file(vec![], path)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("--turn-secret-file"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
