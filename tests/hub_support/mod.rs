//! Shared test doubles for the hub and HTTP tests: a fake source ([`FakePuller`]) that feeds
//! synthetic H.264 + AAC frames, a minimal FLV tag writer standing in for `proto::mux::flv`
//! (real FLV framing, fake codec payloads), a minimal HLS segmenter double, a server on
//! 127.0.0.1:0, and an FLV tag reader.
//!
//! Not a muxer test: the real muxers are tested in `proto::mux`. The doubles produce exactly the
//! flags the hub relies on (keyframe, sequence header), so the hub's fan-out and lifecycle are
//! tested on their own.
#![allow(dead_code)]

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use gbrelay::config::{Config, FlvHevc};
use gbrelay::hub::mux_adapter::{FlvTagMuxer, HlsParams, HlsSink, MuxFactory, MuxedTag, TagKind, VideoSize};
use gbrelay::hub::{Hub, HubConfig, PullError, PullHandle, Puller, SourceEvent, StreamKey};
use gbrelay::proto::codec::{Codec, Frame};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- FLV double

fn flv_tag(kind: u8, ts: u32, body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(11 + body.len() + 4);
    b.put_u8(kind);
    b.put_uint(body.len() as u64, 3);
    b.put_uint(u64::from(ts & 0xff_ffff), 3);
    b.put_u8((ts >> 24) as u8);
    b.put_uint(0, 3);
    b.put_slice(body);
    b.put_u32(11 + body.len() as u32);
    b.freeze()
}

/// FLV framing with placeholder codec payloads (E.4.3 video: FrameType<<4 | CodecID 7, then
/// AVCPacketType 0 = sequence header, 1 = NALU).
#[derive(Default)]
pub struct TestFlvMuxer {
    seq_header: Option<Bytes>,
    audio_header: Option<Bytes>,
}

impl FlvTagMuxer for TestFlvMuxer {
    fn push(&mut self, f: &Frame, out: &mut Vec<MuxedTag>) {
        let ts = (f.dts / 90) as u32;
        if f.codec.is_video() {
            if f.keyframe && self.seq_header.is_none() {
                let t = flv_tag(9, ts, &[0x17, 0, 0, 0, 0, 1, 0x42, 0, 0x1e]);
                self.seq_header = Some(t.clone());
                out.push(MuxedTag {
                    data: t,
                    kind: TagKind::Video,
                    keyframe: true,
                    seq_header: true,
                    timestamp_ms: ts,
                });
            }
            let mut body = vec![if f.keyframe { 0x17 } else { 0x27 }, 1, 0, 0, 0];
            body.extend_from_slice(&f.data);
            out.push(MuxedTag {
                data: flv_tag(9, ts, &body),
                kind: TagKind::Video,
                keyframe: f.keyframe,
                seq_header: false,
                timestamp_ms: ts,
            });
        } else {
            if self.audio_header.is_none() {
                let t = flv_tag(8, ts, &[0xaf, 0, 0x12, 0x10]);
                self.audio_header = Some(t.clone());
                out.push(MuxedTag {
                    data: t,
                    kind: TagKind::Audio,
                    keyframe: false,
                    seq_header: true,
                    timestamp_ms: ts,
                });
            }
            let mut body = vec![0xaf, 1];
            body.extend_from_slice(&f.data);
            out.push(MuxedTag {
                data: flv_tag(8, ts, &body),
                kind: TagKind::Audio,
                keyframe: false,
                seq_header: false,
                timestamp_ms: ts,
            });
        }
    }

    fn header(&self, has_video: bool, has_audio: bool) -> Bytes {
        let flags = (u8::from(has_audio) << 2) | u8::from(has_video);
        Bytes::from(vec![b'F', b'L', b'V', 1, flags, 0, 0, 0, 9, 0, 0, 0, 0])
    }

    fn init_tags(&self) -> Vec<Bytes> {
        self.seq_header.iter().chain(self.audio_header.iter()).cloned().collect()
    }

    fn video_size(&self) -> Option<VideoSize> {
        self.seq_header.as_ref().map(|_| VideoSize { width: 640, height: 480 })
    }
}

