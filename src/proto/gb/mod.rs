//! GB/T 28181 specifics: 20-digit IDs (GB/T 28181-2016 Annex D), the SSRC scheme (§9.2.2 / Annex
//! F: `0` live / `1` history, digits 4–8 of the server ID, a 4-digit sequence), and MANSCDP XML
//! (`manscdp`).
//!
//! Pure: the SSRC allocator takes time from the caller. Not here: SIP (`proto::sip`).

pub mod manscdp;

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

/// True when `id` is 20 ASCII digits (Annex D).
pub fn is_gb_id(id: &str) -> bool {
    id.len() == 20 && id.bytes().all(|b| b.is_ascii_digit())
}

/// The type code, digits 11–13 (`118` NVR, `131`/`132` camera, `200` SIP server, …).
pub fn id_type(id: &str) -> Option<u16> {
    if !is_gb_id(id) {
        return None;
    }
    id[10..13].parse().ok()
}

/// Device-level type codes (Annex D: 111–130) versus channel-level ones (131–199).
pub fn is_channel_type(t: u16) -> bool {
    (131..=199).contains(&t)
}

/// The SIP domain derived from a server ID: its first 10 digits (§4 cheat sheet).
pub fn domain_of(server_id: &str) -> &str {
    server_id.get(..10).unwrap_or(server_id)
}

/// Errors of the SSRC scheme.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SsrcError {
    #[error("server id {0:?} is not 20 digits")]
    BadServerId(String),
    #[error("all 10000 SSRC sequences are in use or quarantined")]
    Exhausted,
}

/// Allocates SSRCs unique among live sessions; released values rest in quarantine so that late
/// packets of an old stream cannot land in a new one.
#[derive(Debug)]
pub struct SsrcAllocator {
    /// Digits 4–8 of the server ID as a number (0–99999).
    middle: u32,
    next: u32,
    live: HashSet<u32>,
    quarantined: HashSet<u32>,
    quarantine: VecDeque<(Instant, u32)>,
    rest: Duration,
}

impl SsrcAllocator {
    pub fn new(server_id: &str, quarantine: Duration) -> Result<Self, SsrcError> {
        if !is_gb_id(server_id) {
            return Err(SsrcError::BadServerId(server_id.to_owned()));
        }
        let middle = server_id[3..8].parse().map_err(|_| SsrcError::BadServerId(server_id.to_owned()))?;
        Ok(SsrcAllocator {
            middle,
            next: 1,
            live: HashSet::new(),
            quarantined: HashSet::new(),
            quarantine: VecDeque::new(),
            rest: quarantine,
        })
    }

    /// The SSRC for `(history, seq)`: decimal `H MMMMM SSSS` read as a number (fits in u32:
    /// at most 1 999 999 999).
    pub fn compose(&self, history: bool, seq: u32) -> u32 {
        u32::from(history) * 1_000_000_000 + self.middle * 10_000 + seq % 10_000
    }

    /// Its 10-digit text form for `y=`.
    pub fn format(ssrc: u32) -> String {
        format!("{ssrc:010}")
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(t, s)) = self.quarantine.front() {
            if now.saturating_duration_since(t) < self.rest {
                break;
            }
            self.quarantine.pop_front();
            self.quarantined.remove(&s);
        }
    }

    /// A fresh SSRC, unique among live ones and not quarantined.
    pub fn allocate(&mut self, now: Instant, history: bool) -> Result<u32, SsrcError> {
        self.expire(now);
        for _ in 0..10_000 {
            let seq = self.next;
            self.next = (self.next + 1) % 10_000;
            let s = self.compose(history, seq);
            if !self.live.contains(&s) && !self.quarantined.contains(&s) {
                self.live.insert(s);
                return Ok(s);
            }
        }
        Err(SsrcError::Exhausted)
    }

    /// Mark an SSRC as used (e.g. restored from the store). False when already live.
    pub fn reserve(&mut self, ssrc: u32) -> bool {
        self.live.insert(ssrc)
    }

    /// Release a live SSRC into quarantine. Unknown values are ignored.
    pub fn release(&mut self, now: Instant, ssrc: u32) {
        if self.live.remove(&ssrc) {
            self.quarantined.insert(ssrc);
            self.quarantine.push_back((now, ssrc));
        }
    }

    pub fn live(&self) -> usize {
        self.live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_type_reads_digits_11_to_13() {
        assert_eq!(id_type("34020000001180000001"), Some(118));
        assert_eq!(id_type("34020000001320000001"), Some(132));
        assert_eq!(id_type("3402000000132000000"), None);
        assert_eq!(id_type("3402000000132000000x"), None);
        assert_eq!(domain_of("34020000002000000001"), "3402000000");
        assert!(is_channel_type(132) && !is_channel_type(118));
    }
}
