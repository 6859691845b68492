//! `gateway.toml` → typed [`Config`].
//!
//! Strict TOML: every table and struct denies unknown fields, so a misspelt key is an error that
//! names it. Every field has a default, so the gateway starts with no file at all. Values are parsed
//! once into typed forms (`SocketAddr`, `Duration`, port ranges). The repository's `gateway.toml`
//! documents every key; keep the two in step.

use serde::{Deserialize, Deserializer};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub sip: SipConfig,
    pub http: HttpConfig,
    pub store: StoreConfig,
    pub media: MediaConfig,
    pub stream: StreamConfig,
    pub hls: HlsConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipConfig {
    /// Server ID, 20 digits (GB/T 28181 §4.1 / Annex D).
    pub id: String,
    /// SIP domain and digest realm; defaults to the first 10 digits of `id`.
    pub domain: Option<String>,
    /// UDP and TCP bind address.
    pub listen: SocketAddr,
    /// Address written into Via/Contact for devices behind NAT; defaults to `listen` (or `media.ip`
    /// when `listen` is unspecified).
    pub advertise: Option<SocketAddr>,
    /// Default device password (used when the store has none for the device).
    pub password: String,
    /// true: unknown device IDs are refused with 403.
    pub require_provisioned: bool,
    /// `Expires` granted when the device asks for none (seconds).
    #[serde(deserialize_with = "de_duration")]
    pub register_expires: Duration,
    /// Expected keepalive interval (GB default 60 s).
    #[serde(deserialize_with = "de_duration")]
    pub keepalive_interval: Duration,
    /// Missed keepalive intervals before a device is offline (GB default 3).
    pub keepalive_missed: u32,
    /// Lifetime of a digest nonce.
    #[serde(deserialize_with = "de_duration")]
    pub nonce_ttl: Duration,
    /// Period of the background catalog refresh (jittered ±10%); 0 disables it.
    #[serde(deserialize_with = "de_duration")]
    pub catalog_interval: Duration,
    /// How long an incomplete multi-MESSAGE catalog may stall before it is closed as partial.
    #[serde(deserialize_with = "de_duration")]
    pub catalog_stall: Duration,
    /// Failed authentications from one (address, device) before it is answered 403 cheaply.
    pub auth_fail_limit: u32,
    /// How long such a pair is blocked.
    #[serde(deserialize_with = "de_duration")]
    pub auth_block: Duration,
    /// Concurrent INVITE transactions per device.
    pub invite_concurrency: u32,
    /// Minimum spacing between INVITEs to one device.
    #[serde(deserialize_with = "de_duration")]
    pub invite_interval: Duration,
    /// Timeout of an INVITE when the caller gives none (Timer B is 32 s; this is shorter).
    #[serde(deserialize_with = "de_duration")]
    pub invite_timeout: Duration,
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            id: "34020000002000000001".into(),
            domain: None,
            listen: "0.0.0.0:5060".parse().expect("literal address"),
            advertise: None,
            password: "12345678".into(),
            require_provisioned: false,
            register_expires: Duration::from_secs(3600),
            keepalive_interval: Duration::from_secs(60),
            keepalive_missed: 3,
            nonce_ttl: Duration::from_secs(300),
            catalog_interval: Duration::from_secs(3600),
            catalog_stall: Duration::from_secs(10),
            auth_fail_limit: 5,
            auth_block: Duration::from_secs(60),
            invite_concurrency: 4,
            invite_interval: Duration::from_millis(50),
            invite_timeout: Duration::from_secs(8),
        }
    }
}

impl SipConfig {
    /// The SIP domain / digest realm: `domain`, else the first 10 digits of the server ID.
    pub fn domain(&self) -> String {
        match &self.domain {
            Some(d) => d.clone(),
            None => self.id.chars().take(10).collect(),
        }
    }
}

/// How HEVC is written into FLV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum FlvHevc {
    /// Enhanced RTMP: `hvc1` FourCC in an ExVideoTagHeader (FFmpeg 6+, mpegts.js).
    #[default]
    #[serde(rename = "enhanced")]
    Enhanced,
    /// The unofficial CodecID 12 that older players in this field patched in.
    #[serde(rename = "codec-id-12")]
    CodecId12,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    pub flv_hevc: FlvHevc,
    /// Allowed CORS origin for browser players ("*" for any).
    pub cors_origin: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "0.0.0.0:8080".parse().expect("literal address"),
            flv_hevc: FlvHevc::Enhanced,
            cors_origin: "*".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// SQLite database file; its directory is created if missing.
    pub path: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { path: PathBuf::from("data/gbrelay.db") }
    }
}