/// HLS double: a "segment" is the concatenated frame payloads between keyframes at least
/// `target` apart.
pub struct TestHls {
    params: HlsParams,
    segs: Vec<(u64, Bytes)>,
    cur: BytesMut,
    cur_start: Option<i64>,
    next_seq: u64,
}

impl HlsSink for TestHls {
    fn push(&mut self, f: &Frame) {
        if f.codec.is_video() && f.keyframe {
            match self.cur_start {
                Some(s) if f.dts - s >= self.params.target_duration_90k => {
                    let data = std::mem::take(&mut self.cur).freeze();
                    self.segs.push((self.next_seq, data));
                    self.next_seq += 1;
                    if self.segs.len() > self.params.window {
                        self.segs.remove(0);
                    }
                    self.cur_start = Some(f.dts);
                }
                None => self.cur_start = Some(f.dts),
                _ => {}
            }
        }
        if self.cur_start.is_some() {
            self.cur.extend_from_slice(&f.data);
        }
    }
    fn finish(&mut self) {}
    fn playlist(&self) -> String {
        let mut s = String::from("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n");
        if let Some((first, _)) = self.segs.first() {
            s += &format!("#EXT-X-MEDIA-SEQUENCE:{first}\n");
        }
        for (seq, _) in &self.segs {
            s += &format!("#EXTINF:0.400,\n{seq}.ts\n");
        }
        s
    }
    fn segment(&self, seq: u64) -> Option<Bytes> {
        self.segs.iter().find(|(s, _)| *s == seq).map(|(_, d)| d.clone())
    }
    fn latest_seq(&self) -> Option<u64> {
        self.segs.last().map(|(s, _)| *s)
    }
}

pub struct TestMux;

impl MuxFactory for TestMux {
    fn flv(&self, _hevc: FlvHevc) -> Box<dyn FlvTagMuxer> {
        Box::<TestFlvMuxer>::default()
    }
    fn hls(&self, params: HlsParams) -> Box<dyn HlsSink> {
        Box::new(TestHls { params, segs: vec![], cur: BytesMut::new(), cur_start: None, next_seq: 0 })
    }
}

// ---------------------------------------------------------------- synthetic frames

const SPS: &[u8] = &[0x67, 0x42, 0xc0, 0x1e, 0xd9, 0x00, 0xa0, 0x3d, 0xa1, 0x00, 0x00, 0x03, 0x00, 0x01];
const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];

/// Video frame `n` (keyframe every `gop`), `size` bytes of payload carrying `n`.
pub fn video_frame(n: u64, gop: u64, size: usize, frame_ms: u64) -> Frame {
    let key = n % gop == 0;
    let mut d = BytesMut::with_capacity(size + 32);
    if key {
        for ps in [SPS, PPS] {
            d.put_slice(&[0, 0, 0, 1]);
            d.put_slice(ps);
        }
        d.put_slice(&[0, 0, 0, 1, 0x65]);
    } else {
        d.put_slice(&[0, 0, 0, 1, 0x41]);
    }
    d.put_u64(n);
    d.resize(d.len() + size.saturating_sub(8), 0x5a);
    let t = (n * frame_ms * 90) as i64;
    Frame { codec: Codec::H264, pts: t, dts: t, keyframe: key, discontinuity: false, data: d.freeze() }
}

pub fn audio_frame(n: u64, frame_ms: u64) -> Frame {
    let t = (n * frame_ms * 90) as i64;
    let mut d = BytesMut::new();
    d.put_slice(&[0xff, 0xf1, 0x50, 0x80, 0x02, 0x1f, 0xfc]);
    d.put_u64(n);
    Frame { codec: Codec::Aac, pts: t, dts: t, keyframe: true, discontinuity: false, data: d.freeze() }
}

// ---------------------------------------------------------------- fake source

/// What the fake device does for a channel.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Answers after `answer_ms`, then streams forever (`frames: None`) or `Some(n)` frames then
    /// stays silent (no data) or ends (`end_reason`).
    Stream {
        answer_ms: u64,
        frame_ms: u64,
        gop: u64,
        size: usize,
        frames: Option<u64>,
        end_reason: Option<String>,
    },
    Fail(PullError),
}

