//! Byte-level and rule-level checks of the FLV, TS and HLS muxers (no external tools):
//! tag layouts against the FLV spec, TS continuity counters and PSI, the playlist rules of
//! RFC 8216.

mod mux_support;

use bytes::Bytes;
use gbrelay::proto::codec::h264::{self, AvcDecoderConfig};
use gbrelay::proto::codec::h265::{self, HevcDecoderConfig};
use gbrelay::proto::codec::nal::{h264_type, split_annexb};
use gbrelay::proto::codec::{Codec, Frame};
use gbrelay::proto::mux::ts::{crc32_mpeg2, PID_AUDIO, PID_PAT, PID_PMT, PID_VIDEO};
use gbrelay::proto::mux::{
    FlvMuxer, FlvOptions, FlvTag, HevcMode, HlsOptions, HlsSegmenter, TagKind, TsMuxer,
};
use mux_support::*;

const H264: &str = "testdata/ffmpeg_h264_320x240.h264";
const H265: &str = "testdata/ffmpeg_h265_320x240.hevc";
const AAC: &str = "testdata/ffmpeg_aac_48k_mono.aac";

/// Split a tag into (type, data size, timestamp, body) and check the framing.
fn parse_tag(t: &FlvTag) -> (u8, usize, u32, &[u8]) {
    let d = &t.data[..];
    let size = (usize::from(d[1]) << 16) | (usize::from(d[2]) << 8) | usize::from(d[3]);
    let ts = (u32::from(d[7]) << 24) | (u32::from(d[4]) << 16) | (u32::from(d[5]) << 8) | u32::from(d[6]);
    assert_eq!(&d[8..11], &[0, 0, 0], "StreamID");
    assert_eq!(d.len(), 11 + size + 4, "tag = header + body + PreviousTagSize");
    let prev = u32::from_be_bytes(d[11 + size..].try_into().unwrap());
    assert_eq!(prev as usize, 11 + size, "PreviousTagSize");
    assert_eq!(ts, t.timestamp_ms);
    (d[0], size, ts, &d[11..11 + size])
}

/// The expected AVCC payload of an access unit: every NAL but SPS/PPS/AUD, 4-byte lengths.
fn avcc(au: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    for n in split_annexb(au) {
        if !matches!(h264_type(n), Some(7..=9)) {
            v.extend_from_slice(&(n.len() as u32).to_be_bytes());
            v.extend_from_slice(n);
        }
    }
    v
}

#[test]
fn flv_header_is_the_9_byte_header_plus_previous_tag_size_0() {
    assert_eq!(&FlvMuxer::header(true, true)[..], &[b'F', b'L', b'V', 1, 0x05, 0, 0, 0, 9, 0, 0, 0, 0]);
    assert_eq!(&FlvMuxer::header(true, false)[..], &[b'F', b'L', b'V', 1, 0x01, 0, 0, 0, 9, 0, 0, 0, 0]);
    assert_eq!(FlvMuxer::header(false, true)[4], 0x04);
}

