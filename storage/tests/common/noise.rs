//! Pseudo-random payloads for tests and benchmarks: deterministic, incompressible, and different
//! for every seed. Shared by the integration tests (`mod common`), the criterion benchmarks and
//! `storage-bench`, which include this file by path.
#![allow(dead_code, reason = "each target that includes this file uses a part of it")]

use bytes::Bytes;

/// `len` bytes of xorshift64 output from `state` (which must not be 0).
pub fn xorshift(mut state: u64, len: usize) -> Bytes {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// `len` pseudo-random bytes for `seed` (any value, 0 included).
pub fn noise(seed: u64, len: usize) -> Bytes {
    xorshift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1, len)
}
