//! The hub with the real muxers (`ProtoMux` over `proto::mux`): ffmpeg-made H.264/H.265 + AAC
//! elementary streams replayed as a media-only source; what viewers get must probe and decode
//! (ffprobe / ffmpeg; skipped with a notice when missing unless `GBRELAY_REQUIRE_TOOLS=1`).

mod hub_support;
#[path = "mux_support/mod.rs"]
mod mux_support;

use gbrelay::hub::mux_adapter::ProtoMux;
use gbrelay::hub::{PullHandle, SourceEvent, StreamKey};
use gbrelay::proto::codec::{Codec, Frame};
use hub_support::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Replays `frames` in a loop (DTS carried on), one video frame every `pace`.
fn replay(frames: Vec<Frame>, pace: Duration) -> PullHandle {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let span = frames.last().unwrap().dts - frames[0].dts + 3600;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(pace);
        let mut offset = 0;
        loop {
            for f in &frames {
                if f.codec.is_video() {
                    tick.tick().await;
                }
                if st.load(Ordering::Relaxed) {
                    return;
                }
                let mut f = f.clone();
                f.dts += offset;
                f.pts += offset;
                if tx.send(SourceEvent::Frame(f)).await.is_err() {
                    return;
                }
            }
            offset += span;
        }
    });
    PullHandle {
        events: rx,
        stopper: Box::new(move |_| stop.store(true, Ordering::Relaxed)),
        transport: "udp".into(),
        started_at: Instant::now(),
    }
}

fn h264_aac() -> Vec<Frame> {
    mux_support::interleave(
        mux_support::video_frames("testdata/ffmpeg_h264_320x240.h264", Codec::H264, 0),
        mux_support::aac_frames("testdata/ffmpeg_aac_48k_mono.aac", 0),
    )
}

