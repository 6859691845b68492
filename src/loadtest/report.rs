//! The report of a run: figures, summaries of viewer results, a table and JSON.
//!
//! Belongs here: the serialisable report types, folding per-viewer results into percentiles and
//! counts, and rendering. Does not belong: measuring (the run loop in `mod.rs`).

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::stats::p50_p99_ms;
use super::viewer::{ViewerProto, ViewerResult};
use super::BenchOptions;

/// Machine-wide figures over the steady window.
#[derive(Debug, Clone, Serialize)]
pub struct MachineFigures {
    pub cpus: usize,
    pub clk_tck: u64,
    /// Busy share of all cores (everything running, gateway and harness included).
    pub busy_pct_all_cores: Option<f64>,
    /// The harness process's own CPU, % of one core.
    pub harness_cpu_pct_of_core: Option<f64>,
}

/// The gateway process's own figures (from `/proc/<pid>`).
#[derive(Debug, Clone, Serialize)]
pub struct GatewayFigures {
    /// user+system CPU over the window, % of one core.
    pub cpu_pct_of_core: Option<f64>,
    pub cpu_pct_per_stream: Option<f64>,
    /// RSS before any stream was opened.
    pub rss_idle_kib: Option<u64>,
    /// RSS sampled every second over the window.
    pub rss_avg_kib: Option<u64>,
    pub rss_max_kib: Option<u64>,
    /// (average RSS − idle RSS) / streams.
    pub rss_per_stream_kib: Option<f64>,
    /// (average RSS − idle RSS) / viewers.
    pub rss_per_viewer_kib: Option<f64>,
    /// The gateway exited 0 on SIGTERM.
    pub clean_exit: Option<bool>,
}

/// Traffic over the window: counted by the harness and read from `/metrics`.
#[derive(Debug, Clone, Serialize)]
pub struct Traffic {
    /// RTP (incl. headers and RFC 4571 framing) written by the sources.
    pub sent_mbit_s: f64,
    pub sent_packets: u64,
    /// `gbrelay_ingress_bytes_total` delta.
    pub ingress_mbit_s: Option<f64>,
    pub ingress_packets: Option<f64>,
    /// `gbrelay_egress_bytes_total` delta.
    pub egress_mbit_s: Option<f64>,
    /// Bytes the viewers read (HTTP framing included).
    pub received_mbit_s: f64,
    /// `gbrelay_rtp_lost_packets_total` delta.
    pub packets_lost: Option<f64>,
    pub packets_late: Option<f64>,
    /// `gbrelay_viewer_drops_total` delta (skipped ahead or disconnected).
    pub viewer_drops: Option<f64>,
    pub metrics_read: bool,
}