impl Behaviour {
    pub fn live() -> Behaviour {
        Behaviour::Stream { answer_ms: 50, frame_ms: 10, gop: 10, size: 2000, frames: None, end_reason: None }
    }
}

#[derive(Default)]
pub struct FakePuller {
    pub behaviours: Mutex<HashMap<String, Behaviour>>,
    pub pulls: Mutex<HashMap<String, usize>>,
    /// (channel, reason, when) for every stopper call.
    pub stops: Arc<Mutex<Vec<(String, String, Instant)>>>,
}

impl FakePuller {
    pub fn set(&self, channel: &str, b: Behaviour) {
        self.behaviours.lock().unwrap().insert(channel.to_owned(), b);
    }
    pub fn pulls(&self, channel: &str) -> usize {
        self.pulls.lock().unwrap().get(channel).copied().unwrap_or(0)
    }
    pub fn stops(&self, channel: &str) -> Vec<(String, Instant)> {
        self.stops.lock().unwrap().iter().filter(|s| s.0 == channel).map(|s| (s.1.clone(), s.2)).collect()
    }
}

/// A source task feeding frames until stopped; returns its handle.
pub fn spawn_source(
    channel: String,
    b: Behaviour,
    stops: Arc<Mutex<Vec<(String, String, Instant)>>>,
) -> PullHandle {
    let Behaviour::Stream { frame_ms, gop, size, frames, end_reason, .. } = b else {
        panic!("not a streaming behaviour");
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let stopped = Arc::new(AtomicBool::new(false));
    let st = stopped.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(frame_ms));
        let mut n = 0u64;
        loop {
            tick.tick().await;
            if st.load(Ordering::Relaxed) {
                return;
            }
            if frames.is_some_and(|max| n >= max) {
                if let Some(r) = &end_reason {
                    let _ = tx.send(SourceEvent::Ended(r.clone())).await;
                    return;
                }
                continue; // silent: keep the channel open, send nothing
            }
            if tx.send(SourceEvent::Frame(video_frame(n, gop, size, frame_ms))).await.is_err() {
                return;
            }
            let _ = tx.send(SourceEvent::Frame(audio_frame(n, frame_ms))).await;
            n += 1;
        }
    });
    PullHandle {
        events: rx,
        stopper: Box::new(move |reason| {
            stopped.store(true, Ordering::Relaxed);
            stops.lock().unwrap().push((channel, reason, Instant::now()));
        }),
        transport: "udp".into(),
        started_at: Instant::now(),
    }
}

impl Puller for FakePuller {
    fn pull(&self, key: &StreamKey) -> BoxFuture<'static, Result<PullHandle, PullError>> {
        let channel = match key {
            StreamKey::Live { channel, .. } => channel.clone(),
            StreamKey::Rtp { name } => name.clone(),
        };
        *self.pulls.lock().unwrap().entry(channel.clone()).or_default() += 1;
        let b = self.behaviours.lock().unwrap().get(&channel).cloned();
        let stops = self.stops.clone();
        Box::pin(async move {
            match b {
                None => Err(PullError::NotFound(format!("channel {channel}"))),
                Some(Behaviour::Fail(e)) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Err(e)
                }
                Some(b @ Behaviour::Stream { answer_ms, .. }) => {
                    tokio::time::sleep(Duration::from_millis(answer_ms)).await;
                    Ok(spawn_source(channel, b, stops))
                }
            }
        })
    }
}

// ---------------------------------------------------------------- server

pub struct TestServer {
    pub base: String,
    pub hub: Arc<Hub>,
    pub puller: Arc<FakePuller>,
    pub config: Arc<Config>,
}

pub fn test_config() -> Config {
    let mut c = Config::default();
    c.stream.idle_timeout = Duration::from_millis(600);
    c.stream.no_data_timeout = Duration::from_millis(600);
    c.stream.first_frame_timeout = Duration::from_secs(3);
    c.stream.slow_viewer_timeout = Duration::from_secs(1);
    c.stream.ring_bytes = 1 << 20;
    c.hls.segment = Duration::from_millis(200);
    c
}

