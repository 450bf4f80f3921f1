//! Test support shared by this crate's tests and later controller work:
//! an in-memory Kubernetes API ([`ApiDouble`]). Enabled with the
//! `test-double` feature.

mod api_double;

pub use api_double::{ApiDouble, RecordedRequest};
