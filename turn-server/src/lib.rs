//! videochat-turn: TURN relay on the webrtc-rs `turn` crate.
//!
//! Start one with [`Relay::start`] and a [`RelayConfig`] (a clap `Args`
//! struct, also buildable in code, e.g. [`RelayConfig::local`]).

pub mod admin;
mod advertised;
pub mod config;
pub mod credentials;
mod error;
mod fast_path;
pub mod framing;
mod guard;
pub mod metrics;
pub mod peer_policy;
pub mod readiness;
mod relay;
mod relay_ports;
pub mod secrets;
mod state;
mod tcp;
pub mod tls;
mod udp_batch;

pub use config::RelayConfig;
pub use error::TurnError;
pub use relay::{Relay, RelayHandle};
