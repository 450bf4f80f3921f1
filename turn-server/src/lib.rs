//! videochat-turn: TURN relay on the webrtc-rs `turn` crate.

pub mod credentials;