#[test]
fn avc_sequence_header_and_nalu_tags_have_the_spec_layout() {
    let mut frames = video_frames(H264, Codec::H264, 900_000);
    frames[0].pts += 7200; // composition offset 80 ms
    let mut m = FlvMuxer::new(FlvOptions::default());
    let mut tags = Vec::new();
    m.push(&frames[0], &mut tags);
    assert_eq!(tags.len(), 3, "onMetaData, sequence header, frame");
    assert_eq!(tags[0].kind, TagKind::Script);
    let (ty, _, ts, body) = parse_tag(&tags[0]);
    assert_eq!((ty, ts), (18, 0));
    assert_eq!(&body[..13], b"\x02\x00\x0aonMetaData");
    let find = |key: &str| {
        let mut pat = (key.len() as u16).to_be_bytes().to_vec();
        pat.extend_from_slice(key.as_bytes());
        pat.push(0); // AMF0 Number
        let at = body.windows(pat.len()).position(|w| w == pat).unwrap_or_else(|| panic!("{key}"));
        f64::from_be_bytes(body[at + pat.len()..at + pat.len() + 8].try_into().unwrap())
    };
    assert_eq!((find("width"), find("height"), find("videocodecid")), (320.0, 240.0, 7.0));
    assert_eq!(find("framerate"), 25.0);
    assert_eq!(&body[body.len() - 3..], &[0, 0, 9]);

    let (ty, _, ts, body) = parse_tag(&tags[1]);
    assert!(tags[1].seq_header && tags[1].keyframe);
    assert_eq!((ty, ts), (9, 0));
    assert_eq!(&body[..5], &[0x17, 0x00, 0, 0, 0]);
    let (sps, pps) = h264::parameter_sets(&frames[0].data);
    assert_eq!(&body[5..], &AvcDecoderConfig::from_parameter_sets(&sps, &pps).unwrap().to_bytes()[..]);

    let (ty, _, ts, body) = parse_tag(&tags[2]);
    assert!(tags[2].keyframe && !tags[2].seq_header);
    assert_eq!((ty, ts), (9, 0));
    assert_eq!(&body[..5], &[0x17, 0x01, 0x00, 0x00, 80], "keyframe|AVC, NALU, CTS 80 ms");
    assert_eq!(&body[5..], &avcc(&frames[0].data)[..]);

    tags.clear();
    m.push(&frames[1], &mut tags);
    assert_eq!(tags.len(), 1);
    let (_, _, ts, body) = parse_tag(&tags[0]);
    assert_eq!(ts, 40, "ms from the first DTS");
    assert_eq!(&body[..5], &[0x27, 0x01, 0, 0, 0], "inter frame, CTS 0");
    assert_eq!(&body[5..], &avcc(&frames[1].data)[..]);

    let info = m.video_info().unwrap();
    assert_eq!((info.codec, info.width, info.height, info.profile), (Codec::H264, 320, 240, 100));
    assert_eq!(info.fps, Some(25.0));
    assert!(info.codec_string.starts_with("avc1.64"));
}

#[test]
fn hevc_enhanced_rtmp_and_codec_id_12_layouts() {
    let frames = video_frames(H265, Codec::H265, 0);
    let ps = h265::parameter_sets(&frames[0].data);
    let hvcc = HevcDecoderConfig::from_parameter_sets(&ps).unwrap().to_bytes();

    let mut m = FlvMuxer::new(FlvOptions { hevc: HevcMode::Enhanced });
    let mut tags = Vec::new();
    m.push(&frames[0], &mut tags);
    m.push(&frames[1], &mut tags);
    assert_eq!(tags.len(), 4);
    let (_, _, _, body) = parse_tag(&tags[1]);
    assert_eq!(&body[..5], b"\x90hvc1", "IsExHeader|keyframe|SequenceStart, FourCC");
    assert_eq!(&body[5..], &hvcc[..]);
    let (_, _, _, body) = parse_tag(&tags[2]);
    assert_eq!(&body[..8], b"\x91hvc1\x00\x00\x00", "IsExHeader|keyframe|CodedFrames, CTS");
    let (_, _, _, body) = parse_tag(&tags[3]);
    assert_eq!(body[0], 0xa1, "IsExHeader|inter|CodedFrames");
    let (_, _, _, meta) = parse_tag(&tags[0]);
    let key = b"\x00\x0cvideocodecid\x00";
    let at = meta.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    assert_eq!(
        f64::from_be_bytes(meta[at..at + 8].try_into().unwrap()),
        f64::from(u32::from_be_bytes(*b"hvc1"))
    );

    let mut m = FlvMuxer::new(FlvOptions { hevc: HevcMode::CodecId12 });
    tags.clear();
    m.push(&frames[0], &mut tags);
    let (_, _, _, body) = parse_tag(&tags[1]);
    assert_eq!(&body[..5], &[0x1c, 0, 0, 0, 0]);
    assert_eq!(&body[5..], &hvcc[..]);
    let (_, _, _, body) = parse_tag(&tags[2]);
    assert_eq!(&body[..5], &[0x1c, 1, 0, 0, 0]);
    let info = m.video_info().unwrap();
    assert_eq!((info.codec, info.width, info.height, info.profile), (Codec::H265, 320, 240, 1));
}

