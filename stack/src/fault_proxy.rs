//! A TCP proxy that a test switches off and on, to make a dependency "go away" for a process
//! under test without touching the dependency itself (the shared local stack stays up for every
//! other test).
//!
//! While it is on, every connection is relayed to the upstream address byte for byte. Switching
//! it off cuts every open connection (so a client's pooled keep-alive connections die too, as
//! they would when the server goes away) and closes each new one as soon as it is accepted: the
//! client sees a reset or an early EOF on every request. Switching it on relays again.
//!
//! Plain threads and blocking sockets: the proxy works the same under any async runtime of the
//! test, or none, and never competes with the code under test for its runtime's workers.

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Most connections relayed at once; more are closed on accept. A test's client opens a few.
pub const MAX_CONNECTIONS: usize = 256;
/// How long connecting to the upstream may take before the client's connection is closed.
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum FaultProxyError {
    /// The upstream is not a `scheme://host:port/...` URL or a `host:port` address.
    #[error("upstream {0:?} is not a host:port or an http URL with one")]
    BadUpstream(String),
    /// Binding or resolving failed.
    #[error("fault proxy: {0}")]
    Io(#[from] io::Error),
}

/// State shared by the accept thread and the relays.
struct Shared {
    /// Where connections are relayed to.
    upstream: SocketAddr,
    /// Relay (true) or cut (false).
    up: AtomicBool,
    /// Set on drop: the accept thread ends.
    stopping: AtomicBool,
    /// Open relayed connections: id → both sockets, so `set_up(false)` can cut them.
    open: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
    /// Next connection id.
    next_id: AtomicU64,
    /// Connections closed on accept because the proxy was off.
    refused: AtomicU64,
    /// Connections cut because the proxy was switched off.
    cut: AtomicU64,
}

/// A switchable TCP proxy on 127.0.0.1, in front of one upstream address.
pub struct FaultProxy {
    shared: Arc<Shared>,
    /// The address clients connect to.
    addr: SocketAddr,
    /// The accept loop, joined on drop.
    accept: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy (switched on) on a free port of 127.0.0.1, relaying to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> Result<Self, FaultProxyError> {
        let upstream = upstream
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| FaultProxyError::BadUpstream(upstream.to_string()))?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            up: AtomicBool::new(true),
            stopping: AtomicBool::new(false),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            cut: AtomicU64::new(0),
        });
        let accept_shared = shared.clone();
        let accept = std::thread::Builder::new()
            .name("fault-proxy-accept".into())
            .spawn(move || accept_loop(listener, accept_shared))?;
        Ok(Self { shared, addr, accept: Some(accept) })
    }

    /// A proxy in front of the host and port of `url` (`http://host:port/path`), and `url` with
    /// its host and port replaced by the proxy's: hand that URL to the client under test.
    pub fn in_front_of_url(url: &str) -> Result<(Self, String), FaultProxyError> {
        let bad = || FaultProxyError::BadUpstream(url.to_string());
        let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
        let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        if !authority.contains(':') {
            return Err(bad());
        }
        let proxy = Self::start(authority)?;
        let proxied = format!("{scheme}://{}{path}", proxy.addr());
        Ok((proxy, proxied))
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// On: relay connections. Off: cut every open connection and close new ones on accept.
    pub fn set_up(&self, up: bool) {
        self.shared.up.store(up, Ordering::SeqCst);
        if !up {
            let open = std::mem::take(&mut *lock(&self.shared.open));
            self.shared.cut.fetch_add(open.len() as u64, Ordering::SeqCst);
            for (client, upstream) in open.into_values() {
                // Errors only mean the socket was closed already.
                let _ = client.shutdown(Shutdown::Both);
                let _ = upstream.shutdown(Shutdown::Both);
            }
        }
    }

    /// Whether connections are relayed.
    pub fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::SeqCst)
    }

    /// Connections closed on accept while the proxy was off: a test awaits this to know the
    /// client under test has met the fault.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// Open connections cut by switching the proxy off.
    pub fn cut(&self) -> u64 {
        self.shared.cut.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.set_up(false);
        // Wakes the blocking accept so the thread sees `stopping`.
        let _ = TcpStream::connect_timeout(&self.addr, UPSTREAM_CONNECT_TIMEOUT);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A relay thread that panicked leaves the map usable: it only holds sockets.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        if !shared.up.load(Ordering::SeqCst) || lock(&shared.open).len() >= MAX_CONNECTIONS {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        if let Err(error) = relay(client, &shared) {
            tracing::debug!(%error, "fault proxy: a connection could not be relayed");
        }
    }
}

