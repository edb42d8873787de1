//! A TCP link between a receiver and the controller (its broker or its HTTP
//! API) that a test can cut and restore, slow down and impair: the
//! "network" of the fault suite, on 127.0.0.1 only.
//!
//! Impairment is emulated in user space (this machine's kernel has no
//! `sch_netem`): every chunk is delivered after a delay drawn from
//! `delay ± jitter`, and a fraction of chunks is held a retransmission
//! timeout longer, as TCP does when a segment is lost — in order, as TCP
//! delivers.
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
    /// Current impairment.
    impairment: std::sync::Mutex<Impairment>,
    /// Generator state for the impairment (xorshift64).
    rng: AtomicU64,
}

/// Delay, jitter and loss of a link, applied to both directions.
#[derive(Debug, Clone, Copy, Default)]
pub struct Impairment {
    /// Mean one-way delay.
    pub delay: Duration,
    /// Delays are uniform in `delay ± jitter`.
    pub jitter: Duration,
    /// Fraction of chunks "lost" once: held one retransmission timeout more.
    pub loss: f64,
    /// The retransmission timeout a lost chunk costs.
    pub rto: Duration,
}

/// A cuttable TCP proxy in front of `upstream`.
pub struct CutLink {
    /// Port clients connect to.
    pub port: u16,
    /// Address clients connect to.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl CutLink {
    /// Starts the proxy in front of `upstream`, passing traffic.
    pub fn start(upstream: SocketAddr) -> Result<Self> {
        Self::start_on(std::net::IpAddr::from([127, 0, 0, 1]), upstream)
    }

    /// Like [`start`](Self::start), listening on `ip` (e.g. the host end
    /// of a test's veth pair) instead of 127.0.0.1.
    pub fn start_on(ip: std::net::IpAddr, upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind((ip, 0)).context("bind the cut link")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let port = addr.port();
        let shared = Arc::new(Shared {
            rng: AtomicU64::new(0x9e37_79b9_7f4a_7c15),
            ..Shared::default()
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("cut-accept".into())
                .spawn(move || accept_loop(listener, upstream, shared))?
        };
        Ok(CutLink {
            port,
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// `mqtt://IP:PORT`.
    pub fn mqtt_url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }

    /// `http://IP:PORT`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
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

    /// Impairs the link from now on (both directions); `Impairment::default()` clears it.
    pub fn impair(&self, impairment: Impairment) {
        if let Ok(mut i) = self.shared.impairment.lock() {
            *i = impairment;
        }
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

/// Copies `from` → `to` until either end closes or the link is cut: a
/// reader that stamps each chunk with its delivery time, and a writer that
/// delivers chunks in order when due.
fn pipe(mut from: TcpStream, to: TcpStream, shared: &Arc<Shared>, generation: u64, paced: bool) {
    let _ = from.set_read_timeout(Some(POLL));
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = {
        let shared = shared.clone();
        let mut to = to.try_clone();
        std::thread::spawn(move || {
            let Ok(to) = to.as_mut() else { return };
            let started = Instant::now();
            let mut sent = 0u64;
            for (due, chunk) in rx {
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let rate = shared.rate.load(Ordering::SeqCst);
                if paced && rate > 0 {
                    // Hold the bytes back until the average rate allows them.
                    let due =
                        Duration::from_secs_f64((sent + chunk.len() as u64) as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
                if shared.generation.load(Ordering::SeqCst) != generation
                    || to.write_all(&chunk).is_err()
                {
                    break;
                }
                sent += chunk.len() as u64;
            }
            let _ = to.shutdown(Shutdown::Both);
        })
    };
    let mut buf = [0u8; 4096];
    let mut last_due = Instant::now();
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
        let due = (Instant::now() + shared.chunk_delay()).max(last_due);
        last_due = due;
        if tx.send((due, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    if shared.generation.load(Ordering::SeqCst) != generation {
        let _ = to.shutdown(Shutdown::Both);
    }
    let _ = writer.join();
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

impl Shared {
    /// The delay of the next chunk under the current impairment.
    fn chunk_delay(&self) -> Duration {
        let Ok(i) = self.impairment.lock().map(|i| *i) else {
            return Duration::ZERO;
        };
        if i.delay.is_zero() && i.jitter.is_zero() && i.loss <= 0.0 {
            return Duration::ZERO;
        }
        let jitter = (self.next_unit() * 2.0 - 1.0) * i.jitter.as_secs_f64();
        let mut delay = (i.delay.as_secs_f64() + jitter).max(0.0);
        if self.next_unit() < i.loss {
            delay += i.rto.as_secs_f64();
        }
        Duration::from_secs_f64(delay)
    }

    /// A uniform number in [0, 1).
    fn next_unit(&self) -> f64 {
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}
