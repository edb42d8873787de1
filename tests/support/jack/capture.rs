//! The recorder's JACK client, run inside the `loa-jack-recorder` helper
//! process (JACK picks its server from the process environment, so each test
//! runs its own recorder process against its own server).
//!
//! Output files in the output directory:
//! - `in_K.f32`: every sample of input port `in_K`, f32 little-endian, mono, 48 kHz;
//! - `timeline.txt`: per JACK cycle, `FRAME USECS` — the index in the `.f32`
//!   files of the cycle's first frame and JACK's time (µs) of the cycle start;
//! - `clock.txt`: `JACK_USECS UNIX_NANOS RTT_NANOS` pairs sampled every
//!   250 ms, bracketing `SystemTime::now()` between two JACK clock readings,
//!   so frames convert to UTC to a few microseconds without assuming which
//!   system clock JACK reads;
//! - `xruns.txt`: JACK time (µs) of every xrun the server reported, so a
//!   glitch in a recording can be told apart from a receiver's fault;
//! - with a source port (`CaptureConfig::source`): `source.f32`, every
//!   sample the client put out on its output port `source` (what a process
//!   capturing from that port — the controller's "microphone" — hears), and
//!   `source.txt`, one `FRAME CLIP` line per clip started, `FRAME` being the
//!   index (in every `.f32` file) of the clip's first sample.
//!
//! The source plays clips in real time, one JACK cycle at a time: a line
//! `play PATH` on stdin (PATH: raw f32 LE mono 48 kHz) loads the clip off
//! the real-time thread and starts it at the next cycle, replacing a clip
//! still playing; the helper answers `queued CLIP` (clips count from 1) or
//! `error MESSAGE` on stdout. Source and inputs are recorded by the same
//! client in the same cycle, so latency from source to any input is read on
//! one sample clock.
//!
//! The process callback only copies samples into a block and hands it to a
//! writer thread over a bounded channel; a block the writer cannot take is
//! dropped, counted, and filled with zeros so later samples keep their place.
//! It never allocates: blocks come from a pool the writer refills, and the
//! process locks its memory (`mlockall`) where permitted, so a page fault on
//! a loaded machine cannot make the recorder miss its JACK deadline.

use std::fs::File;
use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use jack::{
    AudioIn, AudioOut, Client, ClientOptions, Control, NotificationHandler, Port, ProcessHandler,
    ProcessScope,
};

/// What the helper records and where.
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    /// JACK client name (ports are `NAME:in_1` … `NAME:in_N`).
    pub client_name: String,
    /// Number of input ports.
    pub ports: usize,
    /// Directory for the output files.
    pub out_dir: PathBuf,
    /// Also register an output port `source` that plays clips on command.
    pub source: bool,
}

/// A clip for the source port.
struct Clip {
    /// Its number, from 1, as reported in `source.txt`.
    id: u32,
    /// Samples, mono 48 kHz.
    samples: Vec<f32>,
}

/// One cycle's samples on their way from the process callback to the writer.
struct Block {
    /// Index of the cycle's first frame since recording began.
    frame: u64,
    /// JACK time (µs) of the cycle start.
    usecs: u64,
    /// Frames in the cycle.
    frames: usize,
    /// Port-major samples: port 1's `frames`, then port 2's, ..., then the
    /// source's if there is one.
    samples: Vec<f32>,
    /// A clip that started in this cycle: (its id, offset in the cycle).
    clip_started: Option<(u32, usize)>,
}

/// The source port and what it is playing.
struct Source {
    /// The output port.
    port: Port<AudioOut>,
    /// New clips from the command thread.
    clips: Receiver<Clip>,
    /// Finished or replaced clips, freed off the real-time thread.
    spent: SyncSender<Clip>,
    /// The clip playing and the position of its next sample.
    playing: Option<(Clip, usize)>,
}