async fn save_flv(url: &str, video_tags: usize) -> (FlvReader, std::path::PathBuf) {
    let (status, r, _) = read_flv(url, video_tags * 3, Duration::from_secs(10)).await;
    assert_eq!(status, 200);
    let mut bytes = r.header.clone().unwrap().to_vec();
    for t in &r.tags {
        bytes.extend_from_slice(&t.raw);
    }
    let path = std::env::temp_dir().join(format!("gbrelay-hub-{}-{}.flv", std::process::id(), rand_suffix()));
    std::fs::write(&path, bytes).unwrap();
    (r, path)
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_from_the_start_and_joining_later_get_flv_that_probes_and_decodes() {
    let s = start_server_with(test_config(), Arc::new(ProtoMux), None).await;
    s.hub
        .attach(StreamKey::Rtp { name: "real".into() }, replay(h264_aac(), Duration::from_millis(8)))
        .unwrap();
    let url = format!("{}/live/rtp/real.flv", s.base);
    let early = tokio::spawn({
        let url = url.clone();
        async move { save_flv(&url, 60).await }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (late_r, late) = save_flv(&url, 60).await;
    let (early_r, early) = early.await.unwrap();
    for r in [&early_r, &late_r] {
        // onMetaData / sequence headers, then a keyframe first.
        let first_frame = r.tags.iter().find(|t| t.kind == 9 && t.body()[1] == 1).unwrap();
        assert_eq!(first_frame.body()[0] >> 4, 1, "first video frame is not a keyframe");
        assert!(r.tags.iter().any(|t| t.kind == 9 && t.body()[1] == 0), "no AVC sequence header");
    }
    let info = s.hub.list();
    assert_eq!(info[0].width, Some(320));
    assert_eq!(info[0].height, Some(240));
    if !mux_support::have_ffmpeg() {
        return;
    }
    for path in [&early, &late] {
        let streams = mux_support::ffprobe(path);
        let v = streams.iter().find(|p| p.codec_type == "video").unwrap();
        assert_eq!((v.codec_name.as_str(), v.width, v.height), ("h264", 320, 240));
        assert!(v.first_packet_key);
        assert!(streams.iter().any(|p| p.codec_name == "aac"), "{streams:?}");
        let errors = mux_support::ffmpeg_decode_errors(path);
        assert!(errors.is_empty(), "{}: {errors}", path.display());
        let _ = std::fs::remove_file(path);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hevc_is_muxed_per_requested_mode_and_h264_shares_one_ring() {
    let s = start_server_with(test_config(), Arc::new(ProtoMux), None).await;
    let hevc = mux_support::video_frames("testdata/ffmpeg_h265_320x240.hevc", Codec::H265, 0);
    s.hub.attach(StreamKey::Rtp { name: "hevc".into() }, replay(hevc, Duration::from_millis(8))).unwrap();
    let (st, enhanced, _) =
        read_flv(&format!("{}/live/rtp/hevc.flv", s.base), 20, Duration::from_secs(5)).await;
    assert_eq!(st, 200);
    let (st, legacy, _) =
        read_flv(&format!("{}/live/rtp/hevc.flv?hevc=codec-id-12", s.base), 20, Duration::from_secs(5)).await;
    assert_eq!(st, 200);
    let v_enh = enhanced.tags.iter().find(|t| t.kind == 9).unwrap();
    let v_leg = legacy.tags.iter().find(|t| t.kind == 9).unwrap();
    // Enhanced RTMP: IsExHeader bit set and FourCC hvc1; legacy: CodecID 12 in the low nibble.
    assert_eq!(v_enh.body()[0] & 0x80, 0x80);
    assert_eq!(&v_enh.body()[1..5], b"hvc1");
    assert_eq!(v_leg.body()[0] & 0x0f, 12);

    s.hub
        .attach(StreamKey::Rtp { name: "avc".into() }, replay(h264_aac(), Duration::from_millis(8)))
        .unwrap();
    let (_, a, _) = read_flv(&format!("{}/live/rtp/avc.flv", s.base), 20, Duration::from_secs(5)).await;
    let (_, b, _) =
        read_flv(&format!("{}/live/rtp/avc.flv?hevc=codec-id-12", s.base), 20, Duration::from_secs(5)).await;
    // H.264 is the same in both modes: the second viewer shares the first ring (same cached GOP).
    let fa = a.tags.iter().find(|t| t.kind == 9 && t.body()[1] == 1).unwrap();
    let fb = b.tags.iter().find(|t| t.kind == 9 && t.body()[1] == 1).unwrap();
    assert_eq!(fa.body()[0] & 0x0f, 7);
    assert_eq!(fb.body()[0] & 0x0f, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_from_the_real_segmenter_probes_as_h264_and_aac() {
    let s = start_server_with(test_config(), Arc::new(ProtoMux), None).await;
    s.hub
        .attach(StreamKey::Rtp { name: "hls".into() }, replay(h264_aac(), Duration::from_millis(8)))
        .unwrap();
    let text =
        reqwest::get(format!("{}/live/rtp/hls/index.m3u8", s.base)).await.unwrap().text().await.unwrap();
    assert!(text.starts_with("#EXTM3U"), "{text}");
    let seg = text.lines().find(|l| l.ends_with(".ts")).unwrap().to_owned();
    let resp = reqwest::get(format!("{}/live/rtp/hls/{seg}", s.base)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let data = resp.bytes().await.unwrap();
    assert_eq!(data[0], 0x47);
    if !mux_support::have_ffmpeg() {
        return;
    }
    let path = std::env::temp_dir().join(format!("gbrelay-hub-{}-seg.ts", std::process::id()));
    std::fs::write(&path, &data).unwrap();
    let streams = mux_support::ffprobe(&path);
    assert!(streams.iter().any(|p| p.codec_name == "h264" && p.width == 320), "{streams:?}");
    assert!(streams.iter().any(|p| p.codec_name == "aac"), "{streams:?}");
    let _ = std::fs::remove_file(&path);
}
