//! The gRPC services of the client API. Each converts at the edge (see [`crate::convert`]), calls
//! the cluster, and forwards to the right node when this one cannot answer (see
//! [`crate::context::NodeContext::redirect`]).

pub mod access;
pub mod admin;
pub mod fetch;
pub mod groups;
pub mod produce;
