//! Optional HS256 JWT room tokens: claims `room` (a room id or `*`), `name`
//! and `exp` (unix seconds, required).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::SignalingError;
use crate::sessions::constant_time_eq;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The room the token admits to, or `*` for any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Who the token was issued to; names the caller's TURN user when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    pub exp: u64,
}

impl Claims {
    pub fn allows_room(&self, room: &str) -> bool {
        matches!(self.room.as_deref(), Some("*")) || self.room.as_deref() == Some(room)
    }
}

/// Longest token accepted; real ones are a few hundred bytes.
const MAX_TOKEN_LEN: usize = 4096;

#[derive(Deserialize)]
struct Header {
    alg: String,
}

fn mac(secret: &[u8], signing_input: &str) -> Vec<u8> {
    // HMAC takes keys of any length.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return Vec::new(),
    };
    mac.update(signing_input.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Checks signature and expiry; returns the claims.
pub fn verify(secret: &[u8], token: &str, now_unix: u64) -> Result<Claims, SignalingError> {
    if token.is_empty() {
        return Err(SignalingError::TokenMissing);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(SignalingError::TokenMalformed);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SignalingError::TokenMalformed);
    };
    let header: Header = URL_SAFE_NO_PAD
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(SignalingError::TokenMalformed)?;
    if header.alg != "HS256" {
        return Err(SignalingError::TokenAlgorithm);
    }
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| SignalingError::TokenMalformed)?;
    let expected = mac(secret, &token[..h.len() + 1 + c.len()]);
    if !constant_time_eq(&signature, &expected) {
        return Err(SignalingError::TokenSignature);
    }
    let claims: Claims = URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(SignalingError::TokenMalformed)?;
    if claims.exp <= now_unix {
        return Err(SignalingError::TokenExpired);
    }
    Ok(claims)
}

/// Makes a token (for tools and tests; production tokens come from the app's backend).
pub fn sign(secret: &[u8], claims: &Claims) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let input = format!("{header}.{body}");
    let sig = URL_SAFE_NO_PAD.encode(mac(secret, &input));
    format!("{input}.{sig}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_a_token_made_by_another_library() {
        // Made with Python hmac/hashlib/base64 (secret "s3cret"),
        // claims {"room":"r1","name":"Ann","exp":4102444800}
        let token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJyb29tIjoicjEiLCJuYW1lIjoiQW5uIiwiZXhwIjo0MTAyNDQ0ODAwfQ.3ce2RHBrmvt9m-JDpXPsI2jU-PWJYr6gYQ7OgB3el4M";
        let claims = verify(b"s3cret", token, 1_700_000_000).unwrap();
        assert_eq!(claims.room.as_deref(), Some("r1"));
        assert_eq!(claims.name.as_deref(), Some("Ann"));
        assert!(claims.allows_room("r1") && !claims.allows_room("r2"));
        assert!(matches!(
            verify(b"other", token, 0),
            Err(SignalingError::TokenSignature)
        ));
        assert!(matches!(
            verify(b"s3cret", token, 4_102_444_800),
            Err(SignalingError::TokenExpired)
        ));
    }

    #[test]
    fn refuses_malformed_and_other_algorithms() {
        assert!(matches!(
            verify(b"k", "", 0),
            Err(SignalingError::TokenMissing)
        ));
        assert!(matches!(
            verify(b"k", "a.b", 0),
            Err(SignalingError::TokenMalformed)
        ));
        assert!(matches!(
            verify(b"k", "a.b.c.d", 0),
            Err(SignalingError::TokenMalformed)
        ));
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(br#"{"exp":99999999999}"#)
        );
        assert!(matches!(
            verify(b"k", &none, 0),
            Err(SignalingError::TokenAlgorithm)
        ));
        let t = sign(
            b"k",
            &Claims {
                room: Some("*".into()),
                name: None,
                sub: None,
                exp: 10,
            },
        );
        assert!(verify(b"k", &t, 5).unwrap().allows_room("any"));
    }
}
