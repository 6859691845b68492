//! Port and SSRC allocation with quarantine.
//!
//! Belongs here: the bookkeeping of which pool ports and which offered SSRCs are free, in use, or
//! resting after release. A released port or SSRC rests for `quarantine` and then goes to the
//! back of the line, so late packets of an old dialog cannot enter a new stream (issue 4 item 1).
//! Does not belong here: binding sockets (the caller binds and reports failures back) or routing.
//!
//! Time is `tokio::time::Instant`, so tests can run it on a paused clock.

use crate::config::PortRange;
use std::collections::{HashSet, VecDeque};
use std::time::Duration;
use tokio::time::Instant;

/// Port pool: free ports in line order, plus ports resting in quarantine.
#[derive(Debug)]
pub(crate) struct PortPool {
    pub(crate) range: PortRange,
    free: VecDeque<u16>,
    resting: VecDeque<(u16, Instant)>,
    in_use: HashSet<u16>,
    quarantine: Duration,
}

impl PortPool {
    /// All ports of `range` except `exclude` (the shared port, if it falls inside).
    pub(crate) fn new(range: PortRange, exclude: Option<u16>, quarantine: Duration) -> Self {
        let free = (range.first..=range.last).filter(|p| Some(*p) != exclude).collect();
        PortPool { range, free, resting: VecDeque::new(), in_use: HashSet::new(), quarantine }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(port, until)) = self.resting.front() {
            if until > now {
                break;
            }
            self.resting.pop_front();
            self.free.push_back(port);
        }
    }

    /// The port at the front of the line, marked in use.
    pub(crate) fn take(&mut self, now: Instant) -> Option<u16> {
        self.expire(now);
        let port = self.free.pop_front()?;
        self.in_use.insert(port);
        Some(port)
    }

    /// A specific port, if it is free (not in use, not resting).
    pub(crate) fn take_exact(&mut self, now: Instant, port: u16) -> bool {
        self.expire(now);
        if let Some(i) = self.free.iter().position(|p| *p == port) {
            self.free.remove(i);
            self.in_use.insert(port);
            true
        } else {
            false
        }
    }

    /// A port that could not be bound: back of the line, not in quarantine.
    pub(crate) fn put_back(&mut self, port: u16) {
        if self.in_use.remove(&port) {
            self.free.push_back(port);
        }
    }

    /// Release after use: rests for the quarantine, then goes to the back of the line.
    pub(crate) fn release(&mut self, now: Instant, port: u16) {
        if self.in_use.remove(&port) {
            self.resting.push_back((port, now + self.quarantine));
        }
    }

    pub(crate) fn contains(&self, port: u16) -> bool {
        (self.range.first..=self.range.last).contains(&port)
    }

    pub(crate) fn free_len(&self) -> usize {
        self.free.len()
    }
}

/// Offered SSRCs (GB/T 28181 Annex: `0`/`1`, digits 4–8 of the server ID, a 4-digit sequence).
#[derive(Debug)]
pub(crate) struct SsrcPool {
    /// Digits 4–8 of the server ID, as a number.
    domain: u32,
    next_seq: u32,
    in_use: HashSet<u32>,
    resting: VecDeque<(u32, Instant)>,
    resting_set: HashSet<u32>,
    quarantine: Duration,
}

/// Number of distinct sequence values (`0001`..=`9999`).
const SSRC_SEQS: u32 = 9999;

impl SsrcPool {
    pub(crate) fn new(domain: u32, quarantine: Duration) -> Self {
        SsrcPool {
            domain: domain % 100_000,
            next_seq: 1,
            in_use: HashSet::new(),
            resting: VecDeque::new(),
            resting_set: HashSet::new(),
            quarantine,
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(ssrc, until)) = self.resting.front() {
            if until > now {
                break;
            }
            self.resting.pop_front();
            self.resting_set.remove(&ssrc);
        }
    }

    /// Next free SSRC in sequence order (released ones come round again only after the others).
    pub(crate) fn allocate(&mut self, now: Instant, playback: bool) -> Option<u32> {
        self.expire(now);
        let base = if playback { 1_000_000_000 } else { 0 } + self.domain * 10_000;
        for _ in 0..SSRC_SEQS {
            let seq = self.next_seq;
            self.next_seq = if self.next_seq >= SSRC_SEQS { 1 } else { self.next_seq + 1 };
            let ssrc = base + seq;
            if !self.in_use.contains(&ssrc) && !self.resting_set.contains(&ssrc) {
                self.in_use.insert(ssrc);
                return Some(ssrc);
            }
        }
        None
    }

    /// Why `ssrc` cannot be reserved now, if it cannot.
    pub(crate) fn busy(&mut self, now: Instant, ssrc: u32) -> Option<&'static str> {
        self.expire(now);
        if self.in_use.contains(&ssrc) {
            Some("in use")
        } else if self.resting_set.contains(&ssrc) {
            Some("in quarantine")
        } else {
            None
        }
    }

    /// Reserve a caller-chosen SSRC; false if it is in use or resting.
    pub(crate) fn reserve(&mut self, now: Instant, ssrc: u32) -> bool {
        if self.busy(now, ssrc).is_some() {
            return false;
        }
        self.in_use.insert(ssrc)
    }

    pub(crate) fn is_resting(&self, ssrc: u32) -> bool {
        self.resting_set.contains(&ssrc)
    }

    pub(crate) fn release(&mut self, now: Instant, ssrc: u32) {
        if self.in_use.remove(&ssrc) && self.resting_set.insert(ssrc) {
            self.resting.push_back((ssrc, now + self.quarantine));
        }
    }
}

/// Digits 4–8 of a 20-digit server ID (`34020000002000000001` → 20000), the SSRC's middle part
/// (DESIGN.md §4). 0 when the ID is not that shape.
pub fn ssrc_domain(server_id: &str) -> u32 {
    server_id.get(3..8).and_then(|d| d.parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_port_rests_then_goes_to_the_back() {
        let t = Instant::now();
        let mut p = PortPool::new(PortRange { first: 100, last: 102 }, Some(101), Duration::from_secs(5));
        assert_eq!(p.take(t), Some(100));
        p.release(t, 100);
        assert_eq!(p.take(t), Some(102));
        assert_eq!(p.take(t), None, "100 is resting");
        assert_eq!(p.take(t + Duration::from_secs(5)), Some(100));
    }

    #[test]
    fn ssrc_follows_the_scheme_and_rests_after_release() {
        let t = Instant::now();
        let mut s = SsrcPool::new(ssrc_domain("34020000002000000001"), Duration::from_secs(5));
        let a = s.allocate(t, false).unwrap();
        assert_eq!(a, 200_000_001);
        s.release(t, a);
        assert!(!s.reserve(t, a));
        assert_eq!(s.allocate(t, true), Some(1_200_000_002));
        assert!(s.reserve(t + Duration::from_secs(5), a));
    }
}
