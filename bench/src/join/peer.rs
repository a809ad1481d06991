//! `paystream-bench join-peer raw|paystream`: peers (a) and (b) as child processes of the
//! harness, like the Java and Python peers, so that their peak RSS is measured the same way.
//!
//! `main` dispatches here before it builds any tokio runtime: neither peer needs one (rdkafka
//! and the topology runtime run their own threads), and an idle multi-thread runtime would cost
//! the peer threads and memory that the other peers do not pay.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

use super::env::PeerEnv;
use super::{paystream_peer, raw_peer};

/// Which Rust peer to run.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum RustPeer {
    /// (a) rdkafka consume → produce in transactions, no state.
    Raw,
    /// (b) the topology runtime.
    Paystream,
}

/// Runs the peer until SIGTERM (or SIGINT), then closes it; `Ok` means a clean close (exit 0).
pub fn main(which: RustPeer) -> anyhow::Result<()> {
    let env = PeerEnv::from_env()?;
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_signal(stop.clone())?;
    match which {
        RustPeer::Raw => raw_peer::run(&env, &stop),
        RustPeer::Paystream => paystream_peer::run(&env, &stop),
    }
}

/// Sets `stop` on the first SIGTERM or SIGINT, from a thread of its own.
///
/// tokio's signal handling, on a current-thread runtime with only the I/O driver, on that one
/// thread: tokio is already a dependency (no new crate for a flag), its handler only writes to a
/// self-pipe (async-signal-safe), and registering it replaces the default action, so SIGTERM
/// no longer kills the process mid-transaction but lets the peer commit and close.
fn stop_on_signal(stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("building the signal thread's runtime")?;
    // Registered here, before the peer starts, so an early SIGTERM is not lost.
    let (mut terminate, mut interrupt) = runtime
        .block_on(async {
            Ok::<_, std::io::Error>((signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?))
        })
        .context("installing the SIGTERM handler")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            runtime.block_on(async {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                }
            });
            stop.store(true, Ordering::SeqCst);
        })
        .context("starting the signal thread")?;
    Ok(())
}
