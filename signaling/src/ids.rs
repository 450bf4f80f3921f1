//! Random identifiers: sessions, peers, resume tokens, rooms, message ids.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// `prefix` and `bytes` random bytes, URL-safe base64.
pub fn random_id(prefix: &str, bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::Rng::fill(&mut rand::thread_rng(), buf.as_mut_slice());
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(buf))
}
