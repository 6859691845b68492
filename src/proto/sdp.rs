//! The GB/T 28181 subset of SDP (RFC 4566; GB/T 28181-2016 §F.2 / Annex F): the INVITE offer the
//! gateway sends (live or playback; UDP, TCP passive, TCP active per RFC 4145/4571) and the device's
//! answer, including the GB `y=` (SSRC) and `f=` (media format) lines that generic SDP crates drop.
//!
//! Parsing is line-based and tolerant: CRLF or LF, unknown lines and attributes are kept in
//! `other`, a bad line is skipped rather than failing the answer (policy `skip_bad_sdp_lines`) —
//! only a missing `m=` line is an error. Not here: transport of the media (`crate::media`).

use core::net::IpAddr;
use std::fmt::Write as _;

/// The transport of the media stream in the offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaTransport {
    Udp,
    /// We listen; the device connects (our `a=setup:passive`).
    TcpPassive,
    /// We connect to the device (our `a=setup:active`).
    TcpActive,
}

/// `a=setup` (RFC 4145 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    Active,
    Passive,
    ActPass,
}

/// The offer of DESIGN.md §4.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer<'a> {
    pub server_id: &'a str,
    pub media_ip: IpAddr,
    pub media_port: u16,
    pub transport: MediaTransport,
    pub ssrc: u32,
    /// Sub-stream index: `a=streamnumber:N` and `a=stream:N` (vendor extensions used by
    /// Hikvision/Dahua and GB/T 28181-2022 §9.2).
    pub substream: Option<u8>,
    /// Playback: (channel id, start, end) in Unix seconds → `s=Playback`, `u=`, `t=`.
    pub playback: Option<(&'a str, u64, u64)>,
}

impl Offer<'_> {
    pub fn build(&self) -> String {
        let ipv = if self.media_ip.is_ipv6() { "IP6" } else { "IP4" };
        let mut s = String::with_capacity(400);
        let _ = write!(s, "v=0\r\no={} 0 0 IN {ipv} {}\r\n", self.server_id, self.media_ip);
        match self.playback {
            Some((ch, start, end)) => {
                let _ = write!(
                    s,
                    "s=Playback\r\nu={ch}:0\r\nc=IN {ipv} {}\r\nt={start} {end}\r\n",
                    self.media_ip
                );
            }
            None => {
                let _ = write!(s, "s=Play\r\nc=IN {ipv} {}\r\nt=0 0\r\n", self.media_ip);
            }
        }
        let proto = if self.transport == MediaTransport::Udp { "RTP/AVP" } else { "TCP/RTP/AVP" };
        let _ = write!(s, "m=video {} {proto} 96 97 98\r\na=recvonly\r\n", self.media_port);
        s.push_str("a=rtpmap:96 PS/90000\r\na=rtpmap:97 MPEG4/90000\r\na=rtpmap:98 H264/90000\r\n");
        match self.transport {
            MediaTransport::Udp => {}
            MediaTransport::TcpPassive => s.push_str("a=setup:passive\r\na=connection:new\r\n"),
            MediaTransport::TcpActive => s.push_str("a=setup:active\r\na=connection:new\r\n"),
        }
        if let Some(n) = self.substream {
            let _ = write!(s, "a=streamnumber:{n}\r\na=stream:{n}\r\n");
        }
        let _ = write!(s, "y={:010}\r\n", self.ssrc);
        s
    }
}

/// The `m=` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaLine {
    pub kind: String,
    pub port: u16,
    /// `RTP/AVP`, `TCP/RTP/AVP`, `RTP/AVP/TCP`.
    pub proto: String,
    pub formats: Vec<String>,
}

impl MediaLine {
    pub fn is_tcp(&self) -> bool {
        self.proto.to_ascii_uppercase().contains("TCP")
    }
}

/// A parsed SDP (the device's answer, or our own offer when tested).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sdp {
    pub origin_user: String,
    pub origin_addr: Option<IpAddr>,
    pub session_name: String,
    pub uri: Option<String>,
    /// The session- or media-level `c=` address (media level wins).
    pub connection: Option<IpAddr>,
    pub time: Option<(u64, u64)>,
    /// The first `m=video` line (or the first `m=` line when there is no video).
    pub media: Option<MediaLine>,
    pub direction: Option<String>,
    pub setup: Option<Setup>,
    pub connection_new: bool,
    pub rtpmap: Vec<(u8, String)>,
    pub stream_number: Option<u8>,
    /// `y=`: the SSRC the device will use (10 decimal digits).
    pub ssrc: Option<u32>,
    /// `f=`: GB media format description (`v/2/4///a///`), raw.
    pub format: Option<String>,
    /// Lines we do not interpret, as received.
    pub other: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdpError {
    #[error("no m= line")]
    NoMedia,
    #[error("not text")]
    NotText,
}