#[test]
fn aac_sequence_header_then_raw_frames_without_adts_header() {
    let frames = aac_frames(AAC, 0);
    let mut m = FlvMuxer::new(FlvOptions::default());
    let mut tags = Vec::new();
    m.push(&frames[0], &mut tags);
    m.push(&frames[1], &mut tags);
    assert_eq!(tags.len(), 4);
    let (ty, _, _, body) = parse_tag(&tags[1]);
    assert_eq!(ty, 8);
    assert_eq!(body, &[0xaf, 0x00, 0x11, 0x88], "AAC-LC 48 kHz mono AudioSpecificConfig");
    let (_, _, ts, body) = parse_tag(&tags[3]);
    assert_eq!(&body[..2], &[0xaf, 0x01]);
    assert_eq!(&body[2..], &frames[1].data[7..]);
    assert_eq!(ts, 21, "1024 samples at 48 kHz = 21.33 ms");
    let a = m.audio_info().unwrap();
    assert_eq!((a.codec, a.sample_rate, a.channels, a.browser_playable), (Codec::Aac, 48000, 1, true));
    let init = m.init_tags();
    assert_eq!(init.len(), 2, "onMetaData + AAC sequence header (no video yet)");
}

#[test]
fn g711_tags_use_sound_format_7_and_8_with_ffmpeg_flags() {
    for (codec, flags) in [(Codec::G711A, 0x72u8), (Codec::G711U, 0x82)] {
        let mut m = FlvMuxer::new(FlvOptions::default());
        let mut tags = Vec::new();
        let f = Frame {
            codec,
            pts: 0,
            dts: 0,
            keyframe: true,
            discontinuity: false,
            data: Bytes::from_static(&[0xd5; 160]),
        };
        m.push(&f, &mut tags);
        assert_eq!(tags.len(), 2);
        let (ty, size, _, body) = parse_tag(&tags[1]);
        assert_eq!((ty, size, body[0]), (8, 161, flags));
        assert_eq!(&body[1..], &[0xd5; 160]);
        assert!(!m.audio_info().unwrap().browser_playable);
    }
}

#[test]
fn timestamps_are_relative_to_first_dts_never_negative_and_monotonic() {
    let mut m = FlvMuxer::new(FlvOptions::default());
    let mut tags = Vec::new();
    let mut v = video_frames(H264, Codec::H264, 1_000_000);
    let mut a = aac_frames(AAC, 1_000_000 - 9000); // audio starts 100 ms before video
    v.truncate(5);
    a.truncate(3);
    m.push(&v[0], &mut tags);
    for f in &a {
        m.push(f, &mut tags);
    }
    let mut backwards = v[2].clone();
    backwards.dts = v[1].dts - 900; // a DTS that goes back must not go back in FLV
    backwards.pts = backwards.dts;
    m.push(&v[1], &mut tags);
    m.push(&backwards, &mut tags);
    let mut last_video = 0;
    for t in &tags {
        if t.kind == TagKind::Video {
            assert!(t.timestamp_ms >= last_video);
            last_video = t.timestamp_ms;
        }
    }
    let audio: Vec<u32> =
        tags.iter().filter(|t| t.kind == TagKind::Audio && !t.seq_header).map(|t| t.timestamp_ms).collect();
    assert_eq!(audio, vec![0, 0, 0], "audio before the first DTS is clamped to 0");
    assert_eq!(last_video, 40);
}

#[test]
fn sequence_headers_are_resent_on_change_and_discontinuity_only() {
    let frames = video_frames(H264, Codec::H264, 0);
    assert!(frames[25].keyframe);
    let mut m = FlvMuxer::new(FlvOptions::default());
    let mut tags = Vec::new();
    for f in &frames[..30] {
        m.push(f, &mut tags);
    }
    assert_eq!(tags.iter().filter(|t| t.seq_header).count(), 2, "one onMetaData + one AVC header");
    let mut again = frames[25].clone();
    again.dts = 30 * 3600;
    again.pts = again.dts;
    again.discontinuity = true;
    tags.clear();
    m.push(&again, &mut tags);
    assert_eq!(
        tags.iter().map(|t| (t.kind, t.seq_header)).collect::<Vec<_>>(),
        vec![(TagKind::Script, true), (TagKind::Video, true), (TagKind::Video, false)]
    );
    // A different SPS (other resolution) triggers a new header without a discontinuity flag.
    let mut small = video_frames("testdata/ffmpeg_h264_176x144.h264", Codec::H264, 31 * 3600);
    small.truncate(1);
    tags.clear();
    m.push(&small[0], &mut tags);
    assert_eq!(tags.iter().filter(|t| t.seq_header).count(), 2);
    assert_eq!(m.video_info().unwrap().width, 176);
    let init = m.init_tags();
    assert_eq!(init.len(), 2);
    assert_eq!(init[1][11..16], [0x17, 0, 0, 0, 0]);
}

