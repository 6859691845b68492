//! SIP message parsing and building over `rsip` (RFC 3261 §7, §20), with the pre-normalisation that
//! GB/T 28181 devices need before `rsip` accepts their messages.
//!
//! What belongs here: turning one complete message (a UDP datagram or one TCP frame cut by
//! [`super::framing`]) into a [`Message`], raw header access by name (full or compact form), the few
//! structured fields the gateway needs (Via, From/To tags, CSeq, Expires, Contact), and builders for
//! requests and responses. Not here: stream framing (`framing.rs`), digest auth (`digest.rs`),
//! transactions (`transaction.rs`).
//!
//! `rsip` parses the start line and tokenises the headers. What it rejects that devices send, and
//! how we pre-normalise (policy `normalise_head`):
//! - bare LF line ends (RFC 3261 §7.5 asks CRLF; several IPC firmwares send LF): rewritten to CRLF;
//! - folded header lines (RFC 3261 §7.3.1 LWS continuation): unfolded;
//! - whitespace before the header colon (`Via : …`, allowed by §7.3.1's `HCOLON`): removed;
//! - non-UTF-8 bytes in header values (GBK `User-Agent`): replaced lossily;
//! - leading CRLFs (keepalive pings, RFC 5626 §4.4.1): skipped.
//!
//! The body is never given to `rsip` (its `Display` converts a body to UTF-8 lossily, which would
//! destroy GB2312 XML): we keep it as a `Bytes` slice and append it raw when building.

use bytes::{BufMut, Bytes, BytesMut};
use rsip::headers::UntypedHeader;
use rsip::Header;
use std::fmt::Write as _;

/// Why a message could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    #[error("no end of headers (CRLF CRLF) in {len} bytes")]
    NoHeaderEnd { len: usize },
    #[error("headers of {len} bytes exceed the limit of {max}")]
    HeadersTooLong { len: usize, max: usize },
    #[error("bad Content-Length {value:?}")]
    BadContentLength { value: String },
    #[error("Content-Length {declared} but only {available} body bytes")]
    Truncated { declared: usize, available: usize },
    #[error("rsip rejected the message: {0}")]
    Syntax(String),
    #[error("missing or bad header {0}")]
    MissingHeader(&'static str),
}

/// Largest header section accepted (bytes). Enough for any device we know; bounds memory.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest body accepted (bytes); a 64-channel catalog fragment is ~10 KiB.
pub const MAX_BODY: usize = 256 * 1024;

/// One parsed SIP message: the `rsip` start line and headers, and the raw body.
#[derive(Debug, Clone)]
pub struct Message {
    pub sip: rsip::SipMessage,
    pub body: Bytes,
}

/// The compact forms of RFC 3261 §7.3.3 (and RFC 3515/3265 ones devices use).
fn compact(name: &str) -> Option<&'static str> {
    Some(match name.as_bytes() {
        [c] => match c.to_ascii_lowercase() {
            b'v' => "Via",
            b'f' => "From",
            b't' => "To",
            b'i' => "Call-ID",
            b'm' => "Contact",
            b'l' => "Content-Length",
            b'c' => "Content-Type",
            b'e' => "Content-Encoding",
            b'k' => "Supported",
            b's' => "Subject",
            b'o' => "Event",
            _ => return None,
        },
        _ => return None,
    })
}

