//! Admission at the edge: how much of the node one client (or all of them) may hold at once.
//! Connections (`limits.max_connections`), Subscribe streams per connection and per node
//! (`limits.max_subscriptions_per_connection`, `limits.max_subscriptions`); requests in flight
//! are counted by [`crate::context::InFlight`]. Each refusal is a RESOURCE_EXHAUSTED status with
//! its own `shale-error-code` and the limit in `shale-limit`, counted per limit in
//! `shale_limit_refusals_total`.
//!
//! A connection is known to a request by its peer address (`Request::remote_addr`, also behind
//! TLS): the accept loop registers each one ([`Connections::admit`]) and the slot it gets
//! unregisters it when the connection ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use shale_client::ErrorCode;
use tonic::{Request, Status};

use crate::config::Limits;
use crate::convert::errors::limit;
use crate::metrics::Metrics;

/// How long a connection refused for `limits.max_connections` is served before it is closed:
/// long enough to answer the requests it already sent with TOO_MANY_CONNECTIONS.
pub const REFUSED_CONNECTION_LINGER: Duration = Duration::from_millis(1_000);

/// What the node knows of one connection.
#[derive(Debug, Default)]
pub struct ConnState {
    /// Refused for `limits.max_connections`: every client-API request on it is refused, and it is
    /// closed after [`REFUSED_CONNECTION_LINGER`].
    pub refused: bool,
    /// Subscribe streams open on it.
    subscriptions: AtomicUsize,
}

/// The connections a node serves, and the Subscribe streams open on them.
#[derive(Debug)]
pub struct Connections {
    max_connections: usize,
    max_subscriptions_per_connection: usize,
    max_subscriptions: usize,
    /// Connections admitted and open.
    open: AtomicUsize,
    /// Connections refused and not closed yet (at most `max_connections` more).
    refused: AtomicUsize,
    /// Subscribe streams open on this node.
    subscriptions: AtomicUsize,
    by_peer: Mutex<HashMap<SocketAddr, Arc<ConnState>>>,
    metrics: Arc<Metrics>,
}

/// What [`Connections::admit`] decided for a new connection.
#[derive(Debug)]
pub enum Admission {
    /// Served; the slot is held as long as the connection is open.
    Admitted(ConnSlot),
    /// Over `limits.max_connections`: served with TOO_MANY_CONNECTIONS for every client-API
    /// request, and closed after [`REFUSED_CONNECTION_LINGER`].
    Refused(ConnSlot),
    /// Also over the connections being refused: closed at once, unanswered.
    Dropped,
}

/// One registered connection; dropping it (when the connection ends) unregisters it.
#[derive(Debug)]
pub struct ConnSlot {
    connections: Arc<Connections>,
    peer: Option<(SocketAddr, Arc<ConnState>)>,
    refused: bool,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let c = &self.connections;
        if let Some((peer, state)) = &self.peer {
            let mut by_peer = c.by_peer.lock();
            // A new connection may have come from the same address since (port reuse).
            if by_peer.get(peer).is_some_and(|s| Arc::ptr_eq(s, state)) {
                by_peer.remove(peer);
            }
        }
        let counter = if self.refused { &c.refused } else { &c.open };
        counter.fetch_sub(1, Ordering::SeqCst);
        c.metrics.connections_open.set(c.open.load(Ordering::SeqCst) as u64);
    }
}

/// One open Subscribe stream; dropping it (when the stream ends) frees its place.
#[derive(Debug)]
pub struct SubscriptionSlot {
    connections: Arc<Connections>,
    conn: Option<Arc<ConnState>>,
}

impl Drop for SubscriptionSlot {
    fn drop(&mut self) {
        if let Some(conn) = &self.conn {
            conn.subscriptions.fetch_sub(1, Ordering::SeqCst);
        }
        let c = &self.connections;
        let open = c.subscriptions.fetch_sub(1, Ordering::SeqCst) - 1;
        c.metrics.subscriptions_open.set(open as u64);
    }
}

