//! The audit log: one structured line per admin, user or ACL change this node was asked for (by a
//! client, not a forwarding node: the node a client called logs it once, with the client's
//! address), on the tracing target [`TARGET`], whatever came of it (done, refused, failed).
//!
//! Fields: `action` (the RPC, e.g. `create_topic`), `resource`, `principal`, `source` (how the
//! principal was established), `peer` (the client's address), `outcome` (`ok`, or the error
//! code), `at_ms` (Unix milliseconds; the log line's own timestamp says the same) and `detail`.

use std::time::{SystemTime, UNIX_EPOCH};

use tonic::Status;

use crate::auth::{Caller, Source, current, shorten};

/// The tracing target of audit lines (`RUST_LOG=shale_audit=info` keeps them on).
pub const TARGET: &str = "shale_audit";

/// Logs one admin action of the current caller and what came of it.
pub fn record(action: &'static str, resource: &str, detail: &str, result: Result<(), &Status>) {
    let caller = current().unwrap_or_else(Caller::internal);
    if matches!(caller.source, Source::Forwarded { .. }) {
        // The node the client called logs it.
        return;
    }
    let at_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let peer = caller.peer.map(|p| p.to_string()).unwrap_or_default();
    let outcome = match result {
        Ok(()) => "ok".to_string(),
        Err(status) => status
            .metadata()
            .get(shale_client::meta::ERROR_CODE)
            .and_then(|v| v.to_str().ok())
            .map_or_else(|| format!("{:?}", status.code()), str::to_string),
    };
    let (resource, detail) = (shorten(resource), shorten(detail));
    tracing::info!(
        target: TARGET,
        action,
        resource,
        principal = %caller.principal,
        source = caller.source.as_str(),
        peer,
        outcome,
        at_ms,
        detail,
        "audit"
    );
}

/// Runs an admin action and records it ([`record`]) with its outcome.
pub async fn audited<T>(
    action: &'static str,
    resource: &str,
    detail: &str,
    fut: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let result = fut.await;
    record(action, resource, detail, result.as_ref().map(|_| ()));
    result
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use shale_client::ErrorCode;
    use shale_client::error::status;

    use super::*;
    use crate::auth::{Principal, serve_as};

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn admin_actions_are_logged_with_who_what_when_and_where() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let peer = "10.1.2.3:4567".parse().ok();
        let alice = Caller::new(Principal::User("alice".into()), Source::Token, peer);
        serve_as(alice.clone(), async {
            let ok: Result<(), Status> = audited("delete_topic", "topic orders", "", async { Ok(()) }).await;
            ok.unwrap();
            let refused = status(ErrorCode::NotAuthorized, "no".to_string());
            record("add_acl", "cluster", "allow bob produce on topic:t", Err(&refused));
        })
        .await;
        // The node a request was forwarded to does not log it again.
        let forwarded = Caller::new(alice.principal.clone(), Source::Forwarded { by: 2 }, peer);
        serve_as(forwarded, async { record("delete_topic", "topic x", "", Ok(())) }).await;

        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let logged: Vec<&str> = text.lines().collect();
        assert_eq!(logged.len(), 2, "{text}");
        for part in ["shale_audit", "action=\"delete_topic\"", "resource=\"topic orders\"", "principal=user:alice"] {
            assert!(logged[0].contains(part), "{part} in {}", logged[0]);
        }
        for part in ["source=\"token\"", "peer=\"10.1.2.3:4567\"", "outcome=\"ok\"", "at_ms="] {
            assert!(logged[0].contains(part), "{part} in {}", logged[0]);
        }
        for part in ["action=\"add_acl\"", "outcome=\"NOT_AUTHORIZED\"", "detail=\"allow bob produce on topic:t\""] {
            assert!(logged[1].contains(part), "{part} in {}", logged[1]);
        }
    }
}
