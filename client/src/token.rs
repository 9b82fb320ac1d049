//! Bearer tokens: `<user>:<secret>`, the secret 32 random bytes in lowercase hex. The node keeps
//! only the SHA-256 of the secret (in the metadata group), so a token shown once by
//! `shale user create` cannot be recovered from the cluster. A client sends it on every call as
//! `authorization: Bearer <token>` ([`crate::ClientConfig::token`]).

use std::fmt;

use sha2::{Digest, Sha256};

use crate::error::ClientError;

/// Bytes of a token's secret.
pub const SECRET_BYTES: usize = 32;
/// The metadata key a token is sent in.
pub const AUTHORIZATION: &str = "authorization";
/// What precedes the token in [`AUTHORIZATION`].
pub const BEARER: &str = "Bearer ";

/// A user's bearer token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    user: String,
    secret: [u8; SECRET_BYTES],
}

impl fmt::Debug for Token {
    /// Never prints the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token").field("user", &self.user).finish_non_exhaustive()
    }
}

impl fmt::Display for Token {
    /// The token as a client sends it: `<user>:<secret hex>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.user)?;
        self.secret.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl Token {
    /// A new token for `user` with a secret from the operating system's random source.
    pub fn generate(user: &str) -> Result<Self, ClientError> {
        let mut secret = [0u8; SECRET_BYTES];
        getrandom::fill(&mut secret).map_err(|e| ClientError::Config(format!("no random source: {e}")))?;
        Ok(Self { user: user.to_string(), secret })
    }

    /// Reads `<user>:<64 hex digits>`.
    pub fn parse(text: &str) -> Result<Self, ClientError> {
        let bad = |why: &str| ClientError::Config(format!("malformed token: {why}"));
        let (user, hex) = text.trim().rsplit_once(':').ok_or_else(|| bad("expected <user>:<secret>"))?;
        if user.is_empty() {
            return Err(bad("no user"));
        }
        if hex.len() != SECRET_BYTES * 2 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("the secret is not 64 hex digits"));
        }
        let mut secret = [0u8; SECRET_BYTES];
        for (i, b) in secret.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad("the secret is not hex"))?;
        }
        Ok(Self { user: user.to_string(), secret })
    }

    /// The user the token names.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The secret.
    pub fn secret(&self) -> &[u8; SECRET_BYTES] {
        &self.secret
    }

    /// What the cluster stores for the token: SHA-256 of the secret.
    pub fn secret_hash(&self) -> [u8; 32] {
        hash_secret(&self.secret)
    }

    /// The [`AUTHORIZATION`] value: `Bearer <token>`.
    pub fn header_value(&self) -> String {
        format!("{BEARER}{self}")
    }
}

/// SHA-256 of a token's secret.
pub fn hash_secret(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_print_and_parse_and_hide_their_secret() {
        let t = Token::generate("alice").unwrap();
        let text = t.to_string();
        assert!(text.starts_with("alice:") && text.len() == "alice:".len() + 64, "{text}");
        assert_eq!(Token::parse(&text).unwrap(), t);
        assert!(!format!("{t:?}").contains(&text[6..]), "Debug never shows the secret");
        assert_ne!(Token::generate("alice").unwrap().secret(), t.secret(), "random secrets");
        assert_eq!(t.secret_hash(), hash_secret(t.secret()));
        for bad in ["alice", ":00", "alice:zz", "alice:0011", &format!("alice:{}", "g".repeat(64))] {
            assert!(Token::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Token::parse(&format!("a.b:{}", "0".repeat(64))).unwrap().user(), "a.b");
    }
}