#[test]
fn video_before_parameter_sets_is_dropped() {
    let frames = video_frames(H264, Codec::H264, 0);
    let mut m = FlvMuxer::new(FlvOptions::default());
    let mut tags = Vec::new();
    m.push(&frames[1], &mut tags);
    m.push(&frames[2], &mut tags);
    assert!(tags.is_empty());
    assert!(m.video_info().is_none());
    m.push(&frames[0], &mut tags);
    assert_eq!(tags.len(), 3);
}

/// One TS packet: (pid, pusi, has_payload, cc, adaptation field bytes, payload).
type Packet = (u16, bool, bool, u8, Vec<u8>, Vec<u8>);

/// Walk TS packets.
fn packets(buf: &[u8]) -> Vec<Packet> {
    assert_eq!(buf.len() % 188, 0);
    buf.chunks(188)
        .map(|p| {
            assert_eq!(p[0], 0x47);
            let pid = (u16::from(p[1] & 0x1f) << 8) | u16::from(p[2]);
            let afc = (p[3] >> 4) & 3;
            let mut pos = 4;
            let mut af = Vec::new();
            if afc & 2 != 0 {
                let l = usize::from(p[4]);
                af = p[5..5 + l].to_vec();
                pos = 5 + l;
            }
            (pid, p[1] & 0x40 != 0, afc & 1 != 0, p[3] & 0x0f, af, p[pos..].to_vec())
        })
        .collect()
}

fn hls_segments(frames: &[Frame], target: i64) -> HlsSegmenter {
    let mut h = HlsSegmenter::new(HlsOptions { target_duration_90k: target, window: 100, vod: true });
    for f in frames {
        h.push(f);
    }
    h.finish();
    h
}

#[test]
fn ts_continuity_counters_run_on_across_segments_and_psi_starts_each_segment() {
    let frames = interleave(video_frames(H264, Codec::H264, 0), aac_frames(AAC, 0));
    let h = hls_segments(&frames, 90_000);
    assert_eq!(h.segments().len(), 2);
    let mut all = Vec::new();
    for s in h.segments() {
        let p = packets(&s.data);
        assert_eq!((p[0].0, p[1].0), (PID_PAT, PID_PMT), "PAT/PMT at segment start");
        let first_video = p.iter().find(|x| x.0 == PID_VIDEO).unwrap();
        assert!(first_video.1, "PES start");
        assert_eq!(first_video.4[0] & 0x50, 0x50, "random_access_indicator and PCR_flag");
        // H.264 AUD inserted before the access unit (the encoder wrote none).
        assert_eq!(&first_video.5[..4], &[0, 0, 1, 0xe0]);
        let hdr_len = usize::from(first_video.5[8]);
        assert_eq!(&first_video.5[9 + hdr_len..9 + hdr_len + 6], &[0, 0, 0, 1, 0x09, 0xf0]);
        all.extend(p);
    }
    let mut last: std::collections::HashMap<u16, u8> = Default::default();
    let mut counted = 0;
    for (pid, _, has_payload, cc, _, _) in &all {
        assert!(has_payload);
        if let Some(prev) = last.insert(*pid, *cc) {
            assert_eq!(*cc, (prev + 1) & 0x0f, "pid {pid:#x}");
            counted += 1;
        }
    }
    assert!(counted > 100);
    assert!(last.contains_key(&PID_AUDIO));
}

