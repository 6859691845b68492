//! Bit-level reading of H.264 / H.265 RBSP and the error type shared by the codec parsers.
//!
//! What belongs here: emulation-prevention removal (ITU-T H.264 §7.4.1 / H.265 §7.4.2:
//! `00 00 03` → `00 00`), a big-endian bit reader with `u(n)` and Exp-Golomb `ue(v)` / `se(v)`
//! (H.264 §9.1, H.265 §9.2), a byte taker for decoder configuration records, and [`CodecError`].
//! What does not: any syntax structure (SPS, VPS,
//! ADTS): those live in `h264`, `h265`, `aac`.
//!
//! Every read is checked: running out of bits is an error, never a panic.

use bytes::Bytes;

/// Why a codec structure could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The input ended before the structure did.
    #[error("{what}: truncated at bit {bit_offset}")]
    Truncated { what: &'static str, bit_offset: usize },
    /// A field holds a value the specification forbids (or we cannot represent).
    #[error("{what}: invalid value {value} at bit {bit_offset}")]
    Invalid { what: &'static str, value: u64, bit_offset: usize },
    /// The NAL unit / frame is not of the kind the parser was asked to read.
    #[error("wrong unit: expected {expected}, found type {found}")]
    WrongType { expected: &'static str, found: u8 },
}

/// Remove emulation-prevention bytes: every `00 00 03` becomes `00 00` (H.264 §7.4.1,
/// H.265 §7.4.2). Returns the RBSP (a copy: parameter sets are a few dozen bytes).
pub fn rbsp(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0usize;
    for &b in nal {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        if b == 0 {
            zeros += 1;
        } else {
            zeros = 0;
        }
        out.push(b);
    }
    out
}

/// MSB-first bit reader over an RBSP.
pub struct BitReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        BitReader { buf, pos: 0 }
    }

    /// Current position in bits.
    pub fn bit_pos(&self) -> usize {
        self.pos
    }

    /// Bits left.
    pub fn remaining(&self) -> usize {
        (self.buf.len() * 8).saturating_sub(self.pos)
    }

    fn truncated(&self, what: &'static str) -> CodecError {
        CodecError::Truncated { what, bit_offset: self.pos }
    }

    /// `u(1)`.
    pub fn flag(&mut self, what: &'static str) -> Result<bool, CodecError> {
        Ok(self.u(1, what)? == 1)
    }

    /// `u(n)` for n ≤ 64.
    pub fn u(&mut self, n: u32, what: &'static str) -> Result<u64, CodecError> {
        debug_assert!(n <= 64);
        if n as usize > self.remaining() {
            return Err(self.truncated(what));
        }
        let mut v: u64 = 0;
        for _ in 0..n {
            let byte = self.buf[self.pos / 8];
            let bit = (byte >> (7 - (self.pos % 8))) & 1;
            v = (v << 1) | u64::from(bit);
            self.pos += 1;
        }
        Ok(v)
    }

    /// Skip `n` bits.
    pub fn skip(&mut self, n: usize, what: &'static str) -> Result<(), CodecError> {
        if n > self.remaining() {
            return Err(self.truncated(what));
        }
        self.pos += n;
        Ok(())
    }

    /// `ue(v)` (H.264 §9.1). Values above `u32::MAX` are rejected as invalid.
    pub fn ue(&mut self, what: &'static str) -> Result<u32, CodecError> {
        let start = self.pos;
        let mut zeros = 0u32;
        while !self.flag(what)? {
            zeros += 1;
            if zeros > 32 {
                return Err(CodecError::Invalid { what, value: u64::from(zeros), bit_offset: start });
            }
        }
        let rest = self.u(zeros, what)?;
        let v = (1u64 << zeros) - 1 + rest;
        u32::try_from(v).map_err(|_| CodecError::Invalid { what, value: v, bit_offset: start })
    }

    /// `se(v)` (H.264 §9.1.1).
    pub fn se(&mut self, what: &'static str) -> Result<i64, CodecError> {
        let k = i64::from(self.ue(what)?);
        Ok(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }

    /// `ue(v)` checked against an inclusive maximum from the semantics clause.
    pub fn ue_max(&mut self, max: u32, what: &'static str) -> Result<u32, CodecError> {
        let at = self.pos;
        let v = self.ue(what)?;
        if v > max {
            return Err(CodecError::Invalid { what, value: u64::from(v), bit_offset: at });
        }
        Ok(v)
    }
}

/// Takes byte ranges off the front of a record (avcC, hvcC), naming what was cut short in the
/// error. The ranges are zero-copy slices of one copy of the input.
pub(crate) struct ByteTaker {
    buf: Bytes,
    pos: usize,
}

impl ByteTaker {
    pub(crate) fn new(buf: &[u8]) -> ByteTaker {
        ByteTaker { buf: Bytes::copy_from_slice(buf), pos: 0 }
    }

    /// The next `n` bytes, or `Truncated` with the offset where they were expected.
    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<Bytes, CodecError> {
        if self.buf.len() < self.pos + n {
            return Err(CodecError::Truncated { what, bit_offset: self.pos * 8 });
        }
        let s = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(s)
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn rest(&self) -> &[u8] {
        &self.buf[self.pos..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rbsp_removes_only_emulation_prevention_bytes() {
        assert_eq!(rbsp(&[0, 0, 3, 1, 0, 0, 3, 0, 3]), vec![0, 0, 1, 0, 0, 0, 3]);
        assert_eq!(rbsp(&[0, 3, 0, 0, 2]), vec![0, 3, 0, 0, 2]);
    }

    #[test]
    fn exp_golomb_reads_known_codes() {
        // 1 | 010 | 011 | 00100 | 00101 → ue 0,1,2,3 ; se(00101)= -2
        let buf = [0b1010_0110, 0b0100_0010, 0b1000_0000];
        let mut r = BitReader::new(&buf);
        assert_eq!(r.ue("a").unwrap(), 0);
        assert_eq!(r.ue("b").unwrap(), 1);
        assert_eq!(r.ue("c").unwrap(), 2);
        assert_eq!(r.ue("d").unwrap(), 3);
        assert_eq!(r.se("e").unwrap(), -2);
    }

    #[test]
    fn reading_past_the_end_is_an_error_not_a_panic() {
        let mut r = BitReader::new(&[0x00]);
        assert!(matches!(r.ue("x"), Err(CodecError::Truncated { .. })));
        let mut r = BitReader::new(&[0xff]);
        assert!(r.u(9, "y").is_err());
        assert!(r.skip(9, "z").is_err());
        let zeros = [0u8; 8];
        let mut r = BitReader::new(&zeros);
        assert!(matches!(r.ue("big"), Err(CodecError::Invalid { .. })));
    }
}
