//! End-to-end muxer checks against FFmpeg: elementary streams made by real encoders (libx264,
//! libx265, FFmpeg AAC / A-law, committed in `testdata/ffmpeg_*`), split into frames, muxed to
//! FLV / TS / HLS by us, then read back by Debian's ffprobe/ffmpeg and, for H.265 in FLV, PyAV.

mod mux_support;

use std::path::Path;

use gbrelay::proto::codec::{Codec, Frame};
use gbrelay::proto::mux::{FlvMuxer, FlvOptions, HevcMode, HlsOptions, HlsSegmenter, TsMuxer};
use mux_support::*;

const H264: &str = "testdata/ffmpeg_h264_320x240.h264";
const H264_SMALL: &str = "testdata/ffmpeg_h264_176x144.h264";
const H265: &str = "testdata/ffmpeg_h265_320x240.hevc";
const AAC: &str = "testdata/ffmpeg_aac_48k_mono.aac";
const ALAW: &str = "testdata/ffmpeg_alaw_8k_mono.alaw";

fn write_flv(frames: &[Frame], opts: FlvOptions, has_audio: bool, path: &Path) {
    let mut m = FlvMuxer::new(opts);
    let mut file = FlvMuxer::header(true, has_audio).to_vec();
    let mut tags = Vec::new();
    for f in frames {
        m.push(f, &mut tags);
    }
    for t in &tags {
        file.extend_from_slice(&t.data);
    }
    std::fs::write(path, file).unwrap();
}

fn write_hls(frames: &[Frame], dir: &Path) -> (HlsSegmenter, std::path::PathBuf) {
    let mut h = HlsSegmenter::new(HlsOptions { target_duration_90k: 90_000, window: 3, vod: true });
    for f in frames {
        h.push(f);
    }
    h.finish();
    for s in h.segments() {
        std::fs::write(dir.join(format!("{}.ts", s.seq)), &s.data).unwrap();
    }
    let pl = dir.join("index.m3u8");
    std::fs::write(&pl, h.playlist()).unwrap();
    (h, pl)
}

fn count(frames: &[Frame], codec: Codec) -> u64 {
    frames.iter().filter(|f| f.codec == codec).count() as u64
}

fn check_video(s: &ProbedStream, codec: &str, w: u64, h: u64, frames: u64) {
    assert_eq!(s.codec_type, "video");
    assert_eq!(s.codec_name, codec);
    assert_eq!((s.width, s.height), (w, h));
    assert_eq!(s.nb_read_frames, frames, "decoded video frames");
    assert!(s.first_packet_key, "first video packet is a keyframe");
    assert!(s.dts_increasing, "video DTS strictly increasing");
}

fn check_audio(s: &ProbedStream, codec: &str, frames: u64) {
    assert_eq!(s.codec_type, "audio");
    assert_eq!(s.codec_name, codec);
    assert_eq!(s.nb_read_frames, frames, "decoded audio frames");
    assert!(s.dts_increasing, "audio DTS strictly increasing");
}

#[test]
fn h264_aac_flv_reads_back_with_same_frame_counts_and_decodes_cleanly() {
    let frames = interleave(video_frames(H264, Codec::H264, 0), aac_frames(AAC, 0));
    assert_eq!(count(&frames, Codec::H264), 50);
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.flv");
    write_flv(&frames, FlvOptions::default(), true, &out);
    let s = ffprobe(&out);
    assert_eq!(s.len(), 2, "{s:?}");
    let v = s.iter().find(|s| s.codec_type == "video").unwrap();
    let a = s.iter().find(|s| s.codec_type == "audio").unwrap();
    check_video(v, "h264", 320, 240, 50);
    check_audio(a, "aac", count(&frames, Codec::Aac));
    assert_eq!(ffmpeg_decode_errors(&out), "");
}

#[test]
fn h264_g711a_flv_reads_back_as_pcm_alaw() {
    let frames = interleave(video_frames(H264, Codec::H264, 0), g711_frames(ALAW, Codec::G711A, 0));
    if !have_ffmpeg() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.flv");
    write_flv(&frames, FlvOptions::default(), true, &out);
    let s = ffprobe(&out);
    let v = s.iter().find(|s| s.codec_type == "video").unwrap();
    let a = s.iter().find(|s| s.codec_type == "audio").unwrap();
    check_video(v, "h264", 320, 240, 50);
    check_audio(a, "pcm_alaw", count(&frames, Codec::G711A));
    assert_eq!(ffmpeg_decode_errors(&out), "");
}

