//! The demuxer's input: a queue of received `Bytes` chunks read as one byte stream.
//!
//! What belongs here: zero-copy slicing of pushed chunks, the small copies needed to see a header
//! that straddles two chunks, cross-chunk peeking for start-code scans, and the absolute stream
//! offset. What does not: any knowledge of MPEG-PS (see `demux.rs`).

use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;

#[derive(Debug, Default)]
pub(crate) struct InputQueue {
    chunks: VecDeque<Bytes>,
    len: usize,
    /// Bytes consumed since the start of the stream (offset of the first queued byte).
    consumed: u64,
}

impl InputQueue {
    pub fn push(&mut self, data: Bytes) {
        if !data.is_empty() {
            self.len += data.len();
            self.chunks.push_back(data);
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Absolute stream offset of the first queued byte.
    pub fn offset(&self) -> u64 {
        self.consumed
    }

    /// The first chunk (empty slice if none).
    pub fn front(&self) -> &[u8] {
        self.chunks.front().map_or(&[][..], |c| &c[..])
    }

    /// Make the first chunk hold at least `n` bytes (when that many are queued), copying only the
    /// `n` bytes that straddle chunk boundaries. Returns the first `n` bytes, or `None` if fewer
    /// are queued.
    pub fn contiguous(&mut self, n: usize) -> Option<&[u8]> {
        if self.len < n {
            return None;
        }
        if self.front().len() < n {
            let mut merged = BytesMut::with_capacity(n);
            while merged.len() < n {
                // Invariant: self.len >= n, so chunks remain while merged is short.
                let Some(mut c) = self.chunks.pop_front() else { break };
                let want = n - merged.len();
                if c.len() <= want {
                    merged.extend_from_slice(&c);
                } else {
                    merged.extend_from_slice(&c[..want]);
                    let rest = c.split_off(want);
                    self.chunks.push_front(rest);
                }
            }
            self.chunks.push_front(merged.freeze());
        }
        Some(&self.front()[..n])
    }

    /// Copy up to `out.len()` bytes starting `at` bytes into the queue; returns how many were
    /// available.
    pub fn peek_into(&self, at: usize, out: &mut [u8]) -> usize {
        let mut skip = at;
        let mut n = 0;
        for c in &self.chunks {
            if skip >= c.len() {
                skip -= c.len();
                continue;
            }
            let take = (c.len() - skip).min(out.len() - n);
            out[n..n + take].copy_from_slice(&c[skip..skip + take]);
            n += take;
            skip = 0;
            if n == out.len() {
                break;
            }
        }
        n
    }

    /// Take up to `max` bytes from the first chunk, zero-copy.
    pub fn take_front(&mut self, max: usize) -> Bytes {
        let Some(front) = self.chunks.front_mut() else { return Bytes::new() };
        let piece = if front.len() <= max {
            // Invariant: front exists (checked above).
            self.chunks.pop_front().unwrap_or_default()
        } else {
            front.split_to(max)
        };
        self.len -= piece.len();
        self.consumed += piece.len() as u64;
        piece
    }

    /// Drop `n` bytes (or everything, if fewer are queued); returns how many were dropped.
    pub fn skip(&mut self, n: usize) -> usize {
        let mut left = n;
        while left > 0 && !self.chunks.is_empty() {
            left -= self.take_front(left).len();
        }
        n - left
    }

    /// Drop everything queued.
    pub fn clear(&mut self) {
        let n = self.len;
        self.skip(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_copies_only_the_straddling_bytes() {
        let mut q = InputQueue::default();
        q.push(Bytes::from_static(b"ab"));
        q.push(Bytes::from_static(b"cdef"));
        assert_eq!(q.contiguous(3), Some(&b"abc"[..]));
        assert_eq!(q.front(), b"abc");
        assert_eq!(q.len(), 6);
        assert_eq!(q.contiguous(7), None);
        let mut buf = [0u8; 4];
        assert_eq!(q.peek_into(2, &mut buf), 4);
        assert_eq!(&buf, b"cdef");
        assert_eq!(q.skip(4), 4);
        assert_eq!(q.offset(), 4);
        assert_eq!(&q.take_front(10)[..], b"ef");
        assert!(q.is_empty());
    }
}