fn parse_ip(s: &str) -> Option<IpAddr> {
    // "IN IP4 1.2.3.4" (possibly "/ttl")
    let mut it = s.split_whitespace();
    let _net = it.next()?;
    let _ty = it.next()?;
    it.next()?.split('/').next()?.parse().ok()
}

impl Sdp {
    pub fn parse_bytes(b: &[u8]) -> Result<Sdp, SdpError> {
        Sdp::parse(std::str::from_utf8(b).map_err(|_| SdpError::NotText)?)
    }

    pub fn parse(text: &str) -> Result<Sdp, SdpError> {
        let mut sdp = Sdp::default();
        let mut in_media = false;
        let mut media_conn = None;
        let mut first_media: Option<MediaLine> = None;
        for raw in text.split('\n') {
            let line = raw.trim_end_matches('\r').trim();
            if line.len() < 2 || line.as_bytes()[1] != b'=' {
                if !line.is_empty() {
                    sdp.other.push(line.to_owned());
                }
                continue;
            }
            let (k, v) = (line.as_bytes()[0], line[2..].trim());
            match k {
                b'o' => {
                    let p: Vec<&str> = v.split_whitespace().collect();
                    sdp.origin_user = p.first().copied().unwrap_or("").to_owned();
                    sdp.origin_addr = p.get(5).and_then(|a| a.parse().ok());
                }
                b's' => sdp.session_name = v.to_owned(),
                b'u' => sdp.uri = Some(v.to_owned()),
                b'c' => {
                    if in_media {
                        media_conn = parse_ip(v).or(media_conn);
                    } else {
                        sdp.connection = parse_ip(v);
                    }
                }
                b't' => {
                    let mut it = v.split_whitespace().map(|x| x.parse::<u64>());
                    if let (Some(Ok(a)), Some(Ok(b))) = (it.next(), it.next()) {
                        sdp.time = Some((a, b));
                    }
                }
                b'm' => {
                    let p: Vec<&str> = v.split_whitespace().collect();
                    let ml =
                        match (p.first(), p.get(1).and_then(|x| x.split('/').next()?.parse().ok()), p.get(2))
                        {
                            (Some(kind), Some(port), Some(proto)) => Some(MediaLine {
                                kind: kind.to_string(),
                                port,
                                proto: proto.to_string(),
                                formats: p[3..].iter().map(|s| s.to_string()).collect(),
                            }),
                            _ => None,
                        };
                    if let Some(ml) = ml {
                        // Prefer the video line; attributes after a later audio line are ignored.
                        in_media = first_media.is_none()
                            || ml.kind == "video" && first_media.as_ref().is_some_and(|m| m.kind != "video");
                        if in_media {
                            first_media = Some(ml);
                        }
                    } else {
                        sdp.other.push(line.to_owned());
                    }
                }
                b'a' => {
                    let (name, val) = v.split_once(':').unwrap_or((v, ""));
                    match name {
                        "recvonly" | "sendonly" | "sendrecv" | "inactive" => {
                            sdp.direction = Some(name.to_owned())
                        }
                        "setup" => {
                            sdp.setup = match val.trim().to_ascii_lowercase().as_str() {
                                "active" => Some(Setup::Active),
                                "passive" => Some(Setup::Passive),
                                "actpass" => Some(Setup::ActPass),
                                _ => None,
                            }
                        }
                        "connection" => sdp.connection_new = val.trim().eq_ignore_ascii_case("new"),
                        "rtpmap" => {
                            if let Some((pt, enc)) = val.split_once(' ') {
                                if let Ok(pt) = pt.trim().parse() {
                                    sdp.rtpmap.push((pt, enc.trim().to_owned()));
                                }
                            }
                        }
                        "streamnumber" | "stream" => {
                            sdp.stream_number = val.trim().parse().ok().or(sdp.stream_number)
                        }
                        _ => sdp.other.push(line.to_owned()),
                    }
                }
                b'y' => {
                    // 10 decimal digits; some devices drop leading zeros. Over u32 → ignored.
                    sdp.ssrc = v.parse::<u64>().ok().and_then(|n| u32::try_from(n).ok());
                }
                b'f' => sdp.format = Some(v.to_owned()),
                _ => sdp.other.push(line.to_owned()),
            }
        }
        sdp.media = Some(first_media.ok_or(SdpError::NoMedia)?);
        if media_conn.is_some() {
            sdp.connection = media_conn;
        }
        Ok(sdp)
    }

