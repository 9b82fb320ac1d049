//! Server-side connections that can be cut: once the node has drained client requests and stopped
//! its Raft groups, the remaining connections (long-lived Raft streams from peers) are closed
//! so every task serving them ends and releases the node's state. A connection refused for
//! `limits.max_connections` is also cut, a moment after it was accepted
//! ([`KillableStream::cut_after`]), and each holds its place among the node's connections
//! ([`KillableStream::holding`]) until it ends.
//! Every accepted connection also
//! has Nagle's algorithm off: tonic's `Server::tcp_nodelay` is ignored for `serve_with_incoming`,
//! and with Nagle on, a small response (an acknowledgement, a Raft reply) written while an
//! earlier segment is unacknowledged waits for the peer's delayed ACK (~40 ms).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::admission::{ConnSlot, InternalSlot};

/// A TCP connection that fails every read and write once `kill` flips to `true`.
pub struct KillableStream {
    inner: TcpStream,
    killed: Pin<Box<dyn Future<Output = ()> + Send>>,
    dead: bool,
    _slot: Option<ConnSlot>,
    _internal_slot: Option<InternalSlot>,
}

impl std::fmt::Debug for KillableStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KillableStream").field("inner", &self.inner).field("dead", &self.dead).finish()
    }
}

impl KillableStream {
    /// Wraps `inner` (and turns Nagle's algorithm off on it); it dies when `kill` becomes `true`.
    pub fn new(inner: TcpStream, kill: watch::Receiver<bool>) -> Self {
        if let Err(e) = inner.set_nodelay(true) {
            tracing::warn!(error = %e, "could not set TCP_NODELAY on an accepted connection");
        }
        let mut kill = kill;
        let killed = Box::pin(async move {
            let _ = kill.wait_for(|k| *k).await;
        });
        Self { inner, killed, dead: false, _slot: None, _internal_slot: None }
    }

    /// Holds `slot` (the connection's place among the node's) until the connection is dropped.
    pub fn holding(mut self, slot: ConnSlot) -> Self {
        self._slot = Some(slot);
        self
    }

    /// Holds `slot` (its place among the internal listener's connections) until it is dropped.
    pub fn holding_internal(mut self, slot: InternalSlot) -> Self {
        self._internal_slot = Some(slot);
        self
    }

    /// Also dies `after` this long.
    pub fn cut_after(mut self, after: Duration) -> Self {
        let killed = std::mem::replace(&mut self.killed, Box::pin(std::future::pending()));
        self.killed = Box::pin(async move {
            tokio::select! {
                () = killed => {}
                () = tokio::time::sleep(after) => {}
            }
        });
        self
    }

    /// Whether the connection is cut (registers the waker otherwise).
    fn is_dead(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.dead && self.killed.as_mut().poll(cx).is_ready() {
            self.dead = true;
        }
        self.dead
    }
}

fn cut() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "the node cut the connection")
}

impl AsyncRead for KillableStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.is_dead(cx) {
            return Poll::Ready(Err(cut()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.is_dead(cx) {
            return Poll::Ready(Err(cut()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.is_dead(cx) {
            return Poll::Ready(Err(cut()));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl Connected for KillableStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn a_killed_connection_fails_pending_and_later_reads() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert!(!server.nodelay().unwrap(), "accepted sockets start with Nagle on");
        let (kill_tx, kill_rx) = watch::channel(false);
        let mut server = KillableStream::new(server, kill_rx);
        assert!(server.inner.nodelay().unwrap(), "a wrapped connection has Nagle off");
        client.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");
        // A read is pending (no data); killing must wake and fail it.
        let pending = tokio::spawn(async move {
            let mut b = [0u8; 1];
            server.read(&mut b).await
        });
        kill_tx.send(true).unwrap();
        let err = pending.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    }

    #[tokio::test]
    async fn a_connection_cut_after_a_while_fails_its_pending_read_then() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_kill_tx, kill_rx) = watch::channel(false);
        let mut server = KillableStream::new(server, kill_rx).cut_after(Duration::from_millis(100));
        let started = tokio::time::Instant::now();
        let mut b = [0u8; 1];
        let err = server.read(&mut b).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        assert!(started.elapsed() >= Duration::from_millis(100));
    }
}
