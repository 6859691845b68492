//! The simulator's own tiny SIP text codec: just what a GB/T 28181 device needs (RFC 3261 §7 message
//! syntax, §18.3 Content-Length framing over TCP, §20 compact header names), plus RFC 2617 MD5 digest
//! answers. Deliberately independent of `crate::proto::sip` so that the simulator is a second,
//! independent implementation the gateway is tested against. No sockets here, no dialog state.

use md5::{Digest, Md5};

/// A parsed or to-be-sent SIP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipMessage {
    pub start: StartLine,
    /// Header (name, value) in wire order; names as received (compare with [`SipMessage::header`]).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    Request { method: String, uri: String },
    Response { code: u16, reason: String },
}

/// Why a buffer did not yield a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SipParseError {
    /// More bytes are needed (TCP): nothing was consumed.
    #[error("incomplete SIP message")]
    Incomplete,
    #[error("invalid SIP message at byte {offset}: {what}")]
    Invalid { offset: usize, what: &'static str },
}

/// Upper bound on a header block; beyond this the peer is misbehaving.
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;

/// RFC 3261 §7.3.3 compact forms → full names (lower case).
fn canonical(name: &str) -> String {
    let l = name.trim().to_ascii_lowercase();
    match l.as_str() {
        "v" => "via".into(),
        "f" => "from".into(),
        "t" => "to".into(),
        "i" => "call-id".into(),
        "m" => "contact".into(),
        "l" => "content-length".into(),
        "c" => "content-type".into(),
        "k" => "supported".into(),
        "s" => "subject".into(),
        _ => l,
    }
}