    /// The media port of the answer.
    pub fn port(&self) -> Option<u16> {
        self.media.as_ref().map(|m| m.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(t: MediaTransport) -> String {
        Offer {
            server_id: "34020000002000000001",
            media_ip: "10.0.0.5".parse().unwrap(),
            media_port: 30000,
            transport: t,
            ssrc: 200000001,
            substream: None,
            playback: None,
        }
        .build()
    }

    #[test]
    fn udp_offer_matches_design_section_4() {
        let o = offer(MediaTransport::Udp);
        assert_eq!(
            o,
            "v=0\r\no=34020000002000000001 0 0 IN IP4 10.0.0.5\r\ns=Play\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\nm=video 30000 RTP/AVP 96 97 98\r\na=recvonly\r\na=rtpmap:96 PS/90000\r\na=rtpmap:97 MPEG4/90000\r\na=rtpmap:98 H264/90000\r\ny=0200000001\r\n"
        );
        let p = Sdp::parse(&o).unwrap();
        assert_eq!(p.ssrc, Some(200000001));
        assert_eq!(p.port(), Some(30000));
        assert!(!p.media.unwrap().is_tcp());
    }

    #[test]
    fn tcp_offers_carry_setup_and_connection_new() {
        let p = Sdp::parse(&offer(MediaTransport::TcpPassive)).unwrap();
        assert_eq!(p.setup, Some(Setup::Passive));
        assert!(p.connection_new);
        assert_eq!(p.media.as_ref().unwrap().proto, "TCP/RTP/AVP");
        let p = Sdp::parse(&offer(MediaTransport::TcpActive)).unwrap();
        assert_eq!(p.setup, Some(Setup::Active));
    }

    #[test]
    fn playback_and_substream_lines() {
        let o = Offer {
            server_id: "34020000002000000001",
            media_ip: "10.0.0.5".parse().unwrap(),
            media_port: 30000,
            transport: MediaTransport::Udp,
            ssrc: 1200000002,
            substream: Some(1),
            playback: Some(("34020000001320000001", 1700000000, 1700003600)),
        }
        .build();
        assert!(o.contains("s=Playback\r\nu=34020000001320000001:0\r\n"));
        assert!(o.contains("t=1700000000 1700003600\r\n"));
        assert!(o.contains("a=streamnumber:1\r\na=stream:1\r\n"));
        assert!(o.contains("y=1200000002\r\n"));
        let p = Sdp::parse(&o).unwrap();
        assert_eq!(p.stream_number, Some(1));
        assert_eq!(p.time, Some((1700000000, 1700003600)));
    }

    #[test]
    fn device_answer_with_lf_unknown_lines_and_f_line() {
        let a = "v=0\no=34020000001320000001 0 0 IN IP4 192.168.1.64\ns=Play\nc=IN IP4 192.168.1.64\nt=0 0\nm=video 15060 TCP/RTP/AVP 96\na=sendonly\na=rtpmap:96 PS/90000\na=setup:active\na=connection:new\na=x-vendor:1\nbogus\ny=0200000001\nf=v/2/4///a///\n";
        let p = Sdp::parse(a).unwrap();
        assert_eq!(p.connection, Some("192.168.1.64".parse().unwrap()));
        assert_eq!(p.port(), Some(15060));
        assert_eq!(p.setup, Some(Setup::Active));
        assert_eq!(p.ssrc, Some(200000001));
        assert_eq!(p.format.as_deref(), Some("v/2/4///a///"));
        assert_eq!(p.direction.as_deref(), Some("sendonly"));
        assert!(p.other.iter().any(|l| l == "bogus"));
        for split in 0..a.len() {
            let _ = Sdp::parse(&a[..split]);
        }
    }

    #[test]
    fn missing_media_and_oversized_ssrc() {
        assert_eq!(Sdp::parse("v=0\r\ny=1\r\n"), Err(SdpError::NoMedia));
        let p = Sdp::parse("m=video 1 RTP/AVP 96\r\ny=9999999999\r\n").unwrap();
        assert_eq!(p.ssrc, None);
    }
}
