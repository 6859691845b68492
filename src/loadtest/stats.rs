//! Percentiles and the Prometheus text the harness reads back from the gateway.
//!
//! Belongs here: nearest-rank percentiles over latency samples, and a reader for the Prometheus
//! text exposition format (0.0.4) lines `name{labels} value` that sums series by name. Does not
//! belong: collecting the samples (viewers, sources) or rendering the report (`report.rs`).

use std::collections::BTreeMap;
use std::time::Duration;

/// Nearest-rank percentile (`p` in 0..=100) of unsorted samples; None when there are none.
pub fn percentile(samples: &[Duration], p: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_unstable();
    Some(v[rank(v.len(), p)])
}

/// Index of the nearest-rank percentile in a sorted slice of `n` values: ceil(p/100 × n) − 1.
pub fn rank(n: usize, p: f64) -> usize {
    let p = p.clamp(0.0, 100.0);
    let r = ((p / 100.0) * n as f64).ceil() as usize;
    r.clamp(1, n) - 1
}

/// p50 and p99 in milliseconds (3 decimals), as the report shows them.
pub fn p50_p99_ms(samples: &[Duration]) -> (Option<f64>, Option<f64>) {
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    (percentile(samples, 50.0).map(ms), percentile(samples, 99.0).map(ms))
}

/// Parsed `/metrics`: series (name with labels, as written) → value, plus sums by metric name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    pub series: BTreeMap<String, f64>,
    pub by_name: BTreeMap<String, f64>,
}

impl Scrape {
    /// Parse the text format; comment lines and unparsable lines are skipped.
    pub fn parse(text: &str) -> Scrape {
        let mut s = Scrape::default();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // `name{labels} value [timestamp]`; label values may hold spaces, so split after '}'.
            let (series, rest) = match line.find('{') {
                Some(open) => match line[open..].find('}') {
                    Some(close) => line.split_at(open + close + 1),
                    None => continue,
                },
                None => match line.split_once(' ') {
                    Some((a, b)) => (a, b),
                    None => continue,
                },
            };
            let Some(value) = rest.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) else {
                continue;
            };
            let name = series.split('{').next().unwrap_or(series);
            *s.by_name.entry(name.to_string()).or_default() += value;
            s.series.insert(series.to_string(), value);
        }
        s
    }

    /// Sum of every series of a metric (0 when absent).
    pub fn sum(&self, name: &str) -> f64 {
        self.by_name.get(name).copied().unwrap_or(0.0)
    }

    /// Whether a metric is present at all.
    pub fn has(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|m| Duration::from_millis(*m)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v = ms(&[5, 1, 4, 2, 3]);
        assert_eq!(percentile(&v, 50.0), Some(Duration::from_millis(3)));
        assert_eq!(percentile(&v, 99.0), Some(Duration::from_millis(5)));
        assert_eq!(percentile(&v, 0.0), Some(Duration::from_millis(1)));
        assert_eq!(percentile(&[], 50.0), None);
        let hundred: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&hundred, 99.0), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&hundred, 50.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&ms(&[7]), 99.0), Some(Duration::from_millis(7)));
    }

    #[test]
    fn p50_p99_in_milliseconds() {
        let v = vec![Duration::from_micros(1500), Duration::from_micros(2500)];
        assert_eq!(p50_p99_ms(&v), (Some(1.5), Some(2.5)));
        assert_eq!(p50_p99_ms(&[]), (None, None));
    }

    #[test]
    fn prometheus_text_is_summed_by_name() {
        let text = "# HELP gbrelay_egress_bytes Bytes sent\n# TYPE gbrelay_egress_bytes counter\n\
gbrelay_egress_bytes_total{protocol=\"flv\"} 1000\n\
gbrelay_egress_bytes_total{protocol=\"hls\"} 24\n\
gbrelay_rtp_lost_packets_total 3\n\
gbrelay_viewer_drops_total{reason=\"slow viewer\"} 2 1700000000\n\
gbrelay_invite_to_keyframe_seconds_bucket{le=\"+Inf\"} 4\n# EOF\n";
        let s = Scrape::parse(text);
        assert_eq!(s.sum("gbrelay_egress_bytes_total"), 1024.0);
        assert_eq!(s.sum("gbrelay_rtp_lost_packets_total"), 3.0);
        assert_eq!(s.sum("gbrelay_viewer_drops_total"), 2.0);
        assert_eq!(s.series["gbrelay_egress_bytes_total{protocol=\"hls\"}"], 24.0);
        assert!(!s.has("gbrelay_nothing"));
        assert_eq!(s.sum("gbrelay_nothing"), 0.0);
    }
}
