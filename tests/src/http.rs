//! A minimal HTTP/1.1 GET (for `/readyz`, `/healthz`, `/metrics`): the harness needs no HTTP client
//! library for three plain-text endpoints.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response the harness reads.
const MAX_RESPONSE_BYTES: u64 = 4 << 20;

/// A response: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Body (lossy UTF-8).
    pub body: String,
}

/// Why a GET failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// Connecting, writing or reading failed.
    #[error("GET http://{addr}{path}: {source}")]
    Io {
        /// `host:port`.
        addr: String,
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("GET http://{addr}{path}: no answer within {timeout:?}")]
    Timeout {
        /// `host:port`.
        addr: String,
        /// The path.
        path: String,
        /// The bound.
        timeout: Duration,
    },
    /// The answer is not HTTP.
    #[error("GET http://{addr}{path}: malformed response: {head:?}")]
    Malformed {
        /// `host:port`.
        addr: String,
        /// The path.
        path: String,
        /// The first line.
        head: String,
    },
}

/// `GET http://addr/path` with `Connection: close`, bounded by `timeout`.
pub async fn get(addr: &str, path: &str, timeout: Duration) -> Result<Response, HttpError> {
    let io = |source| HttpError::Io { addr: addr.to_string(), path: path.to_string(), source };
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.map_err(io)?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        let mut raw = Vec::new();
        stream.take(MAX_RESPONSE_BYTES).read_to_end(&mut raw).await.map_err(io)?;
        Ok(raw)
    };
    let raw = tokio::time::timeout(timeout, exchange).await.map_err(|_| HttpError::Timeout {
        addr: addr.to_string(),
        path: path.to_string(),
        timeout,
    })??;
    parse(&raw).ok_or_else(|| HttpError::Malformed {
        addr: addr.to_string(),
        path: path.to_string(),
        head: String::from_utf8_lossy(&raw[..raw.len().min(80)]).into_owned(),
    })
}

/// Parses a whole `Connection: close` response (identity or chunked body).
fn parse(raw: &[u8]) -> Option<Response> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked { dechunk(body)? } else { body.to_string() };
    Some(Response { status, body })
}

fn dechunk(mut rest: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size_line, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size..)?.strip_prefix("\r\n")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_bodies() {
        let r = parse(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 3\r\n\r\nno\n").unwrap();
        assert_eq!(r, Response { status: 503, body: "no\n".into() });
        let r =
            parse(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!(r, Response { status: 200, body: "abcde".into() });
        assert!(parse(b"garbage").is_none());
    }
}
