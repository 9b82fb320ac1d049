//! SaslHandshake and SaslAuthenticate: a connection authenticates as a Shale password user, with
//! PLAIN (the password checked against the user's SCRAM credential, as gRPC's `Basic` header is:
//! use it over TLS) or SCRAM-SHA-256 (RFC 5802/7677, against the same credential: the password never
//! crosses the wire). The connection's principal is then `user:<name>` for every later request,
//! and the ACLs decide as for gRPC. A failure answers SASL_AUTHENTICATION_FAILED and leaves the
//! connection's principal as it was.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use kafka_protocol::ResponseError;
use sha2::{Digest, Sha256};
use shale_client::scram::Password;
use shale_raft::cluster::access::ScramCredential;

use crate::auth::Caller;
use crate::auth::principal::{Principal, Source};
use crate::context::NodeContext;

/// The mechanisms served, as SaslHandshake lists them.
pub const MECHANISMS: [&str; 2] = ["PLAIN", "SCRAM-SHA-256"];

/// Bytes of the server's part of a SCRAM nonce (before base64).
const NONCE_BYTES: usize = 18;

/// Where a connection's SASL exchange is.
#[derive(Debug, Default)]
pub enum Exchange {
    /// No handshake yet.
    #[default]
    Idle,
    /// PLAIN chosen: the next SaslAuthenticate carries the credentials.
    Plain,
    /// SCRAM-SHA-256 chosen: the next SaslAuthenticate is the client-first message.
    Scram,
    /// SCRAM-SHA-256 after the server-first message: the next is the client-final message.
    ScramFinal(Box<ScramState>),
}

/// What the server remembers between the SCRAM messages.
#[derive(Debug)]
pub struct ScramState {
    user: String,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    /// `None`: no such password user (the exchange runs to its end, and fails).
    credential: Option<ScramCredential>,
}

/// A refused step: the Kafka error code and a message.
pub type Refused = (i16, String);

fn failed(message: impl Into<String>) -> Refused {
    (ResponseError::SaslAuthenticationFailed.code(), message.into())
}

impl Exchange {
    /// SaslHandshake: picks `mechanism` (UNSUPPORTED_SASL_MECHANISM if it is not served).
    pub fn handshake(&mut self, mechanism: &str) -> Result<(), i16> {
        *self = match mechanism {
            "PLAIN" => Exchange::Plain,
            "SCRAM-SHA-256" => Exchange::Scram,
            _ => return Err(ResponseError::UnsupportedSaslMechanism.code()),
        };
        Ok(())
    }

    /// One SaslAuthenticate step: the bytes to answer, and the caller once authenticated.
    pub async fn step(
        &mut self,
        ctx: &NodeContext,
        peer: Option<std::net::SocketAddr>,
        bytes: &[u8],
    ) -> Result<(Vec<u8>, Option<Caller>), Refused> {
        let text = std::str::from_utf8(bytes).map_err(|_| failed("SASL message is not UTF-8"))?;
        match std::mem::take(self) {
            Exchange::Idle => Err((ResponseError::IllegalSaslState.code(), "no SaslHandshake first".into())),
            Exchange::Plain => {
                let mut parts = text.split('\0');
                let (authzid, user, password) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
                    (Some(z), Some(u), Some(p), None) => (z, u, p),
                    _ => return Err(failed("PLAIN is authzid NUL user NUL password")),
                };
                if !authzid.is_empty() && authzid != user {
                    return Err(failed("acting as another user is not supported"));
                }
                let password = Password::new(user, password).map_err(|e| failed(e.to_string()))?;
                let mut ok = crate::auth::principal::check_password(&ctx.cluster, &ctx.auth, &password).await;
                if !ok {
                    // A user created a moment ago may not be applied here yet.
                    ctx.cluster.settle_metadata().await;
                    ok = crate::auth::principal::check_password(&ctx.cluster, &ctx.auth, &password).await;
                }
                if !ok {
                    return Err(failed("user name or password not accepted"));
                }
                Ok((Vec::new(), Some(Caller::new(Principal::User(user.to_string()), Source::Password, peer))))
            }
            Exchange::Scram => {
                let state = client_first(ctx, text).await?;
                let reply = state.server_first.clone().into_bytes();
                *self = Exchange::ScramFinal(Box::new(state));
                Ok((reply, None))
            }
            Exchange::ScramFinal(state) => {
                let server_final = client_final(&state, text)?;
                Ok((server_final.into_bytes(), Some(Caller::new(Principal::User(state.user), Source::Password, peer))))
            }
        }
    }
}