/// The internal listener's connections (`limits.max_internal_connections`). Only peers use it,
/// and a peer does not need an answer to a connection it should not have made: one over the limit
/// is closed at accept (before its TLS handshake), counted in `shale_limit_refusals_total{limit=
/// "max_internal_connections"}`.
#[derive(Debug)]
pub struct InternalConnections {
    max: usize,
    open: AtomicUsize,
    metrics: Arc<Metrics>,
}

/// One connection's place on the internal listener; dropping it frees the place.
#[derive(Debug)]
pub struct InternalSlot {
    connections: Arc<InternalConnections>,
}

impl Drop for InternalSlot {
    fn drop(&mut self) {
        let c = &self.connections;
        let open = c.open.fetch_sub(1, Ordering::SeqCst) - 1;
        c.metrics.internal_connections_open.set(open as u64);
    }
}

impl InternalConnections {
    /// The accounting for a node with `limits`, counting in `metrics`.
    pub fn new(limits: &Limits, metrics: Arc<Metrics>) -> Self {
        Self { max: limits.max_internal_connections as usize, open: AtomicUsize::new(0), metrics }
    }

    /// A place for a connection just accepted; `None` (and counted) when every place is taken.
    pub fn admit(self: &Arc<Self>) -> Option<InternalSlot> {
        if !take(&self.open, self.max) {
            self.metrics.count_limit_refusal("max_internal_connections");
            return None;
        }
        self.metrics.internal_connections_open.set(self.open.load(Ordering::SeqCst) as u64);
        Some(InternalSlot { connections: self.clone() })
    }
}

/// Takes one of `max` places counted by `counter`; false (and nothing taken) when all are taken.
fn take(counter: &AtomicUsize, max: usize) -> bool {
    if counter.fetch_add(1, Ordering::SeqCst) >= max {
        counter.fetch_sub(1, Ordering::SeqCst);
        return false;
    }
    true
}