/// The real-time half: copies the ports' buffers each cycle.
struct Capture {
    /// The input ports, in order.
    ports: Vec<Port<AudioIn>>,
    /// To the writer thread.
    tx: SyncSender<Block>,
    /// Frames seen so far (the next cycle's first frame index).
    frames: u64,
    /// Frames the writer could not take in time.
    dropped: Arc<AtomicU64>,
    /// The source port, if configured.
    source: Option<Source>,
    /// Empty sample buffers, recycled by the writer thread.
    pool: Receiver<Vec<f32>>,
}

impl ProcessHandler for Capture {
    fn process(&mut self, _: &Client, ps: &ProcessScope) -> Control {
        let frames = ps.n_frames() as usize;
        let usecs = ps.cycle_times().map(|t| t.current_usecs).unwrap_or(0);
        let tracks = self.ports.len() + usize::from(self.source.is_some());
        // A recycled buffer; allocating here happens only if the writer has
        // fallen far behind (and then only this once per block).
        let mut samples = self
            .pool
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(frames * tracks));
        samples.clear();
        for port in &self.ports {
            samples.extend_from_slice(port.as_slice(ps));
        }
        let mut clip_started = None;
        if let Some(source) = self.source.as_mut() {
            clip_started = source.play(ps, &mut samples);
        }
        let block = Block {
            frame: self.frames,
            usecs,
            frames,
            samples,
            clip_started,
        };
        if self.tx.try_send(block).is_err() {
            self.dropped.fetch_add(frames as u64, Ordering::Relaxed);
        }
        self.frames += frames as u64;
        Control::Continue
    }
}

impl Source {
    /// Fills this cycle's output (clip samples, then silence) and appends
    /// the same samples to `record`; returns the clip started this cycle.
    fn play(&mut self, ps: &ProcessScope, record: &mut Vec<f32>) -> Option<(u32, usize)> {
        let mut started = None;
        if let Ok(clip) = self.clips.try_recv() {
            started = Some((clip.id, 0));
            if let Some((old, _)) = self.playing.replace((clip, 0)) {
                let _ = self.spent.try_send(old);
            }
        }
        let out = self.port.as_mut_slice(ps);
        out.fill(0.0);
        if let Some((clip, pos)) = self.playing.as_mut() {
            let n = out.len().min(clip.samples.len() - *pos);
            out[..n].copy_from_slice(&clip.samples[*pos..*pos + n]);
            *pos += n;
            if *pos >= clip.samples.len()
                && let Some((done, _)) = self.playing.take()
            {
                let _ = self.spent.try_send(done);
            }
        }
        record.extend_from_slice(out);
        started
    }
}

/// Notification half: notes when the server reports an xrun.
struct Notifications {
    /// JACK times (µs) of the xruns so far.
    xruns: Arc<Mutex<Vec<u64>>>,
}

impl NotificationHandler for Notifications {
    fn xrun(&mut self, client: &Client) -> Control {
        if let Ok(mut xruns) = self.xruns.lock() {
            xruns.push(client.time());
        }
        Control::Continue
    }
}

