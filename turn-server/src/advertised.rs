//! The relay address announced in XOR-RELAYED-ADDRESS, when it is learned
//! at run time: a directory of files named by node or pod (a ConfigMap the
//! operator keeps, mounted in the pod), of which this relay reads the one
//! named by its key (its node or pod name, from the downward API), and
//! re-reads when it changes. Until the file holds a usable address the relay
//! is not Ready and refuses allocations (508).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::Duration;

/// Longest address file read; an IPv6 address with a newline is far less.
const MAX_FILE_BYTES: u64 = 256;

/// Where the advertised address comes from and what it is now.
#[derive(Debug)]
pub(crate) struct AdvertisedAddress {
    file: PathBuf,
    /// The relay sockets' address family: an address of the other family
    /// could not be reached through them.
    ipv4: bool,
    current: RwLock<Option<IpAddr>>,
}

impl AdvertisedAddress {
    /// Reads `dir/key` once; a missing or bad file leaves the address unknown.
    pub fn from_dir(dir: &Path, key: &str, ipv4: bool) -> Self {
        let address = AdvertisedAddress {
            file: dir.join(key),
            ipv4,
            current: RwLock::new(None),
        };
        address.reload();
        address
    }

    pub fn get(&self) -> Option<IpAddr> {
        *self.current.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Reads the file again; returns true when the address changed.
    pub fn reload(&self) -> bool {
        let next = match read_address(&self.file) {
            Ok(Some(ip)) if ip.is_ipv4() != self.ipv4 => {
                tracing::warn!(
                    file = %self.file.display(),
                    address = %ip,
                    "relay address is not of the relay sockets' address family; ignored"
                );
                None
            }
            Ok(next) => next,
            Err(reason) => {
                tracing::warn!(file = %self.file.display(), %reason, "relay address file unusable");
                None
            }
        };
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if *current == next {
            return false;
        }
        match (*current, next) {
            (_, Some(ip)) => tracing::info!(
                address = %ip,
                previous = ?*current,
                "relay address learned; live allocations keep the address they were given"
            ),
            (Some(old), None) => tracing::warn!(
                previous = %old,
                file = %self.file.display(),
                "relay address gone: not ready, new allocations refused"
            ),
            (None, None) => {}
        }
        *current = next;
        true
    }
}

/// The address in `path`: `Ok(None)` when the file does not exist (yet).
fn read_address(path: &Path) -> Result<Option<IpAddr>, String> {
    let text = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
        Ok(meta) if meta.len() > MAX_FILE_BYTES => {
            return Err(format!("longer than {MAX_FILE_BYTES} bytes"));
        }
        Ok(_) => match std::fs::read_to_string(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
            Ok(text) => text,
        },
    };
    let text = text.trim();
    let ip: IpAddr = text
        .parse()
        .map_err(|_| format!("{text:?} is not an IP address"))?;
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(format!("{ip} cannot be a relay address"));
    }
    Ok(Some(ip))
}

/// Re-reads the address file every `interval` (a mounted ConfigMap changes
/// by an atomic symlink swap, which polling sees as a new file).
pub(crate) async fn watch_address_file(
    address: std::sync::Arc<AdvertisedAddress>,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        address.reload();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system temp dir for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "videochat-turn-address-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    #[test]
    fn reads_trims_and_follows_the_file() {
        let dir = scratch("follow");
        let address = AdvertisedAddress::from_dir(&dir, "node-a", true);
        assert_eq!(address.get(), None, "no file yet");
        std::fs::write(dir.join("node-a"), "203.0.113.9\n").expect("write");
        assert!(address.reload());
        assert_eq!(address.get(), Some("203.0.113.9".parse().expect("ip")));
        assert!(!address.reload(), "unchanged");
        std::fs::write(dir.join("node-a"), "not an address").expect("write");
        assert!(address.reload());
        assert_eq!(address.get(), None, "a bad file is no address");
    }

    #[test]
    fn refuses_the_other_family_unspecified_and_oversized() {
        let dir = scratch("refuse");
        let path = dir.join("k");
        let address = AdvertisedAddress::from_dir(&dir, "k", true);
        for bad in ["2001:db8::1", "0.0.0.0", "224.0.0.1"] {
            std::fs::write(&path, bad).expect("write");
            address.reload();
            assert_eq!(address.get(), None, "{bad}");
        }
        std::fs::write(&path, " ".repeat(300) + "192.0.2.1").expect("write");
        address.reload();
        assert_eq!(address.get(), None, "oversized file");
    }
}
