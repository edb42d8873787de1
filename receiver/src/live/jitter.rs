//! The jitter buffer: frames of one broadcast keyed by sequence number, and
//! the decision of what to play next.
//!
//! Times here are on the controller's clock (µs). A frame is due when the
//! clock reaches `playout − write_ahead`: the player writes it then, so the
//! sink queue ends at (about) its playout instant. [`Playout::next_step`] says what to
//! do now:
//!
//! - the next frame in sequence is there and due → [`Step::Frame`];
//! - it is missing and due (by the timeline extrapolated from the last frame
//!   played, 20 ms per frame) → [`Step::Conceal`], with the next packet for
//!   Opus inband FEC when that one is already here, else packet loss
//!   concealment;
//! - a later frame is already due (a burst of loss, or a jump in the
//!   sequence) → the missing ones are counted lost and skipped;
//! - nothing is due yet → [`Step::Wait`] until it is;
//! - the broadcast's end frame is reached → [`Step::Finished`].
//!
//! Frames that arrive after their turn (their sequence was already played
//! or concealed) are dropped and counted late.

use std::collections::BTreeMap;

use loa_protocol::live::FRAME_MS;

/// Duration of a frame, µs.
pub const FRAME_US: i64 = FRAME_MS as i64 * 1000;
/// Frames held at most (5 s); beyond that the oldest are dropped.
pub const CAPACITY: usize = 250;

/// One received frame of audio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buffered {
    pub seq: u32,
    /// When its first sample must be heard, controller clock, µs.
    pub playout_us: i64,
    /// The Opus packet.
    pub opus: Vec<u8>,
}

/// What [`Playout::insert`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    Accepted,
    /// Already held.
    Duplicate,
    /// Its turn has passed; dropped (counted in [`Counters::late`]).
    Late,
    /// After the broadcast's end frame; ignored.
    AfterEnd,
}

/// What to play now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do before the controller clock reads `until_us`.
    Wait { until_us: i64 },
    /// Play this frame.
    Frame(Buffered),
    /// Frame `seq` is missing: conceal it, with inband FEC from the next
    /// packet if given. `playout_us` is where it belongs on the timeline.
    Conceal {
        seq: u32,
        playout_us: i64,
        fec: Option<Vec<u8>>,
    },
    /// The end frame was reached: the broadcast is over.
    Finished,
    /// No frame at all to go by (empty buffer, nothing played yet).
    Idle,
}

/// Frame counters of a broadcast.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames handed out to play.
    pub played: u64,
    /// Missing frames concealed with the next packet's inband FEC.
    pub fec: u64,
    /// Missing frames concealed without FEC (PLC).
    pub plc: u64,
    /// Missing frames skipped because a later one was already due.
    pub skipped: u64,
    /// Frames that arrived after their turn.
    pub late: u64,
    /// Frames dropped because the buffer was full or they were already
    /// past due when playout (re)started.
    pub discarded: u64,
    /// Duplicates received.
    pub duplicates: u64,
}

/// The jitter buffer and timeline of one broadcast.
#[derive(Debug, Default, Clone)]
pub struct Playout {
    frames: BTreeMap<u32, Buffered>,
    /// The next sequence number to play; `None` until playout starts.
    next: Option<u32>,
    /// The last frame played or concealed, and where it was on the timeline.
    anchor: Option<(u32, i64)>,
    /// Sequence number of the end frame, once received.
    end: Option<u32>,
    pub counters: Counters,
}

impl Playout {
    pub fn new() -> Playout {
        Playout::default()
    }

    /// Frames held.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The next sequence number to play, once playout started.
    pub fn next_seq(&self) -> Option<u32> {
        self.next
    }

    /// The playout instant of the first frame held.
    pub fn first_playout_us(&self) -> Option<i64> {
        self.frames.values().next().map(|f| f.playout_us)
    }

    /// Whether the end frame was received.
    pub fn end_received(&self) -> bool {
        self.end.is_some()
    }

    /// Adds a received frame.
    pub fn insert(&mut self, frame: Buffered) -> Insert {
        if self.end.is_some_and(|end| frame.seq >= end) {
            return Insert::AfterEnd;
        }
        if self.next.is_some_and(|next| frame.seq < next) {
            self.counters.late += 1;
            return Insert::Late;
        }
        if self.frames.contains_key(&frame.seq) {
            self.counters.duplicates += 1;
            return Insert::Duplicate;
        }
        self.frames.insert(frame.seq, frame);
        while self.frames.len() > CAPACITY {
            self.frames.pop_first();
            self.counters.discarded += 1;
        }
        Insert::Accepted
    }

