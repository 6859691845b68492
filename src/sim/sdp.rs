//! The GB/T 28181 SDP subset as a device reads an INVITE offer and writes its answer (RFC 4566 lines,
//! RFC 4145 `a=setup`, RFC 4571 `TCP/RTP/AVP`, GB/T 28181-2016 Annex F `y=` SSRC and `f=` media
//! description; `a=streamnumber` of GB/T 28181-2022 and the vendors' `a=stream`). Simulator-only,
//! independent of `proto::sdp`.

use std::net::{IpAddr, SocketAddr};

/// How the media flows, named from the SERVER's point of view as in the gateway's config
/// (`udp | tcp-passive | tcp-active`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaTransport {
    /// RTP over UDP to the offered address and port.
    Udp,
    /// The server listens (`a=setup:passive` in its offer); the device connects to it.
    TcpPassive,
    /// The server connects (`a=setup:active` in its offer); the device listens.
    TcpActive,
}

/// What the device needs from the server's offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub session: String,
    pub addr: SocketAddr,
    pub transport: MediaTransport,
    pub ssrc: Option<u32>,
    pub stream_number: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdpError {
    #[error("SDP offer has no {0}")]
    Missing(&'static str),
    #[error("SDP offer line {line} is invalid: {what}")]
    Invalid { line: usize, what: &'static str },
}

pub fn parse_offer(body: &str) -> Result<Offer, SdpError> {
    let mut session = String::new();
    let mut ip: Option<IpAddr> = None;
    let mut port: Option<u16> = None;
    let mut tcp = false;
    let mut setup: Option<String> = None;
    let mut ssrc = None;
    let mut stream_number = None;
    for (n, line) in body.lines().enumerate() {
        let line = line.trim();
        let Some((k, v)) = line.split_once('=') else { continue };
        match k {
            "s" => session = v.trim().to_string(),
            "c" => {
                // c=IN IP4 <addr> (RFC 4566 §5.7); the media-level line wins over the session one.
                let addr = v
                    .split_whitespace()
                    .nth(2)
                    .ok_or(SdpError::Invalid { line: n + 1, what: "c= address" })?;
                let addr = addr.split('/').next().unwrap_or(addr);
                ip =
                    Some(addr.parse().map_err(|_| SdpError::Invalid { line: n + 1, what: "c= IP address" })?);
            }
            "m" => {
                let mut it = v.split_whitespace();
                let media = it.next().unwrap_or("");
                if media != "video" && port.is_some() {
                    continue;
                }
                port = Some(
                    it.next()
                        .and_then(|p| p.split('/').next())
                        .and_then(|p| p.parse().ok())
                        .ok_or(SdpError::Invalid { line: n + 1, what: "m= port" })?,
                );
                let proto = it.next().unwrap_or("");
                tcp = proto.to_ascii_uppercase().starts_with("TCP");
            }
            "a" => {
                if let Some(s) = v.strip_prefix("setup:") {
                    setup = Some(s.trim().to_ascii_lowercase());
                } else if let Some(s) = v.strip_prefix("streamnumber:").or_else(|| v.strip_prefix("stream:"))
                {
                    stream_number = s.trim().parse().ok();
                }
            }
            "y" => {
                // y= is a decimal SSRC (GB/T 28181-2016 Annex F); take it as a u32 if it fits.
                ssrc = v.trim().parse::<u64>().ok().and_then(|x| u32::try_from(x).ok());
            }
            _ => {}
        }
    }
    let ip = ip.ok_or(SdpError::Missing("c= line"))?;
    let port = port.ok_or(SdpError::Missing("m= line"))?;
    let transport = if !tcp {
        MediaTransport::Udp
    } else if setup.as_deref() == Some("active") {
        MediaTransport::TcpActive
    } else {
        // RFC 4145 §4: passive or absent/actpass from the offerer → we take the active role.
        MediaTransport::TcpPassive
    };
    Ok(Offer { session, addr: SocketAddr::new(ip, port), transport, ssrc, stream_number })
}

/// The device's answer: our address and port (for TCP active: where we listen), our SSRC and `f=`.
pub fn answer(
    channel_id: &str,
    ip: IpAddr,
    port: u16,
    transport: MediaTransport,
    ssrc: u32,
    session: &str,
) -> String {
    let proto = if transport == MediaTransport::Udp { "RTP/AVP" } else { "TCP/RTP/AVP" };
    let mut s = format!(
        "v=0\r\no={channel_id} 0 0 IN IP4 {ip}\r\ns={}\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=video {port} {proto} 96\r\n\
         a=sendonly\r\na=rtpmap:96 PS/90000\r\n",
        if session.is_empty() { "Play" } else { session }
    );
    match transport {
        MediaTransport::Udp => {}
        MediaTransport::TcpPassive => s.push_str("a=setup:active\r\na=connection:new\r\n"),
        MediaTransport::TcpActive => s.push_str("a=setup:passive\r\na=connection:new\r\n"),
    }
    s.push_str(&format!("y={ssrc:010}\r\nf=v/2/5/25/1/4096a/1/8/1\r\n"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str =
        "v=0\r\no=34020000002000000001 0 0 IN IP4 127.0.0.1\r\ns=Play\r\nc=IN IP4 127.0.0.1\r\n\
        t=0 0\r\nm=video 30000 TCP/RTP/AVP 96 97 98\r\na=recvonly\r\na=rtpmap:96 PS/90000\r\n\
        a=setup:active\r\na=connection:new\r\na=streamnumber:1\r\ny=0200000001\r\n";

    #[test]
    fn offer_with_setup_active_means_the_server_connects() {
        let o = parse_offer(OFFER).unwrap();
        assert_eq!(o.transport, MediaTransport::TcpActive);
        assert_eq!(o.addr, "127.0.0.1:30000".parse().unwrap());
        assert_eq!(o.ssrc, Some(200_000_001));
        assert_eq!(o.stream_number, Some(1));
        let p = parse_offer(&OFFER.replace("setup:active", "setup:passive")).unwrap();
        assert_eq!(p.transport, MediaTransport::TcpPassive);
        let u = parse_offer(&OFFER.replace("TCP/RTP/AVP", "RTP/AVP")).unwrap();
        assert_eq!(u.transport, MediaTransport::Udp);
    }

    #[test]
    fn answer_takes_the_opposite_setup_role_and_a_ten_digit_y() {
        let a = answer(
            "34020000001320000001",
            "127.0.0.1".parse().unwrap(),
            40000,
            MediaTransport::TcpActive,
            5,
            "Play",
        );
        assert!(a.contains("m=video 40000 TCP/RTP/AVP 96\r\n"));
        assert!(a.contains("a=setup:passive\r\n"));
        assert!(a.contains("y=0000000005\r\n"));
    }

    #[test]
    fn offer_without_c_or_m_is_rejected() {
        assert_eq!(parse_offer("v=0\r\nm=video 1 RTP/AVP 96\r\n"), Err(SdpError::Missing("c= line")));
        assert!(parse_offer("c=IN IP4 nonsense\r\n").is_err());
    }
}
