//! Viewers: HTTP-FLV, WebSocket-FLV and polling HLS clients that measure what a player would feel.
//!
//! Belongs here: one task per viewer that opens its URL, records time to first byte and to the first
//! complete video keyframe tag (or first HLS segment), whether the first video frame is a keyframe,
//! which keyframe of the source it was (by fingerprint), stalls (gaps between video tags or new
//! segments over 1 s), lag behind the source, and bytes received. Does not belong: FLV and HTTP
//! parsing (`flv.rs`, `http.rs`), aggregation (`mod.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::flv::{FlvScanner, Tag};
use super::http::{self, Dechunker};
use super::schedule::Schedule;

/// A gap between video tags (FLV) or new segments beyond their duration (HLS) longer than this is a stall.
pub const STALL: Duration = Duration::from_secs(1);
/// Body bytes of a keyframe tag kept to recognise it.
const CAPTURE: usize = 8 * 1024;

/// Viewer protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ViewerProto {
    Flv,
    Ws,
    Hls,
}

/// What the viewer needs to know about its stream's source, to measure lag and recognise keyframes.
#[derive(Debug, Clone)]
pub struct SourceClock {
    pub schedule: Arc<Schedule>,
    pub started: Arc<super::source::SourceStats>,
}

/// One viewer's job.
#[derive(Debug, Clone)]
pub struct ViewerSpec {
    pub proto: ViewerProto,
    pub addr: SocketAddr,
    /// `/live/rtp/<name>` (FLV adds `.flv`, HLS `/index.m3u8`).
    pub base_path: String,
    pub start: Instant,
    /// Stop at this instant (None: stop after the first keyframe — a join probe).
    pub end: Option<Instant>,
    /// Lag and stalls are recorded from this instant on.
    pub window_start: Instant,
    pub source: SourceClock,
}

/// What one viewer saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ViewerResult {
    pub error: Option<String>,
    pub status: Option<u16>,
    /// Request sent → first response byte.
    pub ttfb: Option<Duration>,
    /// Request sent → first complete video keyframe tag (FLV) or first segment (HLS).
    pub first_key: Option<Duration>,
    #[serde(skip)]
    pub first_key_at: Option<Instant>,
    /// The first video frame (not a sequence header) was a keyframe.
    pub keyframe_first: Option<bool>,
    /// Index in the schedule of the first keyframe received (FLV/WS only).
    pub first_key_index: Option<usize>,
    pub bytes: u64,
    /// Bytes received inside the measured window.
    pub bytes_window: u64,
    pub video_tags: u64,
    pub stalls: u32,
    pub max_gap: Duration,
    pub max_lag: Option<Duration>,
    pub last_lag: Option<Duration>,
}

/// Tracks the FLV tags of one viewer.
struct FlvTracker<'a> {
    spec: &'a ViewerSpec,
    sent: Instant,
    r: ViewerResult,
    last_video: Option<Instant>,
    /// (FLV timestamp, schedule PTS in 90 kHz) of the recognised first keyframe.
    anchor: Option<(u32, u64)>,
}

impl<'a> FlvTracker<'a> {
    fn new(spec: &'a ViewerSpec, sent: Instant) -> Self {
        FlvTracker { spec, sent, r: ViewerResult::default(), last_video: None, anchor: None }
    }

    fn on_tag(&mut self, t: &Tag, now: Instant) {
        if t.tag_type != 9 || t.sequence_header {
            return;
        }
        self.r.video_tags += 1;
        if self.r.keyframe_first.is_none() {
            self.r.keyframe_first = Some(t.keyframe);
        }
        if t.keyframe && self.r.first_key.is_none() {
            self.r.first_key = Some(now - self.sent);
            self.r.first_key_at = Some(now);
            let src = &self.spec.source;
            if let Some(started) = src.started.started.get() {
                let since = now.saturating_duration_since(*started);
                if let Some(k) = src.schedule.identify_keyframe(&t.head, since) {
                    self.r.first_key_index = Some(k);
                    self.anchor = Some((t.timestamp, src.schedule.keyframes[k].pts));
                }
            }
        }
        if now >= self.spec.window_start {
            if let Some(last) = self.last_video {
                let gap = now - last;
                self.r.max_gap = self.r.max_gap.max(gap);
                if gap > STALL {
                    self.r.stalls += 1;
                }
            }
            if let (Some((ts0, pts0)), Some(started)) = (self.anchor, self.spec.source.started.started.get())
            {
                let pts = pts0 + (t.timestamp.wrapping_sub(ts0) as u64) * 90;
                let due = *started + Duration::from_micros(pts * 100 / 9);
                let lag = now.saturating_duration_since(due);
                self.r.max_lag = Some(self.r.max_lag.unwrap_or_default().max(lag));
                self.r.last_lag = Some(lag);
            }
        }
        self.last_video = Some(now);
    }

