//! HTTP-FLV / WS-FLV / HLS play routes against the real server on 127.0.0.1 with a fake source:
//! single flight, byte-identical fan-out, keyframe-first joins, cold HLS starts from the cached
//! GOP, slow viewers, lifecycle stops and error statuses.

mod hub_support;

use futures_util::StreamExt;
use gbrelay::hub::mux_adapter::ProtoMux;
use gbrelay::hub::PullError;
use gbrelay::proto::mux::ts::{PID_AUDIO, PID_VIDEO};
use hub_support::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn first_video_is_keyframe(r: &FlvReader) -> bool {
    r.tags.iter().find(|t| t.kind == 9 && !t.is_seq_header()).is_some_and(|t| t.is_video_keyframe())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_viewers_cause_exactly_one_pull() {
    let s = start_server(test_config(), None).await;
    s.puller.set("c1", Behaviour::live());
    let url = live_url(&s.base, "c1");
    let (a, b) =
        tokio::join!(read_flv(&url, 20, Duration::from_secs(5)), read_flv(&url, 20, Duration::from_secs(5)));
    assert_eq!(a.0, 200);
    assert_eq!(b.0, 200);
    assert!(a.1.tags.len() >= 20 && b.1.tags.len() >= 20);
    assert_eq!(s.puller.pulls("c1"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_viewers_arriving_before_the_stream_get_identical_bodies_from_the_first_keyframe() {
    let s = start_server(test_config(), None).await;
    s.puller.set("c20", Behaviour::live());
    let url = live_url(&s.base, "c20");
    let viewers: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { read_flv(&url, 120, Duration::from_secs(10)).await })
        })
        .collect();
    let mut bodies = vec![];
    for v in viewers {
        let (status, r, _) = v.await.unwrap();
        assert_eq!(status, 200);
        assert!(r.tags.len() >= 120, "only {} tags", r.tags.len());
        bodies.push(r);
    }
    assert_eq!(s.puller.pulls("c20"), 1);
    let reference: Vec<_> = bodies[0].tags[..120].iter().map(|t| t.raw.clone()).collect();
    for r in &bodies {
        assert_eq!(r.header, bodies[0].header);
        assert!(first_video_is_keyframe(r));
        // The very first keyframe the device sent: frame 0.
        let first = r.tags.iter().find_map(|t| t.video_frame_no()).unwrap();
        assert_eq!(first, 0);
        let got: Vec<_> = r.tags[..120].iter().map(|t| t.raw.clone()).collect();
        assert!(got == reference, "bodies differ");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joiner_of_a_running_stream_starts_on_the_cached_keyframe_in_order() {
    let s = start_server(test_config(), None).await;
    s.puller.set("cj", Behaviour::live());
    let url = live_url(&s.base, "cj");
    let first = tokio::spawn({
        let url = url.clone();
        async move { read_flv(&url, 150, Duration::from_secs(10)).await }
    });
    tokio::time::sleep(Duration::from_millis(370)).await;
    let t0 = Instant::now();
    let (status, r, _) = read_flv(&url, 30, Duration::from_secs(5)).await;
    let took = t0.elapsed();
    assert_eq!(status, 200);
    assert!(first_video_is_keyframe(&r));
    // Init tags (sequence headers) come before the first frame.
    assert!(r.tags[0].is_seq_header());
    let frames: Vec<u64> = r.tags.iter().filter_map(|t| t.video_frame_no()).collect();
    assert_eq!(frames[0] % 10, 0, "starts on a GOP boundary");
    assert!(frames[0] >= 20, "starts on the cached GOP, not the first: {frames:?}");
    assert!(frames.windows(2).all(|w| w[1] == w[0] + 1), "contiguous: {frames:?}");
    // The cached GOP is there at once: no wait for the next keyframe (GOP = 100 ms).
    assert!(took < Duration::from_secs(1));
    let (_, r1, _) = first.await.unwrap();
    let pos = r1
        .tags
        .iter()
        .position(|t| t.raw == r.tags.iter().find(|t| t.video_frame_no().is_some()).unwrap().raw);
    assert!(pos.is_some(), "the joiner's keyframe tag is byte-identical to the first viewer's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_flv_delivers_the_same_flv_stream_in_binary_messages() {
    let s = start_server(test_config(), None).await;
    s.puller.set("cw", Behaviour::live());
    let url = live_url(&s.base, "cw").replace("http://", "ws://");
    let (mut ws, resp) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(resp.status(), 101);
    let mut r = FlvReader::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while r.tags.len() < 30 {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.unwrap().unwrap().unwrap();
        assert!(msg.is_binary(), "{msg:?}");
        r.feed(&msg.into_data());
    }
    assert!(first_video_is_keyframe(&r));
    let info = s.hub.list();
    assert_eq!(info[0].viewers_ws, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_that_stops_reading_neither_grows_memory_nor_delays_others_and_is_dropped() {
    let mut cfg = test_config();
    cfg.stream.ring_bytes = 1 << 20;
    cfg.stream.idle_timeout = Duration::from_secs(30);
    cfg.stream.slow_viewer_timeout = Duration::from_millis(1500);
    let s = start_server(cfg, None).await;
    // ~1.6 MB/s: fills a stuck socket's buffers quickly.
    s.puller.set(
        "cs",
        Behaviour::Stream {
            answer_ms: 10,
            frame_ms: 10,
            gop: 10,
            size: 16_000,
            frames: None,
            end_reason: None,
        },
    );
    let url = live_url(&s.base, "cs");
    // The stuck viewer: sends a request, never reads.
    let addr = s.base.trim_start_matches("http://").to_owned();
    let sock = std::net::TcpStream::connect(&addr).unwrap();
    let sock = nonblocking(sock);
    use tokio::io::AsyncWriteExt;
    let mut stuck = tokio::net::TcpStream::from_std(sock).unwrap();
    stuck
        .write_all(
            format!("GET /live/34020000001180000001/cs.flv HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let resp = reqwest::get(&url).await.unwrap();
    let mut body = resp.bytes_stream();
    let mut r = FlvReader::default();
    let mut last = Instant::now();
    let mut max_gap = Duration::ZERO;
    let mut max_ring = 0;
    let stream = s.hub.list().into_iter().next().unwrap().key;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let chunk =
            tokio::time::timeout(Duration::from_secs(2), body.next()).await.unwrap().unwrap().unwrap();
        r.feed(&chunk);
        max_gap = max_gap.max(last.elapsed());
        last = Instant::now();
        max_ring = max_ring.max(s.hub.get(&stream).unwrap().ring_bytes());
    }
    assert!(max_ring <= 1 << 20, "ring held {max_ring} bytes");
    // Generous for a loaded CI machine; a viewer delayed by the stuck one would stall for the
    // whole slow_viewer_timeout (1.5 s).
    assert!(max_gap < Duration::from_millis(500), "the reading viewer stalled {max_gap:?}");
    let frames: Vec<u64> = r.tags.iter().filter_map(|t| t.video_frame_no()).collect();
    assert!(frames.windows(2).all(|w| w[1] == w[0] + 1), "the reading viewer lost frames");
    // The stuck viewer is gone after slow_viewer_timeout; the reader stays.
    let h = s.hub.get(&stream).unwrap();
    assert!(wait_until(Duration::from_secs(3), || h.viewers() == 1).await, "stuck viewer still counted");
    assert!(gbrelay::metrics::render().contains("gbrelay_viewer_drops_total{reason=\"stuck\"}"));
    drop(stuck);
}

fn nonblocking(sock: std::net::TcpStream) -> std::net::TcpStream {
    sock.set_nonblocking(true).unwrap();
    sock
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_viewer_leaving_stops_the_source_within_idle_timeout_plus_one_second() {
    let s = start_server(test_config(), None).await;
    s.puller.set("ci", Behaviour::live());
    let (status, r, _) = read_flv(&live_url(&s.base, "ci"), 20, Duration::from_secs(5)).await;
    assert_eq!(status, 200);
    assert!(r.tags.len() >= 20);
    let left = Instant::now(); // the body was dropped when read_flv returned
    assert!(wait_until(Duration::from_secs(3), || !s.puller.stops("ci").is_empty()).await);
    let (reason, at) = s.puller.stops("ci")[0].clone();
    assert_eq!(reason, "idle");
    assert!(at.duration_since(left) <= s.config.stream.idle_timeout + Duration::from_secs(1));
    assert!(at.duration_since(left) >= s.config.stream.idle_timeout - Duration::from_millis(100));
    assert!(s.hub.is_empty());
    let listed = s.hub.list();
    assert_eq!(listed[0].status, "ended");
    assert_eq!(listed[0].reason.as_deref(), Some("idle"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_that_goes_silent_is_stopped_for_no_data_and_viewers_end_cleanly() {
    let s = start_server(test_config(), None).await;
    s.puller.set(
        "cn",
        Behaviour::Stream {
            answer_ms: 10,
            frame_ms: 10,
            gop: 10,
            size: 500,
            frames: Some(25),
            end_reason: None,
        },
    );
    let (status, r, ended) = read_flv(&live_url(&s.base, "cn"), 10_000, Duration::from_secs(5)).await;
    assert_eq!(status, 200);
    assert!(ended, "body did not end");
    let frames: Vec<u64> = r.tags.iter().filter_map(|t| t.video_frame_no()).collect();
    assert_eq!(frames, (0..25).collect::<Vec<_>>());
    assert_eq!(s.puller.stops("cn")[0].0, "no data");
    let v: serde_json::Value = reqwest::get(format!("{}/api/v1/streams", s.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .parse::<serde_json::Value>()
        .unwrap();
    assert_eq!(v["items"][0]["status"], "ended");
    assert_eq!(v["items"][0]["reason"], "no data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_bye_ends_the_viewers_bodies() {
    let s = start_server(test_config(), None).await;
    s.puller.set(
        "cb",
        Behaviour::Stream {
            answer_ms: 10,
            frame_ms: 10,
            gop: 10,
            size: 500,
            frames: Some(30),
            end_reason: Some("device BYE".into()),
        },
    );
    let url = live_url(&s.base, "cb");
    let (a, b) = tokio::join!(
        read_flv(&url, 10_000, Duration::from_secs(5)),
        read_flv(&url, 10_000, Duration::from_secs(5))
    );
    for (status, r, ended) in [a, b] {
        assert_eq!(status, 200);
        assert!(ended);
        assert_eq!(r.tags.iter().filter_map(|t| t.video_frame_no()).count(), 30);
    }
    assert_eq!(s.puller.stops("cb")[0].0, "device BYE");
}

async fn error_of(url: &str) -> (u16, serde_json::Value) {
    let resp = reqwest::get(url).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap().parse::<serde_json::Value>().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_errors_map_to_404_503_502_504_with_json_reasons() {
    let mut cfg = test_config();
    cfg.stream.first_frame_timeout = Duration::from_millis(500);
    let s = start_server(cfg, None).await;
    s.puller.set("off", Behaviour::Fail(PullError::Offline("device 3402… offline".into())));
    s.puller.set("ref", Behaviour::Fail(PullError::Refused { status: 486, reason: "Busy Here".into() }));
    s.puller.set("tmo", Behaviour::Fail(PullError::Timeout("no answer to INVITE".into())));
    s.puller.set(
        "nokey",
        Behaviour::Stream {
            answer_ms: 10,
            frame_ms: 10,
            gop: 10,
            size: 100,
            frames: Some(0),
            end_reason: None,
        },
    );
    s.puller.set(
        "slow",
        Behaviour::Stream {
            answer_ms: 5_000,
            frame_ms: 10,
            gop: 10,
            size: 100,
            frames: None,
            end_reason: None,
        },
    );

    let (st, v) = error_of(&live_url(&s.base, "unknown")).await;
    assert_eq!(st, 404);
    assert_eq!(v["error"], "not_found");
    let (st, v) = error_of(&live_url(&s.base, "off")).await;
    assert_eq!(st, 503);
    assert!(v["reason"].as_str().unwrap().contains("offline"));
    let (st, v) = error_of(&live_url(&s.base, "ref")).await;
    assert_eq!(st, 502);
    assert_eq!(v["sip_status"], 486);
    assert!(v["reason"].as_str().unwrap().contains("486"));
    let (st, _) = error_of(&live_url(&s.base, "tmo")).await;
    assert_eq!(st, 504);
    let t0 = Instant::now();
    let (st, v) = error_of(&live_url(&s.base, "nokey")).await;
    assert_eq!(st, 504);
    assert!(v["reason"].as_str().unwrap().contains("no keyframe"), "{v}");
    assert!(t0.elapsed() < Duration::from_secs(2));
    let (st, v) = error_of(&live_url(&s.base, "slow")).await;
    assert_eq!(st, 504);
    assert!(v["reason"].as_str().unwrap().contains("no answer"), "{v}");
    // A failed pull is not cached: the next request pulls again.
    let _ = error_of(&live_url(&s.base, "off")).await;
    assert_eq!(s.puller.pulls("off"), 2);
    // Media-only names that were never opened are 404 without a pull.
    let (st, _) = error_of(&format!("{}/live/rtp/nothing.flv", s.base)).await;
    assert_eq!(st, 404);
    assert_eq!(s.puller.pulls("nothing"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_playlist_waits_for_the_first_segment_and_serves_segments_from_memory() {
    let s = start_server(test_config(), None).await;
    s.puller.set("ch", Behaviour::live());
    let t0 = Instant::now();
    let resp = reqwest::get(format!("{}/live/34020000001180000001/ch/index.m3u8", s.base)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/vnd.apple.mpegurl");
    let text = resp.text().await.unwrap();
    assert!(text.starts_with("#EXTM3U"), "{text}");
    assert!(t0.elapsed() >= Duration::from_millis(200), "answered before a segment could exist");
    let seg = text.lines().find(|l| l.ends_with(".ts")).unwrap().to_owned();
    let resp = reqwest::get(format!("{}/live/34020000001180000001/ch/{seg}", s.base)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "video/mp2t");
    assert!(!resp.bytes().await.unwrap().is_empty());
    let resp = reqwest::get(format!("{}/live/34020000001180000001/ch/999999.ts", s.base)).await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(s.puller.pulls("ch"), 1);
    // HLS requests keep the stream alive; without them it idles out.
    assert!(
        wait_until(Duration::from_secs(3), || s.puller.stops("ch").iter().any(|(r, _)| r == "idle")).await
    );
}

/// The TS muxer writes PTS = input PTS + 1.4 s (`proto::mux::ts`).
const TS_PTS_OFFSET: i64 = 126_000;

/// PTS of every video and audio PES that starts in a TS segment, in order.
fn pes_pts(ts: &[u8]) -> (Vec<i64>, Vec<i64>) {
    let (mut video, mut audio) = (vec![], vec![]);
    assert_eq!(ts.len() % 188, 0);
    for p in ts.chunks(188) {
        assert_eq!(p[0], 0x47);
        let pid = (u16::from(p[1] & 0x1f) << 8) | u16::from(p[2]);
        if p[1] & 0x40 == 0 || (pid != PID_VIDEO && pid != PID_AUDIO) {
            continue;
        }
        let pos = if p[3] & 0x20 != 0 { 5 + usize::from(p[4]) } else { 4 };
        let pes = &p[pos..];
        assert_eq!(pes[..3], [0, 0, 1], "PES start code");
        assert_ne!(pes[7] & 0x80, 0, "PES without PTS");
        let t = &pes[9..14];
        let pts = (i64::from((t[0] >> 1) & 7) << 30)
            | (i64::from(t[1]) << 22)
            | (i64::from(t[2] >> 1) << 15)
            | (i64::from(t[3]) << 7)
            | i64::from(t[4] >> 1);
        if pid == PID_VIDEO { &mut video } else { &mut audio }.push(pts - TS_PTS_OFFSET);
    }
    (video, audio)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_hls_request_starts_at_the_cached_keyframe_and_gets_its_playlist_at_the_next_keyframe() {
    // 1 s GOPs (50 frames of 20 ms) and 200 ms target segments: a segment closes at every keyframe.
    const FRAME_MS: u64 = 20;
    const GOP: u64 = 50;
    let mut cfg = test_config();
    cfg.hls.gop_cache = true;
    let s = start_server_with(cfg, Arc::new(ProtoMux), None).await;
    s.puller.set(
        "cold",
        Behaviour::Stream {
            answer_ms: 50,
            frame_ms: FRAME_MS,
            gop: GOP,
            size: 2000,
            frames: None,
            end_reason: None,
        },
    );
    // Started and pinned through the API: media flows, nobody watches, nothing is segmented yet.
    let client = reqwest::Client::new();
    let resp =
        client.post(format!("{}/api/v1/streams/34020000001180000001/cold", s.base)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // The source has sent 60-75 % of its second GOP (each tick: one video, one audio frame).
    let video_sent = || s.hub.list()[0].frames_in.div_ceil(2);
    assert!(wait_until(Duration::from_secs(5), || (GOP + 30..GOP + 38).contains(&video_sent())).await);
    let last_sent = video_sent() - 1;
    let cached_key = last_sent / GOP * GOP;
    let to_next_key = Duration::from_millis((cached_key + GOP - last_sent) * FRAME_MS);

    let t0 = Instant::now();
    let resp = reqwest::get(format!("{}/live/34020000001180000001/cold/index.m3u8", s.base)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let took = t0.elapsed();
    // Without the cache the first segment would open at the next keyframe and close one GOP
    // later: at least `to_next_key` + 1 s.
    let gop = Duration::from_millis(GOP * FRAME_MS);
    assert!(took < to_next_key + gop / 2, "took {took:?}; next keyframe was due in {to_next_key:?}");
    let segs: Vec<&str> = text.lines().filter(|l| l.ends_with(".ts")).collect();
    assert_eq!(segs, ["0.ts"], "{text}");

    let seg = reqwest::get(format!("{}/live/34020000001180000001/cold/0.ts", s.base)).await.unwrap();
    assert_eq!(seg.status(), 200);
    let (video, audio) = pes_pts(&seg.bytes().await.unwrap());
    // The cached GOP from its keyframe, then the live frames after the request, each once and in
    // order: every frame of that GOP, original timestamps.
    let want: Vec<i64> = (cached_key..cached_key + GOP).map(|n| (n * FRAME_MS * 90) as i64).collect();
    assert_eq!(video, want, "video PTS of the first segment");
    assert_eq!(audio, want, "audio PTS of the first segment");
}
