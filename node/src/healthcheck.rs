//! `shale-node healthcheck`: one plain HTTP/1.1 GET against a node's own HTTP server, for container
//! health checks in an image without a shell or curl. Healthy means the answer is HTTP 200.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest status line (and header prefix) read from the answer.
const MAX_HEAD_BYTES: usize = 8 * 1024;

/// Why a health probe could not get a status code.
#[derive(Debug, thiserror::Error)]
pub enum HealthcheckError {
    /// The `--url` is not `http://host:port/path`.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The path does not start with `/`.
    #[error("invalid path {path:?}: must start with '/'")]
    InvalidPath {
        /// The path given.
        path: String,
    },
    /// Connecting, writing or reading failed.
    #[error("HTTP GET http://{authority}{path}: {source}")]
    Io {
        /// `host:port` probed.
        authority: String,
        /// Path requested.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No full status line within the timeout.
    #[error("HTTP GET http://{authority}{path}: no answer within {timeout_ms} ms")]
    Timeout {
        /// `host:port` probed.
        authority: String,
        /// Path requested.
        path: String,
        /// The bound.
        timeout_ms: u64,
    },
    /// The answer does not start with an HTTP status line.
    #[error("HTTP GET http://{authority}{path}: malformed answer: {reason}")]
    BadResponse {
        /// `host:port` probed.
        authority: String,
        /// Path requested.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// What to probe: `host:port` and the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeTarget {
    /// `host:port` to connect to (also sent as the `Host` header).
    pub authority: String,
    /// Request path, starting with `/`.
    pub path: String,
}

impl ProbeTarget {
    /// The node's own HTTP server at `listen`; a wildcard address (`0.0.0.0`, `::`) is probed on
    /// the loopback address of the same family.
    pub fn local(listen: SocketAddr, path: &str) -> Result<Self, HealthcheckError> {
        if !path.starts_with('/') {
            return Err(HealthcheckError::InvalidPath { path: path.to_string() });
        }
        let ip = match listen.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        Ok(Self { authority: SocketAddr::new(ip, listen.port()).to_string(), path: path.to_string() })
    }

    /// An `http://host:port[/path]` URL (no path means `/`). HTTPS, user info and a missing port
    /// are refused.
    pub fn from_url(url: &str) -> Result<Self, HealthcheckError> {
        let invalid = |reason: &str| HealthcheckError::InvalidUrl { url: url.to_string(), reason: reason.to_string() };
        let rest = url.strip_prefix("http://").ok_or_else(|| invalid("only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(invalid("no host"));
        }
        if authority.contains('@') {
            return Err(invalid("user info is not supported"));
        }
        let (host, port) = authority.rsplit_once(':').ok_or_else(|| invalid("no port"))?;
        if host.is_empty() || (host.contains(':') && !(host.starts_with('[') && host.ends_with(']'))) {
            return Err(invalid("bad host (IPv6 addresses need brackets)"));
        }
        port.parse::<u16>().map_err(|_| invalid("port is not a number in 0..=65535"))?;
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("path contains whitespace or control characters"));
        }
        Ok(Self { authority: authority.to_string(), path: path.to_string() })
    }

    /// Sends one GET and returns the answer's status code; an error if there is no well-formed
    /// status line within `timeout` (connect included).
    pub async fn probe(&self, timeout: Duration) -> Result<u16, HealthcheckError> {
        match tokio::time::timeout(timeout, self.get_status()).await {
            Ok(result) => result,
            Err(_) => Err(HealthcheckError::Timeout {
                authority: self.authority.clone(),
                path: self.path.clone(),
                timeout_ms: timeout.as_millis() as u64,
            }),
        }
    }

    async fn get_status(&self) -> Result<u16, HealthcheckError> {
        let io = |source| HealthcheckError::Io { authority: self.authority.clone(), path: self.path.clone(), source };
        let mut stream = TcpStream::connect(&self.authority).await.map_err(io)?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: shale-node-healthcheck\r\nConnection: close\r\n\r\n",
            self.path, self.authority
        );
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        let mut head = Vec::with_capacity(256);
        let mut buf = [0u8; 1024];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < MAX_HEAD_BYTES {
            let n = stream.read(&mut buf).await.map_err(io)?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        parse_status_line(&head).map_err(|reason| HealthcheckError::BadResponse {
            authority: self.authority.clone(),
            path: self.path.clone(),
            reason,
        })
    }
}

/// The status code of `HTTP/1.x NNN reason\r\n...`.
fn parse_status_line(head: &[u8]) -> Result<u16, String> {
    let end = head.windows(2).position(|w| w == b"\r\n").ok_or_else(|| "no complete status line".to_string())?;
    let line = std::str::from_utf8(&head[..end]).map_err(|_| "status line is not UTF-8".to_string())?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1.x status line: {line:?}"));
    }
    let code = parts.next().unwrap_or_default();
    match code.parse::<u16>() {
        Ok(c) if code.len() == 3 && (100..=599).contains(&c) => Ok(c),
        _ => Err(format!("bad status code in {line:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_addresses_are_probed_on_loopback() {
        let t = ProbeTarget::local("0.0.0.0:8001".parse().unwrap(), "/readyz").unwrap();
        assert_eq!(t, ProbeTarget { authority: "127.0.0.1:8001".into(), path: "/readyz".into() });
        let t = ProbeTarget::local("[::]:9000".parse().unwrap(), "/healthz").unwrap();
        assert_eq!(t.authority, "[::1]:9000");
        let t = ProbeTarget::local("10.1.2.3:8001".parse().unwrap(), "/readyz").unwrap();
        assert_eq!(t.authority, "10.1.2.3:8001");
        assert!(matches!(
            ProbeTarget::local("127.0.0.1:1".parse().unwrap(), "readyz"),
            Err(HealthcheckError::InvalidPath { .. })
        ));
    }

    #[test]
    fn urls_are_split_into_authority_and_path() {
        let t = ProbeTarget::from_url("http://node-1:8001/readyz").unwrap();
        assert_eq!(t, ProbeTarget { authority: "node-1:8001".into(), path: "/readyz".into() });
        assert_eq!(ProbeTarget::from_url("http://127.0.0.1:8001").unwrap().path, "/");
        assert_eq!(ProbeTarget::from_url("http://[::1]:8001/healthz").unwrap().authority, "[::1]:8001");
        for bad in [
            "https://a:1/",
            "a:1/readyz",
            "http://a/readyz",
            "http://:1/",
            "http://a:99999/",
            "http://u@a:1/",
            "http://::1:8001/",
            "http://a:1/x y",
        ] {
            assert!(matches!(ProbeTarget::from_url(bad), Err(HealthcheckError::InvalidUrl { .. })), "{bad} accepted");
        }
    }

    #[test]
    fn status_lines_parse_or_are_refused() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n"), Ok(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503 Service Unavailable\r\n"), Ok(503));
        assert!(parse_status_line(b"HTTP/1.1 200 OK").is_err(), "incomplete line");
        assert!(parse_status_line(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_status_line(b"HTTP/1.1 2000 OK\r\n").is_err());
        assert!(parse_status_line(b"HTTP/1.1 abc OK\r\n").is_err());
    }

    #[tokio::test]
    async fn a_closed_port_and_a_silent_server_are_errors() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Accepted but never answered: the probe times out.
        let silent = ProbeTarget::local(addr, "/readyz").unwrap();
        let accept = tokio::spawn(async move { listener.accept().await.map(|(s, _)| s) });
        let err = silent.probe(Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(err, HealthcheckError::Timeout { timeout_ms: 200, .. }), "{err}");
        drop(accept.await.unwrap().unwrap());
        // Nothing listens any more: connection refused.
        let err = silent.probe(Duration::from_secs(2)).await.unwrap_err();
        assert!(matches!(err, HealthcheckError::Io { .. }), "{err}");
    }
}