#[test]
fn pat_and_pmt_have_valid_crc_and_the_stream_types() {
    let mut ts = TsMuxer::new();
    let mut buf = Vec::new();
    let v = video_frames(H265, Codec::H265, 0);
    let a = aac_frames(AAC, 0);
    ts.push(&v[0], &mut buf);
    ts.push(&a[0], &mut buf);
    let psi: Vec<_> = packets(&buf).into_iter().filter(|p| p.0 == PID_PMT).collect();
    assert_eq!(psi.len(), 2, "PMT rewritten when AAC appears");
    let pmt = &psi[1].5;
    let len = ((usize::from(pmt[2]) & 0x0f) << 8) | usize::from(pmt[3]);
    let section = &pmt[1..4 + len];
    assert_eq!(crc32_mpeg2(section), 0, "CRC over section incl. CRC_32 is 0");
    assert_eq!(section[0], 0x02);
    assert_eq!((section[5] >> 1) & 0x1f, 2, "version bumped twice (video, then audio)");
    assert_eq!(&section[12..22], &[0x24, 0xe1, 0x00, 0xf0, 0x00, 0x0f, 0xe1, 0x01, 0xf0, 0x00]);
    let pat = packets(&buf).into_iter().find(|p| p.0 == PID_PAT).unwrap().5;
    assert_eq!(crc32_mpeg2(&pat[1..17]), 0);
    let g711 = Frame {
        codec: Codec::G711A,
        pts: 0,
        dts: 0,
        keyframe: true,
        discontinuity: false,
        data: Bytes::from_static(&[0; 160]),
    };
    let before = buf.len();
    assert!(!ts.push(&g711, &mut buf));
    assert_eq!(buf.len(), before, "G.711 has no place in TS");
}

fn synthetic_video(n: usize, gop: usize, step: i64) -> Vec<Frame> {
    (0..n)
        .map(|i| Frame {
            codec: Codec::H264,
            pts: i as i64 * step,
            dts: i as i64 * step,
            keyframe: i % gop == 0,
            discontinuity: false,
            data: Bytes::from(vec![0, 0, 0, 1, if i % gop == 0 { 0x65 } else { 0x41 }, 0x88, 0x84, i as u8]),
        })
        .collect()
}

#[test]
fn target_duration_is_the_ceiling_of_the_longest_segment_not_the_configured_value() {
    // GOP 2.5 s, configured 2 s: segments are 2.5 s → TARGETDURATION 3.
    let h = hls_segments(&synthetic_video(250, 62, 3600), 180_000);
    let p = h.playlist();
    assert!(p.contains("#EXT-X-TARGETDURATION:3\n"), "{p}");
    assert!(p.contains("#EXTINF:2.480,\n0.ts\n"), "{p}");
    // GOP 1 s, configured 2 s: exactly 2 s segments → 2; GOP 1.04 s → 2.08 s → 3.
    let h = hls_segments(&synthetic_video(250, 25, 3600), 180_000);
    assert!(h.playlist().contains("#EXT-X-TARGETDURATION:2\n"));
    let h = hls_segments(&synthetic_video(250, 26, 3600), 180_000);
    assert!(h.playlist().contains("#EXT-X-TARGETDURATION:3\n"));
    // Configured 6 s but keyframes every second and a 5-frame stream: ceiling of what exists.
    let h = hls_segments(&synthetic_video(5, 25, 3600), 540_000);
    assert!(h.playlist().contains("#EXT-X-TARGETDURATION:1\n"), "{}", h.playlist());
}

#[test]
fn discontinuity_is_tagged_before_the_restarted_segment_and_counted_when_it_slides_out() {
    let mut frames = synthetic_video(100, 25, 3600);
    frames[50].discontinuity = true;
    let mut h = HlsSegmenter::new(HlsOptions { target_duration_90k: 90_000, window: 2, vod: false });
    for f in &frames[..76] {
        h.push(f);
    }
    let p = h.playlist();
    assert!(p.contains("#EXT-X-DISCONTINUITY\n#EXTINF:1.000,\n2.ts\n"), "{p}");
    assert!(!p.contains("DISCONTINUITY-SEQUENCE"));
    assert!(!p.contains("ENDLIST"));
    for f in &frames[76..] {
        h.push(f);
    }
    let mut more = synthetic_video(200, 25, 3600);
    for f in &mut more {
        f.dts += 100 * 3600;
        f.pts = f.dts;
    }
    for f in &more {
        h.push(f);
    }
    let p = h.playlist();
    assert!(p.contains("#EXT-X-DISCONTINUITY-SEQUENCE:1\n"), "{p}");
    assert!(!p.contains("#EXT-X-DISCONTINUITY\n"));
}