/// Name and value of an `rsip` header.
pub fn header_name_value(h: &Header) -> (&str, &str) {
    match h {
        Header::Accept(v) => ("Accept", v.value()),
        Header::AcceptEncoding(v) => ("Accept-Encoding", v.value()),
        Header::AcceptLanguage(v) => ("Accept-Language", v.value()),
        Header::AlertInfo(v) => ("Alert-Info", v.value()),
        Header::Allow(v) => ("Allow", v.value()),
        Header::AuthenticationInfo(v) => ("Authentication-Info", v.value()),
        Header::Authorization(v) => ("Authorization", v.value()),
        Header::CSeq(v) => ("CSeq", v.value()),
        Header::CallId(v) => ("Call-ID", v.value()),
        Header::CallInfo(v) => ("Call-Info", v.value()),
        Header::Contact(v) => ("Contact", v.value()),
        Header::ContentDisposition(v) => ("Content-Disposition", v.value()),
        Header::ContentEncoding(v) => ("Content-Encoding", v.value()),
        Header::ContentLanguage(v) => ("Content-Language", v.value()),
        Header::ContentLength(v) => ("Content-Length", v.value()),
        Header::ContentType(v) => ("Content-Type", v.value()),
        Header::Date(v) => ("Date", v.value()),
        Header::ErrorInfo(v) => ("Error-Info", v.value()),
        Header::Event(v) => ("Event", v.value()),
        Header::Expires(v) => ("Expires", v.value()),
        Header::From(v) => ("From", v.value()),
        Header::InReplyTo(v) => ("In-Reply-To", v.value()),
        Header::MaxForwards(v) => ("Max-Forwards", v.value()),
        Header::MimeVersion(v) => ("MIME-Version", v.value()),
        Header::MinExpires(v) => ("Min-Expires", v.value()),
        Header::Organization(v) => ("Organization", v.value()),
        Header::Other(n, v) => (compact(n).unwrap_or(n.as_str()), v.as_str()),
        Header::Priority(v) => ("Priority", v.value()),
        Header::ProxyAuthenticate(v) => ("Proxy-Authenticate", v.value()),
        Header::ProxyAuthorization(v) => ("Proxy-Authorization", v.value()),
        Header::ProxyRequire(v) => ("Proxy-Require", v.value()),
        Header::RecordRoute(v) => ("Record-Route", v.value()),
        Header::ReplyTo(v) => ("Reply-To", v.value()),
        Header::Require(v) => ("Require", v.value()),
        Header::RetryAfter(v) => ("Retry-After", v.value()),
        Header::Route(v) => ("Route", v.value()),
        Header::Server(v) => ("Server", v.value()),
        Header::Subject(v) => ("Subject", v.value()),
        Header::SubscriptionState(v) => ("Subscription-State", v.value()),
        Header::Supported(v) => ("Supported", v.value()),
        Header::Timestamp(v) => ("Timestamp", v.value()),
        Header::To(v) => ("To", v.value()),
        Header::Unsupported(v) => ("Unsupported", v.value()),
        Header::UserAgent(v) => ("User-Agent", v.value()),
        Header::Via(v) => ("Via", v.value()),
        Header::Warning(v) => ("Warning", v.value()),
        Header::WwwAuthenticate(v) => ("WWW-Authenticate", v.value()),
    }
}

/// Find the end of the header section: offset of the blank line and the length of the terminator.
/// Accepts CRLF CRLF (RFC 3261 §7) and bare LF LF (policy: lenient line ends).
pub(crate) fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some((i + 1, 1));
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some((i + 1, 2));
            }
        }
        i += 1;
    }
    None
}

/// Skip leading CRLF / LF (keepalive pings between messages, RFC 5626 §4.4.1; RFC 3261 §7.5).
pub(crate) fn skip_leading_crlf(buf: &[u8]) -> usize {
    buf.iter().take_while(|&&b| b == b'\r' || b == b'\n').count()
}

/// The Content-Length of a raw header section, if present (full or compact `l`).
pub(crate) fn raw_content_length(head: &[u8]) -> Result<Option<usize>, ParseError> {
    for line in head.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let name = trim_ascii(&line[..colon]);
        if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
            let v = trim_ascii(&line[colon + 1..]);
            let s = std::str::from_utf8(v).unwrap_or("");
            if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ParseError::BadContentLength { value: String::from_utf8_lossy(v).into_owned() });
            }
            return s.parse().map(Some).map_err(|_| ParseError::BadContentLength { value: s.to_owned() });
        }
    }
    Ok(None)
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &b[start..end.max(start)]
}

