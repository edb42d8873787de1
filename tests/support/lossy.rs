//! A lossy MQTT link: a TCP proxy on 127.0.0.1 between one receiver and the
//! broker that drops a fraction of the live audio frames on their way to
//! the receiver — the scripted bad radio link of the loss test.
//!
//! The receiver → broker direction is copied byte for byte. The broker →
//! receiver direction is parsed into MQTT 3.1.1 packets (fixed header:
//! type and flags, then the "remaining length" varint); a `PUBLISH` with
//! QoS 0 on a topic under the live prefix is dropped with the configured
//! probability (a seeded generator, so a run is reproducible). Only QoS 0
//! publishes are dropped: no acknowledgement goes missing and the session
//! stays healthy, as on a real link that loses datagrams of a QoS 0 stream.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use loa_protocol::live::LiveFrame;

/// The prefix of the live topics (`loa/v1/live/zones/…`, `…/receivers/…`).
pub const LIVE_PREFIX: &str = "loa/v1/live/";

/// MQTT control packet type of `PUBLISH`.
const PUBLISH: u8 = 3;

/// What the link has done so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LossCounts {
    /// Live `PUBLISH` packets seen from the broker.
    pub live_publishes: u64,
    /// Of those, dropped.
    pub dropped: u64,
    /// Other packets forwarded from the broker (schedule, clock replies, acks…).
    pub other_packets: u64,
    /// Connections the receiver opened through the link.
    pub connections: u64,
    /// Sequence numbers of the dropped audio frames, in order.
    pub dropped_seqs: Vec<u32>,
}

/// State shared by the proxy threads.
struct Shared {
    counts: Mutex<LossCounts>,
    stop: AtomicBool,
    /// xorshift64 state.
    rng: AtomicU64,
    /// Drop probability in [0, 1].
    fraction: f64,
}