#[test]
fn live_window_slides_with_media_sequence_and_bounded_storage() {
    let mut h = HlsSegmenter::new(HlsOptions { target_duration_90k: 90_000, window: 3, vod: false });
    for f in &synthetic_video(25 * 11, 25, 3600) {
        h.push(f);
    }
    // 11 keyframes → 10 closed segments (0..=9), the 11th open.
    assert_eq!(h.latest_seq(), Some(9));
    let p = h.playlist();
    assert!(
        p.starts_with("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:7\n"),
        "{p}"
    );
    assert_eq!(p.matches("#EXTINF").count(), 3);
    assert!(p.contains("\n9.ts\n") && !p.contains("\n6.ts\n"));
    assert!(h.segments().len() <= 5);
    assert!(h.segment(9).is_some() && h.segment(0).is_none() && h.segment(10).is_none());
    assert_eq!(h.segment(9).unwrap(), h.segments().last().unwrap().data);
}

#[test]
fn vod_keeps_every_segment_and_ends_after_finish() {
    let mut h = HlsSegmenter::new(HlsOptions { target_duration_90k: 90_000, window: 2, vod: true });
    let frames = synthetic_video(100, 25, 3600);
    for f in &frames {
        h.push(f);
    }
    assert!(!h.playlist().contains("ENDLIST"));
    h.finish();
    let p = h.playlist();
    assert!(p.contains("#EXT-X-PLAYLIST-TYPE:VOD\n"));
    assert!(p.ends_with("3.ts\n#EXT-X-ENDLIST\n"), "{p}");
    assert_eq!(h.segments().len(), 4);
    let total: i64 = h.segments().iter().map(|s| s.duration_90k).sum();
    assert_eq!(total, 100 * 3600, "durations cover every frame");
}

#[test]
fn hls_drops_video_before_the_first_keyframe() {
    let frames = synthetic_video(60, 25, 3600);
    let h = hls_segments(&frames[5..], 90_000);
    assert_eq!(h.segments().len(), 2);
    assert_eq!(h.segments()[0].duration_90k, 25 * 3600);
}

#[test]
fn extreme_and_backward_timestamps_never_panic_and_keep_ts_packets_whole() {
    let real = video_frames(H264, Codec::H264, 0);
    let aac = aac_frames(AAC, 0);
    let times = [i64::MIN, -1, 0, i64::MAX, 1 << 33, (1 << 33) - 1, -(1 << 40), 5];
    let mut flv = FlvMuxer::new(FlvOptions::default());
    let mut ts = TsMuxer::new();
    let mut hls = HlsSegmenter::new(HlsOptions { target_duration_90k: 1, window: 2, vod: false });
    let mut tags = Vec::new();
    let mut out = Vec::new();
    for (i, &t) in times.iter().enumerate() {
        for src in [&real[i % 2 * 25], &aac[i]] {
            let mut f = src.clone();
            f.dts = t;
            f.pts = times[(i + 3) % times.len()];
            f.discontinuity = i % 3 == 0;
            flv.push(&f, &mut tags);
            ts.push(&f, &mut out);
            hls.push(&f);
        }
    }
    hls.finish();
    assert_eq!(out.len() % 188, 0);
    assert!(tags.windows(2).all(|w| w[0].kind != TagKind::Video
        || w[1].kind != TagKind::Video
        || w[1].timestamp_ms >= w[0].timestamp_ms));
    assert!(hls.segments().iter().all(|s| s.duration_90k >= 1 && s.data.len() % 188 == 0));
    assert!(hls.playlist().starts_with("#EXTM3U\n"));
}

/// Fuzzer find: an SPS with 16-bit luma (bit_depth_luma_minus8 = 8) cannot be written into the
/// 3-bit hvcC field; the record is refused instead of silently truncated.
#[test]
fn hevc_record_refuses_16_bit_depth() {
    let data = bytes::Bytes::from(std::fs::read("fuzz/regressions/h265/crash-bitdepth16").unwrap());
    let ps = h265::parameter_sets(&data);
    assert!(HevcDecoderConfig::from_parameter_sets(&ps).is_err());
    let f = Frame { codec: Codec::H265, pts: 0, dts: 0, keyframe: true, discontinuity: false, data };
    let mut tags = Vec::new();
    FlvMuxer::new(FlvOptions::default()).push(&f, &mut tags);
    assert!(tags.is_empty(), "no decoder configuration, so no tags");
}