/// Rewrite a header section into the form `rsip` accepts (see the module header), ending with
/// CRLF CRLF. Returns `None` when it is already in that form (fast path, no copy).
fn normalise_head(head: &[u8]) -> Option<Vec<u8>> {
    let text_ok = std::str::from_utf8(head).is_ok();
    let mut needs = !text_ok;
    if !needs {
        let mut prev = 0u8;
        let mut line_start = true;
        for &b in head {
            if b == b'\n' && prev != b'\r' {
                needs = true;
                break;
            }
            if line_start && (b == b' ' || b == b'\t') {
                needs = true;
                break;
            }
            line_start = b == b'\n';
            prev = b;
        }
        if !needs {
            needs = head.split(|&b| b == b'\n').skip(1).any(|l| {
                l.iter()
                    .position(|&b| b == b':')
                    .is_some_and(|c| c > 0 && (l[c - 1] == b' ' || l[c - 1] == b'\t'))
            });
        }
    }
    if !needs {
        return None;
    }
    let text = String::from_utf8_lossy(head);
    let mut lines: Vec<String> = Vec::new();
    for raw in text.split('\n') {
        let l = raw.strip_suffix('\r').unwrap_or(raw);
        if l.is_empty() {
            continue;
        }
        if (l.starts_with(' ') || l.starts_with('\t')) && !lines.is_empty() {
            // RFC 3261 §7.3.1: a continuation line is joined with a single space.
            let last = lines.last_mut().expect("checked non-empty");
            last.push(' ');
            last.push_str(l.trim());
            continue;
        }
        if lines.is_empty() {
            lines.push(l.to_owned());
        } else if let Some((n, v)) = l.split_once(':') {
            lines.push(format!("{}: {}", n.trim(), v.trim()));
        } else {
            lines.push(l.to_owned());
        }
    }
    let mut out = Vec::with_capacity(head.len() + lines.len() + 4);
    for l in &lines {
        out.extend_from_slice(l.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Some(out)
}

impl Message {
    /// Parse one complete message (a datagram or a framed TCP message). The body is cut by
    /// Content-Length (RFC 3261 §18.3: extra bytes after it are discarded; fewer is an error, as
    /// on UDP the message was truncated). Without Content-Length the rest of the datagram is body.
    pub fn parse(data: Bytes) -> Result<Message, ParseError> {
        let skip = skip_leading_crlf(&data);
        let buf = &data[skip..];
        let Some((blank, term)) = find_head_end(buf) else {
            if buf.len() > MAX_HEAD {
                return Err(ParseError::HeadersTooLong { len: buf.len(), max: MAX_HEAD });
            }
            return Err(ParseError::NoHeaderEnd { len: buf.len() });
        };
        if blank > MAX_HEAD {
            return Err(ParseError::HeadersTooLong { len: blank, max: MAX_HEAD });
        }
        let head = &buf[..blank];
        let body_start = skip + blank + term;
        let available = data.len() - body_start;
        let body_len = match raw_content_length(head)? {
            Some(n) if n > available => return Err(ParseError::Truncated { declared: n, available }),
            Some(n) => n,
            None => available,
        };
        if body_len > MAX_BODY {
            return Err(ParseError::Truncated { declared: body_len, available: MAX_BODY });
        }
        let body = data.slice(body_start..body_start + body_len);
        // `head` ends with the last header's line end; rsip wants that plus the blank line.
        let sip = match normalise_head(head) {
            Some(norm) => rsip::SipMessage::try_from(norm.as_slice()),
            None => {
                let mut v = Vec::with_capacity(head.len() + 2);
                v.extend_from_slice(head);
                v.extend_from_slice(b"\r\n");
                rsip::SipMessage::try_from(v.as_slice())
            }
        }
        .map_err(|e| ParseError::Syntax(truncate(e.to_string(), 200)))?;
        Ok(Message { sip, body })
    }

    pub fn is_request(&self) -> bool {
        self.sip.is_request()
    }

    /// The request method (`"REGISTER"`, …), or for a response the method of its CSeq.
    pub fn method(&self) -> String {
        match &self.sip {
            rsip::SipMessage::Request(r) => r.method.to_string(),
            rsip::SipMessage::Response(_) => self.cseq().map(|c| c.1).unwrap_or_default(),
        }
    }

    /// The status code of a response.
    pub fn status(&self) -> Option<u16> {
        match &self.sip {
            rsip::SipMessage::Response(r) => Some(r.status_code.code()),
            _ => None,
        }
    }

    /// The Request-URI as text.
    pub fn request_uri(&self) -> Option<String> {
        match &self.sip {
            rsip::SipMessage::Request(r) => Some(r.uri.to_string()),
            _ => None,
        }
    }

    fn headers(&self) -> &rsip::Headers {
        match &self.sip {
            rsip::SipMessage::Request(r) => &r.headers,
            rsip::SipMessage::Response(r) => &r.headers,
        }
    }

    /// First value of a header, by full name (case-insensitive); compact forms match too.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers()
            .iter()
            .map(header_name_value)
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Every value of a header, in order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers()
            .iter()
            .map(header_name_value)
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    pub fn call_id(&self) -> Option<&str> {
        self.header("Call-ID").map(str::trim).filter(|s| !s.is_empty())
    }

    /// CSeq number and method (RFC 3261 §8.1.1.5).
    pub fn cseq(&self) -> Option<(u32, String)> {
        let v = self.header("CSeq")?;
        let mut it = v.split_whitespace();
        let n = it.next()?.parse().ok()?;
        let m = it.next()?.to_ascii_uppercase();
        Some((n, m))
    }

    /// The top Via (RFC 3261 §8.1.1.7), parsed.
    pub fn top_via(&self) -> Option<Via> {
        let v = self.header("Via")?;
        Via::parse(v.split(',').next()?)
    }

    pub fn from(&self) -> Option<NameAddr> {
        NameAddr::parse(self.header("From")?)
    }

    pub fn to(&self) -> Option<NameAddr> {
        NameAddr::parse(self.header("To")?)
    }

    pub fn contact(&self) -> Option<NameAddr> {
        NameAddr::parse(self.header("Contact")?)
    }

    /// The registration lifetime asked for: the Contact `expires` parameter, else the Expires
    /// header (RFC 3261 §10.2.1.1).
    pub fn expires(&self) -> Option<u32> {
        if let Some(c) = self.contact() {
            if let Some(e) = c.param("expires").and_then(|e| e.trim().parse().ok()) {
                return Some(e);
            }
        }
        self.header("Expires").and_then(|e| e.trim().parse().ok())
    }
}

fn truncate(mut s: String, n: usize) -> String {
    if s.len() > n {
        let mut cut = n;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// Parameters `;a=b;c` after a value, as (name, value) pairs; names lower-cased is left to callers.
fn params(s: &str) -> Vec<(&str, &str)> {
    s.split(';')
        .skip(1)
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect()
}

/// A Via header value (RFC 3261 §20.42).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// "UDP", "TCP", …
    pub transport: String,
    /// sent-by host[:port]
    pub sent_by: String,
    pub branch: Option<String>,
    /// `rport` present (RFC 3581 §4); with a value when already filled.
    pub rport: Option<String>,
    /// The whole value as received.
    pub raw: String,
}

impl Via {
    pub fn parse(v: &str) -> Option<Via> {
        let v = v.trim();
        let (proto, rest) = v.split_once(|c: char| c.is_whitespace())?;
        let transport = proto.rsplit('/').next()?.to_ascii_uppercase();
        let rest = rest.trim_start();
        let sent_by = rest.split(';').next()?.trim().to_owned();
        let mut branch = None;
        let mut rport = None;
        for (k, val) in params(rest) {
            if k.eq_ignore_ascii_case("branch") {
                branch = Some(val.to_owned());
            } else if k.eq_ignore_ascii_case("rport") {
                rport = Some(val.to_owned());
            }
        }
        Some(Via { transport, sent_by, branch, rport, raw: v.to_owned() })
    }
}

/// A From/To/Contact value: optional display name, URI, parameters (RFC 3261 §20.10, §20.20).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    pub uri: String,
    /// Header parameters after the URI (`tag`, `expires`, …).
    pub params: Vec<(String, String)>,
}

impl NameAddr {
    pub fn parse(v: &str) -> Option<NameAddr> {
        let v = v.trim();
        let (uri, rest) = if let Some(lt) = v.find('<') {
            let gt = lt + v[lt..].find('>')?;
            (&v[lt + 1..gt], &v[gt + 1..])
        } else {
            match v.find(';') {
                Some(i) => (&v[..i], &v[i..]),
                None => (v, ""),
            }
        };
        let params =
            params(&format!("x{rest}")).into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        Some(NameAddr { uri: uri.trim().to_owned(), params })
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn tag(&self) -> Option<&str> {
        self.param("tag").filter(|t| !t.is_empty())
    }

    /// The user part of a `sip:user@host` URI (the 20-digit ID in GB/T 28181).
    pub fn user(&self) -> Option<&str> {
        uri_user(&self.uri)
    }
}

/// The user part of a SIP URI.
pub fn uri_user(uri: &str) -> Option<&str> {
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))
        .or_else(|| uri.strip_prefix("SIP:"))?;
    let at = rest.find('@')?;
    let user = &rest[..at];
    Some(user.split(':').next().unwrap_or(user)).filter(|u| !u.is_empty())
}

/// Reason phrases of the statuses we send (RFC 3261 §21).
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        415 => "Unsupported Media Type",
        481 => "Call/Transaction Does Not Exist",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

fn other(name: &str, value: impl Into<String>) -> Header {
    Header::Other(name.to_owned(), value.into())
}

/// Append the rsip-built head and the raw body; sets Content-Length (RFC 3261 §20.14).
fn finish(head: String, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(head.len() + body.len());
    out.put_slice(head.as_bytes());
    out.put_slice(body);
    out.freeze()
}

/// Build a response to `req` (RFC 3261 §8.2.6): Via, From, To, Call-ID and CSeq copied; a To tag
/// added when `to_tag` is given and the request's To has none; the top Via gets `received` and
/// `rport` filled with the source address (RFC 3581 §4) when `source` is given.
pub fn build_response(
    req: &Message,
    code: u16,
    to_tag: Option<&str>,
    source: Option<(&str, u16)>,
    extra: &[(&str, String)],
    body: Option<(&str, &[u8])>,
) -> Bytes {
    let mut headers = rsip::Headers::default();
    let mut first_via = true;
    for h in req.headers().iter() {
        let (n, v) = header_name_value(h);
        if n.eq_ignore_ascii_case("Via") {
            if first_via {
                first_via = false;
                let mut via = v.to_owned();
                if let Some((ip, port)) = source {
                    via = fill_rport(&via, ip, port);
                }
                headers.push(Header::Via(rsip::headers::Via::new(via)));
            } else {
                headers.push(Header::Via(rsip::headers::Via::new(v)));
            }
        }
    }
    if let Some(v) = req.header("From") {
        headers.push(Header::From(rsip::headers::From::new(v)));
    }
    if let Some(v) = req.header("To") {
        let has_tag = NameAddr::parse(v).and_then(|n| n.tag().map(|_| ())).is_some();
        let to = match to_tag {
            Some(t) if !has_tag => format!("{v};tag={t}"),
            _ => v.to_owned(),
        };
        headers.push(Header::To(rsip::headers::To::new(to)));
    }
    if let Some(v) = req.header("Call-ID") {
        headers.push(Header::CallId(rsip::headers::CallId::new(v)));
    }
    if let Some(v) = req.header("CSeq") {
        headers.push(Header::CSeq(rsip::headers::CSeq::new(v)));
    }
    for (n, v) in extra {
        headers.push(other(n, v.clone()));
    }
    let (ctype, body) = body.unwrap_or(("", &[]));
    if !ctype.is_empty() {
        headers.push(Header::ContentType(rsip::headers::ContentType::new(ctype)));
    }
    headers.push(Header::ContentLength(rsip::headers::ContentLength::new(body.len().to_string())));
    let resp = rsip::Response {
        status_code: rsip::StatusCode::Other(code, reason_phrase(code).to_owned()),
        version: rsip::Version::V2,
        headers,
        body: Vec::new(),
    };
    finish(resp.to_string(), body)
}

/// RFC 3581 §4: fill `rport=<port>` and add `received=<ip>` to a Via value.
fn fill_rport(via: &str, ip: &str, port: u16) -> String {
    let mut out = String::with_capacity(via.len() + 40);
    let mut parts = via.split(';');
    out.push_str(parts.next().unwrap_or(""));
    let mut had_rport = false;
    for p in parts {
        let name = p.split('=').next().unwrap_or("").trim();
        if name.eq_ignore_ascii_case("rport") {
            had_rport = true;
            let _ = write!(out, ";rport={port}");
        } else if name.eq_ignore_ascii_case("received") {
            continue;
        } else {
            out.push(';');
            out.push_str(p);
        }
    }
    let _ = write!(out, ";received={ip}");
    if !had_rport {
        // Responses must reach the source anyway (GB/T 28181 NAT practice); say where we sent it.
        let _ = write!(out, ";rport={port}");
    }
    out
}

/// The parts of an outgoing request that are not derived from another message.
#[derive(Debug, Clone)]
pub struct RequestSpec<'a> {
    pub method: rsip::Method,
    pub uri: &'a str,
    /// Full Via value, e.g. `SIP/2.0/UDP 10.0.0.1:5060;rport;branch=z9hG4bK…`.
    pub via: String,
    pub from: String,
    pub to: String,
    pub call_id: &'a str,
    pub cseq: u32,
    pub contact: Option<String>,
    pub extra: Vec<(&'a str, String)>,
    pub body: Option<(&'a str, &'a [u8])>,
}

/// Build a request (RFC 3261 §8.1.1). Fails only when `uri` is not a URI rsip accepts.
pub fn build_request(spec: &RequestSpec<'_>) -> Result<Bytes, ParseError> {
    let uri = rsip::Uri::try_from(spec.uri).map_err(|e| ParseError::Syntax(e.to_string()))?;
    let mut headers = rsip::Headers::default();
    headers.push(Header::Via(rsip::headers::Via::new(spec.via.clone())));
    headers.push(Header::From(rsip::headers::From::new(spec.from.clone())));
    headers.push(Header::To(rsip::headers::To::new(spec.to.clone())));
    headers.push(Header::CallId(rsip::headers::CallId::new(spec.call_id)));
    headers.push(Header::CSeq(rsip::headers::CSeq::new(format!("{} {}", spec.cseq, spec.method))));
    headers.push(Header::MaxForwards(rsip::headers::MaxForwards::new("70")));
    if let Some(c) = &spec.contact {
        headers.push(Header::Contact(rsip::headers::Contact::new(c.clone())));
    }
    for (n, v) in &spec.extra {
        headers.push(other(n, v.clone()));
    }
    let (ctype, body) = spec.body.unwrap_or(("", &[]));
    if !ctype.is_empty() {
        headers.push(Header::ContentType(rsip::headers::ContentType::new(ctype)));
    }
    headers.push(Header::ContentLength(rsip::headers::ContentLength::new(body.len().to_string())));
    let req =
        rsip::Request { method: spec.method, uri, version: rsip::Version::V2, headers, body: Vec::new() };
    Ok(finish(req.to_string(), body))
}

/// A new branch (RFC 3261 §8.1.1.7 magic cookie) from caller-supplied randomness.
pub fn branch(rand: u64) -> String {
    format!("z9hG4bK{rand:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const REG: &str = "REGISTER sip:34020000002000000001@3402000000 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.168.1.64:5060;rport;branch=z9hG4bK1371463273\r\n\
From: <sip:34020000001180000001@3402000000>;tag=2043466181\r\n\
To: <sip:34020000001180000001@3402000000>\r\n\
Call-ID: 1011047669\r\n\
CSeq: 1 REGISTER\r\n\
Contact: <sip:34020000001180000001@192.168.1.64:5060>\r\n\
Max-Forwards: 70\r\n\
User-Agent: IP Camera\r\n\
Expires: 3600\r\n\
Content-Length: 0\r\n\r\n";

    #[test]
    fn parses_a_hikvision_style_register() {
        let m = Message::parse(Bytes::from_static(REG.as_bytes())).unwrap();
        assert!(m.is_request());
        assert_eq!(m.method(), "REGISTER");
        assert_eq!(m.call_id(), Some("1011047669"));
        assert_eq!(m.cseq(), Some((1, "REGISTER".into())));
        assert_eq!(m.from().unwrap().user(), Some("34020000001180000001"));
        assert_eq!(m.from().unwrap().tag(), Some("2043466181"));
        assert_eq!(m.to().unwrap().tag(), None);
        assert_eq!(m.expires(), Some(3600));
        let via = m.top_via().unwrap();
        assert_eq!(via.transport, "UDP");
        assert_eq!(via.sent_by, "192.168.1.64:5060");
        assert_eq!(via.branch.as_deref(), Some("z9hG4bK1371463273"));
        assert!(m.body.is_empty());
    }

    #[test]
    fn bare_lf_folding_compact_and_space_before_colon_are_normalised() {
        let raw = "MESSAGE sip:34020000002000000001@3402000000 SIP/2.0\n\
v: SIP/2.0/TCP 10.0.0.2:5061;branch=z9hG4bKabc\n\
f: <sip:34020000001320000001@3402000000>;tag=1\n\
t : <sip:34020000002000000001@3402000000>\n\
i: abc@10.0.0.2\n\
CSeq: 20\n  MESSAGE\n\
l: 5\n\nhello";
        let m = Message::parse(Bytes::from(raw)).unwrap();
        assert_eq!(m.method(), "MESSAGE");
        assert_eq!(m.call_id(), Some("abc@10.0.0.2"));
        assert_eq!(m.cseq(), Some((20, "MESSAGE".into())));
        assert_eq!(m.top_via().unwrap().transport, "TCP");
        assert_eq!(m.to().unwrap().user(), Some("34020000002000000001"));
        assert_eq!(&m.body[..], b"hello");
    }

    #[test]
    fn gbk_body_is_kept_byte_exact_and_extra_bytes_after_content_length_dropped() {
        let body: &[u8] = &[0xC9, 0xE3, 0xCF, 0xF1, 0xBB, 0xFA];
        let mut raw = format!(
            "MESSAGE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4:5060;branch=z9hG4bK1\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: 1\r\nCSeq: 1 MESSAGE\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(body);
        raw.extend_from_slice(b"junk");
        let m = Message::parse(Bytes::from(raw)).unwrap();
        assert_eq!(&m.body[..], body);
    }

    #[test]
    fn truncated_body_and_bad_content_length_are_errors() {
        let raw = REG.replace("Content-Length: 0", "Content-Length: 10");
        assert!(matches!(Message::parse(Bytes::from(raw)), Err(ParseError::Truncated { declared: 10, .. })));
        let raw = REG.replace("Content-Length: 0", "Content-Length: -1");
        assert!(matches!(Message::parse(Bytes::from(raw)), Err(ParseError::BadContentLength { .. })));
        assert!(matches!(
            Message::parse(Bytes::from_static(b"REGISTER sip:a@b SIP/2.0\r\nVia: x")),
            Err(ParseError::NoHeaderEnd { .. })
        ));
        assert!(Message::parse(Bytes::from_static(b"\x00\xff\xfe garbage\r\n\r\n")).is_err());
    }

    #[test]
    fn oversized_headers_are_refused() {
        let mut raw = String::from("REGISTER sip:a@b SIP/2.0\r\n");
        while raw.len() <= MAX_HEAD {
            raw.push_str("X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        raw.push_str("\r\n");
        assert!(matches!(Message::parse(Bytes::from(raw)), Err(ParseError::HeadersTooLong { .. })));
    }

    #[test]
    fn response_copies_dialog_headers_adds_tag_and_fills_rport() {
        let m = Message::parse(Bytes::from_static(REG.as_bytes())).unwrap();
        let out = build_response(
            &m,
            200,
            Some("srvtag"),
            Some(("10.1.1.1", 40000)),
            &[("Expires", "3600".into())],
            None,
        );
        let r = Message::parse(out).unwrap();
        assert_eq!(r.status(), Some(200));
        assert_eq!(r.to().unwrap().tag(), Some("srvtag"));
        assert_eq!(r.call_id(), Some("1011047669"));
        assert_eq!(r.method(), "REGISTER");
        let via = r.top_via().unwrap();
        assert_eq!(via.rport.as_deref(), Some("40000"));
        assert!(via.raw.contains("received=10.1.1.1"));
        assert_eq!(r.header("Expires"), Some("3600"));
    }

    #[test]
    fn request_builder_round_trips_with_raw_body() {
        let body: &[u8] = b"<?xml?>\xC9\xE3";
        let spec = RequestSpec {
            method: rsip::Method::Message,
            uri: "sip:34020000001180000001@192.168.1.64:5060",
            via: format!("SIP/2.0/UDP 10.0.0.1:5060;rport;branch={}", branch(7)),
            from: "<sip:34020000002000000001@3402000000>;tag=abc".into(),
            to: "<sip:34020000001180000001@3402000000>".into(),
            call_id: "c1",
            cseq: 3,
            contact: None,
            extra: vec![],
            body: Some(("Application/MANSCDP+xml", body)),
        };
        let m = Message::parse(build_request(&spec).unwrap()).unwrap();
        assert_eq!(m.method(), "MESSAGE");
        assert_eq!(m.cseq(), Some((3, "MESSAGE".into())));
        assert_eq!(&m.body[..], body);
        assert_eq!(m.top_via().unwrap().branch.as_deref(), Some("z9hG4bK0000000000000007"));
    }
}
