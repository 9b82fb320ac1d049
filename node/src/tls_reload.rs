//! TLS on the node's listeners, with certificates that can be replaced while the node runs.
//!
//! Each TLS listener accepts TCP connections itself and runs every handshake on its own task
//! (bounded by [`HANDSHAKE_TIMEOUT`], so a silent or slow client never holds up the others),
//! with the `rustls::ServerConfig` its [`ServerTls`] holds at that moment; tonic then serves the
//! `tokio_rustls` stream (and still sees the peer's certificates: `Request::peer_certs`).
//!
//! [`TlsReloader::reload`] re-reads the CA, certificate and key files: when they are valid (the
//! key matches the certificate, which verifies against the CA and names this node) every listener
//! swaps to them (connections already open keep theirs) and connections to peers made from then
//! on present the new certificate; otherwise the node logs an ERROR, counts
//! `shale_tls_reload_failures_total` and keeps serving the old ones. Reloads come from SIGHUP
//! (`signal::reload_on_sighup`), from [`watch`] (the files' modification time and length,
//! checked every `tls.watch_interval_ms`) and from `NodeHandle::reload_tls`.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};
use shale_raft::network::peers::Peers;
use shale_raft::network::tls::{CertSummary, TlsError, TlsPem, cert_summary, certified_node};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::TlsFiles;
use crate::conn::KillableStream;
use crate::context::NodeContext;

/// The longest a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshaken connections waiting for the gRPC server to take them.
const ACCEPTED_QUEUE: usize = 64;

/// The TLS configuration one listener hands each new connection; swapped by a reload.
#[derive(Debug)]
pub struct ServerTls {
    require_client_cert: bool,
    config: RwLock<Arc<rustls::ServerConfig>>,
}

impl ServerTls {
    /// A listener's TLS from `pem`: client certificates required (the internal listener) or
    /// optional (the client listener).
    pub fn new(pem: &TlsPem, require_client_cert: bool) -> Result<Arc<Self>, TlsError> {
        let config = pem.rustls_server_config(require_client_cert)?;
        Ok(Arc::new(Self { require_client_cert, config: RwLock::new(config) }))
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.read().clone())
    }
}

/// The connections of a TLS listener, handshaken, for `serve_with_incoming_shutdown`.
/// `wrap` turns each accepted TCP connection into the node's [`KillableStream`] (and may drop it:
/// `None`); the accept loop ends when `stop` flips or the server drops the stream.
pub fn incoming<F>(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    mut wrap: F,
    mut stop: watch::Receiver<bool>,
) -> ReceiverStream<io::Result<TlsStream<KillableStream>>>
where
    F: FnMut(TcpStream) -> Option<KillableStream> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                () = tx.closed() => break,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(stream) = wrap(stream) else { continue };
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => {
                        tracing::debug!(timeout_ms = HANDSHAKE_TIMEOUT.as_millis() as u64, "TLS handshake timed out")
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Re-reads a node's TLS files and swaps them in (see the module docs).
pub struct TlsReloader {
    node_id: u64,
    files: TlsFiles,
    listeners: Vec<Arc<ServerTls>>,
    peers: Arc<Peers>,
    ctx: Arc<NodeContext>,
    /// One reload at a time.
    reloading: Mutex<()>,
}

impl std::fmt::Debug for TlsReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsReloader").field("node_id", &self.node_id).field("files", &self.files).finish()
    }
}

impl TlsReloader {
    /// A reloader of node `node_id`'s `files` into `listeners`, its peer channels and the
    /// forwarding channels of `ctx`.
    pub fn new(
        node_id: u64,
        files: TlsFiles,
        listeners: Vec<Arc<ServerTls>>,
        peers: Arc<Peers>,
        ctx: Arc<NodeContext>,
    ) -> Arc<Self> {
        Arc::new(Self { node_id, files, listeners, peers, ctx, reloading: Mutex::new(()) })
    }

    /// The files it reads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Reads the files and, when they are valid, swaps them in; logs the outcome (INFO with the
    /// new certificate's serial and expiry, or ERROR) and counts a failure in
    /// `shale_tls_reload_failures_total`. On failure nothing changes.
    pub fn reload(&self, why: &'static str) -> Result<CertSummary, TlsError> {
        let _one = self.reloading.lock();
        match self.try_reload() {
            Ok(summary) => {
                self.ctx.metrics.tls_reloads.inc();
                self.ctx.metrics.tls_cert_not_after_seconds.set(summary.not_after_unix.max(0) as u64);
                tracing::info!(
                    node_id = self.node_id,
                    trigger = why,
                    serial = %summary.serial,
                    not_after = %summary.not_after,
                    cert = %self.files.cert.display(),
                    "TLS certificates reloaded"
                );
                Ok(summary)
            }
            Err(e) => {
                self.ctx.metrics.tls_reload_failures.inc();
                tracing::error!(
                    node_id = self.node_id,
                    trigger = why,
                    error = %e,
                    cert = %self.files.cert.display(),
                    key = %self.files.key.display(),
                    ca = %self.files.ca.display(),
                    "TLS reload refused; still serving the previous certificates"
                );
                Err(e)
            }
        }
    }

    fn try_reload(&self) -> Result<CertSummary, TlsError> {
        let pem = TlsPem::load(&self.files.ca, &self.files.cert, &self.files.key)?;
        let chain = pem.cert_chain()?;
        let found = certified_node(chain[0].as_ref())?;
        if found != Some(self.node_id) {
            return Err(TlsError::WrongNode { expected: self.node_id, found });
        }
        let summary = cert_summary(chain[0].as_ref())?;
        // Build every listener's configuration before swapping any.
        let configs = self
            .listeners
            .iter()
            .map(|l| pem.rustls_server_config(l.require_client_cert))
            .collect::<Result<Vec<_>, _>>()?;
        for (listener, config) in self.listeners.iter().zip(configs) {
            *listener.config.write() = config;
        }
        self.peers.set_tls(pem);
        self.ctx.drop_channels();
        Ok(summary)
    }
}

/// What the watch compares: each file's modification time and length (`None`: unreadable).
type Fingerprint = Vec<Option<(SystemTime, u64)>>;

fn fingerprint(files: &TlsFiles) -> Fingerprint {
    [&files.ca, &files.cert, &files.key]
        .into_iter()
        .map(|p: &std::path::PathBuf| {
            // `metadata` follows symlinks: a swapped symlink (Kubernetes Secret) shows as a change.
            let m = std::fs::metadata(Path::new(p)).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

/// Checks the files every `tls.watch_interval_ms` until `stop` flips, and reloads when any of
/// them changed since the last check (once per change: a broken file is not retried until it
/// changes again). Does nothing with an interval of 0.
pub async fn watch(reloader: Arc<TlsReloader>, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_millis(reloader.files.watch_interval_ms);
    if every.is_zero() {
        return;
    }
    let mut seen = fingerprint(&reloader.files);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(every) => {}
        }
        let files = reloader.files.clone();
        let Ok(now) = tokio::task::spawn_blocking(move || fingerprint(&files)).await else { return };
        if now != seen {
            seen = now;
            let r = reloader.clone();
            let _ = tokio::task::spawn_blocking(move || r.reload("file change")).await;
        }
    }
}
