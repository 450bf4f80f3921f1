//! ICE servers for clients: TURN URIs with TURN REST API credentials made by
//! `videochat_turn::credentials` under the newest shared secret.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::protocol::IceServer;
use crate::time::unix_now;
use crate::watched_file::WatchedFile;

enum Secrets {
    Fixed(Arc<[u8]>),
    File(WatchedFile<Vec<u8>>),
}

enum Uris {
    Fixed(Arc<Vec<String>>),
    /// Kept by the operator as the relays' addresses change: a file, so a
    /// new relay address reaches clients without restarting signaling.
    File(WatchedFile<Vec<String>>),
}

/// Makes the `ice_servers` list.
pub struct IceConfig {
    uris: Uris,
    secrets: Option<Secrets>,
}

/// The newest secret of a secrets file: its last line that is not empty or
/// a comment.
fn parse_newest(text: &str) -> std::result::Result<Vec<u8>, String> {
    text.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.as_bytes().to_vec())
        .ok_or_else(|| "holds no secret".to_string())
}

/// Checks one TURN or STUN URI.
pub fn check_uri(uri: &str) -> std::result::Result<(), String> {
    if uri.starts_with("turn:") || uri.starts_with("turns:") || uri.starts_with("stun:") {
        Ok(())
    } else {
        Err(format!("`{uri}` must start with turn:, turns: or stun:"))
    }
}

/// A URIs file: URIs separated by commas or line breaks; blank lines and
/// `#` comments are skipped. An empty file is an empty list (no relay has
/// an address yet).
pub fn parse_uris(text: &str) -> std::result::Result<Vec<String>, String> {
    let mut uris = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') {
            continue;
        }
        for uri in line.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            check_uri(uri)
                .map_err(|_| format!("holds `{uri}`, not a turn:, turns: or stun: URI"))?;
            uris.push(uri.to_string());
        }
    }
    Ok(in_browser_order(uris))
}

impl IceConfig {
    /// No TURN: clients get an empty list (host candidates only).
    pub fn none() -> Self {
        Self {
            uris: Uris::Fixed(Arc::new(Vec::new())),
            secrets: None,
        }
    }

    /// URIs with a secret held in memory (the in-process relay).
    pub fn with_secret(uris: Vec<String>, secret: Vec<u8>) -> Self {
        Self {
            uris: Uris::Fixed(Arc::new(in_browser_order(uris))),
            secrets: Some(Secrets::Fixed(Arc::from(secret))),
        }
    }

    /// URIs with secrets from a file, newest last, re-read when it changes.
    pub fn with_secret_file(uris: Vec<String>, path: PathBuf) -> Result<Self> {
        Ok(Self {
            uris: Uris::Fixed(Arc::new(in_browser_order(uris))),
            secrets: Some(Secrets::File(WatchedFile::open(
                "--turn-secret-file",
                path,
                parse_newest,
            )?)),
        })
    }

    /// Takes the URIs from a file instead, re-read when it changes.
    pub fn with_uris_file(mut self, path: PathBuf) -> Result<Self> {
        self.uris = Uris::File(WatchedFile::open("--turn-uris-file", path, parse_uris)?);
        Ok(self)
    }

    fn newest_secret(&self) -> Option<Arc<[u8]>> {
        match self.secrets.as_ref()? {
            Secrets::Fixed(secret) => Some(secret.clone()),
            Secrets::File(file) => Some(Arc::from(file.get().as_slice())),
        }
    }

    /// The URIs clients get now.
    pub fn uris(&self) -> Arc<Vec<String>> {
        match &self.uris {
            Uris::Fixed(uris) => uris.clone(),
            Uris::File(file) => file.get(),
        }
    }

    /// The list for `user` (a peer id, or none), valid for `ttl`.
    pub fn ice_servers(&self, user: Option<&str>, ttl: Duration) -> Vec<IceServer> {
        let uris = self.uris();
        if uris.is_empty() {
            return Vec::new();
        }
        match self.newest_secret() {
            Some(secret) => {
                let c =
                    videochat_turn::credentials::generate(&secret, user, unix_now(), ttl.as_secs());
                vec![IceServer {
                    urls: uris.to_vec(),
                    username: Some(c.username),
                    credential: Some(c.password),
                }]
            }
            None => vec![IceServer {
                urls: uris.to_vec(),
                username: None,
                credential: None,
            }],
        }
    }
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
    fn uris_from_a_file_may_be_empty_and_come_in_browser_order() {
        let dir = std::env::temp_dir().join(format!("vc-ice-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let secrets = dir.join("secrets");
        std::fs::write(&secrets, "s\n").unwrap();
        let uris = dir.join("uris");
        // No relay has an address yet: no ICE servers, not an error.
        std::fs::write(&uris, "").unwrap();
        let ice = IceConfig::with_secret_file(vec![], secrets)
            .unwrap()
            .with_uris_file(uris.clone())
            .unwrap();
        assert!(
            ice.ice_servers(Some("p"), Duration::from_secs(60))
                .is_empty()
        );
        assert_eq!(
            parse_uris("# relays\nturns:a:443?transport=tcp,turn:a:3478?transport=udp\nturn:b:3478?transport=udp\n")
                .unwrap(),
            vec![
                "turn:a:3478?transport=udp",
                "turn:b:3478?transport=udp",
                "turns:a:443?transport=tcp"
            ]
        );
        assert!(
            parse_uris("http://a")
                .unwrap_err()
                .contains("not a turn:, turns: or stun: URI")
        );
        let _ = std::fs::remove_dir_all(dir);
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