impl Connections {
    /// The accounting for a node with `limits`, counting in `metrics`.
    pub fn new(limits: &Limits, metrics: Arc<Metrics>) -> Self {
        Self {
            max_connections: limits.max_connections as usize,
            max_subscriptions_per_connection: limits.max_subscriptions_per_connection as usize,
            max_subscriptions: limits.max_subscriptions as usize,
            open: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            subscriptions: AtomicUsize::new(0),
            by_peer: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Decides for a connection just accepted from `peer` (`None`: its address is unknown, so
    /// its requests cannot be told apart; it is counted all the same).
    pub fn admit(self: &Arc<Self>, peer: Option<SocketAddr>) -> Admission {
        let refused = if take(&self.open, self.max_connections) {
            false
        } else {
            self.metrics.count_limit_refusal("max_connections");
            if !take(&self.refused, self.max_connections) {
                tracing::debug!(?peer, "connection dropped: over max_connections and refusing as many");
                return Admission::Dropped;
            }
            true
        };
        self.metrics.connections_open.set(self.open.load(Ordering::SeqCst) as u64);
        let peer = peer.map(|peer| {
            let state = Arc::new(ConnState { refused, ..ConnState::default() });
            self.by_peer.lock().insert(peer, state.clone());
            (peer, state)
        });
        let slot = ConnSlot { connections: self.clone(), peer, refused };
        if refused { Admission::Refused(slot) } else { Admission::Admitted(slot) }
    }

    /// The connection `request` came on, if it is known.
    pub fn of<T>(&self, request: &Request<T>) -> Option<Arc<ConnState>> {
        let peer = request.remote_addr()?;
        self.by_peer.lock().get(&peer).cloned()
    }

    /// Connections admitted and open.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Refuses a client-API request that came on a connection refused for `max_connections`.
    pub fn check_request<T>(&self, request: &Request<T>) -> Result<(), Status> {
        match self.of(request) {
            Some(conn) if conn.refused => Err(limit(
                ErrorCode::TooManyConnections,
                format!(
                    "the node serves max_connections = {} connections; this one is closed (retry later or at another node)",
                    self.max_connections
                ),
                self.max_connections as u64,
            )),
            _ => Ok(()),
        }
    }

    /// A place for one more Subscribe stream on `conn` (if known) and on this node.
    pub fn subscribe(self: &Arc<Self>, conn: Option<Arc<ConnState>>) -> Result<SubscriptionSlot, Status> {
        if !take(&self.subscriptions, self.max_subscriptions) {
            self.metrics.count_limit_refusal("max_subscriptions");
            return Err(limit(
                ErrorCode::TooManySubscriptions,
                format!("the node serves max_subscriptions = {} Subscribe streams", self.max_subscriptions),
                self.max_subscriptions as u64,
            ));
        }
        // From here the node-wide place is held by the slot (and given back if it is dropped).
        let mut slot = SubscriptionSlot { connections: self.clone(), conn: None };
        if let Some(conn) = conn {
            if !take(&conn.subscriptions, self.max_subscriptions_per_connection) {
                self.metrics.count_limit_refusal("max_subscriptions_per_connection");
                return Err(limit(
                    ErrorCode::TooManySubscriptions,
                    format!(
                        "this connection has max_subscriptions_per_connection = {} Subscribe streams open",
                        self.max_subscriptions_per_connection
                    ),
                    self.max_subscriptions_per_connection as u64,
                ));
            }
            slot.conn = Some(conn);
        }
        self.metrics.subscriptions_open.set(self.subscriptions.load(Ordering::SeqCst) as u64);
        Ok(slot)
    }
}

#[cfg(test)]
mod tests {
    use shale_client::ClientError;

    use super::*;

    fn connections(max_connections: u32, per_connection: u32, per_node: u32) -> Arc<Connections> {
        let limits = Limits {
            max_connections,
            max_subscriptions_per_connection: per_connection,
            max_subscriptions: per_node,
            ..Limits::default()
        };
        Arc::new(Connections::new(&limits, Arc::new(Metrics::default())))
    }

    fn peer(port: u16) -> Option<SocketAddr> {
        Some(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[test]
    fn connections_over_the_limit_are_refused_then_dropped_and_slots_free_places() {
        let c = connections(2, 8, 8);
        let a = c.admit(peer(1));
        let b = c.admit(peer(2));
        assert!(matches!((&a, &b), (Admission::Admitted(_), Admission::Admitted(_))));
        let refused: Vec<_> = (3..5).map(|p| c.admit(peer(p))).collect();
        assert!(refused.iter().all(|r| matches!(r, Admission::Refused(_))), "{refused:?}");
        assert!(matches!(c.admit(peer(9)), Admission::Dropped));
        assert!(c.by_peer.lock()[&peer(3).unwrap()].refused);
        assert_eq!(c.open(), 2);
        drop(a);
        assert_eq!(c.open(), 1);
        assert!(matches!(c.admit(peer(10)), Admission::Admitted(_)), "a closed connection frees its place");
        drop(refused);
        assert_eq!(c.refused.load(Ordering::SeqCst), 0);
        assert!(!c.by_peer.lock().contains_key(&peer(3).unwrap()));
        assert_eq!(c.metrics.limit_refusals("max_connections"), 3);
    }

    #[test]
    fn subscriptions_are_limited_per_connection_and_per_node() {
        let c = connections(8, 2, 3);
        let (one, two) = (Arc::new(ConnState::default()), Arc::new(ConnState::default()));
        let s1 = c.subscribe(Some(one.clone())).unwrap();
        let _s2 = c.subscribe(Some(one.clone())).unwrap();
        let e = ClientError::from_status(c.subscribe(Some(one.clone())).unwrap_err());
        assert!(
            matches!(&e, ClientError::Server { code: ErrorCode::TooManySubscriptions, limit: Some(2), .. }),
            "{e:?}"
        );
        let _s3 = c.subscribe(Some(two.clone())).unwrap();
        let e = ClientError::from_status(c.subscribe(Some(two.clone())).unwrap_err());
        assert!(matches!(e, ClientError::Server { code: ErrorCode::TooManySubscriptions, limit: Some(3), .. }));
        assert!(e.is_retriable());
        drop(s1);
        assert_eq!(one.subscriptions.load(Ordering::SeqCst), 1);
        let _s4 = c.subscribe(Some(two)).unwrap();
        assert_eq!(c.metrics.subscriptions_open.get(), 3);
        assert_eq!(c.metrics.limit_refusals("max_subscriptions_per_connection"), 1);
        assert_eq!(c.metrics.limit_refusals("max_subscriptions"), 1);
    }
}
