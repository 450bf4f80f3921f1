//! The TURN user a caller of `/api/ice-servers` gets. The relay limits
//! allocations per TURN user, so a user must stand for a caller, not for a
//! call: the same token, or without tokens the same address, always gets
//! the same user, and asking again does not raise the caller's quota.
//! (WebSocket sessions use their peer id, which a resume keeps.)

use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::auth::Claims;

fn short_hash(kind: &[u8], value: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(kind);
    h.update([0]);
    h.update(value);
    URL_SAFE_NO_PAD.encode(&h.finalize()[..12])
}

/// The user of a token holder: its `sub` claim when it has one (the same
/// person with a fresh token), else the token itself.
pub fn of_token(claims: &Claims, token: &str) -> String {
    match &claims.sub {
        Some(sub) => format!("t-{}", short_hash(b"sub", sub.as_bytes())),
        None => format!("t-{}", short_hash(b"token", token.as_bytes())),
    }
}

/// The user of an anonymous caller: its address.
pub fn of_address(ip: IpAddr) -> String {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    format!("a-{}", short_hash(b"ip", ip.to_string().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_caller_same_user_other_caller_other_user() {
        let a: IpAddr = "203.0.113.7".parse().unwrap();
        let b: IpAddr = "203.0.113.8".parse().unwrap();
        assert_eq!(of_address(a), of_address(a));
        assert_ne!(of_address(a), of_address(b));
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        assert_eq!(of_address(mapped), of_address(a));
        let claims = |sub: Option<&str>| Claims {
            room: Some("r".into()),
            name: None,
            sub: sub.map(str::to_owned),
            exp: 10,
        };
        assert_eq!(
            of_token(&claims(Some("ann")), "one"),
            of_token(&claims(Some("ann")), "two")
        );
        assert_ne!(
            of_token(&claims(Some("ann")), "one"),
            of_token(&claims(Some("bob")), "one")
        );
        assert_eq!(
            of_token(&claims(None), "one"),
            of_token(&claims(None), "one")
        );
        assert_ne!(
            of_token(&claims(None), "one"),
            of_token(&claims(None), "two")
        );
    }
}
