//! Passwords as SCRAM-SHA-256 keeps them (RFC 5802 section 3, RFC 7677), and the password a
//! client presents over gRPC.
//!
//! - A password user's credential ([`Credential`]) is made **by the client** (`shale user create
//!   NAME --password`): a random salt, an iteration count, `StoredKey` and `ServerKey`. The
//!   cluster stores only that; the password never reaches it at creation. The same credential is
//!   what a SASL/SCRAM exchange (the Kafka protocol) needs, so it can serve both.
//! - On gRPC a client sends `authorization: Basic base64(<user>:<password>)` on every call (send it
//!   over TLS only: the password is in it). The node derives `StoredKey` again with the stored
//!   salt and iterations and compares it in constant time ([`stored_key_of`]).
//!
//! The password is taken as its UTF-8 bytes, without SASLprep normalisation (as Kafka's SCRAM
//! does): a password must be typed the same way each time.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::error::ClientError;

/// Iterations the client uses for a new credential (RFC 7677's minimum, Kafka's default). The node
/// uses the same count for an unknown user's stand-in, so both take the same time.
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// Salt bytes the client makes for a new credential.
pub const SALT_BYTES: usize = 32;
/// Bytes of a key (SHA-256 output).
pub const KEY_BYTES: usize = 32;
/// What precedes the encoded `<user>:<password>` in [`crate::token::AUTHORIZATION`].
pub const BASIC: &str = "Basic ";
/// Longest password accepted, in bytes (a bound on what a node hashes per request).
pub const MAX_PASSWORD_BYTES: usize = 1024;

type HmacSha256 = Hmac<Sha256>;

/// A password's SCRAM-SHA-256 credential.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// Random salt.
    pub salt: Vec<u8>,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// `SHA-256(HMAC(SaltedPassword, "Client Key"))`.
    pub stored_key: [u8; KEY_BYTES],
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; KEY_BYTES],
}

impl fmt::Debug for Credential {
    /// Shows the parameters, not the keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("salt_bytes", &self.salt.len())
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; KEY_BYTES] {
    // HMAC takes a key of any length.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key"));
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// `SaltedPassword = PBKDF2-HMAC-SHA-256(password, salt, iterations)`.
pub fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; KEY_BYTES] {
    let mut out = [0u8; KEY_BYTES];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
    out
}

/// `StoredKey = SHA-256(HMAC(SaltedPassword, "Client Key"))`.
pub fn stored_key(salted: &[u8; KEY_BYTES]) -> [u8; KEY_BYTES] {
    Sha256::digest(hmac(salted, b"Client Key")).into()
}

/// `ServerKey = HMAC(SaltedPassword, "Server Key")`.
pub fn server_key(salted: &[u8; KEY_BYTES]) -> [u8; KEY_BYTES] {
    hmac(salted, b"Server Key")
}

/// The StoredKey `password` gives with `salt` and `iterations` (what a node compares).
pub fn stored_key_of(password: &[u8], salt: &[u8], iterations: u32) -> [u8; KEY_BYTES] {
    stored_key(&salted_password(password, salt, iterations))
}

impl Credential {
    /// The credential of `password` with this salt and iteration count.
    pub fn derive(password: &[u8], salt: &[u8], iterations: u32) -> Self {
        let salted = salted_password(password, salt, iterations);
        Self { salt: salt.to_vec(), iterations, stored_key: stored_key(&salted), server_key: server_key(&salted) }
    }

    /// A new credential of `password`: a random salt of [`SALT_BYTES`], [`DEFAULT_ITERATIONS`].
    pub fn generate(password: &str) -> Result<Self, ClientError> {
        check_password(password)?;
        let mut salt = [0u8; SALT_BYTES];
        getrandom::fill(&mut salt).map_err(|e| ClientError::Config(format!("no random source: {e}")))?;
        Ok(Self::derive(password.as_bytes(), &salt, DEFAULT_ITERATIONS))
    }
}

/// Checks a password is usable: 1..=[`MAX_PASSWORD_BYTES`] bytes.
pub fn check_password(password: &str) -> Result<(), ClientError> {
    if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
        return Err(ClientError::Config(format!("a password of {} bytes (1..={MAX_PASSWORD_BYTES})", password.len())));
    }
    Ok(())
}