/// A running lossy proxy; stops accepting when dropped (open connections
/// end when either side closes).
pub struct LossyLink {
    /// Port receivers connect to.
    pub port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl LossyLink {
    /// Starts the proxy in front of the broker at `upstream`, dropping
    /// `fraction` of the live frames (generator seeded with `seed`).
    pub fn start(upstream: SocketAddr, fraction: f64, seed: u64) -> Result<Self> {
        if !(0.0..=1.0).contains(&fraction) {
            bail!("drop fraction {fraction} is not in [0, 1]");
        }
        let listener = TcpListener::bind("127.0.0.1:0").context("bind the lossy link")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            counts: Mutex::new(LossCounts::default()),
            stop: AtomicBool::new(false),
            rng: AtomicU64::new(seed.max(1)),
            fraction,
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("lossy-accept".into())
                .spawn(move || accept_loop(listener, upstream, shared))?
        };
        Ok(LossyLink {
            port,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// `mqtt://127.0.0.1:PORT`, for the receiver's `--broker`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// A snapshot of the counters.
    pub fn counts(&self) -> LossCounts {
        self.shared
            .counts
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }
}

impl Drop for LossyLink {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                if let Ok(mut c) = shared.counts.lock() {
                    c.connections += 1;
                }
                if let Err(e) = connect_pair(client, upstream, shared.clone()) {
                    eprintln!("lossy link: {e:#}");
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                eprintln!("lossy link: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Joins a receiver's connection to a new one to the broker: one thread per direction.
fn connect_pair(client: TcpStream, upstream: SocketAddr, shared: Arc<Shared>) -> Result<()> {
    client.set_nonblocking(false)?;
    client.set_nodelay(true)?;
    let broker = TcpStream::connect_timeout(&upstream, Duration::from_secs(2))
        .with_context(|| format!("connect to the broker at {upstream}"))?;
    broker.set_nodelay(true)?;
    let (mut c_read, mut b_write) = (client.try_clone()?, broker.try_clone()?);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_read, &mut b_write);
        let _ = b_write.shutdown(Shutdown::Both);
        let _ = c_read.shutdown(Shutdown::Both);
    });
    std::thread::spawn(move || {
        let (mut b_read, mut c_write) = (broker, client);
        let _ = filter_downstream(&mut b_read, &mut c_write, &shared);
        let _ = b_read.shutdown(Shutdown::Both);
        let _ = c_write.shutdown(Shutdown::Both);
    });
    Ok(())
}

/// Copies broker → receiver packet by packet, dropping some live frames.
fn filter_downstream(from: &mut impl Read, to: &mut impl Write, shared: &Shared) -> Result<()> {
    loop {
        let Some(packet) = read_packet(from)? else {
            return Ok(());
        };
        if let Some(live) = live_publish(&packet) {
            let drop_it = shared.next_unit() < shared.fraction;
            if let Ok(mut c) = shared.counts.lock() {
                c.live_publishes += 1;
                if drop_it {
                    c.dropped += 1;
                    if let Ok(frame) = LiveFrame::decode(live) {
                        c.dropped_seqs.push(frame.seq);
                    }
                }
            }
            if drop_it {
                continue;
            }
        } else if let Ok(mut c) = shared.counts.lock() {
            c.other_packets += 1;
        }
        to.write_all(&packet)?;
    }
}

impl Shared {
    /// A uniform number in [0, 1) from the shared xorshift64 generator.
    fn next_unit(&self) -> f64 {
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Reads one whole MQTT packet (fixed header included); `None` at a clean end of stream.
pub fn read_packet(from: &mut impl Read) -> Result<Option<Vec<u8>>> {
    let mut first = [0u8; 1];
    match from.read_exact(&mut first) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let mut packet = vec![first[0]];
    let mut remaining = 0usize;
    for i in 0..4 {
        let mut b = [0u8; 1];
        from.read_exact(&mut b)?;
        packet.push(b[0]);
        remaining |= usize::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            let start = packet.len();
            packet.resize(start + remaining, 0);
            from.read_exact(&mut packet[start..])?;
            return Ok(Some(packet));
        }
    }
    bail!("malformed MQTT remaining length")
}

/// The payload of a QoS 0 `PUBLISH` on a live topic, or `None` for any other packet.
pub fn live_publish(packet: &[u8]) -> Option<&[u8]> {
    if packet.first()? >> 4 != PUBLISH || (packet[0] >> 1) & 0b11 != 0 {
        return None;
    }
    // Skip the remaining-length varint.
    let mut i = 1;
    while *packet.get(i)? & 0x80 != 0 {
        i += 1;
    }
    i += 1;
    let topic_len = usize::from(u16::from_be_bytes([*packet.get(i)?, *packet.get(i + 1)?]));
    let topic = packet.get(i + 2..i + 2 + topic_len)?;
    if !topic.starts_with(LIVE_PREFIX.as_bytes()) {
        return None;
    }
    packet.get(i + 2 + topic_len..)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(topic: &str, qos: u8, payload: &[u8]) -> Vec<u8> {
        let mut body = (topic.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(topic.as_bytes());
        if qos > 0 {
            body.extend_from_slice(&[0, 7]);
        }
        body.extend_from_slice(payload);
        let mut packet = vec![(PUBLISH << 4) | (qos << 1)];
        let mut len = body.len();
        loop {
            let mut byte = (len % 128) as u8;
            len /= 128;
            if len > 0 {
                byte |= 0x80;
            }
            packet.push(byte);
            if len == 0 {
                break;
            }
        }
        packet.extend(body);
        packet
    }

    #[test]
    fn parses_packets_and_picks_live_qos0_publishes() {
        let big = vec![9u8; 300]; // two-byte remaining length
        let live = publish("loa/v1/live/zones/thon-1", 0, &big);
        let schedule = publish("loa/v1/receivers/loa-1/schedule", 0, b"{}");
        let live_qos1 = publish("loa/v1/live/zones/thon-1", 1, b"x");
        let pingresp = vec![0xd0, 0x00];
        let stream: Vec<u8> = [live.as_slice(), &schedule, &live_qos1, &pingresp].concat();
        let mut reader = stream.as_slice();
        let packets: Vec<Vec<u8>> =
            std::iter::from_fn(|| read_packet(&mut reader).unwrap()).collect();
        assert_eq!(
            packets,
            vec![
                live.clone(),
                schedule.clone(),
                live_qos1.clone(),
                pingresp.clone()
            ]
        );
        assert_eq!(live_publish(&live), Some(big.as_slice()));
        assert_eq!(live_publish(&schedule), None);
        assert_eq!(live_publish(&live_qos1), None);
        assert_eq!(live_publish(&pingresp), None);
    }

    #[test]
    fn truncated_packet_is_an_error() {
        let live = publish("loa/v1/live/zones/thon-1", 0, b"abc");
        let mut reader = &live[..live.len() - 1];
        assert!(read_packet(&mut reader).is_err());
    }

    #[test]
    fn drops_about_the_configured_fraction() {
        let shared = Shared {
            counts: Mutex::new(LossCounts::default()),
            stop: AtomicBool::new(false),
            rng: AtomicU64::new(42),
            fraction: 0.1,
        };
        let live = publish("loa/v1/live/zones/z", 0, b"frame");
        let other = publish("loa/v1/receivers/r/clock-reply", 0, b"{}");
        let mut input = Vec::new();
        for _ in 0..2000 {
            input.extend_from_slice(&live);
            input.extend_from_slice(&other);
        }
        let mut out = Vec::new();
        filter_downstream(&mut input.as_slice(), &mut out, &shared).unwrap();
        let c = shared.counts.lock().unwrap().clone();
        assert_eq!((c.live_publishes, c.other_packets), (2000, 2000));
        assert!((150..=250).contains(&c.dropped), "dropped {}", c.dropped);
        assert_eq!(
            out.len(),
            (2000 - c.dropped as usize) * live.len() + 2000 * other.len()
        );
    }
}