#[test]
fn h264_aac_hls_vod_reads_back_with_same_frame_counts() {
    let frames = interleave(video_frames(H264, Codec::H264, 0), aac_frames(AAC, 0));
    let dir = tempfile::tempdir().unwrap();
    let (h, pl) = write_hls(&frames, dir.path());
    // GOP 25 at 25 fps with a 1 s target: a cut at every keyframe.
    assert_eq!(h.segments().len(), 2);
    assert!(h.playlist().ends_with("#EXT-X-ENDLIST\n"));
    if !have_ffmpeg() {
        return;
    }
    let s = ffprobe(&pl);
    let v = s.iter().find(|s| s.codec_type == "video").unwrap();
    let a = s.iter().find(|s| s.codec_type == "audio").unwrap();
    check_video(v, "h264", 320, 240, 50);
    check_audio(a, "aac", count(&frames, Codec::Aac));
    assert_eq!(ffmpeg_decode_errors(&pl), "");
    // Each segment alone is a valid TS starting with a keyframe.
    let seg0 = dir.path().join("1.ts");
    let s = ffprobe(&seg0);
    let v = s.iter().find(|s| s.codec_type == "video").unwrap();
    assert!(v.first_packet_key);
    assert_eq!(v.nb_read_frames, 25);
}

#[test]
fn h265_aac_hls_and_ts_read_back_with_same_frame_counts() {
    let frames = interleave(video_frames(H265, Codec::H265, 0), aac_frames(AAC, 0));
    assert_eq!(count(&frames, Codec::H265), 50);
    let dir = tempfile::tempdir().unwrap();
    let (_h, pl) = write_hls(&frames, dir.path());
    // One continuous TS as well.
    let mut ts = TsMuxer::new();
    let mut buf = Vec::new();
    ts.write_psi(&mut buf);
    for f in &frames {
        ts.push(f, &mut buf);
    }
    let one = dir.path().join("one.ts");
    std::fs::write(&one, &buf).unwrap();
    if !have_ffmpeg() {
        return;
    }
    for path in [&pl, &one] {
        let s = ffprobe(path);
        let v = s.iter().find(|s| s.codec_type == "video").unwrap();
        let a = s.iter().find(|s| s.codec_type == "audio").unwrap();
        check_video(v, "hevc", 320, 240, 50);
        check_audio(a, "aac", count(&frames, Codec::Aac));
        assert_eq!(ffmpeg_decode_errors(path), "", "{path:?}");
    }
}

#[test]
fn h265_enhanced_flv_decodes_every_frame_in_pyav() {
    let frames = interleave(video_frames(H265, Codec::H265, 0), aac_frames(AAC, 0));
    if !have_pyav() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hevc.flv");
    write_flv(&frames, FlvOptions { hevc: HevcMode::Enhanced }, true, &out);
    let (codec, w, h, v, a, errors) = pyav_decode(&out);
    assert_eq!(codec, "hevc");
    assert_eq!((w, h), (320, 240));
    assert_eq!(v, 50, "decoded video frames");
    assert_eq!(a, count(&frames, Codec::Aac), "decoded audio frames");
    assert_eq!(errors, "[]");
}

/// The source restarts with another resolution: FLV resends sequence headers, HLS marks a
/// discontinuity; every frame of both parts is still decodable.
#[test]
fn resolution_change_with_discontinuity_survives_flv_and_hls() {
    let mut frames = video_frames(H264, Codec::H264, 0);
    let mut second = video_frames(H264_SMALL, Codec::H264, 50 * FRAME_90K);
    second[0].discontinuity = true;
    let n2 = second.len() as u64;
    frames.extend(second);
    let dir = tempfile::tempdir().unwrap();
    let (h, pl) = write_hls(&frames, dir.path());
    let text = h.playlist();
    assert_eq!(text.matches("#EXT-X-DISCONTINUITY\n").count(), 1, "{text}");
    assert!(h.segments()[2].discontinuity);
    let flv = dir.path().join("out.flv");
    write_flv(&frames, FlvOptions::default(), false, &flv);
    if !have_ffmpeg() {
        return;
    }
    for path in [&pl, &flv] {
        let s = ffprobe(path);
        assert_eq!(s[0].nb_read_frames, 50 + n2, "{path:?}");
        assert!(s[0].first_packet_key);
        assert_eq!(ffmpeg_decode_errors(path), "", "{path:?}");
    }
}
