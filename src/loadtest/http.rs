//! The harness's minimal HTTP/1.1 client (RFC 9112) and HLS playlist reading (RFC 8216).
//!
//! Belongs here: writing a GET, reading the status line and headers, de-chunking a body that arrives
//! in arbitrary pieces (RFC 9112 §7.1), small request/response helpers for the REST API and
//! `/metrics`, and the few playlist tags a polling HLS viewer needs. Does not belong: the gateway's
//! HTTP server (that is axum in `crate::http`); this client only talks to our own gateway on
//! 127.0.0.1, keeps one request per connection and never follows redirects.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// HTTP client failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    #[error("{method} {path} to {addr}: {source}")]
    Io { method: &'static str, path: String, addr: SocketAddr, source: std::io::Error },
    #[error("{path}: malformed response head: {what}")]
    Head { path: String, what: &'static str },
    #[error("{path}: bad chunked encoding at body byte {offset}: {what}")]
    Chunked { path: String, offset: u64, what: &'static str },
    #[error("{method} {path}: timed out after {after:?}")]
    Timeout { method: &'static str, path: String, after: Duration },
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub chunked: bool,
    pub content_length: Option<u64>,
}

/// Parse a response head (everything before the blank line, RFC 9112 §2.1). Returns the head and
/// its length including the blank line, or None when the blank line has not arrived yet.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, &'static str> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > 64 * 1024 {
            return Err("head longer than 64 KiB");
        }
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| "head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().ok_or("empty head")?;
    // RFC 9112 §4: HTTP-version SP status-code SP [reason-phrase]
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err("status line does not start with HTTP/1.x");
    }
    let status: u16 = parts.next().and_then(|s| s.parse().ok()).ok_or("status code is not a number")?;
    let mut head = Head { status, chunked: false, content_length: None };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { return Err("header line without ':'") };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.to_ascii_lowercase().split(',').any(|t| t.trim() == "chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            head.content_length = Some(value.parse().map_err(|_| "Content-Length is not a number")?);
        }
    }
    Ok(Some((head, end + 4)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Ext,
    SizeLf,
    Data(u64),
    DataCr,
    DataLf,
    Trailer,
    TrailerLine,
    TrailerLf { empty_line: bool },
    Done,
}

/// Streaming de-chunker (RFC 9112 §7.1): feed raw body bytes, get the payload bytes.
#[derive(Debug)]
pub struct Dechunker {
    state: ChunkState,
    size: u64,
    digits: u8,
    offset: u64,
}

impl Default for Dechunker {
    fn default() -> Self {
        Self::new()
    }
}

impl Dechunker {
    pub fn new() -> Self {
        Dechunker { state: ChunkState::Size, size: 0, digits: 0, offset: 0 }
    }

    /// The last chunk (size 0) and the trailer section have been read.
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decode `input`, appending payload slices to `out` (as ranges of `input`).
    pub fn feed(
        &mut self,
        input: &[u8],
        out: &mut Vec<std::ops::Range<usize>>,
    ) -> Result<(), (u64, &'static str)> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                ChunkState::Size => match (b as char).to_digit(16) {
                    Some(d) if self.digits < 15 => {
                        self.size = self.size * 16 + d as u64;
                        self.digits += 1;
                    }
                    Some(_) => return Err((self.offset, "chunk size longer than 15 hex digits")),
                    None if self.digits == 0 => return Err((self.offset, "chunk size expected")),
                    None if b == b'\r' => self.state = ChunkState::SizeLf,
                    None if b == b';' || b == b' ' || b == b'\t' => self.state = ChunkState::Ext,
                    None => return Err((self.offset, "hex digit, ';' or CRLF expected after chunk size")),
                },
                ChunkState::Ext => {
                    if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    }
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err((self.offset, "LF expected after chunk size"));
                    }
                    self.state =
                        if self.size == 0 { ChunkState::Trailer } else { ChunkState::Data(self.size) };
                    self.size = 0;
                    self.digits = 0;
                }
                ChunkState::Data(left) => {
                    let take = (left.min((input.len() - i) as u64)) as usize;
                    out.push(i..i + take);
                    i += take;
                    self.offset += take as u64;
                    let left = left - take as u64;
                    self.state = if left == 0 { ChunkState::DataCr } else { ChunkState::Data(left) };
                    continue;
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err((self.offset, "CRLF expected after chunk data"));
                    }
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err((self.offset, "LF expected after chunk data"));
                    }
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailer => {
                    // Start of a trailer line (RFC 9112 §7.1.2): CR of the empty line ends the body.
                    self.state = if b == b'\r' {
                        ChunkState::TrailerLf { empty_line: true }
                    } else {
                        ChunkState::TrailerLine
                    };
                }
                ChunkState::TrailerLine => {
                    if b == b'\r' {
                        self.state = ChunkState::TrailerLf { empty_line: false };
                    }
                }
                ChunkState::TrailerLf { empty_line } => {
                    if b != b'\n' {
                        return Err((self.offset, "LF expected after CR in trailer"));
                    }
                    self.state = if empty_line { ChunkState::Done } else { ChunkState::Trailer };
                }
                ChunkState::Done => return Err((self.offset, "data after the last chunk")),
            }
            i += 1;
            self.offset += 1;
        }
        Ok(())
    }
}

