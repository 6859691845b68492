//! HTTP Digest authentication for SIP (RFC 2617 §3.2, RFC 3261 §22.4), server side, on `md-5`.
//!
//! We compute from the raw strings the client sent (`uri`, `nc`, `cnonce`, `qop`) because the
//! digest covers them byte for byte: re-serialising a parsed URI (`transport=UDP` vs `udp`) or a
//! parsed `nc` (`0000000a` vs `10`) breaks valid responses — the reason DESIGN.md §6 asks for our
//! own check. Nonces are self-validating (timestamp + keyed MD5), so the registrar keeps no nonce
//! table; their lifetime is bounded by the caller's `now` and `ttl`.
//!
//! Not here: deciding what to do with a failure (the registrar in `signal`).

use md5::{Digest, Md5};

/// The fields of a `Digest` Authorization header (RFC 2617 §3.2.2), raw as received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Option<String>,
    pub cnonce: Option<String>,
    pub opaque: Option<String>,
    pub qop: Option<String>,
    pub nc: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DigestError {
    #[error("authorization scheme is not Digest")]
    NotDigest,
    #[error("at byte {offset}: expected {expected}")]
    Syntax { offset: usize, expected: &'static str },
    #[error("missing parameter {0}")]
    Missing(&'static str),
    #[error("unsupported algorithm {0:?} (MD5 only)")]
    Algorithm(String),
    #[error("unsupported qop {0:?}")]
    Qop(String),
}

/// Parse `Digest k=v, k="v", …` (RFC 2617 §3.2.2; quoted strings may hold commas and `\"`).
pub fn parse_authorization(value: &str) -> Result<Credentials, DigestError> {
    let v = value.trim_start();
    let rest = match v.get(..6) {
        Some(s) if s.eq_ignore_ascii_case("digest") => &v[6..],
        _ => return Err(DigestError::NotDigest),
    };
    let base = value.len() - rest.len();
    let b = rest.as_bytes();
    let mut c = Credentials::default();
    let mut i = 0;
    let mut seen = (false, false, false, false, false);
    loop {
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t' || b[i] == b',' || b[i] == b'\r' || b[i] == b'\n')
        {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let ks = i;
        while i < b.len() && b[i] != b'=' && b[i] != b',' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &rest[ks..i];
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() || b[i] != b'=' {
            return Err(DigestError::Syntax { offset: base + i, expected: "'=' after parameter name" });
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let val: String = if i < b.len() && b[i] == b'"' {
            i += 1;
            let mut s = String::new();
            let mut start = i;
            loop {
                if i >= b.len() {
                    return Err(DigestError::Syntax { offset: base + i, expected: "closing quote" });
                }
                match b[i] {
                    b'"' => {
                        s.push_str(&rest[start..i]);
                        i += 1;
                        break;
                    }
                    b'\\' if i + 1 < b.len() => {
                        s.push_str(&rest[start..i]);
                        // quoted-pair: keep the escaped char (it may be multi-byte UTF-8)
                        let ch_len = rest[i + 1..].chars().next().map_or(1, char::len_utf8);
                        s.push_str(&rest[i + 1..i + 1 + ch_len]);
                        i += 1 + ch_len;
                        start = i;
                    }
                    _ => i += 1,
                }
            }
            s
        } else {
            let vs = i;
            while i < b.len() && b[i] != b',' && !b[i].is_ascii_whitespace() {
                i += 1;
            }
            rest[vs..i].to_owned()
        };
        match key.to_ascii_lowercase().as_str() {
            "username" => {
                c.username = val;
                seen.0 = true
            }
            "realm" => {
                c.realm = val;
                seen.1 = true
            }
            "nonce" => {
                c.nonce = val;
                seen.2 = true
            }
            "uri" => {
                c.uri = val;
                seen.3 = true
            }
            "response" => {
                c.response = val;
                seen.4 = true
            }
            "algorithm" => c.algorithm = Some(val),
            "cnonce" => c.cnonce = Some(val),
            "opaque" => c.opaque = Some(val),
            "qop" => c.qop = Some(val),
            "nc" => c.nc = Some(val),
            _ => {} // unknown parameters are ignored (RFC 2617 §3.2.2 auth-param)
        }
    }
    let (u, r, n, ur, re) = seen;
    for (ok, name) in [(u, "username"), (r, "realm"), (n, "nonce"), (ur, "uri"), (re, "response")] {
        if !ok {
            return Err(DigestError::Missing(name));
        }
    }
    if let Some(a) = &c.algorithm {
        if !a.eq_ignore_ascii_case("md5") {
            return Err(DigestError::Algorithm(a.clone()));
        }
    }
    if let Some(q) = &c.qop {
        if !q.eq_ignore_ascii_case("auth") {
            return Err(DigestError::Qop(q.clone()));
        }
        if c.nc.is_none() {
            return Err(DigestError::Missing("nc"));
        }
        if c.cnonce.is_none() {
            return Err(DigestError::Missing("cnonce"));
        }
    }
    Ok(c)
}

fn hex(d: &[u8]) -> [u8; 32] {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (i, b) in d.iter().take(16).enumerate() {
        out[2 * i] = H[usize::from(b >> 4)];
        out[2 * i + 1] = H[usize::from(b & 15)];
    }
    out
}

fn md5_hex(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Md5::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update(b":");
        }
        h.update(p);
    }
    hex(&h.finalize())
}

/// The expected `response` (RFC 2617 §3.2.2.1): with qop `auth`
/// `MD5(HA1:nonce:nc:cnonce:qop:HA2)`, without `MD5(HA1:nonce:HA2)`; HA1 = `MD5(user:realm:pass)`,
/// HA2 = `MD5(method:uri)`.
pub fn compute_response(c: &Credentials, method: &str, password: &str) -> [u8; 32] {
    let ha1 = md5_hex(&[c.username.as_bytes(), c.realm.as_bytes(), password.as_bytes()]);
    let ha2 = md5_hex(&[method.as_bytes(), c.uri.as_bytes()]);
    match (&c.qop, &c.nc, &c.cnonce) {
        (Some(q), Some(nc), Some(cn)) => {
            md5_hex(&[&ha1, c.nonce.as_bytes(), nc.as_bytes(), cn.as_bytes(), q.as_bytes(), &ha2])
        }
        _ => md5_hex(&[&ha1, c.nonce.as_bytes(), &ha2]),
    }
}

/// Check a response (hex, case-insensitive) in time independent of where it differs.
pub fn verify(c: &Credentials, method: &str, password: &str) -> bool {
    let want = compute_response(c, method, password);
    let got = c.response.as_bytes();
    if got.len() != 32 {
        return false;
    }
    let mut diff = 0u8;
    for (a, b) in want.iter().zip(got) {
        diff |= a ^ b.to_ascii_lowercase();
    }
    diff == 0
}

/// Build the `Authorization` value a client sends (used by test UAs and the simulator).
pub fn client_authorization(
    username: &str,
    realm: &str,
    password: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    qop: Option<(&str, &str)>, // (nc, cnonce)
) -> String {
    let mut c = Credentials {
        username: username.into(),
        realm: realm.into(),
        nonce: nonce.into(),
        uri: uri.into(),
        algorithm: Some("MD5".into()),
        ..Default::default()
    };
    if let Some((nc, cn)) = qop {
        c.qop = Some("auth".into());
        c.nc = Some(nc.into());
        c.cnonce = Some(cn.into());
    }
    let resp = compute_response(&c, method, password);
    let resp = std::str::from_utf8(&resp).unwrap_or_default();
    match qop {
        Some((nc, cn)) => format!(
            "Digest username=\"{username}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{resp}\", algorithm=MD5, qop=auth, nc={nc}, cnonce=\"{cn}\""
        ),
        None => format!(
            "Digest username=\"{username}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{resp}\", algorithm=MD5"
        ),
    }
}

/// Extract `nonce` and `realm` (and `qop`) from a `WWW-Authenticate` challenge (client side).
pub fn parse_challenge(value: &str) -> Option<(String, String, Option<String>)> {
    let mut nonce = None;
    let mut realm = None;
    let mut qop = None;
    let v = value.trim();
    let rest = v.get(6..).filter(|_| v[..6].eq_ignore_ascii_case("digest"))?;
    for part in rest.split(',') {
        let (k, val) = part.split_once('=')?;
        let val = val.trim().trim_matches('"').to_owned();
        match k.trim().to_ascii_lowercase().as_str() {
            "nonce" => nonce = Some(val),
            "realm" => realm = Some(val),
            "qop" => qop = Some(val),
            _ => {}
        }
    }
    Some((nonce?, realm?, qop))
}

/// Result of checking a nonce we issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    Valid,
    /// Ours, but older than the lifetime: challenge again with `stale=true` (RFC 2617 §3.2.1).
    Stale,
    /// Not one of ours.
    Invalid,
}

/// Issues and validates self-authenticating nonces: `<16 hex ms><16 hex counter><16 hex mac>`,
/// mac = first 8 bytes of MD5(secret ‖ ms ‖ counter).
#[derive(Debug, Clone)]
pub struct NonceIssuer {
    secret: [u8; 16],
    counter: u64,
}

impl NonceIssuer {
    /// `secret` must be random per process (the caller draws it).
    pub fn new(secret: [u8; 16]) -> Self {
        NonceIssuer { secret, counter: 0 }
    }

    fn mac(&self, ms: u64, ctr: u64) -> [u8; 32] {
        let mut h = Md5::new();
        h.update(self.secret);
        h.update(ms.to_be_bytes());
        h.update(ctr.to_be_bytes());
        hex(&h.finalize())
    }

    /// A fresh nonce; `now_ms` is any monotonic or wall clock in milliseconds.
    pub fn issue(&mut self, now_ms: u64) -> String {
        self.counter = self.counter.wrapping_add(1);
        let mac = self.mac(now_ms, self.counter);
        let mac = std::str::from_utf8(&mac[..16]).unwrap_or_default();
        format!("{now_ms:016x}{:016x}{mac}", self.counter)
    }

    /// Check a nonce against the clock and the lifetime.
    pub fn check(&self, nonce: &str, now_ms: u64, ttl_ms: u64) -> NonceCheck {
        if nonce.len() != 48 || !nonce.is_ascii() {
            return NonceCheck::Invalid;
        }
        let (Ok(ms), Ok(ctr)) =
            (u64::from_str_radix(&nonce[..16], 16), u64::from_str_radix(&nonce[16..32], 16))
        else {
            return NonceCheck::Invalid;
        };
        let mac = self.mac(ms, ctr);
        let mut diff = 0u8;
        for (a, b) in mac[..16].iter().zip(&nonce.as_bytes()[32..]) {
            diff |= a ^ b;
        }
        if diff != 0 {
            return NonceCheck::Invalid;
        }
        if ms > now_ms.saturating_add(1000) || now_ms - ms.min(now_ms) > ttl_ms {
            return NonceCheck::Stale;
        }
        NonceCheck::Valid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2617_example_response_with_qop() {
        // RFC 2617 §3.5.
        let c = parse_authorization(
            r#"Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth, nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41""#,
        )
        .unwrap();
        assert!(verify(&c, "GET", "Circle Of Life"));
        assert!(!verify(&c, "GET", "circle of life"));
    }

    #[test]
    fn nc_0000000a_and_lowercase_transport_uri_verify_from_raw_strings() {
        let uri = "sip:34020000002000000001@3402000000;transport=udp";
        let auth = client_authorization(
            "34020000001180000001",
            "3402000000",
            "12345678",
            "REGISTER",
            uri,
            "abc",
            Some(("0000000a", "x y,z")),
        );
        let c = parse_authorization(&auth).unwrap();
        assert_eq!(c.nc.as_deref(), Some("0000000a"));
        assert_eq!(c.uri, uri);
        assert_eq!(c.cnonce.as_deref(), Some("x y,z"));
        assert!(verify(&c, "REGISTER", "12345678"));
        assert!(!verify(&c, "REGISTER", "12345679"));
    }

    #[test]
    fn without_qop_and_uppercase_hex_response() {
        let auth = client_authorization("u", "r", "p", "REGISTER", "sip:r", "n", None);
        let mut c = parse_authorization(&auth).unwrap();
        assert!(verify(&c, "REGISTER", "p"));
        c.response = c.response.to_ascii_uppercase();
        assert!(verify(&c, "REGISTER", "p"));
    }

    #[test]
    fn malformed_authorization_is_typed_error() {
        assert_eq!(parse_authorization("Basic abc"), Err(DigestError::NotDigest));
        assert!(matches!(parse_authorization("Digest username=\"a"), Err(DigestError::Syntax { .. })));
        assert_eq!(parse_authorization("Digest username=a"), Err(DigestError::Missing("realm")));
        assert!(matches!(
            parse_authorization("Digest username=a,realm=b,nonce=c,uri=d,response=e,algorithm=SHA-256"),
            Err(DigestError::Algorithm(_))
        ));
        for s in ["Digest ", "Digest ,,,", "Digest a", "Digest a=\"\\", "digest x = y"] {
            let _ = parse_authorization(s);
        }
    }

    #[test]
    fn nonce_is_valid_then_stale_and_forgery_is_invalid() {
        let mut n = NonceIssuer::new([7; 16]);
        let nonce = n.issue(1_000_000);
        assert_eq!(n.check(&nonce, 1_000_500, 300_000), NonceCheck::Valid);
        assert_eq!(n.check(&nonce, 1_400_001, 300_000), NonceCheck::Stale);
        let other = NonceIssuer::new([8; 16]);
        assert_eq!(other.check(&nonce, 1_000_500, 300_000), NonceCheck::Invalid);
        let mut forged = nonce.clone();
        forged.replace_range(0..1, "1");
        assert_eq!(n.check(&forged, 1_000_500, 300_000), NonceCheck::Invalid);
        assert_eq!(n.check("short", 0, 1), NonceCheck::Invalid);
        assert_ne!(n.issue(1_000_000), nonce);
    }
}