/// Records until stdin reaches end of file or a line `stop` arrives. Prints
/// `ready CLIENT_NAME` on stdout once the ports exist and the client runs.
pub fn run(config: &CaptureConfig) -> Result<()> {
    std::fs::create_dir_all(&config.out_dir)?;
    let client = connect(&config.client_name, Duration::from_secs(15))?;
    let mut ports = Vec::new();
    for k in 1..=config.ports {
        ports.push(client.register_port(&format!("in_{k}"), AudioIn::default())?);
    }
    let (clip_tx, clip_rx) = sync_channel::<Clip>(4);
    let (spent_tx, spent_rx) = sync_channel::<Clip>(4);
    let source = if config.source {
        Some(Source {
            port: client.register_port("source", AudioOut::default())?,
            clips: clip_rx,
            spent: spent_tx,
            playing: None,
        })
    } else {
        None
    };
    // Frees clips the real-time thread is done with.
    std::thread::spawn(move || spent_rx.into_iter().for_each(drop));
    let name = client.name().to_string();
    let mut tracks = Vec::new();
    let mut files: Vec<String> = (1..=config.ports).map(|k| format!("in_{k}.f32")).collect();
    if config.source {
        files.push("source.f32".into());
    }
    for file in files {
        let path = config.out_dir.join(file);
        tracks.push(BufWriter::new(
            File::create(&path).with_context(|| format!("create {}", path.display()))?,
        ));
    }
    let timeline = BufWriter::new(File::create(config.out_dir.join("timeline.txt"))?);
    let source_log = BufWriter::new(File::create(config.out_dir.join("source.txt"))?);
    let mut clock = BufWriter::new(File::create(config.out_dir.join("clock.txt"))?);

    lock_memory();
    // ~10 s of cycles at 512 frames: room for a slow disk.
    let (tx, rx) = sync_channel::<Block>(BLOCKS);
    let (pool_tx, pool_rx) = sync_channel::<Vec<f32>>(BLOCKS);
    let tracks_per_block = config.ports + usize::from(config.source);
    for _ in 0..POOL_PREFILL {
        let _ = pool_tx.try_send(Vec::with_capacity(MAX_CYCLE_FRAMES * tracks_per_block));
    }
    let dropped = Arc::new(AtomicU64::new(0));
    let writer =
        std::thread::spawn(move || write_blocks(rx, pool_tx, tracks, timeline, source_log));
    let xruns = Arc::new(Mutex::new(Vec::new()));
    let notifications = Notifications {
        xruns: xruns.clone(),
    };
    let active = client.activate_async(
        notifications,
        Capture {
            ports,
            tx,
            frames: 0,
            dropped: dropped.clone(),
            source,
            pool: pool_rx,
        },
    )?;

    let stop = Arc::new(AtomicBool::new(false));
    let stop_flag = stop.clone();
    let has_source = config.source;
    std::thread::spawn(move || {
        let mut next_clip = 1;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            let line = line.trim();
            if line == "stop" {
                break;
            }
            if let Some(path) = line.strip_prefix("play ") {
                let answer = match load_clip(has_source, path) {
                    Ok(samples) => match clip_tx.try_send(Clip {
                        id: next_clip,
                        samples,
                    }) {
                        Ok(()) => {
                            next_clip += 1;
                            format!("queued {}", next_clip - 1)
                        }
                        Err(_) => "error clip queue full".to_string(),
                    },
                    Err(e) => format!("error {e:#}"),
                };
                println!("{answer}");
                let _ = std::io::stdout().flush();
            }
        }
        stop_flag.store(true, Ordering::SeqCst);
    });
    println!("ready {name}");
    std::io::stdout().flush()?;

    while !stop.load(Ordering::SeqCst) {
        let (jack_us, unix_ns, rtt_ns) = clock_pair(active.as_client());
        writeln!(clock, "{jack_us} {unix_ns} {rtt_ns}")?;
        clock.flush()?;
        std::thread::sleep(Duration::from_millis(250));
    }
    let (client, _, handler) = active.deactivate()?;
    let (jack_us, unix_ns, rtt_ns) = clock_pair(&client);
    writeln!(clock, "{jack_us} {unix_ns} {rtt_ns}")?;
    clock.flush()?;
    let xruns = xruns.lock().map(|x| x.clone()).unwrap_or_default();
    let text: String = xruns.iter().map(|us| format!("{us}\n")).collect();
    std::fs::write(config.out_dir.join("xruns.txt"), text)?;
    let frames = handler.frames;
    drop(handler); // closes the channel, so the writer finishes
    let gaps = writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
    eprintln!(
        "recorded {frames} frames ({:.1} s), dropped {} frames, {gaps} gap frames filled, {} xruns",
        frames as f64 / 48_000.0,
        dropped.load(Ordering::Relaxed),
        xruns.len()
    );
    Ok(())
}