/// A GET (or other simple request) with a full body read; for the REST API, `/metrics` and HLS.
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// Time from sending the request to the first response byte.
    pub ttfb: Duration,
}

/// Send one request on a fresh connection and read the whole response.
pub async fn request(
    addr: SocketAddr,
    method: &'static str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<Response, HttpError> {
    let fut = request_inner(addr, method, path, body);
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(HttpError::Timeout { method, path: path.to_string(), after: timeout }),
    }
}

async fn request_inner(
    addr: SocketAddr,
    method: &'static str,
    path: &str,
    body: Option<&str>,
) -> Result<Response, HttpError> {
    let io = |source| HttpError::Io { method, path: path.to_string(), addr, source };
    let mut s = TcpStream::connect(addr).await.map_err(io)?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: gbrelay-bench\r\n"
    );
    if let Some(b) = body {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    let sent = tokio::time::Instant::now();
    s.write_all(req.as_bytes()).await.map_err(io)?;
    let mut buf = Vec::with_capacity(4096);
    let mut ttfb = None;
    let (head, mut rest) = loop {
        let mut tmp = [0u8; 8192];
        let n = s.read(&mut tmp).await.map_err(io)?;
        ttfb.get_or_insert_with(|| sent.elapsed());
        if n == 0 {
            return Err(HttpError::Head {
                path: path.to_string(),
                what: "connection closed before the head ended",
            });
        }
        buf.extend_from_slice(&tmp[..n]);
        match parse_head(&buf) {
            Ok(Some((h, len))) => break (h, buf.split_off(len)),
            Ok(None) => continue,
            Err(what) => return Err(HttpError::Head { path: path.to_string(), what }),
        }
    };
    let no_body = method == "HEAD" || head.status == 204 || head.status == 304;
    if !no_body {
        read_to_end_limited(&mut s, &mut rest, head.content_length).await.map_err(io)?;
    }
    let body = if head.chunked && !no_body {
        let mut d = Dechunker::new();
        let mut ranges = Vec::new();
        d.feed(&rest, &mut ranges).map_err(|(offset, what)| HttpError::Chunked {
            path: path.to_string(),
            offset,
            what,
        })?;
        ranges.into_iter().flat_map(|r| rest[r].to_vec()).collect()
    } else if let Some(n) = head.content_length {
        rest.truncate(n as usize);
        rest
    } else {
        rest
    };
    Ok(Response { status: head.status, body, ttfb: ttfb.unwrap_or_default() })
}

async fn read_to_end_limited(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    limit: Option<u64>,
) -> std::io::Result<()> {
    let mut tmp = [0u8; 16384];
    loop {
        if limit.is_some_and(|l| buf.len() as u64 >= l) {
            return Ok(());
        }
        let n = s.read(&mut tmp).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

/// What a polling viewer needs from a media playlist (RFC 8216 §4.3).
#[derive(Debug, Clone, PartialEq)]
pub struct Playlist {
    pub media_sequence: u64,
    pub target_duration: f64,
    /// (sequence number, duration in seconds, URI) of each segment.
    pub segments: Vec<(u64, f64, String)>,
    pub ended: bool,
}

/// Parse a media playlist; None when it is not one (no `#EXTM3U`, §4.3.1.1).
pub fn parse_playlist(text: &str) -> Option<Playlist> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    if lines.next()? != "#EXTM3U" {
        return None;
    }
    let mut p = Playlist { media_sequence: 0, target_duration: 0.0, segments: Vec::new(), ended: false };
    let mut dur = None;
    for l in lines {
        if let Some(v) = l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            p.media_sequence = v.trim().parse().ok()?;
        } else if let Some(v) = l.strip_prefix("#EXT-X-TARGETDURATION:") {
            p.target_duration = v.trim().parse().ok()?;
        } else if let Some(v) = l.strip_prefix("#EXTINF:") {
            dur = Some(v.split(',').next()?.trim().parse().ok()?);
        } else if l == "#EXT-X-ENDLIST" {
            p.ended = true;
        } else if !l.starts_with('#') {
            let seq = p.media_sequence + p.segments.len() as u64;
            p.segments.push((seq, dur.take().unwrap_or(0.0), l.to_string()));
        }
    }
    Some(p)
}

