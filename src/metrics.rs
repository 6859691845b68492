//! Every metric's name and labels, in one place (DESIGN.md §5). Names start `gbrelay_`.
//!
//! One process-wide [`Metrics`] registered in a `prometheus-client` registry; get it with
//! [`metrics()`], render the text format with [`render()`]. Layers increment what they own; pure
//! `proto` code never touches metrics (it returns counters in its own structs and the IO layer adds
//! them here).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::OnceLock;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabel {
    /// "flv", "ws-flv", "hls".
    pub protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SipLabel {
    /// Request method, e.g. "REGISTER", or the method a response answers.
    pub method: String,
    /// "request" for requests, else the status code ("200", "401", …).
    pub status: String,
    /// "in" or "out".
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    /// "udp", "tcp-passive", "tcp-active".
    pub transport: String,
}

/// All metrics of the process.
pub struct Metrics {
    pub devices_online: Gauge,
    pub device_online_transitions: Family<ReasonLabel, Counter>,
    pub streams_active: Gauge,
    pub viewers: Family<ProtocolLabel, Gauge>,
    pub viewer_drops: Family<ReasonLabel, Counter>,
    pub ingress_bytes: Family<TransportLabel, Counter>,
    pub ingress_packets: Family<TransportLabel, Counter>,
    pub egress_bytes: Family<ProtocolLabel, Counter>,
    pub rtp_lost: Counter,
    pub rtp_reordered: Counter,
    pub rtp_late: Counter,
    pub rtp_duplicate: Counter,
    /// Packets dropped as malformed or unroutable, by reason.
    pub rtp_dropped: Family<ReasonLabel, Counter>,
    pub ps_resyncs: Counter,
    /// PS quirks met (named policies), by quirk.
    pub ps_quirks: Family<ReasonLabel, Counter>,
    pub ssrc_mismatches: Counter,
    pub sip_messages: Family<SipLabel, Counter>,
    /// SIP messages dropped as malformed, by reason.
    pub sip_malformed: Family<ReasonLabel, Counter>,
    pub auth_failures: Family<ReasonLabel, Counter>,
    pub invite_to_200_seconds: Histogram,
    pub invite_to_keyframe_seconds: Histogram,
    pub viewer_ttfb_seconds: Family<ProtocolLabel, Histogram, fn() -> Histogram>,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0].into_iter()
}

fn new_latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

struct Global {
    registry: Registry,
    metrics: &'static Metrics,
}

static GLOBAL: OnceLock<Global> = OnceLock::new();

