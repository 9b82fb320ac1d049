//! Password authentication on gRPC (`authorization: Basic base64(<user>:<password>)`), checked
//! against the user's SCRAM-SHA-256 credential in the metadata group.
//!
//! A check derives `StoredKey` from the presented password with the stored salt and iteration
//! count (PBKDF2, thousands of HMAC rounds) and compares it in constant time with the stored one.
//! An **unknown user** (or a token user) takes the same steps against a stand-in credential (a salt
//! derived from this node's random key and the name, [`DEFAULT_ITERATIONS`]) and gets the same
//! answer as a wrong password.
//!
//! PBKDF2 on every request would cost milliseconds per produce, so a verified password is
//! **cached** per user: an HMAC of (user, password) under this node's random key, beside the
//! credential it was verified against. A request hits the cache only when both match the
//! credential the node holds *now*: when the user is deleted or its password changed (applied
//! from the metadata group), the next request misses and is checked (and refused) in full. Only
//! successes are cached; the cache holds at most [`MAX_CACHED_USERS`] entries (cleared when full).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, KeyInit, Mac};
use parking_lot::Mutex;
use sha2::Sha256;
use shale_client::scram::{DEFAULT_ITERATIONS, KEY_BYTES, stored_key_of};
use shale_raft::cluster::access::ScramCredential;

/// Most users whose verified password a node remembers.
pub const MAX_CACHED_USERS: usize = 4096;

/// The credential a verified password was checked against, and the password's keyed digest.
struct Verified {
    digest: [u8; KEY_BYTES],
    salt: Vec<u8>,
    iterations: u32,
    stored_key: [u8; KEY_BYTES],
}

impl Verified {
    fn still_matches(&self, c: &ScramCredential) -> bool {
        self.salt == c.salt && self.iterations == c.iterations && same(&self.stored_key, &c.stored_key)
    }
}

/// Checks passwords for one node: its random key, the cache of verified passwords, and a count of
/// key derivations run (what the tests read to see an unknown user take the full path).
pub struct PasswordVerifier {
    key: [u8; KEY_BYTES],
    cache: Mutex<HashMap<String, Verified>>,
    derivations: AtomicU64,
}

impl fmt::Debug for PasswordVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordVerifier")
            .field("cached", &self.cache.lock().len())
            .field("derivations", &self.derivations.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Default for PasswordVerifier {
    fn default() -> Self {
        Self::new()
    }
}

/// Compares two keys in time independent of where they differ.
fn same(a: &[u8; KEY_BYTES], b: &[u8; KEY_BYTES]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl PasswordVerifier {
    /// A verifier with a fresh random key and an empty cache.
    pub fn new() -> Self {
        let mut key = [0u8; KEY_BYTES];
        // Without a random source the key is fixed; the digest is then still never stored off the
        // node, and the stand-in salts are merely predictable.
        let _ = getrandom::fill(&mut key);
        Self { key, cache: Mutex::new(HashMap::new()), derivations: AtomicU64::new(0) }
    }

    fn keyed(&self, parts: &[&[u8]]) -> [u8; KEY_BYTES] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        for p in parts {
            mac.update(&(p.len() as u64).to_le_bytes());
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }

    /// Key derivations run so far (cache hits run none).
    pub fn derivations(&self) -> u64 {
        self.derivations.load(Ordering::Relaxed)
    }

    /// Whether `password` is `user`'s, whose credential on this node is `credential` (`None`: no
    /// such password user). Runs PBKDF2 unless the same password was verified against the same
    /// credential before; an unknown user runs it too, against a stand-in, and gets `false`.
    pub fn check(&self, user: &str, password: &str, credential: Option<&ScramCredential>) -> bool {
        let digest = self.keyed(&[user.as_bytes(), password.as_bytes()]);
        if let Some(c) = credential
            && let Some(v) = self.cache.lock().get(user)
            && v.still_matches(c)
            && same(&v.digest, &digest)
        {
            return true;
        }
        let stand_in;
        let (known, target) = match credential {
            Some(c) => (true, c),
            None => {
                let salt = self.keyed(&[b"stand-in salt", user.as_bytes()]);
                stand_in = ScramCredential {
                    salt: salt.to_vec(),
                    iterations: DEFAULT_ITERATIONS,
                    stored_key: self.keyed(&[b"stand-in stored key", user.as_bytes()]),
                    server_key: [0; KEY_BYTES],
                };
                (false, &stand_in)
            }
        };
        self.derivations.fetch_add(1, Ordering::Relaxed);
        let derived = stored_key_of(password.as_bytes(), &target.salt, target.iterations);
        let ok = known & same(&derived, &target.stored_key);
        if ok {
            let mut cache = self.cache.lock();
            if cache.len() >= MAX_CACHED_USERS && !cache.contains_key(user) {
                cache.clear();
            }
            cache.insert(
                user.to_string(),
                Verified {
                    digest,
                    salt: target.salt.clone(),
                    iterations: target.iterations,
                    stored_key: target.stored_key,
                },
            );
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use shale_client::scram::Credential;

    use super::*;

    fn credential(password: &str, salt: u8) -> ScramCredential {
        let c = Credential::derive(password.as_bytes(), &[salt; 16], 4096);
        ScramCredential { salt: c.salt, iterations: c.iterations, stored_key: c.stored_key, server_key: c.server_key }
    }

    #[test]
    fn the_right_password_passes_and_is_then_cached() {
        let v = PasswordVerifier::new();
        let c = credential("pw", 1);
        assert!(v.check("alice", "pw", Some(&c)));
        assert_eq!(v.derivations(), 1);
        assert!(v.check("alice", "pw", Some(&c)));
        assert_eq!(v.derivations(), 1, "the second check is a cache hit");
        assert!(!v.check("alice", "pw2", Some(&c)), "a wrong password never hits the cache");
        assert_eq!(v.derivations(), 2);
    }

    #[test]
    fn an_unknown_user_runs_the_same_derivation_and_gets_the_same_answer() {
        let v = PasswordVerifier::new();
        let c = credential("pw", 1);
        assert!(!v.check("alice", "wrong", Some(&c)));
        assert_eq!(v.derivations(), 1);
        assert!(!v.check("nobody", "wrong", None));
        assert_eq!(v.derivations(), 2, "the unknown user ran PBKDF2 too");
        assert!(!v.check("nobody", "wrong", None));
        assert_eq!(v.derivations(), 3, "and again: failures are not cached");
    }

    #[test]
    fn a_deleted_or_changed_credential_misses_the_cache() {
        let v = PasswordVerifier::new();
        let c = credential("pw", 1);
        assert!(v.check("alice", "pw", Some(&c)));
        assert!(!v.check("alice", "pw", None), "deleted: refused at once despite the cached success");
        let changed = credential("new", 2);
        assert!(v.check("alice", "pw", Some(&c)));
        assert!(!v.check("alice", "pw", Some(&changed)), "changed: the old password is refused");
        assert!(v.check("alice", "new", Some(&changed)));
    }
}