/// Resolve a segment URI against the playlist's path (RFC 3986 §5.2, for the forms a gateway uses).
pub fn resolve(playlist_path: &str, uri: &str) -> String {
    if let Some(rest) = uri.strip_prefix("http://").or_else(|| uri.strip_prefix("https://")) {
        return rest.find('/').map(|i| rest[i..].to_string()).unwrap_or_else(|| "/".into());
    }
    if uri.starts_with('/') {
        return uri.to_string();
    }
    let base = playlist_path.split('?').next().unwrap_or(playlist_path);
    let dir = &base[..base.rfind('/').map(|i| i + 1).unwrap_or(0)];
    format!("{dir}{uri}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_is_parsed_once_complete() {
        let h = b"HTTP/1.1 200 OK\r\nContent-Type: video/x-flv\r\nTransfer-Encoding: chunked\r\n\r\nxyz";
        assert_eq!(parse_head(&h[..20]), Ok(None));
        let (head, len) = parse_head(h).unwrap().unwrap();
        assert_eq!(head, Head { status: 200, chunked: true, content_length: None });
        assert_eq!(&h[len..], b"xyz");
        let (head, _) = parse_head(b"HTTP/1.1 404 Not Found\r\ncontent-length: 12\r\n\r\n").unwrap().unwrap();
        assert_eq!(head.content_length, Some(12));
        assert!(parse_head(b"SIP/2.0 200 OK\r\n\r\n").is_err());
    }

    fn dechunk_all(parts: &[&[u8]]) -> Result<(Vec<u8>, bool), (u64, &'static str)> {
        let mut d = Dechunker::new();
        let mut out = Vec::new();
        for p in parts {
            let mut r = Vec::new();
            d.feed(p, &mut r)?;
            for x in r {
                out.extend_from_slice(&p[x]);
            }
        }
        Ok((out, d.done()))
    }

    #[test]
    fn dechunking_is_split_invariant() {
        let body = b"5\r\nhello\r\na;ext=1\r\n0123456789\r\n1\r\n!\r\n0\r\nX-T: y\r\n\r\n";
        let (whole, done) = dechunk_all(&[body]).unwrap();
        assert_eq!(whole, b"hello0123456789!");
        assert!(done);
        for split in 0..body.len() {
            assert_eq!(
                dechunk_all(&[&body[..split], &body[split..]]).unwrap(),
                (whole.clone(), true),
                "split {split}"
            );
        }
        let (part, done) = dechunk_all(&[&body[..20]]).unwrap();
        assert!(!done);
        assert_eq!(part, b"hello0");
    }

    #[test]
    fn bad_chunking_reports_offset() {
        assert_eq!(dechunk_all(&[b"zz\r\n"]).unwrap_err(), (0, "chunk size expected"));
        assert_eq!(dechunk_all(&[b"2\r\nabX"]).unwrap_err(), (5, "CRLF expected after chunk data"));
    }

    #[test]
    fn playlist_segments_are_numbered_from_media_sequence() {
        let text = "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:7\n#EXTINF:2.000,\nseg7.ts\n#EXTINF:1.960,\n/live/rtp/a/seg8.ts\n";
        let p = parse_playlist(text).unwrap();
        assert_eq!(p.media_sequence, 7);
        assert_eq!(p.target_duration, 2.0);
        assert_eq!(p.segments, vec![(7, 2.0, "seg7.ts".into()), (8, 1.96, "/live/rtp/a/seg8.ts".into())]);
        assert!(!p.ended);
        assert!(parse_playlist("<html>").is_none());
    }

    #[test]
    fn segment_uris_resolve_against_the_playlist() {
        assert_eq!(resolve("/live/rtp/a/index.m3u8", "seg7.ts"), "/live/rtp/a/seg7.ts");
        assert_eq!(resolve("/live/rtp/a/index.m3u8?x=1", "7.ts?y"), "/live/rtp/a/7.ts?y");
        assert_eq!(resolve("/live/rtp/a/index.m3u8", "/x/1.ts"), "/x/1.ts");
        assert_eq!(resolve("/live/rtp/a/index.m3u8", "http://127.0.0.1:8080/y/2.ts"), "/y/2.ts");
    }
}
