//! SIP over a stream transport: cutting messages out of a TCP byte stream by Content-Length
//! (RFC 3261 §18.3). Streaming: `Incomplete` never consumes, `Invalid` says where and why.
//!
//! Not here: parsing a cut message (`message.rs`).

use super::message::{find_head_end, raw_content_length, skip_leading_crlf, ParseError, MAX_BODY, MAX_HEAD};

/// Outcome of looking for one message at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framed {
    /// A message occupies `buf[skip..skip + len]`; consume `skip + len` bytes.
    Complete { skip: usize, len: usize },
    /// Only keepalive CRLFs so far: consume `skip` bytes and wait.
    Keepalive { skip: usize },
    /// More bytes are needed; nothing may be consumed.
    Incomplete,
}

/// Why a stream cannot be framed (the connection should be closed: RFC 3261 §18.3 gives no way
/// to resynchronise a stream after a bad Content-Length).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("at byte {offset}: expected {expected}")]
    Invalid { offset: usize, expected: &'static str },
    #[error("at byte {offset}: {source}")]
    Header { offset: usize, source: ParseError },
}

/// Find the first message in `buf`. Content-Length is mandatory on streams (RFC 3261 §20.14);
/// policy `missing_content_length_is_zero`: some IPCs omit it on bodiless messages, so a missing
/// header means no body.
pub fn frame(buf: &[u8]) -> Result<Framed, FrameError> {
    let skip = skip_leading_crlf(buf);
    let rest = &buf[skip..];
    if rest.is_empty() {
        return Ok(if skip > 0 { Framed::Keepalive { skip } } else { Framed::Incomplete });
    }
    // A start line begins with a token (method) or "SIP/2.0": an upper-case letter (§7.1, §7.2).
    if !rest[0].is_ascii_alphabetic() {
        return Err(FrameError::Invalid { offset: skip, expected: "a SIP start line" });
    }
    let Some((blank, term)) = find_head_end(rest) else {
        if rest.len() > MAX_HEAD {
            return Err(FrameError::Invalid {
                offset: skip + MAX_HEAD,
                expected: "end of headers within 16 KiB",
            });
        }
        return Ok(Framed::Incomplete);
    };
    if blank > MAX_HEAD {
        return Err(FrameError::Invalid {
            offset: skip + MAX_HEAD,
            expected: "end of headers within 16 KiB",
        });
    }
    let cl = raw_content_length(&rest[..blank])
        .map_err(|source| FrameError::Header { offset: skip, source })?
        .unwrap_or(0);
    if cl > MAX_BODY {
        return Err(FrameError::Invalid { offset: skip, expected: "Content-Length within 256 KiB" });
    }
    let len = blank + term + cl;
    if rest.len() < len {
        return Ok(Framed::Incomplete);
    }
    Ok(Framed::Complete { skip, len })
}

/// A buffering framer for one connection: push bytes, pop messages. The buffer is bounded by the
/// header and body limits; a caller that gets an error closes the connection.
#[derive(Debug, Default)]
pub struct StreamFramer {
    buf: bytes::BytesMut,
}

impl StreamFramer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete message, if any.
    pub fn next_message(&mut self) -> Result<Option<bytes::Bytes>, FrameError> {
        match frame(&self.buf)? {
            Framed::Incomplete => Ok(None),
            Framed::Keepalive { skip } => {
                let _ = self.buf.split_to(skip);
                Ok(None)
            }
            Framed::Complete { skip, len } => {
                let _ = self.buf.split_to(skip);
                Ok(Some(self.buf.split_to(len).freeze()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_messages() -> Vec<u8> {
        let a = "MESSAGE sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nCall-ID: 1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 5\r\n\r\nhello";
        let b = "\r\n\r\nSIP/2.0 200 OK\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nCall-ID: 1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n";
        format!("{a}{b}").into_bytes()
    }

    fn drain(f: &mut StreamFramer) -> Vec<Vec<u8>> {
        let mut out = vec![];
        while let Some(m) = f.next_message().unwrap() {
            out.push(m.to_vec());
        }
        out
    }

    #[test]
    fn frames_two_messages_identically_at_every_split() {
        let data = two_messages();
        let mut one = StreamFramer::new();
        one.push(&data);
        let expect = drain(&mut one);
        assert_eq!(expect.len(), 2);
        assert!(expect[0].ends_with(b"hello"));
        assert!(expect[1].starts_with(b"SIP/2.0 200"));
        for split in 0..=data.len() {
            let mut f = StreamFramer::new();
            f.push(&data[..split]);
            let mut got = drain(&mut f);
            f.push(&data[split..]);
            got.extend(drain(&mut f));
            assert_eq!(got, expect, "split at {split}");
            assert_eq!(f.buffered(), 0);
        }
    }

    #[test]
    fn incomplete_does_not_consume() {
        let data = two_messages();
        for cut in 1..60 {
            assert_eq!(frame(&data[..cut]).unwrap(), Framed::Incomplete);
        }
    }

    #[test]
    fn garbage_bad_length_and_endless_headers_are_invalid() {
        assert!(matches!(frame(b"\x00\x01\x02"), Err(FrameError::Invalid { offset: 0, .. })));
        assert!(matches!(
            frame(b"INVITE sip:a@b SIP/2.0\r\nContent-Length: x\r\n\r\n"),
            Err(FrameError::Header { .. })
        ));
        let big = format!("INVITE sip:a@b SIP/2.0\r\n{}", "X: y\r\n".repeat(4000));
        assert!(matches!(frame(big.as_bytes()), Err(FrameError::Invalid { .. })));
        let huge = "INVITE sip:a@b SIP/2.0\r\nContent-Length: 999999999\r\n\r\n";
        assert!(matches!(frame(huge.as_bytes()), Err(FrameError::Invalid { .. })));
    }

    #[test]
    fn keepalive_crlf_is_consumed_alone() {
        assert_eq!(frame(b"\r\n\r\n").unwrap(), Framed::Keepalive { skip: 4 });
    }
}