    fn finished(&self) -> bool {
        self.spec.end.is_none() && self.r.first_key.is_some()
    }
}

/// Run one viewer to its end.
pub async fn run(spec: ViewerSpec) -> ViewerResult {
    tokio::time::sleep_until(spec.start).await;
    let fut = async {
        match spec.proto {
            ViewerProto::Flv => run_flv(&spec).await,
            ViewerProto::Ws => run_ws(&spec).await,
            ViewerProto::Hls => run_hls(&spec).await,
        }
    };
    match spec.end {
        Some(end) => match tokio::time::timeout_at(end, fut).await {
            Ok(r) => r,
            Err(_) => ViewerResult {
                error: Some(format!("ended before the first response ({:?})", spec.proto)),
                ..Default::default()
            },
        },
        // A join probe: bounded by a generous first-frame budget.
        None => match tokio::time::timeout(Duration::from_secs(15), fut).await {
            Ok(r) => r,
            Err(_) => ViewerResult { error: Some("no keyframe within 15 s".into()), ..Default::default() },
        },
    }
}

fn until(spec: &ViewerSpec) -> Instant {
    spec.end.unwrap_or_else(|| Instant::now() + Duration::from_secs(15))
}

async fn run_flv(spec: &ViewerSpec) -> ViewerResult {
    let path = format!("{}.flv", spec.base_path);
    let mut s = match TcpStream::connect(spec.addr).await {
        Ok(s) => s,
        Err(e) => return ViewerResult { error: Some(format!("connect: {e}")), ..Default::default() },
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: gbrelay-bench\r\nAccept: */*\r\n\r\n",
        spec.addr
    );
    let sent = Instant::now();
    if let Err(e) = s.write_all(req.as_bytes()).await {
        return ViewerResult { error: Some(format!("send: {e}")), ..Default::default() };
    }
    let mut tr = FlvTracker::new(spec, sent);
    let end = until(spec);
    let mut buf = vec![0u8; 32 * 1024];
    let mut head_buf: Vec<u8> = Vec::new();
    let mut head: Option<http::Head> = None;
    let mut dechunk = Dechunker::new();
    let mut scanner = FlvScanner::new(CAPTURE);
    let mut ranges = Vec::new();
    let mut tags = Vec::new();
    loop {
        let n = match tokio::time::timeout_at(end, s.read(&mut buf)).await {
            Err(_) => break,
            Ok(Ok(0)) => {
                if tr.r.error.is_none() && spec.end.is_some() {
                    tr.r.error = Some("server closed the stream".into());
                }
                break;
            }
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                tr.r.error = Some(format!("read: {e}"));
                break;
            }
        };
        let now = Instant::now();
        tr.r.ttfb.get_or_insert(now - sent);
        tr.r.bytes += n as u64;
        if now >= spec.window_start {
            tr.r.bytes_window += n as u64;
        }
        let mut body: &[u8] = &buf[..n];
        if head.is_none() {
            head_buf.extend_from_slice(body);
            match http::parse_head(&head_buf) {
                Ok(None) => continue,
                Err(w) => {
                    tr.r.error = Some(format!("bad response head: {w}"));
                    break;
                }
                Ok(Some((h, len))) => {
                    tr.r.status = Some(h.status);
                    if h.status != 200 {
                        tr.r.error = Some(format!(
                            "HTTP {}: {}",
                            h.status,
                            String::from_utf8_lossy(&head_buf[len..]).chars().take(200).collect::<String>()
                        ));
                        break;
                    }
                    head = Some(h);
                    let rest = head_buf.split_off(len);
                    head_buf = rest;
                    body = &head_buf;
                }
            }
        }
        let chunked = head.as_ref().is_some_and(|h| h.chunked);
        tags.clear();
        let res = if chunked {
            ranges.clear();
            match dechunk.feed(body, &mut ranges) {
                Ok(()) => ranges
                    .iter()
                    .try_for_each(|r| scanner.feed(&body[r.clone()], &mut tags))
                    .map_err(|e| e.to_string()),
                Err((o, w)) => Err(format!("chunked body at {o}: {w}")),
            }
        } else {
            scanner.feed(body, &mut tags).map_err(|e| e.to_string())
        };
        for t in &tags {
            tr.on_tag(t, now);
        }
        if let Err(e) = res {
            tr.r.error = Some(e);
            break;
        }
        if !head_buf.is_empty() {
            head_buf = Vec::new();
        }
        if tr.finished() {
            break;
        }
    }
    tr.r
}

async fn run_ws(spec: &ViewerSpec) -> ViewerResult {
    let path = format!("{}.flv", spec.base_path);
    let url = format!("ws://{}{}", spec.addr, path);
    let tcp = match TcpStream::connect(spec.addr).await {
        Ok(s) => s,
        Err(e) => return ViewerResult { error: Some(format!("connect: {e}")), ..Default::default() },
    };
    let sent = Instant::now();
    let (mut ws, resp) = match tokio_tungstenite::client_async(url.as_str(), tcp).await {
        Ok(x) => x,
        Err(e) => {
            return ViewerResult { error: Some(format!("WebSocket handshake: {e}")), ..Default::default() }
        }
    };
    let mut tr = FlvTracker::new(spec, sent);
    tr.r.status = Some(resp.status().as_u16());
    tr.r.ttfb = Some(sent.elapsed());
    let end = until(spec);
    let mut scanner = FlvScanner::new(CAPTURE);
    let mut tags = Vec::new();
    loop {
        let msg = match tokio::time::timeout_at(end, ws.next()).await {
            Err(_) => break,
            Ok(None) => {
                if spec.end.is_some() {
                    tr.r.error = Some("server closed the WebSocket".into());
                }
                break;
            }
            Ok(Some(Err(e))) => {
                tr.r.error = Some(format!("WebSocket: {e}"));
                break;
            }
            Ok(Some(Ok(m))) => m,
        };
        let now = Instant::now();
        if let tokio_tungstenite::tungstenite::Message::Binary(b) = msg {
            tr.r.bytes += b.len() as u64;
            if now >= spec.window_start {
                tr.r.bytes_window += b.len() as u64;
            }
            tags.clear();
            let res = scanner.feed(&b, &mut tags);
            for t in &tags {
                tr.on_tag(t, now);
            }
            if let Err(e) = res {
                tr.r.error = Some(e.to_string());
                break;
            }
            if tr.finished() {
                break;
            }
        }
    }
    let _ = ws.close(None).await;
    tr.r
}

async fn run_hls(spec: &ViewerSpec) -> ViewerResult {
    let playlist_path = format!("{}/index.m3u8", spec.base_path);
    let mut r = ViewerResult::default();
    let sent = Instant::now();
    let end = until(spec);
    let mut next_seq: Option<u64> = None;
    let mut last_new: Option<(Instant, f64)> = None;
    while Instant::now() < end {
        let left = end.saturating_duration_since(Instant::now());
        let resp =
            match http::request(spec.addr, "GET", &playlist_path, None, left.max(Duration::from_millis(1)))
                .await
            {
                Ok(x) => x,
                Err(e) => {
                    if Instant::now() < end {
                        r.error = Some(e.to_string());
                    }
                    break;
                }
            };
        r.ttfb.get_or_insert(sent.elapsed());
        r.status.get_or_insert(resp.status);
        r.bytes += resp.body.len() as u64;
        if resp.status != 200 {
            r.error = Some(format!(
                "HTTP {} for the playlist: {}",
                resp.status,
                String::from_utf8_lossy(&resp.body).chars().take(200).collect::<String>()
            ));
            break;
        }
        let Some(pl) = http::parse_playlist(&String::from_utf8_lossy(&resp.body)) else {
            r.error = Some("the playlist is not an M3U8 media playlist".into());
            break;
        };
        // Start at the live edge (the newest segment), then take every new one in order.
        let from = next_seq.unwrap_or_else(|| pl.segments.last().map(|s| s.0).unwrap_or(0));
        for (seq, dur, uri) in pl.segments.iter().filter(|s| s.0 >= from) {
            let path = http::resolve(&playlist_path, uri);
            // Bounded by the run's end too: a fetch still in flight then is no failure (before,
            // it overran the end and the whole viewer was reported as never answered).
            let left = end.saturating_duration_since(Instant::now()).min(Duration::from_secs(10));
            let seg = match http::request(spec.addr, "GET", &path, None, left.max(Duration::from_millis(1)))
                .await
            {
                Ok(x) if x.status == 200 => x,
                Ok(x) => {
                    r.error = Some(format!("HTTP {} for segment {path}", x.status));
                    break;
                }
                Err(e) => {
                    if Instant::now() < end {
                        r.error = Some(e.to_string());
                    }
                    break;
                }
            };
            let now = Instant::now();
            r.bytes += seg.body.len() as u64;
            if now >= spec.window_start {
                r.bytes_window += seg.body.len() as u64;
            }
            if r.first_key.is_none() {
                r.first_key = Some(now - sent);
                r.first_key_at = Some(now);
                // The segment's first video frame must be a keyframe; recognise which one.
                let es = super::ts::first_video_es(&seg.body, CAPTURE);
                r.keyframe_first = super::ts::first_slice_is_key(&es);
                if let Some(started) = spec.source.started.started.get() {
                    r.first_key_index =
                        spec.source.schedule.identify_keyframe(&es, now.saturating_duration_since(*started));
                }
            }
            if now >= spec.window_start {
                if let Some((t, d)) = last_new {
                    let gap = now - t;
                    let allowed = Duration::from_secs_f64(d.max(pl.target_duration)) + STALL;
                    r.max_gap = r.max_gap.max(gap);
                    if gap > allowed {
                        r.stalls += 1;
                    }
                }
            }
            r.video_tags += 1;
            last_new = Some((now, *dur));
            next_seq = Some(seq + 1);
            if spec.end.is_none() {
                return r;
            }
        }
        if r.error.is_some() || pl.ended {
            break;
        }
        let wait = Duration::from_secs_f64((pl.target_duration / 4.0).clamp(0.1, 1.0));
        tokio::time::sleep(wait.min(end.saturating_duration_since(Instant::now()))).await;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadtest::schedule::{key_nal, Schedule};
    use crate::loadtest::source::SourceStats;
    use tokio::net::TcpListener;

    fn tag(t: u8, ts: u32, body: &[u8]) -> Vec<u8> {
        let mut v = vec![t];
        v.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        v.extend_from_slice(&ts.to_be_bytes()[1..]);
        v.push((ts >> 24) as u8);
        v.extend_from_slice(&[0, 0, 0]);
        v.extend_from_slice(body);
        v.extend_from_slice(&(body.len() as u32 + 11).to_be_bytes());
        v
    }

    fn chunk(out: &mut Vec<u8>, data: &[u8]) {
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }

    /// A stand-in for the gateway's HTTP-FLV route: chunked FLV whose first video frame is the
    /// sample's keyframe `key` (AVCC, 4-byte lengths), then inter frames every 40 ms.
    async fn serve_flv(l: TcpListener, key_nal: Vec<u8>, gap_ms: u64) {
        let (mut s, _) = l.accept().await.unwrap();
        let mut req = vec![0u8; 1024];
        let _ = s.read(&mut req).await.unwrap();
        let mut out =
            b"HTTP/1.1 200 OK\r\nContent-Type: video/x-flv\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        chunk(&mut out, b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00");
        chunk(&mut out, &tag(9, 0, &[0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f]));
        let mut body = vec![0x17, 1, 0, 0, 0];
        body.extend_from_slice(&(key_nal.len() as u32).to_be_bytes());
        body.extend_from_slice(&key_nal);
        let t = tag(9, 1000, &body);
        // Split the keyframe tag across two chunks and two writes.
        chunk(&mut out, &t[..700]);
        s.write_all(&out).await.unwrap();
        out.clear();
        chunk(&mut out, &t[700..]);
        s.write_all(&out).await.unwrap();
        for i in 1..=5u32 {
            tokio::time::sleep(Duration::from_millis(gap_ms)).await;
            out.clear();
            chunk(&mut out, &tag(9, 1000 + 40 * i, &[0x27, 1, 0, 0, 0, 0, 0, 0, 1, 0x41]));
            if s.write_all(&out).await.is_err() {
                return;
            }
        }
    }

    fn sample_schedule() -> Arc<Schedule> {
        let data = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/h264_aac.ps")).unwrap();
        Arc::new(Schedule::build(&data, 1).unwrap())
    }

    fn idr_of_first_unit(s: &Schedule) -> Vec<u8> {
        let u = &s.units[0];
        let ps: Vec<u8> =
            s.packets[u.first..u.first + u.count].iter().flat_map(|p| p.payload.to_vec()).collect();
        // The PES payload starts after the pack, system header, PSM and PES header: find the
        // Annex B IDR inside the raw PS bytes (start codes inside PS headers are not NAL units,
        // but key_nal only accepts type 5).
        key_nal(&ps, false).unwrap().to_vec()
    }

    async fn flv_viewer(gap_ms: u64, end: Option<Duration>) -> ViewerResult {
        let sched = sample_schedule();
        let key = idr_of_first_unit(&sched);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve_flv(l, key, gap_ms));
        let stats = Arc::new(SourceStats::default());
        stats.started.set(Instant::now() - Duration::from_millis(100)).unwrap();
        let now = Instant::now();
        run(ViewerSpec {
            proto: ViewerProto::Flv,
            addr,
            base_path: "/live/rtp/x".into(),
            start: now,
            end: end.map(|e| now + e),
            window_start: now,
            source: SourceClock { schedule: sched, started: stats },
        })
        .await
    }

    #[tokio::test]
    async fn flv_join_probe_recognises_the_first_keyframe() {
        let r = flv_viewer(40, None).await;
        assert_eq!(r.error, None);
        assert_eq!(r.status, Some(200));
        assert_eq!(r.keyframe_first, Some(true));
        assert_eq!(r.first_key_index, Some(0), "fingerprint of keyframe 0 found in the tag");
        assert!(r.ttfb.unwrap() <= r.first_key.unwrap());
        assert_eq!(r.video_tags, 1, "a join probe stops at the first keyframe");
    }

    #[tokio::test]
    async fn flv_viewer_counts_stalls_and_lag() {
        let r = flv_viewer(1100, Some(Duration::from_millis(3500))).await;
        assert_eq!(r.first_key_index, Some(0));
        assert!(r.video_tags >= 3, "{r:?}");
        assert!(r.stalls >= 2, "gaps of 1.1 s are stalls: {r:?}");
        assert!(r.max_gap >= Duration::from_millis(1100));
        // Frames are 40 ms apart in media time but 1.1 s apart on the wire: lag grows.
        assert!(r.max_lag.unwrap() > Duration::from_secs(1), "{r:?}");
    }
}

#[cfg(test)]
mod ws_hls_tests {
    use super::*;
    use crate::loadtest::schedule::{key_nal, Schedule};
    use crate::loadtest::source::SourceStats;
    use axum::extract::ws::{Message, WebSocketUpgrade};
    use axum::extract::Path;
    use axum::routing::get;
    use axum::Router;

    fn sample() -> (Arc<Schedule>, Vec<u8>) {
        let data = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/h264_aac.ps")).unwrap();
        let s = Arc::new(Schedule::build(&data, 1).unwrap());
        let u = &s.units[0];
        let ps: Vec<u8> =
            s.packets[u.first..u.first + u.count].iter().flat_map(|p| p.payload.to_vec()).collect();
        let idr = key_nal(&ps, false).unwrap().to_vec();
        (s, idr)
    }

    fn flv_tag(t: u8, ts: u32, body: &[u8]) -> Vec<u8> {
        let mut v = vec![t];
        v.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        v.extend_from_slice(&ts.to_be_bytes()[1..]);
        v.extend_from_slice(&[(ts >> 24) as u8, 0, 0, 0]);
        v.extend_from_slice(body);
        v.extend_from_slice(&(body.len() as u32 + 11).to_be_bytes());
        v
    }

    /// TS packets (ISO/IEC 13818-1 §2.4.3.2) carrying one video PES with `es`, padded by adaptation fields.
    fn ts_segment(es: &[u8]) -> Vec<u8> {
        let mut pes = vec![0, 0, 1, 0xE0, 0, 0, 0x80, 0x80, 5, 0x21, 0, 1, 0, 1];
        pes.extend_from_slice(es);
        let mut out = Vec::new();
        for (i, part) in pes.chunks(184).enumerate() {
            let mut p = vec![0x47, if i == 0 { 0x41 } else { 0x01 }, 0x00];
            let stuffing = 184 - part.len();
            if stuffing == 0 {
                p.push(0x10 | (i as u8 & 0xF));
            } else {
                p.push(0x30 | (i as u8 & 0xF));
                p.push((stuffing - 1) as u8);
                if stuffing > 1 {
                    p.push(0);
                    p.extend(std::iter::repeat_n(0xFF, stuffing - 2));
                }
            }
            p.extend_from_slice(part);
            out.extend_from_slice(&p);
        }
        out
    }

    async fn serve(app: Router) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        addr
    }

    fn spec(proto: ViewerProto, addr: SocketAddr, sched: Arc<Schedule>, end: Duration) -> ViewerSpec {
        let stats = Arc::new(SourceStats::default());
        stats.started.set(Instant::now() - Duration::from_millis(100)).unwrap();
        let now = Instant::now();
        ViewerSpec {
            proto,
            addr,
            base_path: "/live/rtp/x".into(),
            start: now,
            end: Some(now + end),
            window_start: now,
            source: SourceClock { schedule: sched, started: stats },
        }
    }

    #[tokio::test]
    async fn ws_viewer_reads_flv_from_binary_messages() {
        let (sched, idr) = sample();
        let app = Router::new().route(
            "/live/rtp/x.flv",
            get(move |ws: WebSocketUpgrade| {
                let idr = idr.clone();
                async move {
                    ws.on_upgrade(move |mut sock| async move {
                        let mut key = vec![0x17, 1, 0, 0, 0];
                        key.extend_from_slice(&(idr.len() as u32).to_be_bytes());
                        key.extend_from_slice(&idr);
                        let mut first = b"FLV\x01\x01\x00\x00\x00\x09\x00\x00\x00\x00".to_vec();
                        first.extend(flv_tag(9, 0, &[0x17, 0, 0, 0, 0, 1]));
                        let _ = sock.send(Message::Binary(first.into())).await;
                        let _ = sock.send(Message::Binary(flv_tag(9, 0, &key).into())).await;
                        for i in 1..20u32 {
                            tokio::time::sleep(Duration::from_millis(40)).await;
                            let t = flv_tag(9, 40 * i, &[0x27, 1, 0, 0, 0, 0, 0, 0, 1, 0x41]);
                            if sock.send(Message::Binary(t.into())).await.is_err() {
                                return;
                            }
                        }
                    })
                }
            }),
        );
        let addr = serve(app).await;
        let r = run(spec(ViewerProto::Ws, addr, sched, Duration::from_millis(500))).await;
        assert_eq!(r.error, None);
        assert_eq!(r.status, Some(101));
        assert_eq!(r.keyframe_first, Some(true));
        assert_eq!(r.first_key_index, Some(0));
        assert!(r.video_tags >= 5, "{r:?}");
        assert_eq!(r.stalls, 0);
    }

    #[tokio::test]
    async fn hls_viewer_follows_the_playlist_from_the_live_edge() {
        let (sched, idr) = sample();
        let mut es = vec![0, 0, 0, 1, 0x09, 0xF0, 0, 0, 0, 1];
        es.extend_from_slice(&idr);
        let seg = ts_segment(&es);
        let born = std::time::Instant::now();
        let app = Router::new()
            .route(
                "/live/rtp/x/index.m3u8",
                get(move || async move {
                    // A new 0.5 s segment every 0.5 s; the window holds the last three.
                    let n = 3 + (born.elapsed().as_millis() / 500) as u64;
                    let mut t =
                        format!("#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:{}\n", n - 3);
                    for s in n - 3..n {
                        t.push_str(&format!("#EXTINF:0.500,\nseg{s}.ts\n"));
                    }
                    t
                }),
            )
            .route("/live/rtp/x/{seg}", get(move |Path(_s): Path<String>| async move { seg.clone() }));
        let addr = serve(app).await;
        let r = run(spec(ViewerProto::Hls, addr, sched, Duration::from_millis(1800))).await;
        assert_eq!(r.error, None);
        assert_eq!(r.status, Some(200));
        assert_eq!(r.keyframe_first, Some(true));
        assert_eq!(r.first_key_index, Some(0));
        // Starts at the newest segment, then takes each new one: about 1.8 s / 0.5 s of them.
        assert!((3..=6).contains(&r.video_tags), "{r:?}");
        assert_eq!(r.stalls, 0);
    }
}
