//! The gateway under test as a child process: its config, start, readiness, REST calls and stop.
//!
//! Belongs here: choosing free 127.0.0.1 ports, writing a temporary strict-TOML config with only the
//! documented keys (`gateway.toml`, issue 4's configuration contract), spawning `gbrelay --config FILE`
//! with its output in a log file, waiting for `/healthz`, opening and closing media-only receivers
//! with `POST`/`DELETE /api/v1/rtp`, reading `/metrics`, and stopping the process with SIGTERM (then
//! SIGKILL). Does not belong: load generation (`source.rs`, `viewer.rs`) or measurements.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::http::{self, HttpError};
use super::stats::Scrape;

/// Gateway process and API failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    #[error("gateway binary {0} does not exist (build it with `cargo build --release`)")]
    NoBinary(PathBuf),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("gateway exited before becoming ready ({status}); log tail:\n{log}")]
    Exited { status: String, log: String },
    #[error("gateway not ready on {addr}/healthz after {after:?}; log tail:\n{log}")]
    NotReady { addr: SocketAddr, after: Duration, log: String },
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("{call} answered {status}: {body}")]
    Status { call: String, status: u16, body: String },
    #[error("no free {what}")]
    NoPorts { what: &'static str },
}

/// Ports and paths of one gateway run.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub sip: SocketAddr,
    pub http: SocketAddr,
    pub rtp_port: u16,
    /// Port pool (inclusive); None for shared-port mode.
    pub pool: Option<(u16, u16)>,
    /// "udp" | "tcp-passive" | "tcp-active": what the gateway offers devices (SIP mode).
    pub transport: &'static str,
    pub dir: PathBuf,
    pub log_level: String,
}

impl GatewayConfig {
    /// Strict TOML with only documented keys (issue 4 configuration contract).
    pub fn to_toml(&self) -> String {
        let ports = self.pool.map(|(a, b)| format!("{a}-{b}")).unwrap_or_default();
        format!(
            "[sip]\nlisten = \"{sip}\"\n\n[http]\nlisten = \"{http}\"\n\n[store]\npath = \"{store}\"\n\n\
[media]\nip = \"127.0.0.1\"\nrtp_port = {rtp}\nports = \"{ports}\"\ntransport = \"{tr}\"\n\n\
[stream]\n# The harness keeps sources without viewers (between joins) alive.\nidle_timeout = \"10m\"\n\
no_data_timeout = \"15s\"\nfirst_frame_timeout = \"10s\"\n\n[hls]\nsegment = \"2s\"\nwindow = 5\n\n[log]\nlevel = \"{lvl}\"\n",
            sip = self.sip,
            http = self.http,
            store = self.dir.join("gbrelay.db").display().to_string().replace('\\', "/"),
            rtp = self.rtp_port,
            tr = self.transport,
            lvl = self.log_level,
        )
    }
}

