//! The shutdown trigger of every long-running subcommand: SIGTERM (how dev/run, systemd
//! and Kubernetes stop a process) or Ctrl-C.
//!
//! A process has one signal → shutdown path: the signals request one [`ShutdownHandle`] (the
//! topology runtime's stop token, which the processors' loops and back-offs and a `Streams`'s
//! `run_until` all watch), made on the first call of [`token`] and handed out by every later one.
//! Short commands never call it, so Ctrl-C still ends them the ordinary way.

use std::sync::OnceLock;

use paystream_topology::ShutdownHandle;

/// The process's one stop token, requested when the process is asked to stop. The first call
/// starts listening for the signals; it must run inside the tokio runtime.
pub fn token() -> ShutdownHandle {
    static TOKEN: OnceLock<ShutdownHandle> = OnceLock::new();
    TOKEN
        .get_or_init(|| {
            let token = ShutdownHandle::new();
            let requester = token.clone();
            tokio::spawn(async move {
                signal().await;
                requester.request();
            });
            token
        })
        .clone()
}

/// Completes when the process is asked to stop.
async fn signal() {
    let ctrl_c = async {
        // Cannot fail on a platform with signals; if it did, SIGTERM still works.
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops this process");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C: shutting down"),
        () = terminate => tracing::info!("SIGTERM: shutting down"),
    }
}
