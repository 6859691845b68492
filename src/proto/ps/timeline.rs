//! 33-bit PES timestamps → one monotonic 64-bit timeline shared by the audio and video tracks.
//!
//! What belongs here: unwrapping (ISO/IEC 13818-1 §2.4.3.7: PTS/DTS are 33-bit counts of a 90 kHz
//! clock that wrap every 2^33 ticks, ~26.5 h), and the rebase policy for a source that restarted.
//! What does not: deciding which PES carries which frame (see `demux.rs`).
//!
//! Policy (documented behaviour, pinned by tests in `tests.rs`):
//! - Unwrap against the last timestamp of *any* track: the 2^33 multiple that puts the new value
//!   nearest to it wins, so a wrap mid-stream continues smoothly.
//! - `out = unwrapped + offset`, offset starting at 0 (output keeps the source's origin).
//! - A jump of more than [`JUMP_FORWARD`] ahead of, or more than [`JUMP_BACKWARD`] behind, the
//!   latest output of any track (camera reboot) rebases: the offset changes so that this frame
//!   lands one frame duration after the latest output, and both tracks flag a discontinuity.
//! - A smaller step backwards within one track is clamped to that track's last value.

/// 2^33: the period of PTS/DTS/SCR base.
pub const WRAP: i64 = 1 << 33;
/// 10 s: more than this forward is a jump, not a gap.
pub const JUMP_FORWARD: i64 = 10 * 90_000;
/// 1 s: more than this behind the latest output is a jump (audio may lag video by less).
pub const JUMP_BACKWARD: i64 = 90_000;

/// Per-track state (video or audio).
#[derive(Debug, Default, Clone)]
pub(crate) struct TrackClock {
    pub last: Option<i64>,
    /// Set when the timeline was rebased; the track's next frame carries `discontinuity`.
    pub discontinuity: bool,
}

/// What happened while mapping a timestamp, for quirk accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClockEvent {
    None,
    Wrapped,
    Jump { from: i64, to: i64 },
    Clamped,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Timeline {
    reference: Option<(u64, i64)>,
    offset: i64,
    last_any: Option<i64>,
}

fn signed33(d: i64) -> i64 {
    let d = d.rem_euclid(WRAP);
    if d > WRAP / 2 {
        d - WRAP
    } else {
        d
    }
}

impl Timeline {
    /// Unwrap a 33-bit value against the last one seen on any track.
    fn unwrap(&mut self, raw: u64) -> (i64, bool) {
        let raw = raw & (WRAP as u64 - 1);
        let (ext, wrapped) = match self.reference {
            None => (raw as i64, false),
            Some((r, e)) => {
                let ext = e + signed33(raw as i64 - r as i64);
                (ext, ext.div_euclid(WRAP) != e.div_euclid(WRAP))
            }
        };
        self.reference = Some((raw, ext));
        (ext, wrapped)
    }

    /// Map one frame's raw (pts, dts) to output values. `step` is the frame duration used to
    /// place the first frame after a rebase. `other` is the other track (flagged on a rebase).
    pub fn map(
        &mut self,
        track: &mut TrackClock,
        other: &mut TrackClock,
        pts_raw: u64,
        dts_raw: u64,
        step: i64,
    ) -> (i64, i64, ClockEvent) {
        let (dts_ext, wrapped) = self.unwrap(dts_raw);
        let cts = signed33(pts_raw as i64 - dts_raw as i64).max(0);
        let mut dts = dts_ext + self.offset;
        let mut event = if wrapped { ClockEvent::Wrapped } else { ClockEvent::None };
        if let Some(last_any) = self.last_any {
            if dts > last_any + JUMP_FORWARD || dts < last_any - JUMP_BACKWARD {
                let to = last_any + step.max(1);
                self.offset += to - dts;
                event = ClockEvent::Jump { from: dts, to };
                dts = to;
                track.discontinuity = true;
                other.discontinuity = true;
            } else if let Some(last) = track.last {
                if dts < last {
                    dts = last;
                    event = ClockEvent::Clamped;
                }
            }
        }
        track.last = Some(dts);
        self.last_any = Some(self.last_any.map_or(dts, |l| l.max(dts)));
        (dts + cts, dts, event)
    }

    /// Record an output value placed without a PES timestamp (extrapolated or a later frame of
    /// the same PES).
    pub fn note(&mut self, track: &mut TrackClock, value: i64) {
        track.last = Some(track.last.map_or(value, |l| l.max(value)));
        self.last_any = Some(self.last_any.map_or(value, |l| l.max(value)));
    }

    /// Latest output of any track.
    pub fn last_any(&self) -> Option<i64> {
        self.last_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_of_33_bits_continues_monotonically() {
        let (mut tl, mut v, mut a) = (Timeline::default(), TrackClock::default(), TrackClock::default());
        let near = (WRAP - 1800) as u64;
        assert_eq!(tl.map(&mut v, &mut a, near, near, 3600).1, WRAP - 1800);
        let (_, dts, ev) = tl.map(&mut v, &mut a, 1800, 1800, 3600);
        assert_eq!(dts, WRAP + 1800);
        assert_eq!(ev, ClockEvent::Wrapped);
        assert!(!v.discontinuity);
    }

    #[test]
    fn reboot_rebases_one_step_after_latest_and_flags_both_tracks() {
        let (mut tl, mut v, mut a) = (Timeline::default(), TrackClock::default(), TrackClock::default());
        tl.map(&mut v, &mut a, 900_000, 900_000, 3600);
        let (pts, dts, ev) = tl.map(&mut v, &mut a, 7200, 3600, 3600);
        assert_eq!((pts, dts), (907_200, 903_600));
        assert!(matches!(ev, ClockEvent::Jump { .. }));
        assert!(v.discontinuity && a.discontinuity);
        // Audio of the new epoch follows the same offset.
        let (_, adts, ev) = tl.map(&mut a, &mut v, 3600, 3600, 1920);
        assert_eq!((adts, ev), (903_600, ClockEvent::None));
    }
}
