//! videochat-signaling: WebSocket signaling and REST service.
//!
//! Rooms, presence, SDP/ICE relay between peers and durable chat, with the
//! backends (bus, store, sessions, presence, retry queue) behind traits so the
//! single-machine defaults and the cluster backends are interchangeable.

pub mod api;
pub mod auth;
pub mod backends;
pub mod bus;
pub mod chat;
pub mod client_address;
pub mod config;
pub mod connection;
pub mod dead_letters;
pub mod error;
pub mod history;
pub mod http_server;
pub mod ice;
pub mod ids;
pub mod metrics;
pub mod mongo;
pub mod origin;
pub mod presence;
pub mod protocol;
pub mod rate_limit;
pub mod redis;
pub mod server;
pub mod sessions;
pub mod state;
pub mod store;
pub mod time;
pub mod turn_identity;
pub mod watched_file;
pub mod web;

pub use backends::{Backends, embedded_backends};
pub use config::Config;
pub use error::SignalingError;
pub use server::{RunningServer, start, start_with_backends};