/// RTP transport offered to devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize, Default)]
pub enum Transport {
    #[serde(rename = "udp")]
    Udp,
    /// The device connects to us (SDP `a=setup:passive` on our side).
    #[default]
    #[serde(rename = "tcp-passive")]
    TcpPassive,
    /// We connect to the device (SDP `a=setup:active` on our side).
    #[serde(rename = "tcp-active")]
    TcpActive,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::TcpPassive => "tcp-passive",
            Transport::TcpActive => "tcp-active",
        }
    }
}

impl std::str::FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "udp" => Ok(Transport::Udp),
            "tcp-passive" => Ok(Transport::TcpPassive),
            "tcp-active" => Ok(Transport::TcpActive),
            other => Err(format!("unknown transport {other:?} (udp | tcp-passive | tcp-active)")),
        }
    }
}

/// An inclusive port range `"30000-30100"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn len(&self) -> usize {
        usize::from(self.last - self.first) + 1
    }
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s.split_once('-').ok_or_else(|| format!("port range {s:?} is not FIRST-LAST"))?;
        let first: u16 = a.trim().parse().map_err(|_| format!("bad port {a:?} in {s:?}"))?;
        let last: u16 = b.trim().parse().map_err(|_| format!("bad port {b:?} in {s:?}"))?;
        if first == 0 || last < first {
            return Err(format!("port range {s:?} is empty or starts at 0"));
        }
        Ok(PortRange { first, last })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// The address given to devices in the SDP (`c=` / `o=`).
    pub ip: IpAddr,
    /// Shared port (UDP and TCP passive) used when `ports` is empty.
    pub rtp_port: u16,
    /// Port pool, one port per stream; absent or empty: shared-port mode.
    #[serde(deserialize_with = "de_port_range")]
    pub ports: Option<PortRange>,
    /// Transport offered to devices.
    pub transport: Transport,
    /// Reorder window depth in packets (UDP).
    pub reorder_depth: usize,
    /// Longest a packet waits for a missing predecessor before the gap is declared lost.
    #[serde(deserialize_with = "de_duration")]
    pub reorder_wait: Duration,
    /// How long a released port or SSRC rests before reuse.
    #[serde(deserialize_with = "de_duration")]
    pub quarantine: Duration,
    /// Treat PSM stream type 0x90 as µ-law instead of A-law.
    pub g711_0x90_is_ulaw: bool,
    /// SO_RCVBUF of every UDP media socket, in bytes (0: the kernel's default). A keyframe
    /// arrives as a burst of dozens of packets per stream; the kernel's default (208 KiB, about
    /// 90 full-size datagrams) overflows as soon as a few streams burst together on the shared
    /// port. The kernel caps it at `net.core.rmem_max` (a warning says so).
    pub udp_recv_buffer: usize,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            ip: "127.0.0.1".parse().expect("literal address"),
            rtp_port: 10000,
            ports: None,
            transport: Transport::TcpPassive,
            reorder_depth: 64,
            reorder_wait: Duration::from_millis(40),
            quarantine: Duration::from_secs(10),
            g711_0x90_is_ulaw: false,
            udp_recv_buffer: 4 << 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// No FLV/WS viewer and no HLS request for this long → BYE.
    #[serde(deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    /// No media for this long → BYE and end viewers.
    #[serde(deserialize_with = "de_duration")]
    pub no_data_timeout: Duration,
    /// How long a viewer waits for the INVITE answer and the first keyframe.
    #[serde(deserialize_with = "de_duration")]
    pub first_frame_timeout: Duration,
    /// Bound of each stream's GOP ring in bytes.
    pub ring_bytes: usize,
    /// A viewer more than this many bytes behind the live edge for `slow_viewer_timeout` is dropped.
    #[serde(deserialize_with = "de_duration")]
    pub slow_viewer_timeout: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            idle_timeout: Duration::from_secs(30),
            no_data_timeout: Duration::from_secs(15),
            first_frame_timeout: Duration::from_secs(10),
            ring_bytes: 8 << 20,
            slow_viewer_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HlsConfig {
    /// Target segment duration; segments are cut at the first keyframe at or after it.
    #[serde(deserialize_with = "de_duration")]
    pub segment: Duration,
    /// Segments kept in the live playlist.
    pub window: usize,
    /// An HLS client (remote address + User-Agent) counts as a viewer for this long after its
    /// last playlist or segment request. Unset: twice `segment`, at least 10 s (see
    /// [`HlsConfig::viewer_window`]).
    #[serde(deserialize_with = "de_opt_duration")]
    pub viewer_timeout: Option<Duration>,
    /// Keep the raw frames of each stream's current GOP until its first HLS request, so a cold
    /// HLS viewer of a stream that already plays as FLV gets a segment at the next keyframe
    /// instead of a whole segment later. Costs about one GOP of memory per stream without HLS
    /// viewers (a 2 Mbit/s stream with 2 s GOPs: up to 500 KB), hence off by default.
    pub gop_cache: bool,
}

