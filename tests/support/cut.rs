//! A TCP link between a receiver and the controller (its broker or its HTTP
//! API) that a test can cut and restore, and slow down: the "network" of
//! the fault suite, on 127.0.0.1 only.
//!
//! While cut, every open connection is closed (both ends see the TCP
//! connection drop, as after a 4G outage long enough for keep-alives to
//! fail) and new connections are accepted and closed at once (as a
//! refused/reset connection). A rate limit, when set, paces the
//! upstream → client direction (downloads), so a test can kill a receiver
//! in the middle of one.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// How often a pipe thread looks at the cut flag while idle.
const POLL: Duration = Duration::from_millis(50);

/// State shared by the acceptor and the pipe threads.
#[derive(Default)]
struct Shared {
    /// Set while the link is cut.
    cut: AtomicBool,
    /// Bumped at every cut, so pipes opened before it close.
    generation: AtomicU64,
    /// Downstream bytes per second; 0 for unlimited.
    rate: AtomicU64,
    /// Set when the link is dropped.
    stop: AtomicBool,
    /// Connections accepted and passed through.
    connections: AtomicU64,
    /// Connections refused while cut.
    refused: AtomicU64,
}

/// A cuttable TCP proxy in front of `upstream`.
pub struct CutLink {
    /// Port clients connect to.
    pub port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl CutLink {
    /// Starts the proxy in front of `upstream`, passing traffic.
    pub fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("bind the cut link")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared::default());
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("cut-accept".into())
                .spawn(move || accept_loop(listener, upstream, shared))?
        };
        Ok(CutLink {
            port,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn mqtt_url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Cuts the link: open connections close, new ones are refused.
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Restores the link.
    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// Limits upstream → client traffic to `bytes_per_sec` (0: unlimited).
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.shared.rate.store(bytes_per_sec, Ordering::SeqCst);
    }

    /// (connections passed, connections refused while cut).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.shared.connections.load(Ordering::SeqCst),
            self.shared.refused.load(Ordering::SeqCst),
        )
    }
}

impl Drop for CutLink {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.cut();
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                if shared.cut.load(Ordering::SeqCst) {
                    shared.refused.fetch_add(1, Ordering::SeqCst);
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                shared.connections.fetch_add(1, Ordering::SeqCst);
                if let Err(e) = connect_pair(client, upstream, shared.clone()) {
                    eprintln!("cut link: {e:#}");
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(e) => {
                eprintln!("cut link: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Joins a client's connection to a new one upstream: one thread per direction.
fn connect_pair(client: TcpStream, upstream: SocketAddr, shared: Arc<Shared>) -> Result<()> {
    client.set_nonblocking(false)?;
    client.set_nodelay(true)?;
    let server = TcpStream::connect_timeout(&upstream, Duration::from_secs(2))
        .with_context(|| format!("connect to {upstream}"))?;
    server.set_nodelay(true)?;
    let generation = shared.generation.load(Ordering::SeqCst);
    for (from, to, paced) in [
        (client.try_clone()?, server.try_clone()?, false),
        (server, client, true),
    ] {
        let shared = shared.clone();
        std::thread::spawn(move || pipe(from, to, &shared, generation, paced));
    }
    Ok(())
}

/// Copies `from` → `to` until either end closes or the link is cut.
fn pipe(mut from: TcpStream, mut to: TcpStream, shared: &Shared, generation: u64, paced: bool) {
    let _ = from.set_read_timeout(Some(POLL));
    let mut buf = [0u8; 4096];
    let started = Instant::now();
    let mut sent = 0u64;
    loop {
        if shared.generation.load(Ordering::SeqCst) != generation {
            break;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => break,
        };
        if shared.generation.load(Ordering::SeqCst) != generation {
            break;
        }
        let rate = shared.rate.load(Ordering::SeqCst);
        if paced && rate > 0 {
            // Hold the bytes back until the average rate allows them.
            let due = Duration::from_secs_f64((sent + n as u64) as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n as u64;
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
