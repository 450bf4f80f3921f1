//! Short content hashes: pod template revisions and configuration hashes.

use sha2::{Digest, Sha256};

/// First 10 hex digits of the SHA-256 of the value's canonical JSON
/// (keys sorted, so equal values hash equally in every build).
pub fn short_hash<T: serde::Serialize>(value: &T) -> String {
    // Sorted explicitly: serde_json keeps insertion order when another
    // crate in the build enables `preserve_order`.
    let canonical = serde_json::to_value(value)
        .map(crate::resource::sorted_keys)
        .unwrap_or_default();
    let bytes = serde_json::to_vec(&canonical).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    digest.iter().take(5).map(|b| format!("{b:02x}")).collect()
}
