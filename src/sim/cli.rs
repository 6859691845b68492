//! Command-line arguments of `gbrelay sim` as a `clap::Args` struct the binary can flatten into its
//! subcommand, and their mapping onto [`SimConfig`]. Only argument parsing belongs here; the device
//! itself is in the rest of [`crate::sim`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{AnswerPolicy, SimConfig, SipTransport, SsrcPolicy};

/// `gbrelay sim`: run simulated GB/T 28181 devices against a SIP server until Ctrl-C.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// SIP server address (the gateway's `sip.listen`).
    #[arg(long, default_value = "127.0.0.1:5060")]
    pub server: SocketAddr,
    /// 20-digit SIP server ID.
    #[arg(long, default_value = "34020000002000000001")]
    pub server_id: String,
    /// SIP domain; default: the server ID's first 10 digits.
    #[arg(long)]
    pub domain: Option<String>,
    /// 20-digit device ID (type 118 NVR, 132 IPC); further devices count up its serial.
    #[arg(long, default_value = "34020000001180000001")]
    pub device_id: String,
    #[arg(long, default_value = "12345678")]
    pub password: String,
    /// Local bind address for SIP (port 0: any; a fixed port is +i for device i).
    #[arg(long, default_value = "0.0.0.0:0")]
    pub local: SocketAddr,
    /// SIP transport: udp | tcp.
    #[arg(long, default_value = "udp")]
    pub transport: SipTransport,
    /// Channels of an NVR (an IPC always has one).
    #[arg(long, default_value_t = 4)]
    pub channels: u32,
    /// ASCII channel names ("Camera 01") instead of Chinese ones ("通道01 前门").
    #[arg(long)]
    pub ascii_names: bool,
    /// Catalog items per Response MESSAGE.
    #[arg(long, default_value_t = 8)]
    pub catalog_page: u32,
    /// Keepalive interval in seconds.
    #[arg(long, default_value_t = 60)]
    pub keepalive: u64,
    /// REGISTER Expires in seconds.
    #[arg(long, default_value_t = 3600)]
    pub expires: u32,
    /// MPEG-PS file streamed (looped, real-time pace) on INVITE.
    #[arg(long, default_value = "testdata/h264_aac.ps")]
    pub media: PathBuf,
    /// UDP media loss probability (e.g. 0.01).
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// UDP media reorder probability (e.g. 0.02).
    #[arg(long, default_value_t = 0.0)]
    pub reorder: f64,
    /// SSRC policy: offered | zero | own:N (N a u32).
    #[arg(long, default_value = "offered")]
    pub ssrc: SsrcPolicy,
    /// INVITE answer: accept | refuse:CODE (e.g. refuse:486) | no-answer | provisional.
    #[arg(long, default_value = "accept")]
    pub answer: AnswerPolicy,
    #[arg(long, default_value = "Hikvision")]
    pub manufacturer: String,
    /// Seed of the loss/reorder RNG.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Number of devices to run.
    #[arg(long, default_value_t = 1)]
    pub devices: u32,
}

impl SimArgs {
    pub fn to_config(&self) -> SimConfig {
        SimConfig {
            server: self.server,
            server_id: self.server_id.clone(),
            domain: self.domain.clone().unwrap_or_else(|| self.server_id.chars().take(10).collect()),
            device_id: self.device_id.clone(),
            password: self.password.clone(),
            local: self.local,
            sip_transport: self.transport,
            channels: self.channels,
            channel_names_chinese: !self.ascii_names,
            catalog_page: self.catalog_page,
            keepalive_interval: Duration::from_secs(self.keepalive.max(1)),
            register_expires: self.expires,
            media_file: self.media.clone(),
            loss: self.loss,
            reorder: self.reorder,
            ssrc_policy: self.ssrc,
            answer: self.answer,
            manufacturer: self.manufacturer.clone(),
            seed: self.seed,
        }
    }

    /// Runs the devices until Ctrl-C / SIGTERM (see [`super::run_until_shutdown`]).
    pub async fn run(self) -> std::io::Result<()> {
        super::run_until_shutdown(self.to_config(), self.devices).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    #[test]
    fn arguments_map_onto_the_config_with_the_domain_from_the_server_id() {
        let cli = Cli::parse_from([
            "sim",
            "--server",
            "127.0.0.1:15060",
            "--server-id",
            "44010000002000000001",
            "--transport",
            "tcp",
            "--channels",
            "64",
            "--answer",
            "refuse:486",
            "--ssrc",
            "own:99",
            "--loss",
            "0.01",
        ]);
        let c = cli.sim.to_config();
        assert_eq!(c.domain, "4401000000");
        assert_eq!(c.sip_transport, SipTransport::Tcp);
        assert_eq!(c.channels, 64);
        assert_eq!(c.answer, AnswerPolicy::Refuse(486));
        assert_eq!(c.ssrc_policy, SsrcPolicy::Own(99));
        assert!(c.channel_names_chinese);
        assert_eq!(c.keepalive_interval, Duration::from_secs(60));
        assert!(Cli::try_parse_from(["sim", "--answer", "maybe"]).is_err());
    }
}
