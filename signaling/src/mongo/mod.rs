//! MongoDB backend (official `mongodb` driver): rooms and chat history.
//!
//! Chat `seq` allocation is "insert `last + 1` and let the unique
//! `(room, seq)` index decide": a counter bumped in a separate step could
//! leave a gap when an instance dies between the bump and the insert, while
//! an insert either lands with the next number or not at all. Two instances
//! racing for one number both try; the loser re-reads the last `seq` and
//! tries the next. A second unique index on `(room, peer, client_id)` makes
//! resends idempotent even when the first attempt's outcome was unknown.

mod store;

pub use store::{MongoConfig, MongoStore};