pub async fn start_server(config: Config, rtp: Option<Arc<dyn gbrelay::http::RtpControl>>) -> TestServer {
    start_server_with(config, Arc::new(TestMux), rtp).await
}

pub async fn start_server_with(
    config: Config,
    mux: Arc<dyn MuxFactory>,
    rtp: Option<Arc<dyn gbrelay::http::RtpControl>>,
) -> TestServer {
    let config = Arc::new(config);
    let puller = Arc::new(FakePuller::default());
    let hub = Hub::new(HubConfig::from_config(&config), puller.clone(), mux);
    let state = gbrelay::http::AppState { hub: hub.clone(), config: config.clone(), rtp };
    let router = gbrelay::http::router(state, axum::Router::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stuck = config.stream.slow_viewer_timeout;
    tokio::spawn(gbrelay::http::serve_with(listener, router, stuck));
    TestServer { base: format!("http://{addr}"), hub, puller, config }
}

// ---------------------------------------------------------------- FLV reader

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub kind: u8,
    pub ts: u32,
    /// The whole tag as sent (header, body, PreviousTagSize).
    pub raw: Bytes,
}

impl Tag {
    pub fn body(&self) -> &[u8] {
        &self.raw[11..self.raw.len() - 4]
    }
    pub fn is_video_keyframe(&self) -> bool {
        self.kind == 9 && self.body()[0] >> 4 == 1 && self.body()[1] == 1
    }
    pub fn is_seq_header(&self) -> bool {
        matches!(self.kind, 8 | 9) && self.body()[1] == 0
    }
    /// Frame number carried by a synthetic video NALU tag.
    pub fn video_frame_no(&self) -> Option<u64> {
        if self.kind != 9 || self.body()[1] != 1 {
            return None;
        }
        let nal = &self.body()[5..];
        let idx = if self.is_video_keyframe() { 4 + SPS.len() + 4 + PPS.len() + 5 } else { 5 };
        Some(u64::from_be_bytes(nal[idx..idx + 8].try_into().unwrap()))
    }
}

/// Incremental FLV parser: header (13 bytes) then tags.
#[derive(Default)]
pub struct FlvReader {
    buf: BytesMut,
    pub header: Option<Bytes>,
    pub tags: Vec<Tag>,
}

impl FlvReader {
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        if self.header.is_none() {
            if self.buf.len() < 13 {
                return;
            }
            assert_eq!(&self.buf[..3], b"FLV", "stream does not start with an FLV header");
            self.header = Some(self.buf.split_to(13).freeze());
        }
        while self.buf.len() >= 11 {
            let size = u32::from_be_bytes([0, self.buf[1], self.buf[2], self.buf[3]]) as usize;
            let total = 11 + size + 4;
            if self.buf.len() < total {
                break;
            }
            let raw = self.buf.split_to(total).freeze();
            let ts = u32::from_be_bytes([raw[7], raw[4], raw[5], raw[6]]);
            let prev = u32::from_be_bytes(raw[total - 4..].try_into().unwrap()) as usize;
            assert_eq!(prev, 11 + size, "PreviousTagSize mismatch");
            self.tags.push(Tag { kind: raw[0], ts, raw });
        }
    }
}

/// GET an FLV URL and read until `want_tags` tags arrived (or the body ends / `limit` passes).
pub async fn read_flv(
    url: &str,
    want_tags: usize,
    limit: Duration,
) -> (reqwest::StatusCode, FlvReader, bool) {
    use futures_util::StreamExt;
    let resp = reqwest::get(url).await.unwrap();
    let status = resp.status();
    let mut r = FlvReader::default();
    if !status.is_success() {
        return (status, r, true);
    }
    let mut body = resp.bytes_stream();
    let deadline = tokio::time::Instant::now() + limit;
    let mut ended = false;
    while r.tags.len() < want_tags {
        match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(Ok(chunk))) => r.feed(&chunk),
            Ok(Some(Err(_))) | Ok(None) => {
                ended = true;
                break;
            }
            Err(_) => break,
        }
    }
    (status, r, ended)
}

pub async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

pub fn live_url(base: &str, channel: &str) -> String {
    format!("{base}/live/34020000001180000001/{channel}.flv")
}
