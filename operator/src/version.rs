//! The crate version; image tags and the version label default to it.

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