/// All viewers of the main phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ViewerSummary {
    pub total: usize,
    pub flv: usize,
    pub ws: usize,
    pub hls: usize,
    /// Viewers that got a keyframe and ran to the end without an error.
    pub ok: usize,
    pub failed: usize,
    /// Viewers whose first video frame was not a keyframe.
    pub not_keyframe_first: usize,
    pub stalls: u32,
    pub viewers_with_stalls: usize,
    pub max_gap_ms: f64,
    pub ttfb_p50_ms: Option<f64>,
    pub ttfb_p99_ms: Option<f64>,
    pub first_key_p50_ms: Option<f64>,
    pub first_key_p99_ms: Option<f64>,
    /// Worst lag behind the source over the window (FLV/WS viewers).
    pub lag_max_ms: Option<f64>,
    /// p50 of each viewer's lag at its last frame.
    pub lag_last_p50_ms: Option<f64>,
    #[serde(skip)]
    pub bytes_in_window: u64,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl ViewerSummary {
    pub fn from_results(results: &[(ViewerProto, ViewerResult)], _window_end: Instant) -> ViewerSummary {
        let mut s = ViewerSummary { total: results.len(), ..Default::default() };
        let mut ttfb = Vec::new();
        let mut key = Vec::new();
        let mut last_lag = Vec::new();
        let mut lag_max = None::<Duration>;
        for (p, r) in results {
            match p {
                ViewerProto::Flv => s.flv += 1,
                ViewerProto::Ws => s.ws += 1,
                ViewerProto::Hls => s.hls += 1,
            }
            if r.error.is_none() && r.first_key.is_some() {
                s.ok += 1;
            } else {
                s.failed += 1;
            }
            if r.keyframe_first == Some(false) {
                s.not_keyframe_first += 1;
            }
            s.stalls += r.stalls;
            if r.stalls > 0 {
                s.viewers_with_stalls += 1;
            }
            s.max_gap_ms = s.max_gap_ms.max(ms(r.max_gap));
            ttfb.extend(r.ttfb);
            key.extend(r.first_key);
            last_lag.extend(r.last_lag);
            if let Some(l) = r.max_lag {
                lag_max = Some(lag_max.unwrap_or_default().max(l));
            }
            s.bytes_in_window += r.bytes_window;
        }
        (s.ttfb_p50_ms, s.ttfb_p99_ms) = p50_p99_ms(&ttfb);
        (s.first_key_p50_ms, s.first_key_p99_ms) = p50_p99_ms(&key);
        s.lag_last_p50_ms = p50_p99_ms(&last_lag).0;
        s.lag_max_ms = lag_max.map(ms);
        s
    }
}

/// First-frame scenario (a): sequential joins of a running stream.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JoinRunning {
    pub joins: usize,
    pub ok: usize,
    /// Joins whose first video frame was a keyframe.
    pub keyframe_first: usize,
    pub ttfb_p50_ms: Option<f64>,
    pub ttfb_p99_ms: Option<f64>,
    /// Request → complete first keyframe tag.
    pub first_key_p50_ms: Option<f64>,
    pub first_key_p99_ms: Option<f64>,
    pub errors: Vec<String>,
}

impl JoinRunning {
    pub fn from_results(rs: &[ViewerResult]) -> JoinRunning {
        let ttfb: Vec<Duration> = rs.iter().filter_map(|r| r.ttfb).collect();
        let key: Vec<Duration> = rs.iter().filter_map(|r| r.first_key).collect();
        let (tp50, tp99) = p50_p99_ms(&ttfb);
        let (kp50, kp99) = p50_p99_ms(&key);
        let mut errors: Vec<String> = rs.iter().filter_map(|r| r.error.clone()).collect();
        errors.sort();
        errors.dedup();
        errors.truncate(5);
        JoinRunning {
            joins: rs.len(),
            ok: rs.iter().filter(|r| r.first_key.is_some() && r.error.is_none()).count(),
            keyframe_first: rs.iter().filter(|r| r.keyframe_first == Some(true)).count(),
            ttfb_p50_ms: tp50,
            ttfb_p99_ms: tp99,
            first_key_p50_ms: kp50,
            first_key_p99_ms: kp99,
            errors,
        }
    }
}

/// First-frame scenario (b): the viewer waits before the source starts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JoinBefore {
    pub viewer_waited_ms: f64,
    /// The first keyframe received is the first one the source sent (fingerprint and time).
    pub got_first_keyframe: Option<bool>,
    pub first_keyframe_index: Option<usize>,
    pub keyframe_first: Option<bool>,
    /// Source wrote the first keyframe's last packet → viewer had the whole keyframe tag (sip: from
    /// the device's first RTP packet).
    pub delay_ms: Option<f64>,
    /// sip: the device received the INVITE → the viewer had the first keyframe.
    pub invite_to_key_ms: Option<f64>,
    pub error: Option<String>,
}

/// A latency distribution.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub n: usize,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl Latency {
    pub fn from_samples(v: &[Duration]) -> Latency {
        let (p50_ms, p99_ms) = p50_p99_ms(v);
        Latency { n: v.len(), p50_ms, p99_ms }
    }
}