fn global() -> &'static Global {
    GLOBAL.get_or_init(|| {
        let m: &'static Metrics = Box::leak(Box::new(Metrics {
            devices_online: Gauge::default(),
            device_online_transitions: Family::default(),
            streams_active: Gauge::default(),
            viewers: Family::default(),
            viewer_drops: Family::default(),
            ingress_bytes: Family::default(),
            ingress_packets: Family::default(),
            egress_bytes: Family::default(),
            rtp_lost: Counter::default(),
            rtp_reordered: Counter::default(),
            rtp_late: Counter::default(),
            rtp_duplicate: Counter::default(),
            rtp_dropped: Family::default(),
            ps_resyncs: Counter::default(),
            ps_quirks: Family::default(),
            ssrc_mismatches: Counter::default(),
            sip_messages: Family::default(),
            sip_malformed: Family::default(),
            auth_failures: Family::default(),
            invite_to_200_seconds: new_latency_histogram(),
            invite_to_keyframe_seconds: new_latency_histogram(),
            viewer_ttfb_seconds: Family::new_with_constructor(new_latency_histogram),
        }));
        let mut r = Registry::with_prefix("gbrelay");
        r.register("devices_online", "Devices currently online", m.devices_online.clone());
        r.register(
            "device_state_changes",
            "Device online/offline transitions by reason",
            m.device_online_transitions.clone(),
        );
        r.register("streams_active", "Streams currently pulling media", m.streams_active.clone());
        r.register("viewers", "Connected viewers by protocol", m.viewers.clone());
        r.register(
            "viewer_drops",
            "Viewers skipped ahead or disconnected, by reason",
            m.viewer_drops.clone(),
        );
        r.register("ingress_bytes", "RTP bytes received, by transport", m.ingress_bytes.clone());
        r.register("ingress_packets", "RTP packets received, by transport", m.ingress_packets.clone());
        r.register("egress_bytes", "Bytes sent to viewers, by protocol", m.egress_bytes.clone());
        r.register("rtp_lost_packets", "RTP packets declared lost", m.rtp_lost.clone());
        r.register("rtp_reordered_packets", "RTP packets that arrived out of order", m.rtp_reordered.clone());
        r.register(
            "rtp_late_packets",
            "RTP packets that arrived after their gap was closed",
            m.rtp_late.clone(),
        );
        r.register("rtp_duplicate_packets", "Duplicate RTP packets", m.rtp_duplicate.clone());
        r.register("rtp_dropped_packets", "RTP packets dropped, by reason", m.rtp_dropped.clone());
        r.register("ps_resyncs", "MPEG-PS resynchronisations after garbage", m.ps_resyncs.clone());
        r.register("ps_quirks", "MPEG-PS device quirks met, by quirk", m.ps_quirks.clone());
        r.register(
            "ssrc_mismatches",
            "RTP packets whose SSRC differs from the offered one",
            m.ssrc_mismatches.clone(),
        );
        r.register("sip_messages", "SIP messages by method, status and direction", m.sip_messages.clone());
        r.register(
            "sip_malformed",
            "Malformed SIP messages dropped or answered 400",
            m.sip_malformed.clone(),
        );
        r.register("auth_failures", "Failed SIP digest authentications by reason", m.auth_failures.clone());
        r.register(
            "invite_to_200_seconds",
            "INVITE sent to 200 OK received",
            m.invite_to_200_seconds.clone(),
        );
        r.register(
            "invite_to_keyframe_seconds",
            "INVITE sent to first keyframe received",
            m.invite_to_keyframe_seconds.clone(),
        );
        r.register("viewer_ttfb_seconds", "Viewer request to first byte sent", m.viewer_ttfb_seconds.clone());
        Global { registry: r, metrics: m }
    })
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    global().metrics
}

/// Render every metric in the Prometheus / OpenMetrics text format.
pub fn render() -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &global().registry);
    out
}

/// Shorthand label constructors.
pub fn reason(r: &str) -> ReasonLabel {
    ReasonLabel { reason: r.to_owned() }
}

pub fn protocol(p: &str) -> ProtocolLabel {
    ProtocolLabel { protocol: p.to_owned() }
}

pub fn transport(t: &str) -> TransportLabel {
    TransportLabel { transport: t.to_owned() }
}

pub fn sip(method: &str, status: &str, direction: &str) -> SipLabel {
    SipLabel { method: method.to_owned(), status: status.to_owned(), direction: direction.to_owned() }
}

/// A log limiter: `allow(now_secs)` is true at most `per_window` times in each window of
/// `window_secs`. Use for logging malformed input without flooding the log.
pub struct LogLimiter {
    window_start: std::sync::atomic::AtomicU64,
    count: std::sync::atomic::AtomicU32,
    per_window: u32,
}

impl LogLimiter {
    pub const fn new(per_window: u32) -> Self {
        LogLimiter {
            window_start: std::sync::atomic::AtomicU64::new(0),
            count: std::sync::atomic::AtomicU32::new(0),
            per_window,
        }
    }

    /// True if a message may be logged now (10-second windows, wall clock).
    pub fn allow(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() / 10)
            .unwrap_or(0);
        if self.window_start.swap(now, Relaxed) != now {
            self.count.store(0, Relaxed);
        }
        self.count.fetch_add(1, Relaxed) < self.per_window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_names_start_with_prefix() {
        metrics().rtp_lost.inc();
        metrics().viewers.get_or_create(&protocol("flv")).inc();
        let text = render();
        assert!(text.contains("gbrelay_rtp_lost_packets_total"), "{text}");
        assert!(text.contains("gbrelay_viewers{protocol=\"flv\"}"), "{text}");
    }
}
