//! `--mode sip`: sources are simulated GB/T 28181 devices (`crate::sim`) that register with the
//! gateway and stream only when the gateway INVITEs them, because a viewer asked (on-demand pull).
//!
//! Belongs here: starting the fleet of simulators (one IPC per stream, or NVRs with
//! `--channels-per-device` channels), waiting until every device is registered and its catalog is in
//! the gateway (`GET /api/v1/devices/{id}/channels`), and turning each device's events into the
//! instants the report needs: INVITE received and first RTP sent, per channel. Does not belong: the
//! SIP device itself (`crate::sim`), viewers and measurements (`mod.rs`, `viewer.rs`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use super::gateway::{Gateway, GatewayError};
use super::http;
use super::source::SourceStats;
use crate::sim::{nth_device_id, SimConfig, SimEvent, Simulator};

/// One pulled channel.
#[derive(Debug)]
pub struct DeviceStream {
    pub device: String,
    pub channel: String,
    /// `started` is set when the simulator starts sending (after ACK); `first_key_sent` too, since
    /// the simulator always starts from the file's first unit, a keyframe.
    pub stats: Arc<SourceStats>,
    /// When the device received the INVITE.
    pub invited: Arc<OnceLock<Instant>>,
}

/// The running devices.
pub struct Fleet {
    pub sims: Vec<Simulator>,
    pub streams: Vec<DeviceStream>,
}

/// Start `streams` channels on simulated devices registering to `sip` over UDP.
pub async fn start(
    gw: &Gateway,
    sip: SocketAddr,
    media: &Path,
    streams: usize,
    channels_per_device: usize,
) -> Result<Fleet, GatewayError> {
    let cpd = channels_per_device.max(1);
    let devices = streams.div_ceil(cpd);
    // IPCs (type 132) have one channel whose ID is the device's; NVRs (118) number theirs.
    let base = if cpd == 1 { "34020000001320000001" } else { "34020000001180000001" };
    let mut sims = Vec::with_capacity(devices);
    let mut out = Vec::with_capacity(streams);
    for d in 0..devices {
        let channels = cpd.min(streams - d * cpd);
        let cfg = SimConfig {
            server: sip,
            device_id: nth_device_id(base, d as u32),
            local: ([127, 0, 0, 1], 0).into(),
            channels: channels as u32,
            channel_names_chinese: false,
            media_file: media.to_path_buf(),
            seed: d as u64 + 1,
            ..SimConfig::default()
        };
        let device = cfg.device_id.clone();
        let sim = Simulator::start(cfg).await.map_err(|source| GatewayError::Io {
            what: format!("start simulated device {device}"),
            source,
        })?;
        let mut by_channel: HashMap<String, (Arc<SourceStats>, Arc<OnceLock<Instant>>)> = HashMap::new();
        for ch in sim.channel_ids().into_iter().take(channels) {
            let stats = Arc::new(SourceStats::default());
            let invited = Arc::new(OnceLock::new());
            by_channel.insert(ch.clone(), (stats.clone(), invited.clone()));
            out.push(DeviceStream { device: device.clone(), channel: ch, stats, invited });
        }
        let mut ev = sim.events();
        tokio::spawn(async move {
            loop {
                match ev.recv().await {
                    Ok(SimEvent::Invited { channel, .. }) => {
                        if let Some((_, inv)) = by_channel.get(&channel) {
                            let _ = inv.set(Instant::now());
                        }
                    }
                    Ok(SimEvent::StreamStarted { channel }) => {
                        if let Some((st, _)) = by_channel.get(&channel) {
                            let now = Instant::now();
                            let _ = st.started.set(now);
                            let _ = st.first_key_sent.set(now);
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                }
            }
        });
        sims.push(sim);
    }
    // Registered, and the catalog in the gateway's store.
    let deadline = Instant::now() + Duration::from_secs(30 + devices as u64 / 10);
    for (i, sim) in sims.iter().enumerate() {
        let device = nth_device_id(base, i as u32);
        let want = cpd.min(streams - i * cpd);
        loop {
            if sim.stats().registered {
                let path = format!("/api/v1/devices/{device}/channels");
                if let Ok(r) = http::request(gw.cfg.http, "GET", &path, None, Duration::from_secs(5)).await {
                    let total = serde_json::from_slice::<serde_json::Value>(&r.body)
                        .ok()
                        .and_then(|v| v.get("total").and_then(|t| t.as_u64()));
                    if r.status == 200 && total.is_some_and(|t| t as usize >= want) {
                        break;
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(GatewayError::Status {
                    call: format!("register device {device} and read its catalog"),
                    status: 0,
                    body: format!("not registered with {want} channels in the gateway in time"),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(Fleet { sims, streams: out })
}

impl Fleet {
    /// RTP (packets, bytes) sent by every device so far.
    pub fn sent(&self) -> (u64, u64) {
        self.sims.iter().map(|s| s.stats()).fold((0, 0), |(p, b), s| (p + s.rtp_packets, b + s.rtp_bytes))
    }

    /// Unregister and stop every device.
    pub async fn stop(self) {
        let stops: Vec<_> = self.sims.into_iter().map(|s| tokio::spawn(s.stop())).collect();
        for s in stops {
            let _ = s.await;
        }
    }
}