impl SipMessage {
    pub fn request(method: &str, uri: &str) -> Self {
        SipMessage {
            start: StartLine::Request { method: method.into(), uri: uri.into() },
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn response(code: u16, reason: &str) -> Self {
        SipMessage {
            start: StartLine::Response { code, reason: reason.into() },
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Appends a header (builder style).
    pub fn with(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    pub fn push(&mut self, name: &str, value: impl Into<String>) {
        self.headers.push((name.to_string(), value.into()));
    }

    pub fn with_body(mut self, content_type: &str, body: Vec<u8>) -> Self {
        self.headers.push(("Content-Type".into(), content_type.into()));
        self.body = body;
        self
    }

    pub fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub fn uri(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => Some(*code),
            StartLine::Request { .. } => None,
        }
    }

    /// First header with this name (case-insensitive, compact forms accepted).
    pub fn header(&self, name: &str) -> Option<&str> {
        let want = canonical(name);
        self.headers.iter().find(|(n, _)| canonical(n) == want).map(|(_, v)| v.as_str())
    }

    /// Every header value with this name, in order (several Via lines, or comma lists left joined).
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        let want = canonical(name);
        self.headers.iter().filter(|(n, _)| canonical(n) == want).map(|(_, v)| v.as_str()).collect()
    }

    pub fn call_id(&self) -> Option<&str> {
        self.header("call-id")
    }

    /// CSeq number and method (RFC 3261 §8.1.1.5).
    pub fn cseq(&self) -> Option<(u32, String)> {
        let v = self.header("cseq")?;
        let mut it = v.split_whitespace();
        let n = it.next()?.parse().ok()?;
        let m = it.next()?.to_string();
        Some((n, m))
    }

    /// The branch parameter of the top Via (RFC 3261 §8.1.1.7), the transaction key.
    pub fn top_branch(&self) -> Option<String> {
        let via = self.header("via")?;
        let first = via.split(',').next()?;
        param(first, "branch")
    }

    /// Serialises with a correct Content-Length (any Content-Length header given is replaced).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::with_capacity(512);
        match &self.start {
            StartLine::Request { method, uri } => {
                out.push_str(&format!("{method} {uri} SIP/2.0\r\n"));
            }
            StartLine::Response { code, reason } => {
                out.push_str(&format!("SIP/2.0 {code} {reason}\r\n"));
            }
        }
        for (n, v) in &self.headers {
            if canonical(n) == "content-length" {
                continue;
            }
            out.push_str(n);
            out.push_str(": ");
            out.push_str(v);
            out.push_str("\r\n");
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n", self.body.len()));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }

    /// Parses one message from the front of `buf`, returning it and the bytes consumed (leading CRLF
    /// keep-alives, RFC 5626 §3.5.1, are skipped and counted). For a datagram pass `datagram = true`:
    /// a missing Content-Length then means "the rest of the datagram" (RFC 3261 §18.3); over a stream
    /// it means 0.
    pub fn parse(buf: &[u8], datagram: bool) -> Result<(SipMessage, usize), SipParseError> {
        let mut start = 0;
        while start < buf.len() && (buf[start] == b'\r' || buf[start] == b'\n') {
            start += 1;
        }
        let rest = &buf[start..];
        let head_end = match find(rest, b"\r\n\r\n") {
            Some(i) => i,
            None if rest.len() > MAX_HEAD => {
                return Err(SipParseError::Invalid { offset: start, what: "header block too large" })
            }
            None => return Err(SipParseError::Incomplete),
        };
        if head_end > MAX_HEAD {
            return Err(SipParseError::Invalid { offset: start, what: "header block too large" });
        }
        let head = std::str::from_utf8(&rest[..head_end])
            .map_err(|e| SipParseError::Invalid { offset: start + e.valid_up_to(), what: "UTF-8 header" })?;
        let mut lines = head.split("\r\n");
        let first = lines.next().unwrap_or("");
        let start_line = if let Some(r) = first.strip_prefix("SIP/2.0 ") {
            let (code, reason) = r.split_once(' ').unwrap_or((r, ""));
            let code: u16 = code
                .parse()
                .map_err(|_| SipParseError::Invalid { offset: start + 8, what: "status code" })?;
            StartLine::Response { code, reason: reason.to_string() }
        } else {
            let mut it = first.split(' ');
            let method = it.next().unwrap_or("");
            let uri = it.next().unwrap_or("");
            let ver = it.next().unwrap_or("");
            if method.is_empty() || uri.is_empty() || ver != "SIP/2.0" {
                return Err(SipParseError::Invalid {
                    offset: start,
                    what: "request line `METHOD URI SIP/2.0`",
                });
            }
            StartLine::Request { method: method.to_string(), uri: uri.to_string() }
        };
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in lines {
            if line.starts_with(' ') || line.starts_with('\t') {
                // RFC 3261 §7.3.1 line folding.
                if let Some(last) = headers.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(line.trim());
                    continue;
                }
            }
            let Some((n, v)) = line.split_once(':') else {
                return Err(SipParseError::Invalid { offset: start, what: "header `Name: value`" });
            };
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
        let body_start = start + head_end + 4;
        let clen = headers.iter().find(|(n, _)| canonical(n) == "content-length").map(|(_, v)| v.as_str());
        let len = match clen {
            Some(v) => v
                .trim()
                .parse::<usize>()
                .map_err(|_| SipParseError::Invalid { offset: start, what: "Content-Length number" })?,
            None if datagram => buf.len() - body_start,
            None => 0,
        };
        if len > MAX_BODY {
            return Err(SipParseError::Invalid { offset: start, what: "Content-Length too large" });
        }
        if buf.len() < body_start + len {
            if datagram {
                return Err(SipParseError::Invalid {
                    offset: buf.len(),
                    what: "body shorter than Content-Length",
                });
            }
            return Err(SipParseError::Incomplete);
        }
        let body = buf[body_start..body_start + len].to_vec();
        Ok((SipMessage { start: start_line, headers, body }, body_start + len))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `;name=value` parameter of a header value (quotes stripped), case-insensitive name.
pub fn param(value: &str, name: &str) -> Option<String> {
    for part in value.split(';').skip(1) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        if k.trim().eq_ignore_ascii_case(name) {
            return Some(v.trim().trim_matches('"').to_string());
        }
    }
    None
}

/// The user part of a SIP URI, found in a header value like `<sip:3402...@host>;tag=x` or a bare URI.
pub fn uri_user(value: &str) -> Option<String> {
    let s = value.find("sip:").map(|i| &value[i + 4..])?;
    let end = s.find('@')?;
    Some(s[..end].to_string())
}

/// The URI inside `<…>` of a name-addr, or the value up to the first `;` for an addr-spec.
pub fn addr_uri(value: &str) -> String {
    if let (Some(a), Some(b)) = (value.find('<'), value.find('>')) {
        if a < b {
            return value[a + 1..b].to_string();
        }
    }
    value.split(';').next().unwrap_or(value).trim().to_string()
}

/// A parsed `WWW-Authenticate: Digest …` challenge (RFC 2617 §3.2.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub qop_auth: bool,
    pub algorithm: Option<String>,
}

impl Challenge {
    pub fn parse(value: &str) -> Option<Challenge> {
        let v = value.trim();
        let rest = v.strip_prefix("Digest").or_else(|| v.strip_prefix("digest"))?;
        let mut c = Challenge::default();
        for (k, val) in auth_params(rest) {
            match k.to_ascii_lowercase().as_str() {
                "realm" => c.realm = val,
                "nonce" => c.nonce = val,
                "opaque" => c.opaque = Some(val),
                "algorithm" => c.algorithm = Some(val),
                "qop" => c.qop_auth = val.split(',').any(|q| q.trim().eq_ignore_ascii_case("auth")),
                _ => {}
            }
        }
        Some(c)
    }

    /// The `Authorization` header value answering this challenge (RFC 2617 §3.2.2): with qop=auth when
    /// offered (`nc=00000001`, the given cnonce), else the RFC 2069 form.
    pub fn authorization(&self, user: &str, password: &str, method: &str, uri: &str, cnonce: &str) -> String {
        let ha1 = md5_hex(&format!("{user}:{}:{password}", self.realm));
        let ha2 = md5_hex(&format!("{method}:{uri}"));
        let mut out = format!(
            "Digest username=\"{user}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\"",
            self.realm, self.nonce
        );
        let response = if self.qop_auth {
            let nc = "00000001";
            let r = md5_hex(&format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", self.nonce));
            out.push_str(&format!(", response=\"{r}\", cnonce=\"{cnonce}\", qop=auth, nc={nc}"));
            r
        } else {
            let r = md5_hex(&format!("{ha1}:{}:{ha2}", self.nonce));
            out.push_str(&format!(", response=\"{r}\""));
            r
        };
        let _ = response;
        out.push_str(", algorithm=MD5");
        if let Some(o) = &self.opaque {
            out.push_str(&format!(", opaque=\"{o}\""));
        }
        out
    }
}

/// Splits `k="v", k2=v2` auth-params, honouring quotes (commas inside quotes, e.g. `qop="auth,auth-int"`).
pub fn auth_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut parts = Vec::new();
    for ch in s.chars() {
        match ch {
            '"' => {
                quoted = !quoted;
                cur.push(ch);
            }
            ',' if !quoted => parts.push(std::mem::take(&mut cur)),
            _ => cur.push(ch),
        }
    }
    parts.push(cur);
    for p in parts {
        if let Some((k, v)) = p.split_once('=') {
            out.push((k.trim().to_string(), v.trim().trim_matches('"').to_string()));
        }
    }
    out
}

/// Lower-case hex MD5 (RFC 1321) of a string.
pub fn md5_hex(s: &str) -> String {
    let d = Md5::digest(s.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_matches_rfc1321_vectors() {
        assert_eq!(md5_hex(""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex("abc"), "900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn digest_with_qop_matches_rfc2617_example() {
        // RFC 2617 §3.5 example (method GET, uri /dir/index.html).
        let c = Challenge::parse(
            "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", \
             nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"",
        )
        .unwrap();
        assert!(c.qop_auth);
        let h = c.authorization("Mufasa", "Circle Of Life", "GET", "/dir/index.html", "0a4f113b");
        assert!(h.contains("response=\"6629fae49393a05397450978507c4ef1\""), "{h}");
        assert!(h.contains("nc=00000001"));
        assert!(h.contains("opaque=\"5ccc069c403ebaf9f0171e9517f40e41\""));
    }

    #[test]
    fn parse_then_serialise_round_trips_and_frames_by_content_length() {
        let m = SipMessage::request("MESSAGE", "sip:1@2")
            .with("Via", "SIP/2.0/TCP 1.2.3.4:5060;rport;branch=z9hG4bKabc")
            .with("CSeq", "7 MESSAGE")
            .with_body("Application/MANSCDP+xml", b"<x/>".to_vec());
        let mut wire = m.to_bytes();
        let one = wire.len();
        wire.extend_from_slice(&m.to_bytes());
        for split in 0..one {
            assert_eq!(
                SipMessage::parse(&wire[..split], false),
                Err(SipParseError::Incomplete),
                "split {split}"
            );
        }
        let (p, used) = SipMessage::parse(&wire, false).unwrap();
        assert_eq!(used, one);
        assert_eq!(p.body, b"<x/>");
        assert_eq!(p.top_branch().as_deref(), Some("z9hG4bKabc"));
        assert_eq!(p.cseq(), Some((7, "MESSAGE".into())));
        assert_eq!(p.header("l"), Some("4"));
    }

    #[test]
    fn garbage_is_invalid_not_a_panic() {
        for g in [&b"\x00\x01\x02\r\n\r\n"[..], b"SIP/2.0 abc OK\r\n\r\n", b"INVITE x\r\n\r\n"] {
            assert!(matches!(SipMessage::parse(g, true), Err(SipParseError::Invalid { .. })));
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = SipMessage::parse(&data, true);
            let _ = SipMessage::parse(&data, false);
        }

        #[test]
        fn every_split_of_a_message_is_incomplete_until_whole(split in 0usize..200) {
            let m = SipMessage::request("BYE", "sip:a@b").with("Call-ID", "x").with_body("text/plain", b"hello".to_vec());
            let wire = m.to_bytes();
            let split = split % wire.len();
            proptest::prop_assert_eq!(SipMessage::parse(&wire[..split], false), Err(SipParseError::Incomplete));
            let (p, n) = SipMessage::parse(&wire, false).unwrap();
            proptest::prop_assert_eq!(n, wire.len());
            proptest::prop_assert_eq!(p.to_bytes(), wire);
        }
    }

    #[test]
    fn uri_helpers_extract_user_and_params() {
        let v = "<sip:34020000001320000001@3402000000>;tag=abc";
        assert_eq!(uri_user(v).as_deref(), Some("34020000001320000001"));
        assert_eq!(param(v, "tag").as_deref(), Some("abc"));
        assert_eq!(addr_uri(v), "sip:34020000001320000001@3402000000");
    }
}
