//! Read-only view of JACK's server registry (`/dev/shm/jack-shm-registry`).
//!
//! jack2 allows 8 registered servers per machine and frees a slot only when
//! its server exits cleanly or when a new server starts *under the same
//! name* and finds the old pid dead. Servers killed with SIGKILL (by any
//! test on the machine) therefore leak slots until "too many servers
//! already active". [`super::JackServer`] uses this view to pick a name
//! that is free, or to reclaim a dead server's slot by starting under its
//! name — the same reclamation jackd itself performs, under its own lock.

/// `JACK_SHM_MAGIC` ("JACK" as a little-endian u32).
const MAGIC: u32 = 0x4a41_434b;
/// jack2's `MAX_SERVERS`.
const MAX_SERVERS: usize = 8;
/// Offset of `server[0]` in `jack_shm_header_t` (magic, protocol + padding,
/// type, size, hdr_len, entry_len).
const SERVERS_OFFSET: usize = 24;
/// `sizeof(jack_shm_server_t)`: pid + name[257], padded to 4 bytes.
const SERVER_LEN: usize = 264;

/// One occupied server slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// Server name as given to `jackd -n`.
    pub name: String,
    /// Process id of the server that registered it.
    pub pid: i32,
    /// Whether that process still exists.
    pub alive: bool,
}

/// The occupied slots, or `None` if the registry is absent or not in the
/// layout this code knows (then callers just try to start and see).
pub fn slots() -> Option<Vec<Slot>> {
    let bytes = std::fs::read("/dev/shm/jack-shm-registry").ok()?;
    let u32_at = |off: usize| {
        Some(u32::from_le_bytes(
            bytes.get(off..off + 4)?.try_into().ok()?,
        ))
    };
    if u32_at(0)? != MAGIC || u32_at(16)? as usize != SERVERS_OFFSET + MAX_SERVERS * SERVER_LEN {
        return None;
    }
    let mut slots = Vec::new();
    for i in 0..MAX_SERVERS {
        let off = SERVERS_OFFSET + i * SERVER_LEN;
        let pid = u32_at(off)? as i32;
        if pid == 0 {
            continue;
        }
        let raw = &bytes[off + 4..off + SERVER_LEN];
        let prefix =
            String::from_utf8_lossy(&raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())])
                .into_owned();
        // The stored prefix is "jack-<uid>:<name>:".
        let name = prefix
            .split_once(':')
            .map(|(_, rest)| rest.trim_end_matches(':').to_string())
            .unwrap_or(prefix);
        slots.push(Slot {
            name,
            pid,
            alive: process_exists(pid),
        });
    }
    Some(slots)
}

/// Whether a process with this id exists (signal 0 probes without sending).
fn process_exists(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
