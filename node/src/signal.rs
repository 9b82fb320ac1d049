//! Waiting for the process to be asked to stop, and SIGHUP (reload the TLS certificates).

/// Resolves on Ctrl-C (SIGINT) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

/// How long past the grace period the watchdog of [`after_first_signal`] waits before it ends
/// the process itself (the orderly shutdown keeps to the grace period; this only catches a bug).
pub const WATCHDOG_SLACK: std::time::Duration = std::time::Duration::from_millis(500);

/// Call once the first signal has arrived and an orderly shutdown of at most `grace` starts:
/// a second SIGINT/SIGTERM exits the process at once (code 130), and a watchdog thread exits it
/// (code 1) if it is still running `grace` + [`WATCHDOG_SLACK`] from now. Every acknowledged
/// record was fsynced before its acknowledgement, so neither exit loses one.
pub fn after_first_signal(grace: std::time::Duration) {
    tokio::spawn(async {
        shutdown_signal().await;
        tracing::warn!("second signal: exiting at once");
        exit_now(130);
    });
    let limit = grace + WATCHDOG_SLACK;
    let spawned = std::thread::Builder::new().name("shutdown-watchdog".into()).spawn(move || {
        std::thread::sleep(limit);
        tracing::error!(waited_ms = limit.as_millis() as u64, "shutdown overran its grace period; exiting");
        exit_now(1);
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the shutdown watchdog");
    }
}

/// Ends the process now (flushing stdout/stderr first), skipping the runtime's wait for
/// blocking tasks.
pub fn exit_now(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(code)
}

/// Reloads the TLS certificates on every SIGHUP (Unix), for as long as the node runs; without
/// TLS (`reloader` `None`) a SIGHUP is logged and ignored (it no longer ends the process). The
/// task holds the reloader weakly: a strong reference would keep the node's context, and with it
/// its storage, alive through a shutdown (which then waited its whole grace period and closed the
/// storage uncleanly: "storage still referenced after shutdown").
pub fn reload_on_sighup(reloader: Option<std::sync::Arc<crate::tls_reload::TlsReloader>>) {
    #[cfg(unix)]
    {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; TLS reloads only on a file change");
                return;
            }
        };
        let reloader = reloader.map(|r| std::sync::Arc::downgrade(&r));
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match reloader.as_ref().map(std::sync::Weak::upgrade) {
                    Some(Some(r)) => {
                        // The outcome is logged (and a failure counted) by `reload`.
                        let _ = tokio::task::spawn_blocking(move || r.reload("SIGHUP")).await;
                    }
                    Some(None) => tracing::info!("SIGHUP received; the node is stopping, nothing to reload"),
                    None => tracing::info!("SIGHUP received; this node runs without TLS, nothing to reload"),
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = reloader;
}