/// A user name and password a client authenticates with.
#[derive(Clone, PartialEq, Eq)]
pub struct Password {
    user: String,
    password: String,
}

impl fmt::Debug for Password {
    /// Never prints the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Password").field("user", &self.user).finish_non_exhaustive()
    }
}

impl Password {
    /// `user` with `password` (checked: a user name without `:`, a password of 1..=1024 bytes).
    pub fn new(user: &str, password: &str) -> Result<Self, ClientError> {
        if user.is_empty() || user.contains(':') {
            return Err(ClientError::Config(format!("user name {user:?} is empty or contains ':'")));
        }
        check_password(password)?;
        Ok(Self { user: user.to_string(), password: password.to_string() })
    }

    /// The user name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The [`crate::token::AUTHORIZATION`] value: `Basic base64(<user>:<password>)`.
    pub fn header_value(&self) -> String {
        format!("{BASIC}{}", STANDARD.encode(format!("{}:{}", self.user, self.password)))
    }

    /// Reads an [`crate::token::AUTHORIZATION`] value written by [`Password::header_value`].
    pub fn parse_header(value: &str) -> Result<Self, ClientError> {
        let bad = |why: &str| ClientError::Config(format!("malformed Basic authorization: {why}"));
        let encoded = value.strip_prefix(BASIC).ok_or_else(|| bad("expected `Basic <base64>`"))?;
        if encoded.len() > 4 * (MAX_PASSWORD_BYTES + 128) / 3 + 4 {
            return Err(bad("too long"));
        }
        let raw = STANDARD.decode(encoded.trim()).map_err(|_| bad("not base64"))?;
        let text = String::from_utf8(raw).map_err(|_| bad("not UTF-8"))?;
        let (user, password) = text.split_once(':').ok_or_else(|| bad("expected <user>:<password>"))?;
        Self::new(user, password)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 section 3's example: user "user", password "pencil", salt
    /// `W22ZaJ0SNY7soEsUEjb6gQ==`, 4096 iterations; the server signature it shows is
    /// HMAC(ServerKey, AuthMessage), and the client proof ClientKey XOR HMAC(StoredKey,
    /// AuthMessage): both check the keys derived here.
    #[test]
    fn keys_match_rfc_7677() {
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let c = Credential::derive(b"pencil", &salt, 4096);
        let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let server_signature = hmac(&c.server_key, auth_message.as_bytes());
        assert_eq!(STANDARD.encode(server_signature), "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
        let client_key = hmac(&salted_password(b"pencil", &salt, 4096), b"Client Key");
        let client_signature = hmac(&c.stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(client_signature).map(|(a, b)| a ^ b).collect();
        assert_eq!(STANDARD.encode(proof), "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
        assert_eq!(stored_key_of(b"pencil", &salt, 4096), c.stored_key);
        assert_ne!(stored_key_of(b"pencil!", &salt, 4096), c.stored_key);
    }

    #[test]
    fn generated_credentials_have_random_salts_and_hide_their_keys() {
        let a = Credential::generate("correct horse").unwrap();
        let b = Credential::generate("correct horse").unwrap();
        assert_eq!((a.salt.len(), a.iterations), (SALT_BYTES, DEFAULT_ITERATIONS));
        assert_ne!(a.salt, b.salt);
        assert_ne!(a.stored_key, b.stored_key, "the same password, another salt");
        assert_eq!(stored_key_of(b"correct horse", &a.salt, a.iterations), a.stored_key);
        assert!(!format!("{a:?}").contains("stored_key"));
        assert!(Credential::generate("").is_err());
        assert!(Credential::generate(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
    }

    #[test]
    fn basic_headers_print_and_parse() {
        let p = Password::new("alice", "s3cret:with:colons").unwrap();
        assert_eq!(p.header_value(), format!("Basic {}", STANDARD.encode("alice:s3cret:with:colons")));
        assert_eq!(Password::parse_header(&p.header_value()).unwrap(), p);
        assert!(!format!("{p:?}").contains("s3cret"));
        for bad in ["Bearer x", "Basic !!!", &format!("Basic {}", STANDARD.encode("nocolon")), "Basic "] {
            assert!(Password::parse_header(bad).is_err(), "{bad}");
        }
        assert!(Password::new("a:b", "pw").is_err());
        assert!(Password::new("", "pw").is_err());
    }
}