/// Connects `client` to the upstream and copies both ways on two threads.
fn relay(client: TcpStream, shared: &Arc<Shared>) -> io::Result<()> {
    let upstream = TcpStream::connect_timeout(&shared.upstream, UPSTREAM_CONNECT_TIMEOUT)?;
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    lock(&shared.open).insert(id, (client.try_clone()?, upstream.try_clone()?));
    if !shared.up.load(Ordering::SeqCst) {
        // Switched off between the accept and now: `set_up(false)` may have missed this one.
        lock(&shared.open).remove(&id);
        shared.refused.fetch_add(1, Ordering::SeqCst);
        let _ = client.shutdown(Shutdown::Both);
        let _ = upstream.shutdown(Shutdown::Both);
        return Ok(());
    }
    let pipe = |mut from: TcpStream, mut to: TcpStream, shared: Arc<Shared>| {
        move || {
            let _ = io::copy(&mut from, &mut to);
            // One direction ended (EOF, or cut): end the other too, and forget the connection.
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
            lock(&shared.open).remove(&id);
        }
    };
    let up = pipe(client.try_clone()?, upstream.try_clone()?, shared.clone());
    let down = pipe(upstream, client, shared.clone());
    std::thread::Builder::new().name("fault-proxy-up".into()).spawn(up)?;
    std::thread::Builder::new().name("fault-proxy-down".into()).spawn(down)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// An echo server on a free port: the upstream of the proxy under test.
    fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut reader = stream.try_clone().unwrap();
                    let mut writer = stream;
                    let _ = io::copy(&mut reader, &mut writer);
                });
            }
        });
        addr
    }

    /// Sends `ping` and reads it back; `Err` when the connection is closed instead.
    fn ping(stream: &mut TcpStream) -> io::Result<()> {
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(b"ping")?;
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf)?;
        assert_eq!(&buf, b"ping");
        Ok(())
    }

    #[test]
    fn relays_when_on_cuts_open_connections_and_closes_new_ones_when_off() {
        let proxy = FaultProxy::start(&echo().to_string()).unwrap();
        let mut open = TcpStream::connect(proxy.addr()).unwrap();
        ping(&mut open).unwrap();

        proxy.set_up(false);
        assert!(ping(&mut open).is_err(), "an open connection is cut");
        assert_eq!(proxy.cut(), 1);
        let mut fresh = TcpStream::connect(proxy.addr()).unwrap();
        assert!(ping(&mut fresh).is_err(), "a new connection is closed");
        assert!(proxy.refused() >= 1);

        proxy.set_up(true);
        let mut again = TcpStream::connect(proxy.addr()).unwrap();
        ping(&mut again).unwrap();
    }

    #[test]
    fn a_url_is_rewritten_to_the_proxy_keeping_scheme_and_path() {
        let upstream = echo();
        let (proxy, url) =
            FaultProxy::in_front_of_url(&format!("http://{upstream}/apis/ccompat/v7")).unwrap();
        assert_eq!(url, format!("http://{}/apis/ccompat/v7", proxy.addr()));
        assert!(matches!(FaultProxy::in_front_of_url("no-scheme"), Err(FaultProxyError::BadUpstream(_))));
    }
}