impl Default for HlsConfig {
    fn default() -> Self {
        HlsConfig { segment: Duration::from_secs(2), window: 5, viewer_timeout: None, gop_cache: false }
    }
}

impl HlsConfig {
    /// Shortest default HLS viewer window: a player reloads the playlist about once per target
    /// duration (RFC 8216 §6.3.4), and segments are cut at keyframes, so the real target can be
    /// longer than `segment`.
    pub const MIN_VIEWER_WINDOW: Duration = Duration::from_secs(10);

    /// How long an HLS client stays counted after its last request: `viewer_timeout`, or twice
    /// the target duration `segment` but at least [`HlsConfig::MIN_VIEWER_WINDOW`].
    pub fn viewer_window(&self) -> Duration {
        self.viewer_timeout.unwrap_or_else(|| (self.segment * 2).max(Self::MIN_VIEWER_WINDOW))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter, e.g. "info" or "gbrelay=debug"; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into() }
    }
}

impl Config {
    /// Read and validate a `gateway.toml`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path: path.to_owned(), message },
            other => other,
        })
    }

    /// Parse and validate TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: PathBuf::from("<config>"), message: e.to_string() })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.sip.id.len() != 20 || !self.sip.id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ConfigError::Invalid(format!("sip.id {:?} is not 20 digits", self.sip.id)));
        }
        if self.stream.ring_bytes < 64 * 1024 {
            return Err(ConfigError::Invalid("stream.ring_bytes must be at least 65536".into()));
        }
        if self.hls.window == 0 {
            return Err(ConfigError::Invalid("hls.window must be at least 1".into()));
        }
        Ok(())
    }
}

/// Parse "150ms", "30s", "5m", "1h", "2.5s" or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("bad duration unit {other:?} in {s:?} (ms, s, m, h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Secs(u64),
    }
    match Raw::deserialize(d)? {
        Raw::Text(s) => parse_duration(&s).map_err(serde::de::Error::custom),
        Raw::Secs(n) => Ok(Duration::from_secs(n)),
    }
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

fn de_port_range<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PortRange>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.sip.domain(), "3402000000");
        assert_eq!(c.media.transport, Transport::TcpPassive);
        assert!(c.media.ports.is_none());
    }

    #[test]
    fn contract_keys_parse() {
        let c = Config::from_toml(
            r#"
[sip]
id = "34020000002000000001"
listen = "127.0.0.1:5060"
password = "12345678"
require_provisioned = true
[http]
listen = "127.0.0.1:8080"
flv_hevc = "codec-id-12"
[store]
path = "data/gbrelay.db"
[media]
ip = "127.0.0.1"
rtp_port = 10000
ports = "30000-30100"
transport = "udp"
[stream]
idle_timeout = "30s"
no_data_timeout = "15s"
first_frame_timeout = "10s"
"#,
        )
        .unwrap();
        assert!(c.sip.require_provisioned);
        assert_eq!(c.media.ports, Some(PortRange { first: 30000, last: 30100 }));
        assert_eq!(c.stream.idle_timeout, Duration::from_secs(30));
        assert_eq!(c.http.flv_hevc, FlvHevc::CodecId12);
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let e = Config::from_toml("[sip]\nlisten_addr = \"1.2.3.4:5\"\n").unwrap_err();
        assert!(e.to_string().contains("listen_addr"), "{e}");
    }

    #[test]
    fn hls_viewer_window_is_twice_the_segment_at_least_ten_seconds_unless_set() {
        let mut h = HlsConfig::default();
        assert_eq!(h.viewer_window(), Duration::from_secs(10));
        h.segment = Duration::from_secs(8);
        assert_eq!(h.viewer_window(), Duration::from_secs(16));
        let c = Config::from_toml("[hls]\nsegment = \"200ms\"\nviewer_timeout = \"1s\"\n").unwrap();
        assert_eq!(c.hls.viewer_window(), Duration::from_secs(1));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("150ms").unwrap(), Duration::from_millis(150));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("3 fortnights").is_err());
    }
}

#[cfg(test)]
mod repo_file_tests {
    #[test]
    fn repository_gateway_toml_parses_and_matches_defaults() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.toml")).unwrap();
        let c = super::Config::from_toml(&text).unwrap();
        let d = super::Config::default();
        assert_eq!(c.sip.id, d.sip.id);
        assert_eq!(c.sip.listen, d.sip.listen);
        assert_eq!(c.media.ports, None);
        assert_eq!(c.stream.idle_timeout, d.stream.idle_timeout);
        assert_eq!(c.hls.window, d.hls.window);
    }
}
