//! Helpers shared by the integration tests (each test binary uses a part of them).
#![allow(dead_code, reason = "each test binary uses a part of the shared helpers")]

pub mod noise;
pub mod small_segments;
