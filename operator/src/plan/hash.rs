//! Short content hashes: pod template revisions and configuration hashes.

use sha2::{Digest, Sha256};

/// First 10 hex digits of the SHA-256 of the value's canonical JSON
/// (serde_json sorts map keys, so equal values hash equally).
pub fn short_hash<T: serde::Serialize>(value: &T) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    digest.iter().take(5).map(|b| format!("{b:02x}")).collect()
}
