//! The fan-out core: one stream's muxed FLV tags in a byte-bounded ring, read by viewer cursors.
//!
//! What belongs here: the ring ([`Ring`]), the per-viewer [`Cursor`], and the rules for joining,
//! lagging and closing (DESIGN.md §3 convention 4, "mux once, share everywhere"). What does not:
//! muxing (the stream driver pushes already-muxed `Bytes`), sockets, timers.
//!
//! Rules:
//! - The producer pushes each tag once; every viewer gets the same reference-counted `Bytes`.
//! - The ring keeps the tags from the last keyframe on (the GOP cache), plus a small slack of the
//!   GOP before it so a viewer a few tags behind at a keyframe is not dropped; the total never
//!   exceeds `bound` bytes (oldest entries go first).
//! - A new cursor starts at the last keyframe in the ring, or — when there is none yet — at the first
//!   keyframe pushed after it was made (a viewer arriving before the stream gets the very first
//!   keyframe the device sends).
//! - A cursor whose position has been trimmed away is *lagged*: it jumps to the newest keyframe,
//!   is sent the sequence headers again, and the drop is counted (`viewer_drops{reason="lagged"}`).
//! - A read takes everything ready (up to a batch limit) under one short lock, so the writer can
//!   hand it to the socket in one vectored write. A viewer holds at most one batch outside the ring.

use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// What a viewer needs before the first tag of a GOP: the FLV header and the init tags
/// (`onMetaData` + sequence headers) as they were when that keyframe was muxed.
#[derive(Debug)]
pub struct StartInfo {
    pub header: Bytes,
    pub init: Vec<Bytes>,
}

struct Entry {
    data: Bytes,
    /// Set on a video keyframe tag: a viewer may start here.
    start: Option<Arc<StartInfo>>,
}

struct Inner {
    entries: VecDeque<Entry>,
    /// Sequence number of `entries[0]`.
    first_seq: u64,
    bytes: usize,
    /// Sequence numbers of the keyframe entries still in the ring, ascending.
    keys: VecDeque<u64>,
    closed: Option<String>,
}

impl Inner {
    fn next_seq(&self) -> u64 {
        self.first_seq + self.entries.len() as u64
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= e.data.len();
            if self.keys.front() == Some(&self.first_seq) {
                self.keys.pop_front();
            }
            self.first_seq += 1;
        }
    }
}

/// Most entries one read hands out.
const MAX_BATCH_ENTRIES: usize = 256;
/// Most bytes one read hands out (a single larger tag is still handed out alone).
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Most bytes of the previous GOP kept once a new keyframe arrives: a viewer up to this far
/// behind at a keyframe (about 1/3 s of a 1.5 Mbit/s stream) reads on; one further behind jumps
/// to the new keyframe. Every stream holds it all the time, so it is kept small (the load
/// harness showed 256 KiB as a third of a stream's memory).
const MAX_LAG_SLACK: usize = 64 * 1024;

/// A byte-bounded ring of muxed tags with a wake-up for readers.
pub struct Ring {
    inner: Mutex<Inner>,
    notify: Notify,
    bound: usize,
    slack: usize,
}

/// A viewer's position in a [`Ring`].
#[derive(Debug, Clone)]
pub struct Cursor {
    next: u64,
    /// Waiting for a keyframe at or after `next`.
    need_start: bool,
    /// FLV header already sent.
    sent_header: bool,
    /// Fell behind; reported with the next data (the jump may have to wait for a keyframe).
    lagged: bool,
}

/// Result of [`Ring::read`].
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// `out` got data; `lagged` says the cursor had fallen behind and jumped to a keyframe.
    Data { lagged: bool },
    /// Nothing ready; wait on [`Ring::notified`].
    Empty,
    /// The stream ended and the cursor has read everything.
    Closed(String),
}

