//! TURN REST API credentials, compatible with coturn's `use-auth-secret` and
//! STUNner: username `<unix-expiry>[:<user>]`, password
//! `base64(HMAC-SHA1(secret, username))`.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::error::TurnError;

/// A username and password that a client presents to the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: String,
}

/// Makes the password for `username` under `secret`.
pub fn password(secret: &[u8], username: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Makes a credential for `user` valid until `now_unix + ttl_secs`.
pub fn generate(secret: &[u8], user: Option<&str>, now_unix: u64, ttl_secs: u64) -> Credential {
    let expiry = now_unix.saturating_add(ttl_secs);
    let username = match user {
        Some(u) if !u.is_empty() => format!("{expiry}:{u}"),
        _ => expiry.to_string(),
    };
    let password = password(secret, &username);
    Credential { username, password }
}

/// Reads the expiry out of a REST API username (`<expiry>` or `<expiry>:<user>`).
pub fn expiry_of(username: &str) -> Result<u64, TurnError> {
    let head = username.split(':').next().unwrap_or_default();
    head.parse::<u64>()
        .map_err(|_| TurnError::UsernameMalformed)
}

/// The user part of a REST API username, when present (used for per-user quotas).
pub fn user_of(username: &str) -> Option<&str> {
    username.split_once(':').map(|(_, user)| user)
}

/// Checks that `username` is well formed and not expired at `now_unix`.
pub fn check_username(username: &str, now_unix: u64) -> Result<u64, TurnError> {
    let expiry = expiry_of(username)?;
    if expiry < now_unix {
        return Err(TurnError::UsernameExpired);
    }
    Ok(expiry)
}

/// Verifies a username/password pair against any of `secrets` (rotation: several
/// are valid at once). Returns the index of the secret that matched.
pub fn verify<S: AsRef<[u8]>>(
    secrets: &[S],
    username: &str,
    password_given: &str,
    now_unix: u64,
) -> Result<usize, TurnError> {
    check_username(username, now_unix)?;
    secrets
        .iter()
        .position(|s| {
            constant_time_eq(
                password(s.as_ref(), username).as_bytes(),
                password_given.as_bytes(),
            )
        })
        .ok_or(TurnError::BadPassword)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_matches_openssl_hmac_sha1() {
        // echo -n "1700000000:alice" | openssl dgst -sha1 -hmac north -binary | base64
        assert_eq!(
            password(b"north", "1700000000:alice"),
            "Cd/49soE35ICqcJF/bCTn8Z4OyE="
        );
    }

    #[test]
    fn generated_credential_verifies_until_expiry() {
        let c = generate(b"s1", Some("p-1"), 1_000, 60);
        assert_eq!(c.username, "1060:p-1");
        assert_eq!(user_of(&c.username), Some("p-1"));
        assert!(matches!(
            verify(&[b"s1"], &c.username, &c.password, 1_060),
            Ok(0)
        ));
        assert!(matches!(
            verify(&[b"s1"], &c.username, &c.password, 1_061),
            Err(TurnError::UsernameExpired)
        ));
    }

    #[test]
    fn any_of_several_secrets_verifies() {
        let c = generate(b"new", None, 0, 100);
        assert_eq!(c.username, "100");
        assert!(matches!(
            verify(&[&b"old"[..], &b"new"[..]], &c.username, &c.password, 5),
            Ok(1)
        ));
        assert!(matches!(
            verify(&[b"old"], &c.username, &c.password, 5),
            Err(TurnError::BadPassword)
        ));
    }

    #[test]
    fn malformed_username_is_refused() {
        assert!(matches!(
            check_username("alice", 0),
            Err(TurnError::UsernameMalformed)
        ));
        assert!(matches!(
            check_username("", 0),
            Err(TurnError::UsernameMalformed)
        ));
    }
}
