//! The shutdown signal a processor watches.
//!
//! A processor's `run` takes its trigger as a `Future` (mini-redis's `server::run`), so the
//! binary passes ctrl-c and tests pass a channel of their own. The loop waits on it in
//! more than one place (between records, during a back-off), so it is wrapped here into
//! something that can be awaited any number of times: once it has fired, every later
//! `recv` returns at once, and the inner future is never polled after it completed.

use std::future::Future;
use std::pin::Pin;

/// A shutdown trigger that can be awaited repeatedly and queried without waiting.
pub struct Shutdown<F> {
    /// The caller's trigger, pinned on the heap so `recv` can be cancelled (by a
    /// `select!`) and resumed later without losing its progress.
    signal: Pin<Box<F>>,
    /// Set once `signal` has completed; from then on it must not be polled again.
    fired: bool,
}

impl<F: Future<Output = ()>> Shutdown<F> {
    /// Wraps `signal`.
    pub fn new(signal: F) -> Self {
        Self { signal: Box::pin(signal), fired: false }
    }

    /// Whether shutdown has been observed by an earlier `recv`.
    pub fn is_shutdown(&self) -> bool {
        self.fired
    }

    /// Waits until shutdown is requested. Cancel-safe: dropping the returned future keeps
    /// the trigger's progress for the next call.
    pub async fn recv(&mut self) {
        if self.fired {
            return;
        }
        self.signal.as_mut().await;
        self.fired = true;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fires_once_and_then_returns_immediately_forever() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut shutdown = Shutdown::new(async move {
            let _ = rx.await;
        });
        // Not fired yet: a bounded wait on it times out, and the wait can be resumed.
        assert!(tokio::time::timeout(Duration::from_secs(1), shutdown.recv()).await.is_err());
        assert!(!shutdown.is_shutdown());
        tx.send(()).unwrap();
        shutdown.recv().await;
        assert!(shutdown.is_shutdown());
        // The inner future completed; polling it again would panic, so this must not.
        shutdown.recv().await;
        shutdown.recv().await;
    }
}