/// Reads a clip for the source port: raw f32 little-endian mono samples.
fn load_clip(has_source: bool, path: &str) -> Result<Vec<f32>> {
    if !has_source {
        bail!("no source port (start with --source)");
    }
    let bytes = std::fs::read(path).with_context(|| format!("read {path}"))?;
    if bytes.is_empty() || bytes.len() % 4 != 0 {
        bail!("{path}: {} bytes is not raw f32 samples", bytes.len());
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Opens the client, retrying while the server is still starting.
fn connect(name: &str, timeout: Duration) -> Result<Client> {
    let deadline = Instant::now() + timeout;
    loop {
        match Client::new(
            name,
            ClientOptions::NO_START_SERVER | ClientOptions::USE_EXACT_NAME,
        ) {
            Ok((client, _status)) => return Ok(client),
            Err(e) if Instant::now() > deadline => {
                bail!("cannot connect to the JACK server: {e:?}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The tightest of a few (JACK time, wall time) readings: JACK µs at the
/// midpoint of the bracket, wall clock in ns since the Unix epoch, bracket width.
fn clock_pair(client: &Client) -> (u64, i128, u64) {
    let mut best = (0, 0, u64::MAX);
    for _ in 0..7 {
        let before = client.time();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        let after = client.time();
        let rtt_ns = (after - before) * 1000;
        if rtt_ns < best.2 {
            best = ((before + after) / 2, wall, rtt_ns);
        }
    }
    best
}

/// Blocks in flight between the process callback and the writer (~10 s of
/// cycles at 512 frames: room for a slow disk).
const BLOCKS: usize = 2048;
/// Buffers allocated up front for the pool.
const POOL_PREFILL: usize = 64;
/// Largest JACK period the prefilled buffers are sized for.
const MAX_CYCLE_FRAMES: usize = 2048;

/// Locks the process's pages in memory (`mlockall`), as JACK clients do, so
/// the real-time thread does not wait on page faults; a machine that does
/// not permit it records anyway, with a note on stderr. Only where locking
/// is unlimited (root, or `ulimit -l unlimited`): under a finite limit,
/// `MCL_FUTURE` would turn later allocations into failures.
fn lock_memory() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; geteuid has no arguments.
    let unlimited = unsafe {
        libc::geteuid() == 0
            || (libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) == 0
                && limit.rlim_cur == libc::RLIM_INFINITY)
    };
    if !unlimited {
        eprintln!("memory locking is limited here; recording without locked memory");
        return;
    }
    // SAFETY: mlockall takes flags only and touches no Rust-managed memory.
    let rc = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) };
    if rc != 0 {
        eprintln!(
            "mlockall not permitted ({}); recording without locked memory",
            std::io::Error::last_os_error()
        );
    }
}

/// Writer thread: appends blocks to the files, returning their buffers to
/// the pool; returns the zero frames it inserted for dropped blocks.
fn write_blocks(
    rx: Receiver<Block>,
    pool: SyncSender<Vec<f32>>,
    mut tracks: Vec<BufWriter<File>>,
    mut timeline: BufWriter<File>,
    mut source_log: BufWriter<File>,
) -> Result<u64> {
    let mut written = 0u64;
    let mut gaps = 0u64;
    for block in rx {
        if block.frame > written {
            let missing = block.frame - written;
            let zeros = vec![0u8; missing as usize * 4];
            for track in &mut tracks {
                track.write_all(&zeros)?;
            }
            gaps += missing;
        }
        writeln!(timeline, "{} {}", block.frame, block.usecs)?;
        if let Some((clip, offset)) = block.clip_started {
            writeln!(source_log, "{} {clip}", block.frame + offset as u64)?;
            source_log.flush()?;
        }
        for (k, track) in tracks.iter_mut().enumerate() {
            let part = &block.samples[k * block.frames..(k + 1) * block.frames];
            for s in part {
                track.write_all(&s.to_le_bytes())?;
            }
        }
        written = block.frame + block.frames as u64;
        let _ = pool.try_send(block.samples);
    }
    for mut track in tracks {
        track.flush()?;
    }
    timeline.flush()?;
    source_log.flush()?;
    Ok(gaps)
}
