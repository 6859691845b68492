//! The GB/T 28181 SSRC scheme and its allocator (`proto::gb::SsrcAllocator`): format, uniqueness
//! among live sessions, quarantine of released values. Here because it needs a clock origin.

use gbrelay::proto::gb::{SsrcAllocator, SsrcError};
use std::collections::HashSet;
use std::time::{Duration, Instant};

#[test]
fn ssrc_follows_the_gb_scheme() {
    let t = Instant::now();
    let mut a = SsrcAllocator::new("34020000002000000001", Duration::from_secs(10)).unwrap();
    let s = a.allocate(t, false).unwrap();
    assert_eq!(SsrcAllocator::format(s), "0200000001");
    let h = a.allocate(t, true).unwrap();
    assert_eq!(SsrcAllocator::format(h), "1200000002");
}

#[test]
fn released_ssrc_is_quarantined_then_reusable_and_exhaustion_is_an_error() {
    let t = Instant::now();
    let mut a = SsrcAllocator::new("34020000002000000001", Duration::from_secs(10)).unwrap();
    let mut all = HashSet::new();
    for _ in 0..10_000 {
        assert!(all.insert(a.allocate(t, false).unwrap()));
    }
    assert_eq!(a.allocate(t, false), Err(SsrcError::Exhausted));
    let s = *all.iter().next().unwrap();
    a.release(t, s);
    assert_eq!(a.allocate(t + Duration::from_secs(5), false), Err(SsrcError::Exhausted));
    assert_eq!(a.allocate(t + Duration::from_secs(10), false), Ok(s));
}