/// A distinct error and how often it happened.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorCount {
    pub error: String,
    pub count: u32,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub options: BenchOptions,
    pub window_s: f64,
    pub machine: MachineFigures,
    pub gateway: GatewayFigures,
    pub traffic: Traffic,
    pub viewers: ViewerSummary,
    /// sip: INVITE received by the device → first keyframe at the stream's first viewer.
    pub invite_to_keyframe: Option<Latency>,
    pub join_running: Option<JoinRunning>,
    pub join_before: Option<JoinBefore>,
    pub errors: Vec<ErrorCount>,
    /// The kept run directory (config, gateway log), with `--keep`.
    pub run_dir: Option<String>,
}

impl BenchReport {
    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

struct Opt<T>(Option<T>);

impl fmt::Display for Opt<f64> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) if v.abs() >= 100.0 => write!(f, "{v:.0}"),
            Some(v) => write!(f, "{v:.2}"),
            None => f.write_str("–"),
        }
    }
}

impl fmt::Display for Opt<u64> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => write!(f, "{v}"),
            None => f.write_str("–"),
        }
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        let g = &self.gateway;
        let t = &self.traffic;
        let v = &self.viewers;
        let row = |f: &mut fmt::Formatter<'_>, k: &str, val: String| writeln!(f, "  {k:<34} {val}");
        writeln!(
            f,
            "gbrelay bench: mode {:?}, transport {:?}, {} streams × {} viewers (+{} on one), {:?} viewers, window {:.1} s",
            o.mode, o.transport, o.streams, o.viewers_per_stream, o.viewers_on_one, o.protocol, self.window_s
        )?;
        row(
            f,
            "gateway CPU (% of one core)",
            format!("{}  ({} per stream)", Opt(g.cpu_pct_of_core), Opt(g.cpu_pct_per_stream)),
        )?;
        row(
            f,
            "gateway RSS idle / avg / max (KiB)",
            format!("{} / {} / {}", Opt(g.rss_idle_kib), Opt(g.rss_avg_kib), Opt(g.rss_max_kib)),
        )?;
        row(
            f,
            "RSS growth per stream / viewer (KiB)",
            format!("{} / {}", Opt(g.rss_per_stream_kib), Opt(g.rss_per_viewer_kib)),
        )?;
        row(
            f,
            "machine busy (% of all cores)",
            format!(
                "{} on {} CPUs; harness {}% of one core",
                Opt(self.machine.busy_pct_all_cores),
                self.machine.cpus,
                Opt(self.machine.harness_cpu_pct_of_core)
            ),
        )?;
        row(f, "sent / ingress (Mbit/s)", format!("{:.2} / {}", t.sent_mbit_s, Opt(t.ingress_mbit_s)))?;
        row(
            f,
            "egress (metrics) / received (Mbit/s)",
            format!("{} / {:.2}", Opt(t.egress_mbit_s), t.received_mbit_s),
        )?;
        row(
            f,
            "RTP sent / lost / late",
            format!("{} / {} / {}", t.sent_packets, Opt(t.packets_lost), Opt(t.packets_late)),
        )?;
        row(f, "viewer drops (metrics)", Opt(t.viewer_drops).to_string())?;
        row(
            f,
            "viewers ok / failed / total",
            format!("{} / {} / {} (flv {}, ws {}, hls {})", v.ok, v.failed, v.total, v.flv, v.ws, v.hls),
        )?;
        row(f, "not keyframe-first", v.not_keyframe_first.to_string())?;
        row(
            f,
            "stalls (> 1 s) / viewers / max gap",
            format!("{} / {} / {:.0} ms", v.stalls, v.viewers_with_stalls, v.max_gap_ms),
        )?;
        row(f, "TTFB p50 / p99 (ms)", format!("{} / {}", Opt(v.ttfb_p50_ms), Opt(v.ttfb_p99_ms)))?;
        row(
            f,
            "first keyframe p50 / p99 (ms)",
            format!("{} / {}", Opt(v.first_key_p50_ms), Opt(v.first_key_p99_ms)),
        )?;
        row(f, "lag max / last p50 (ms)", format!("{} / {}", Opt(v.lag_max_ms), Opt(v.lag_last_p50_ms)))?;
        if let Some(l) = &self.invite_to_keyframe {
            row(
                f,
                "INVITE → keyframe p50 / p99 (ms)",
                format!("{} / {} (n = {})", Opt(l.p50_ms), Opt(l.p99_ms), l.n),
            )?;
        }
        if let Some(j) = &self.join_running {
            row(
                f,
                "join running: ok / keyframe-first",
                format!("{} / {} of {}", j.ok, j.keyframe_first, j.joins),
            )?;
            row(
                f,
                "join running: TTFB p50 / p99 (ms)",
                format!("{} / {}", Opt(j.ttfb_p50_ms), Opt(j.ttfb_p99_ms)),
            )?;
            row(
                f,
                "join running: keyframe p50 / p99 (ms)",
                format!("{} / {}", Opt(j.first_key_p50_ms), Opt(j.first_key_p99_ms)),
            )?;
        }
        if let Some(j) = &self.join_before {
            row(
                f,
                "join before: got first keyframe",
                format!(
                    "{:?} (keyframe #{:?}), delay {} ms, INVITE → keyframe {} ms",
                    j.got_first_keyframe,
                    j.first_keyframe_index,
                    Opt(j.delay_ms),
                    Opt(j.invite_to_key_ms)
                ),
            )?;
            if let Some(e) = &j.error {
                row(f, "join before: error", e.clone())?;
            }
        }
        for e in self.errors.iter().take(10) {
            row(f, "error", format!("{}× {}", e.count, e.error))?;
        }
        if let Some(d) = &self.run_dir {
            row(f, "run directory", d.clone())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(ttfb: u64, key: Option<u64>, kf: bool, stalls: u32, err: Option<&str>) -> ViewerResult {
        ViewerResult {
            ttfb: Some(Duration::from_millis(ttfb)),
            first_key: key.map(Duration::from_millis),
            keyframe_first: Some(kf),
            stalls,
            max_gap: Duration::from_millis(100 * stalls as u64 + 40),
            error: err.map(String::from),
            bytes_window: 1000,
            ..Default::default()
        }
    }

    #[test]
    fn viewer_summary_counts_failures_stalls_and_percentiles() {
        let rs = vec![
            (ViewerProto::Flv, r(1, Some(2), true, 0, None)),
            (ViewerProto::Hls, r(3, Some(4), true, 2, None)),
            (ViewerProto::Flv, r(5, None, false, 0, Some("HTTP 404"))),
        ];
        let s = ViewerSummary::from_results(&rs, Instant::now());
        assert_eq!((s.total, s.ok, s.failed, s.flv, s.hls), (3, 2, 1, 2, 1));
        assert_eq!(s.not_keyframe_first, 1);
        assert_eq!((s.stalls, s.viewers_with_stalls), (2, 1));
        assert_eq!(s.ttfb_p50_ms, Some(3.0));
        assert_eq!(s.ttfb_p99_ms, Some(5.0));
        assert_eq!(s.first_key_p99_ms, Some(4.0));
        assert_eq!(s.max_gap_ms, 240.0);
        assert_eq!(s.bytes_in_window, 3000);
    }

    #[test]
    fn join_summary_and_json() {
        let rs = vec![
            r(1, Some(1), true, 0, None),
            r(2, Some(3), false, 0, None),
            r(9, None, false, 0, Some("x")),
        ];
        let j = JoinRunning::from_results(&rs);
        assert_eq!((j.joins, j.ok, j.keyframe_first), (3, 2, 1));
        assert_eq!(j.first_key_p50_ms, Some(1.0));
        assert_eq!(j.errors, vec!["x".to_string()]);
        let v = serde_json::to_value(&j).unwrap();
        assert_eq!(v["first_key_p99_ms"], 3.0);
    }
}
