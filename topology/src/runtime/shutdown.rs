//! The one stop mechanism of an instance: a request to stop and the stream thread's end, on one
//! watch channel.
//!
//! Before, three things did this job: an atomic flag the thread polled, a sleep loop polling the
//! thread's end every 100 ms in `run_until`, and 50 ms slices of every back-off looking at the
//! flag. Now a stop request wakes the stream thread's waits at once (it is unparked), async code
//! awaits the thread's end without polling, and the thread reads the request without waiting.
//!
//! It is also the one stop token of a whole process: the binary makes one with
//! [`ShutdownHandle::new`], its signal handler calls [`ShutdownHandle::request`], and every loop
//! (a `Streams` through `run_until(handle.requested())`, the processors' consumer loops, their
//! retry back-offs) watches that same handle, so a process has one signal → shutdown path.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    /// Running (or starting).
    Running,
    /// Asked to stop; the stream thread is committing and closing.
    Requested,
    /// The stream thread has ended.
    Stopped,
}

/// A handle that stops an instance, or waits for its end. Cloneable and `Send`: give one to a
/// signal handler, keep another to await the end.
#[derive(Clone)]
pub struct ShutdownHandle {
    inner: Arc<Inner>,
}

struct Inner {
    lifecycle: watch::Sender<Lifecycle>,
    /// The stream thread, unparked by a request so that a wait in it ends at once.
    thread: OnceLock<std::thread::Thread>,
}

impl Default for ShutdownHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl ShutdownHandle {
    /// A handle nothing has asked to stop yet: a process's token, or one instance's.
    pub fn new() -> Self {
        let (lifecycle, _) = watch::channel(Lifecycle::Running);
        Self { inner: Arc::new(Inner { lifecycle, thread: OnceLock::new() }) }
    }

    /// Asks the instance to stop: it finishes the in-flight commit, closes its stores and leaves
    /// the group. Returns at once; any number of calls are one request.
    pub fn request(&self) {
        self.inner.lifecycle.send_if_modified(|l| match l {
            Lifecycle::Running => {
                *l = Lifecycle::Requested;
                true
            }
            _ => false,
        });
        if let Some(thread) = self.inner.thread.get() {
            thread.unpark();
        }
    }

    /// Whether a stop was asked for (or the thread has ended).
    pub fn is_requested(&self) -> bool {
        *self.inner.lifecycle.borrow() != Lifecycle::Running
    }

    /// Completes once a stop is asked for (at once if it was already). Cancel-safe and awaitable
    /// any number of times: every call watches the same request. The future holds a clone of the
    /// handle, so it may be spawned or handed to a server's graceful shutdown.
    pub fn requested(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let handle = self.clone();
        async move {
            let mut lifecycle = handle.inner.lifecycle.subscribe();
            // The sender lives in `handle`, so the channel cannot close while this waits.
            let _ = lifecycle.wait_for(|l| *l != Lifecycle::Running).await;
        }
    }

    /// Whether the stream thread has ended.
    pub fn is_stopped(&self) -> bool {
        *self.inner.lifecycle.borrow() == Lifecycle::Stopped
    }

    /// Waits until the stream thread has ended, for whatever reason (a request, an error).
    pub async fn stopped(&self) {
        let mut lifecycle = self.inner.lifecycle.subscribe();
        // The sender lives in `self`, so the channel cannot close while this waits.
        let _ = lifecycle.wait_for(|l| *l == Lifecycle::Stopped).await;
    }

    /// Binds the calling thread (the stream thread) as the one a request wakes.
    pub(crate) fn bind_current_thread(&self) {
        let _ = self.inner.thread.set(std::thread::current());
    }

    /// Sleeps for `duration` on the stream thread, or less if a stop is asked for meanwhile;
    /// whether it was.
    pub(crate) fn sleep(&self, duration: Duration) -> bool {
        let until = Instant::now() + duration;
        loop {
            if self.is_requested() {
                return true;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            // Woken early by `request` (or spuriously: the loop looks again).
            std::thread::park_timeout(left);
        }
    }

    /// The stream thread has ended.
    pub(crate) fn mark_stopped(&self) {
        self.inner.lifecycle.send_replace(Lifecycle::Stopped);
    }
}

/// Marks the instance stopped when dropped: the stream thread holds one, so its end is signalled
/// however it ends, a panic included.
pub(crate) struct StoppedOnDrop(pub ShutdownHandle);

impl Drop for StoppedOnDrop {
    fn drop(&mut self) {
        self.0.mark_stopped();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_wakes_a_sleep_at_once_and_the_end_is_awaited() {
        let handle = ShutdownHandle::new();
        let sleeper = handle.clone();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let _stopped = StoppedOnDrop(sleeper.clone());
            sleeper.bind_current_thread();
            bound_tx.send(()).unwrap();
            let started = Instant::now();
            let requested = sleeper.sleep(Duration::from_secs(600));
            (requested, started.elapsed())
        });
        bound_rx.recv().unwrap();
        assert!(!handle.is_requested() && !handle.is_stopped());
        handle.request();
        handle.request();
        let (requested, slept) = thread.join().unwrap();
        assert!(requested, "the sleep reports the request");
        assert!(slept < Duration::from_secs(600), "the request ended the sleep early");
        assert!(handle.is_stopped(), "the thread's end is marked when its guard drops");
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(handle.stopped());
    }

    #[test]
    fn a_request_completes_every_wait_for_it_past_and_future() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        runtime.block_on(async {
            let handle = ShutdownHandle::new();
            let waiting = tokio::spawn(handle.requested());
            let early = tokio::time::timeout(Duration::from_millis(20), handle.requested()).await;
            assert!(early.is_err(), "nothing asked to stop yet");
            handle.clone().request();
            tokio::time::timeout(Duration::from_secs(10), waiting)
                .await
                .expect("the spawned wait ends with the request")
                .unwrap();
            handle.requested().await;
            handle.requested().await;
            assert!(handle.is_requested() && !handle.is_stopped());
        });
    }

    #[test]
    fn a_sleep_without_a_request_runs_its_length() {
        let handle = ShutdownHandle::new();
        handle.bind_current_thread();
        assert!(!handle.sleep(Duration::from_millis(20)));
    }
}