impl Ring {
    pub fn new(bound: usize) -> Ring {
        Ring {
            inner: Mutex::new(Inner {
                entries: VecDeque::new(),
                first_seq: 0,
                bytes: 0,
                keys: VecDeque::new(),
                closed: None,
            }),
            notify: Notify::new(),
            bound,
            slack: (bound / 4).min(MAX_LAG_SLACK),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the ring inconsistent in a way readers
        // care about (every field is updated before the next one is read), so recover.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Append one tag. `start` is set on a video keyframe tag. Readers are not woken: call
    /// [`Ring::wake`] after the last tag of a batch.
    pub fn push(&self, data: Bytes, start: Option<Arc<StartInfo>>) {
        let mut g = self.lock();
        if g.closed.is_some() {
            return;
        }
        if start.is_some() {
            // New GOP: keep at most `slack` bytes before it.
            let seq = g.next_seq();
            let mut before = g.bytes;
            while before > self.slack && g.first_seq < seq {
                let len = g.entries.front().map_or(0, |e| e.data.len());
                g.pop_front();
                before -= len;
            }
            g.keys.push_back(seq);
        }
        g.bytes += data.len();
        g.entries.push_back(Entry { data, start });
        // The byte bound, oldest first (the newest entry always stays).
        while g.bytes > self.bound && g.entries.len() > 1 {
            g.pop_front();
        }
    }

    /// Wake every waiting reader.
    pub fn wake(&self) {
        self.notify.notify_waiters();
    }

    /// End the ring: readers drain what is left, then get [`Read::Closed`].
    pub fn close(&self, reason: &str) {
        {
            let mut g = self.lock();
            if g.closed.is_none() {
                g.closed = Some(reason.to_owned());
            }
        }
        self.notify.notify_waiters();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed.is_some()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// A future that completes on the next [`Ring::wake`] or [`Ring::close`]. Create and `enable`
    /// it *before* calling [`Ring::read`] so no wake-up is missed.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }

    /// A cursor for a viewer joining now: at the last keyframe in the ring (the cached GOP), or
    /// at the first keyframe pushed from now on.
    pub fn cursor(&self) -> Cursor {
        let g = self.lock();
        let next = g.keys.back().copied().unwrap_or_else(|| g.next_seq());
        Cursor { next, need_start: true, sent_header: false, lagged: false }
    }

    /// Move everything ready for `cur` into `out` (header and init tags first when the cursor
    /// starts or restarts at a keyframe).
    pub fn read(&self, cur: &mut Cursor, out: &mut Vec<Bytes>) -> Read {
        let g = self.lock();
        if cur.next < g.first_seq {
            // Fell behind the ring: jump to the newest keyframe (counted by the caller).
            cur.lagged |= cur.sent_header;
            cur.need_start = true;
            cur.next = g.keys.back().copied().unwrap_or_else(|| g.next_seq());
        }
        if cur.need_start {
            let key = g.keys.iter().copied().find(|&k| k >= cur.next);
            match key {
                Some(k) => {
                    cur.next = k;
                    cur.need_start = false;
                    let start = g.entries[(k - g.first_seq) as usize]
                        .start
                        .as_ref()
                        .expect("invariant: every seq in `keys` is an entry with `start` set");
                    if !cur.sent_header {
                        out.push(start.header.clone());
                        cur.sent_header = true;
                    }
                    out.extend(start.init.iter().cloned());
                }
                None => {
                    cur.next = cur.next.max(g.next_seq());
                    return match &g.closed {
                        Some(r) => Read::Closed(r.clone()),
                        None => Read::Empty,
                    };
                }
            }
        }
        let from = (cur.next - g.first_seq) as usize;
        let mut taken_bytes = 0;
        for e in g.entries.iter().skip(from).take(MAX_BATCH_ENTRIES) {
            if taken_bytes > 0 && taken_bytes + e.data.len() > MAX_BATCH_BYTES {
                break;
            }
            taken_bytes += e.data.len();
            out.push(e.data.clone());
            cur.next += 1;
        }
        if !out.is_empty() {
            return Read::Data { lagged: std::mem::take(&mut cur.lagged) };
        }
        match &g.closed {
            Some(r) => Read::Closed(r.clone()),
            None => Read::Empty,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(tag: &'static str) -> Option<Arc<StartInfo>> {
        Some(Arc::new(StartInfo {
            header: Bytes::from_static(b"HDR"),
            init: vec![Bytes::from(format!("INIT-{tag}"))],
        }))
    }

    fn b(s: &str) -> Bytes {
        Bytes::from(s.to_owned())
    }

    #[test]
    fn cursor_made_before_any_keyframe_starts_at_the_first_keyframe() {
        let r = Ring::new(1 << 20);
        let mut c = r.cursor();
        r.push(b("p0"), None);
        let mut out = vec![];
        assert_eq!(r.read(&mut c, &mut out), Read::Empty);
        r.push(b("k1"), start("1"));
        r.push(b("p1"), None);
        assert_eq!(r.read(&mut c, &mut out), Read::Data { lagged: false });
        assert_eq!(out, vec![b("HDR"), b("INIT-1"), b("k1"), b("p1")]);
    }

    #[test]
    fn joiner_starts_at_last_keyframe_with_its_init_tags() {
        let r = Ring::new(1 << 20);
        r.push(b("k1"), start("1"));
        r.push(b("p1"), None);
        r.push(b("k2"), start("2"));
        r.push(b("p2"), None);
        let mut c = r.cursor();
        let mut out = vec![];
        r.read(&mut c, &mut out);
        assert_eq!(out, vec![b("HDR"), b("INIT-2"), b("k2"), b("p2")]);
        out.clear();
        assert_eq!(r.read(&mut c, &mut out), Read::Empty);
    }

    #[test]
    fn lagged_cursor_jumps_to_newest_keyframe_without_second_header() {
        let r = Ring::new(64 * 1024);
        r.push(b("k1"), start("1"));
        let mut c = r.cursor();
        let mut out = vec![];
        r.read(&mut c, &mut out);
        out.clear();
        // 3 GOPs of 40 KiB each overflow the 64 KiB bound.
        for g in 2..5 {
            r.push(Bytes::from(vec![0u8; 20 * 1024]), start("n"));
            r.push(Bytes::from(vec![g as u8; 20 * 1024]), None);
        }
        assert!(r.bytes() <= 64 * 1024);
        assert_eq!(r.read(&mut c, &mut out), Read::Data { lagged: true });
        assert_eq!(out[0], b("INIT-n"));
        assert_eq!(out.len(), 3);
        assert_eq!(out[2][0], 4);
    }

    #[test]
    fn lag_is_reported_even_when_the_jump_waits_for_the_next_keyframe() {
        let r = Ring::new(64 * 1024);
        r.push(b("k1"), start("1"));
        let mut c = r.cursor();
        let mut out = vec![];
        r.read(&mut c, &mut out);
        // One GOP larger than the ring: its keyframe is trimmed away.
        r.push(Bytes::from(vec![0u8; 30 * 1024]), start("2"));
        r.push(Bytes::from(vec![0u8; 30 * 1024]), None);
        r.push(Bytes::from(vec![0u8; 30 * 1024]), None);
        out.clear();
        assert_eq!(r.read(&mut c, &mut out), Read::Empty);
        r.push(b("k3"), start("3"));
        assert_eq!(r.read(&mut c, &mut out), Read::Data { lagged: true });
        assert_eq!(out, vec![b("INIT-3"), b("k3")]);
    }

    #[test]
    fn bound_holds_even_for_one_huge_gop() {
        let r = Ring::new(100_000);
        r.push(Bytes::from(vec![1u8; 1000]), start("1"));
        for _ in 0..1000 {
            r.push(Bytes::from(vec![0u8; 1000]), None);
        }
        assert!(r.bytes() <= 100_000);
        // The keyframe is gone: a new viewer waits for the next one.
        let mut c = r.cursor();
        let mut out = vec![];
        assert_eq!(r.read(&mut c, &mut out), Read::Empty);
        r.push(b("k2"), start("2"));
        assert_eq!(r.read(&mut c, &mut out), Read::Data { lagged: false });
        assert_eq!(out, vec![b("HDR"), b("INIT-2"), b("k2")]);
    }

    #[test]
    fn close_drains_then_reports_reason() {
        let r = Ring::new(1 << 20);
        let mut c = r.cursor();
        r.push(b("k1"), start("1"));
        r.close("bye");
        let mut out = vec![];
        assert_eq!(r.read(&mut c, &mut out), Read::Data { lagged: false });
        out.clear();
        assert_eq!(r.read(&mut c, &mut out), Read::Closed("bye".into()));
    }

    #[test]
    fn keyframe_trims_previous_gop_to_slack() {
        let r = Ring::new(8 << 20);
        r.push(b("k1"), start("1"));
        for _ in 0..100 {
            r.push(Bytes::from(vec![0u8; 10_000]), None);
        }
        r.push(b("k2"), start("2"));
        assert!(r.bytes() <= MAX_LAG_SLACK + 2, "{}", r.bytes());
    }
}