/// `saslname` decoded (`=2C` is `,`, `=3D` is `=`).
fn sasl_name(name: &str) -> Result<String, Refused> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(failed("bad escape in the SCRAM user name")),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The client-first message `gs2-header client-first-bare` (`n,,n=user,r=nonce`); answers the
/// server-first message with the user's salt and iterations.
async fn client_first(ctx: &NodeContext, text: &str) -> Result<ScramState, Refused> {
    let (gs2_header, bare) = match text.strip_prefix("n,,").or_else(|| text.strip_prefix("y,,")) {
        Some(bare) => (&text[..3], bare),
        None => return Err(failed("channel binding and authorization ids are not supported")),
    };
    let mut user = None;
    let mut client_nonce = None;
    for attr in bare.split(',') {
        if let Some(v) = attr.strip_prefix("n=") {
            user = Some(sasl_name(v)?);
        } else if let Some(v) = attr.strip_prefix("r=") {
            client_nonce = Some(v.to_string());
        } else if attr.starts_with("m=") {
            return Err(failed("SCRAM extensions are not supported"));
        }
    }
    let (Some(user), Some(client_nonce)) = (user, client_nonce) else {
        return Err(failed("the client-first message names a user and a nonce"));
    };
    if client_nonce.is_empty() {
        return Err(failed("empty client nonce"));
    }
    let mut credential = ctx.cluster.user_scram(&user);
    if credential.is_none() {
        ctx.cluster.settle_metadata().await;
        credential = ctx.cluster.user_scram(&user);
    }
    let mut random = [0u8; NONCE_BYTES + shale_client::scram::SALT_BYTES];
    getrandom::fill(&mut random).map_err(|e| failed(format!("no random source: {e}")))?;
    let nonce = format!("{client_nonce}{}", STANDARD.encode(&random[..NONCE_BYTES]));
    // An unknown user gets a made-up salt and the default iterations, and fails at the end.
    let (salt, iterations) = match &credential {
        Some(c) => (c.salt.clone(), c.iterations),
        None => (random[NONCE_BYTES..].to_vec(), shale_client::scram::DEFAULT_ITERATIONS),
    };
    let server_first = format!("r={nonce},s={},i={iterations}", STANDARD.encode(&salt));
    Ok(ScramState {
        user,
        gs2_header: gs2_header.to_string(),
        client_first_bare: bare.to_string(),
        server_first,
        nonce,
        credential,
    })
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key"));
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// The client-final message `c=...,r=...,p=proof`: checks the proof against the stored key and
/// answers the server-final message `v=signature`.
fn client_final(state: &ScramState, text: &str) -> Result<String, Refused> {
    let (without_proof, proof) =
        text.rsplit_once(",p=").ok_or_else(|| failed("the client-final message has no proof"))?;
    let mut binding = None;
    let mut nonce = None;
    for attr in without_proof.split(',') {
        if let Some(v) = attr.strip_prefix("c=") {
            binding = Some(v);
        } else if let Some(v) = attr.strip_prefix("r=") {
            nonce = Some(v);
        }
    }
    if binding != Some(STANDARD.encode(state.gs2_header.as_bytes()).as_str()) {
        return Err(failed("channel binding does not match the client-first message"));
    }
    if nonce != Some(state.nonce.as_str()) {
        return Err(failed("nonce does not match"));
    }
    let proof = STANDARD.decode(proof).map_err(|_| failed("the proof is not base64"))?;
    let auth_message = format!("{},{},{}", state.client_first_bare, state.server_first, without_proof);
    let Some(credential) = &state.credential else { return Err(failed("user name or password not accepted")) };
    let signature = hmac(&credential.stored_key, auth_message.as_bytes());
    if proof.len() != signature.len() {
        return Err(failed("user name or password not accepted"));
    }
    let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
    let stored: [u8; 32] = Sha256::digest(&client_key).into();
    let diff = stored.iter().zip(credential.stored_key).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if std::hint::black_box(diff) != 0 {
        return Err(failed("user name or password not accepted"));
    }
    Ok(format!("v={}", STANDARD.encode(hmac(&credential.server_key, auth_message.as_bytes()))))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's side of SCRAM-SHA-256 (RFC 5802) for the test.
    fn client_proof(password: &str, salt: &[u8], iterations: u32, auth_message: &str) -> (String, [u8; 32]) {
        let salted = shale_client::scram::salted_password(password.as_bytes(), salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        let signature = hmac(&stored, auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(signature).map(|(k, s)| k ^ s).collect();
        (STANDARD.encode(proof), hmac(&shale_client::scram::server_key(&salted), auth_message.as_bytes()))
    }

    #[test]
    fn a_scram_exchange_proves_the_password_and_signs_the_answer() {
        let c = shale_client::scram::Credential::derive(b"pencil", b"0123456789abcdef", 4096);
        let credential = ScramCredential {
            salt: c.salt,
            iterations: c.iterations,
            stored_key: c.stored_key,
            server_key: c.server_key,
        };
        let state = ScramState {
            user: "user".into(),
            gs2_header: "n,,".into(),
            client_first_bare: "n=user,r=abc".into(),
            server_first: "r=abcXYZ,s=MDEyMzQ1Njc4OWFiY2RlZg==,i=4096".into(),
            nonce: "abcXYZ".into(),
            credential: Some(credential),
        };
        let without_proof = "c=biws,r=abcXYZ";
        let auth_message = format!("{},{},{}", state.client_first_bare, state.server_first, without_proof);
        let (proof, server_signature) = client_proof("pencil", b"0123456789abcdef", 4096, &auth_message);
        let answer = client_final(&state, &format!("{without_proof},p={proof}")).unwrap();
        assert_eq!(answer, format!("v={}", STANDARD.encode(server_signature)));
        let (wrong, _) = client_proof("pen", b"0123456789abcdef", 4096, &auth_message);
        assert!(client_final(&state, &format!("{without_proof},p={wrong}")).is_err(), "a wrong password fails");
        assert!(client_final(&state, &format!("c=biws,r=abcOTHER,p={proof}")).is_err(), "another nonce fails");
        assert_eq!(sasl_name("a=2Cb=3Dc").unwrap(), "a,b=c");
    }
}