    /// Marks the end of the broadcast: frame `seq` and later are not audio.
    pub fn set_end(&mut self, seq: u32) {
        self.end = Some(self.end.map_or(seq, |e| e.min(seq)));
        self.frames.retain(|&s, _| s < seq);
    }

    /// (Re)starts playout at `now_us`: forgets the position and drops frames
    /// already too late to be written (`playout − write_ahead < now`), as
    /// after the broadcast was held off by a higher-priority play.
    pub fn restart(&mut self, now_us: i64, write_ahead_us: i64) {
        let before = self.frames.len();
        self.frames
            .retain(|_, f| f.playout_us - write_ahead_us >= now_us);
        self.counters.discarded += (before - self.frames.len()) as u64;
        // Start with the first frame held, or (nothing held) with the next
        // one to arrive.
        self.next = self.frames.keys().next().copied();
        self.anchor = None;
    }

    /// Where frame `seq` belongs on the timeline, by the last frame played.
    fn extrapolate(&self, seq: u32) -> Option<i64> {
        let (aseq, at) = self.anchor?;
        Some(at + (i64::from(seq) - i64::from(aseq)) * FRAME_US)
    }

    /// Decides what to play at `now_us` (controller clock) with frames
    /// written `write_ahead_us` ahead of their playout instant.
    pub fn next_step(&mut self, now_us: i64, write_ahead_us: i64) -> Step {
        loop {
            let next = match self.next {
                Some(n) => n,
                None => match self.frames.keys().next() {
                    Some(&first) => first,
                    None => return Step::Idle,
                },
            };
            if self.end.is_some_and(|end| next >= end) {
                return Step::Finished;
            }
            if let Some(frame) = self.frames.get(&next) {
                let due = frame.playout_us - write_ahead_us;
                if now_us < due {
                    return Step::Wait { until_us: due };
                }
                let frame = self.frames.remove(&next).expect("just found");
                self.next = Some(next + 1);
                self.anchor = Some((next, frame.playout_us));
                self.counters.played += 1;
                return Step::Frame(frame);
            }
            // `next` is missing.
            let later = self.frames.range(next..).next().map(|(_, f)| f.clone());
            if let Some(later) = &later
                && now_us >= later.playout_us - write_ahead_us
            {
                // A later frame is already due: give up on the missing ones.
                self.counters.skipped += u64::from(later.seq - next);
                self.next = Some(later.seq);
                continue;
            }
            let Some(expected) = self.extrapolate(next).or_else(|| {
                later
                    .as_ref()
                    .map(|l| l.playout_us - (i64::from(l.seq) - i64::from(next)) * FRAME_US)
            }) else {
                return Step::Idle;
            };
            let due = expected - write_ahead_us;
            if now_us < due {
                return Step::Wait { until_us: due };
            }
            let fec = later.filter(|l| l.seq == next + 1).map(|l| l.opus);
            if fec.is_some() {
                self.counters.fec += 1;
            } else {
                self.counters.plc += 1;
            }
            self.next = Some(next + 1);
            self.anchor = Some((next, expected));
            return Step::Conceal {
                seq: next,
                playout_us: expected,
                fec,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: i64 = 40_000;

    fn frame(seq: u32) -> Buffered {
        Buffered {
            seq,
            playout_us: 1_000_000 + i64::from(seq) * FRAME_US,
            opus: vec![seq as u8],
        }
    }

    /// The controller time at which frame `seq` is due.
    fn due(seq: u32) -> i64 {
        frame(seq).playout_us - W
    }

    fn played(step: Step) -> u32 {
        match step {
            Step::Frame(f) => f.seq,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    #[test]
    fn reordered_frames_play_in_order() {
        let mut p = Playout::new();
        for seq in [0, 2, 1, 4, 3] {
            assert_eq!(p.insert(frame(seq)), Insert::Accepted);
        }
        assert_eq!(p.insert(frame(3)), Insert::Duplicate);
        assert_eq!(p.next_step(due(0) - 1, W), Step::Wait { until_us: due(0) });
        for seq in 0..5 {
            assert_eq!(played(p.next_step(due(seq), W)), seq);
        }
        assert_eq!(p.counters.played, 5);
        assert_eq!(p.counters.duplicates, 1);
        assert_eq!(p.counters.fec + p.counters.plc + p.counters.late, 0);
    }

    #[test]
    fn a_lost_frame_is_concealed_with_fec_when_the_next_is_here() {
        let mut p = Playout::new();
        for seq in [0, 2, 3] {
            p.insert(frame(seq));
        }
        assert_eq!(played(p.next_step(due(0), W)), 0);
        // Frame 1 is not due yet: wait for it rather than conceal early.
        assert_eq!(p.next_step(due(1) - 5, W), Step::Wait { until_us: due(1) });
        match p.next_step(due(1), W) {
            Step::Conceal {
                seq,
                playout_us,
                fec,
            } => {
                assert_eq!(seq, 1);
                assert_eq!(playout_us, frame(1).playout_us);
                assert_eq!(fec, Some(vec![2]), "FEC comes from frame 2's packet");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(played(p.next_step(due(2), W)), 2);
        assert_eq!(p.counters.fec, 1);
        assert_eq!(p.counters.plc, 0);
    }

    #[test]
    fn a_lost_frame_without_successor_is_concealed_by_plc() {
        let mut p = Playout::new();
        for seq in [0, 1, 4] {
            p.insert(frame(seq));
        }
        assert_eq!(played(p.next_step(due(0), W)), 0);
        assert_eq!(played(p.next_step(due(1), W)), 1);
        for seq in [2, 3] {
            match p.next_step(due(seq), W) {
                Step::Conceal { seq: s, fec, .. } => {
                    assert_eq!(s, seq);
                    // Frame 3's successor (4) is here: FEC for 3, PLC for 2.
                    assert_eq!(fec.is_some(), seq == 3);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(played(p.next_step(due(4), W)), 4);
        assert_eq!((p.counters.plc, p.counters.fec), (1, 1));
    }

    #[test]
    fn frames_after_their_turn_are_dropped_as_late() {
        let mut p = Playout::new();
        p.insert(frame(0));
        p.insert(frame(2));
        assert_eq!(played(p.next_step(due(0), W)), 0);
        assert!(matches!(
            p.next_step(due(1), W),
            Step::Conceal { seq: 1, .. }
        ));
        // Frame 1 shows up after it was concealed.
        assert_eq!(p.insert(frame(1)), Insert::Late);
        assert_eq!(p.insert(frame(0)), Insert::Late);
        assert_eq!(p.counters.late, 2);
        assert_eq!(played(p.next_step(due(2), W)), 2);
    }

    #[test]
    fn a_due_later_frame_skips_the_gap() {
        let mut p = Playout::new();
        p.insert(frame(0));
        assert_eq!(played(p.next_step(due(0), W)), 0);
        // The network was down: frames 1..=9 never came, 10 is already due.
        p.insert(frame(10));
        assert_eq!(played(p.next_step(due(10), W)), 10);
        assert_eq!(p.counters.skipped, 9);
    }

    #[test]
    fn the_end_frame_finishes_after_the_audio_before_it() {
        let mut p = Playout::new();
        p.insert(frame(0));
        p.insert(frame(1));
        p.set_end(2);
        assert_eq!(p.insert(frame(3)), Insert::AfterEnd);
        assert_eq!(played(p.next_step(due(0), W)), 0);
        assert_eq!(played(p.next_step(due(1), W)), 1);
        assert_eq!(p.next_step(due(2), W), Step::Finished);
    }

    #[test]
    fn restart_drops_frames_already_past_due() {
        let mut p = Playout::new();
        for seq in 0..10 {
            p.insert(frame(seq));
        }
        p.restart(due(4), W);
        assert_eq!(p.counters.discarded, 4);
        assert_eq!(played(p.next_step(due(4), W)), 4);
        assert_eq!(p.insert(frame(2)), Insert::Late);
    }

    #[test]
    fn overflow_drops_the_oldest() {
        let mut p = Playout::new();
        for seq in 0..(CAPACITY as u32 + 3) {
            p.insert(frame(seq));
        }
        assert_eq!(p.len(), CAPACITY);
        assert_eq!(p.counters.discarded, 3);
        assert_eq!(played(p.next_step(i64::MAX / 2, W)), 3);
    }

    #[test]
    fn empty_buffer_is_idle() {
        let mut p = Playout::new();
        assert_eq!(p.next_step(0, W), Step::Idle);
    }
}