/// A free TCP port on 127.0.0.1 whose UDP twin is free too (SIP and the shared RTP port use both).
pub fn free_port_pair() -> Result<u16, GatewayError> {
    for _ in 0..50 {
        let t = TcpListener::bind("127.0.0.1:0")
            .map_err(|source| GatewayError::Io { what: "bind a probe port".into(), source })?;
        let port =
            t.local_addr().map_err(|source| GatewayError::Io { what: "probe port".into(), source })?.port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(GatewayError::NoPorts { what: "TCP+UDP port pair" })
}

/// A range of `n` consecutive ports free for both TCP and UDP (checked, then released: a race with
/// other programs is possible and shows as a gateway start error).
pub fn free_range(n: u16) -> Result<(u16, u16), GatewayError> {
    let mut base: u16 = 20000 + (std::process::id() % 97) as u16 * 300;
    for _ in 0..40 {
        let end = base.checked_add(n - 1).ok_or(GatewayError::NoPorts { what: "port range" })?;
        let all_free = (base..=end).all(|p| {
            TcpListener::bind(("127.0.0.1", p)).is_ok() && UdpSocket::bind(("127.0.0.1", p)).is_ok()
        });
        if all_free {
            return Ok((base, end));
        }
        base = base.wrapping_add(n + 101).clamp(20000, 60000 - n);
    }
    Err(GatewayError::NoPorts { what: "port range" })
}

/// The running gateway.
pub struct Gateway {
    pub cfg: GatewayConfig,
    child: Child,
    pub pid: u32,
    log_path: PathBuf,
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

impl Gateway {
    /// Write the config, spawn the binary and wait for `/healthz` to answer 200.
    pub async fn start(
        bin: &Path,
        cfg: GatewayConfig,
        ready_within: Duration,
    ) -> Result<Gateway, GatewayError> {
        if !bin.exists() {
            return Err(GatewayError::NoBinary(bin.to_path_buf()));
        }
        let io = |what: &str| {
            let what = what.to_string();
            move |source| GatewayError::Io { what, source }
        };
        std::fs::create_dir_all(&cfg.dir).map_err(io("create the run directory"))?;
        let conf = cfg.dir.join("gateway.toml");
        std::fs::write(&conf, cfg.to_toml()).map_err(io("write the config"))?;
        let log_path = cfg.dir.join("gateway.log");
        let log = std::fs::File::create(&log_path).map_err(io("create the gateway log"))?;
        let log2 = log.try_clone().map_err(io("clone the log handle"))?;
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .kill_on_drop(true)
            .spawn()
            .map_err(io("spawn the gateway"))?;
        let pid = child.id().unwrap_or(0);
        let deadline = tokio::time::Instant::now() + ready_within;
        loop {
            if let Some(st) = child.try_wait().map_err(io("poll the gateway"))? {
                return Err(GatewayError::Exited { status: st.to_string(), log: log_tail(&log_path) });
            }
            if let Ok(r) = http::request(cfg.http, "GET", "/healthz", None, Duration::from_secs(1)).await {
                if r.status == 200 {
                    break;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(GatewayError::NotReady {
                    addr: cfg.http,
                    after: ready_within,
                    log: log_tail(&log_path),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Gateway { cfg, child, pid, log_path })
    }

    /// `POST /api/v1/rtp` → the port to send to.
    pub async fn open_rtp(
        &self,
        stream: &str,
        transport: &str,
        port: u16,
        ssrc: Option<u32>,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<u16, GatewayError> {
        let mut req = serde_json::json!({ "stream": stream, "transport": transport, "port": port });
        if let Some(s) = ssrc {
            req["ssrc"] = s.into();
        }
        if let Some(p) = peer {
            req["peer"] = p.to_string().into();
        }
        let body = req.to_string();
        let r =
            http::request(self.cfg.http, "POST", "/api/v1/rtp", Some(&body), Duration::from_secs(10)).await?;
        let text = String::from_utf8_lossy(&r.body).to_string();
        if !(200..300).contains(&r.status) {
            return Err(GatewayError::Status {
                call: format!("POST /api/v1/rtp {body}"),
                status: r.status,
                body: text,
            });
        }
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|_| GatewayError::Status {
            call: "POST /api/v1/rtp (JSON answer)".into(),
            status: r.status,
            body: text.clone(),
        })?;
        v.get("port").and_then(|p| p.as_u64()).and_then(|p| u16::try_from(p).ok()).ok_or(
            GatewayError::Status {
                call: "POST /api/v1/rtp (no \"port\")".into(),
                status: r.status,
                body: text,
            },
        )
    }

    /// `DELETE /api/v1/rtp/<name>`. A 404 is success: a TCP stream ends by itself when its
    /// source (stopped before this call) closes the connection.
    pub async fn close_rtp(&self, stream: &str) -> Result<(), GatewayError> {
        let path = format!("/api/v1/rtp/{stream}");
        let r = http::request(self.cfg.http, "DELETE", &path, None, Duration::from_secs(5)).await?;
        if !(200..300).contains(&r.status) && r.status != 404 {
            return Err(GatewayError::Status {
                call: format!("DELETE {path}"),
                status: r.status,
                body: String::from_utf8_lossy(&r.body).into(),
            });
        }
        Ok(())
    }

    /// Read `/metrics`.
    pub async fn scrape(&self) -> Result<Scrape, GatewayError> {
        let r = http::request(self.cfg.http, "GET", "/metrics", None, Duration::from_secs(10)).await?;
        if r.status != 200 {
            return Err(GatewayError::Status {
                call: "GET /metrics".into(),
                status: r.status,
                body: String::from_utf8_lossy(&r.body).into(),
            });
        }
        Ok(Scrape::parse(&String::from_utf8_lossy(&r.body)))
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last lines of the gateway's log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path)
    }

    /// SIGTERM (the gateway BYEs its sessions and exits), then SIGKILL after `grace`.
    pub async fn stop(mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        if self.pid != 0 {
            let _ = Command::new("kill").arg("-TERM").arg(self.pid.to_string()).status().await;
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(st)) => Some(st),
            _ => {
                let _ = self.child.kill().await;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_holds_only_documented_keys() {
        let cfg = GatewayConfig {
            sip: "127.0.0.1:5999".parse().unwrap(),
            http: "127.0.0.1:8999".parse().unwrap(),
            rtp_port: 10999,
            pool: Some((30000, 30009)),
            transport: "udp",
            dir: PathBuf::from("/tmp/x"),
            log_level: "warn".into(),
        };
        let text = cfg.to_toml();
        let v: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(v["media"]["ports"].as_str(), Some("30000-30009"));
        assert_eq!(v["media"]["rtp_port"].as_integer(), Some(10999));
        assert_eq!(v["http"]["listen"].as_str(), Some("127.0.0.1:8999"));
        assert_eq!(v["store"]["path"].as_str(), Some("/tmp/x/gbrelay.db"));
        // The crate's own strict config reader accepts it.
        let parsed: Result<crate::config::Config, _> = toml::from_str(&text);
        assert!(parsed.is_ok(), "{parsed:?}");
    }

    #[test]
    fn free_ports_are_bindable() {
        let p = free_port_pair().unwrap();
        assert!(TcpListener::bind(("127.0.0.1", p)).is_ok());
        let (a, b) = free_range(8).unwrap();
        assert_eq!(b - a, 7);
    }
}
