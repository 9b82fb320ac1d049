//! Generated protobuf messages and tonic services (from `client/proto/`).
//!
//! These types are the wire format; applications should prefer the typed wrappers of this crate,
//! and the node converts them to its domain types in one place.

/// `shale.api.v1`: the client API (Produce, Fetch, ConsumerGroups, Admin).
#[allow(missing_docs, clippy::all, clippy::pedantic, missing_debug_implementations)]
pub mod api {
    /// Version 1 of the client API.
    pub mod v1 {
        tonic::include_proto!("shale.api.v1");
    }
}

pub use api::v1::*;
