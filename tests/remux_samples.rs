//! `gbrelay remux` / `probe` on the foreign-muxed samples of `testdata/` (issue 2, "done when"):
//! FLV and HLS output read back by FFmpeg with the source's frame counts, codecs and resolution,
//! the first video packet a keyframe, DTS increasing, and a clean decode. H.265 in FLV is read with
//! PyAV (Debian's FFmpeg 5.1 cannot).

use gbrelay::proto::mux::flv::HevcMode;
use gbrelay::proto::ps::DemuxPolicy;
use gbrelay::tools::{probe, remux, InputKind};
use std::path::{Path, PathBuf};
use std::process::Command;

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata").join(name)
}

fn have(tool: &str, args: &[&str]) -> bool {
    let ok = Command::new(tool).args(args).output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("GBRELAY_REQUIRE_TOOLS").is_none(),
            "{tool} is required (GBRELAY_REQUIRE_TOOLS set)"
        );
        eprintln!("skipping: {tool} not usable");
    }
    ok
}

fn expected(sample: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(testdata(&format!("{sample}.json"))).unwrap()).unwrap()
}

/// `ffprobe -count_frames` of one stream kind: (codec, width, height, frames read, duration).
fn ffprobe_stream(file: &Path, kind: &str) -> Option<serde_json::Value> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", kind, "-show_streams", "-of", "json"])
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success(), "ffprobe {}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["streams"].as_array().and_then(|a| a.first().cloned())
}

/// Video packets: (keyframe, dts) in file order.
fn video_packets(file: &Path) -> Vec<(bool, i64)> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v", "-show_entries", "packet=dts,flags", "-of", "csv=p=0"])
        .arg(file)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split(',');
            let dts = it.next()?.trim().parse().ok()?;
            let flags = it.next().unwrap_or("");
            Some((flags.starts_with('K'), dts))
        })
        .collect()
}

fn decodes_clean(file: &Path) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(file)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "decoding {} reported: {err}", file.display());
}

fn check_ffmpeg_output(sample: &str, out: &Path) {
    let exp = expected(sample);
    let v = ffprobe_stream(out, "v").expect("a video stream");
    let codec = if exp["video"]["codec"] == "h265" { "hevc" } else { "h264" };
    assert_eq!(v["codec_name"], codec);
    assert_eq!(v["width"], 1280);
    assert_eq!(v["height"], 720);
    assert_eq!(
        v["nb_read_frames"].as_str().unwrap().parse::<u64>().unwrap(),
        exp["video"]["frames"].as_u64().unwrap(),
        "{}",
        out.display()
    );
    let pkts = video_packets(out);
    assert!(pkts.first().is_some_and(|p| p.0), "first video packet is a keyframe");
    assert!(pkts.windows(2).all(|w| w[1].1 > w[0].1), "video DTS increasing");
    decodes_clean(out);
}

fn check_audio(sample: &str, out: &Path, expect_audio_in_output: bool) {
    let exp = expected(sample);
    let a = ffprobe_stream(out, "a");
    if !expect_audio_in_output || exp["audio"].is_null() {
        assert!(a.is_none(), "no audio expected in {}", out.display());
        return;
    }
    let a = a.expect("an audio stream");
    match exp["audio"]["codec"].as_str().unwrap() {
        "aac" => {
            assert_eq!(a["codec_name"], "aac");
            assert_eq!(a["sample_rate"], "16000");
            assert_eq!(
                a["nb_read_frames"].as_str().unwrap().parse::<u64>().unwrap(),
                exp["audio"]["frames"].as_u64().unwrap(),
                "AAC frames in {}",
                out.display()
            );
        }
        "g711a" => {
            assert_eq!(a["codec_name"], "pcm_alaw");
            // G.711 lasts the clip: 500 frames of 160 samples at 8 kHz = 10 s.
            let out = Command::new("ffprobe")
                .args([
                    "-v",
                    "error",
                    "-select_streams",
                    "a",
                    "-show_entries",
                    "packet=pts_time,duration_time",
                    "-of",
                    "csv=p=0",
                ])
                .arg(out)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let last =
                text.lines().filter_map(|l| l.split(',').next()?.parse::<f64>().ok()).fold(0.0, f64::max);
            assert!((9.8..=10.2).contains(&(last + 0.02)), "G.711 lasts the clip: last pts {last}");
        }
        other => panic!("unexpected {other}"),
    }
}

fn remux_to(sample: &str, ext: &str, dir: &Path) -> PathBuf {
    let out = dir.join(format!("out.{ext}"));
    let r = remux(&testdata(sample), &out, DemuxPolicy::default(), HevcMode::Enhanced).unwrap();
    let exp = expected(sample);
    assert_eq!(r.video_frames, exp["video"]["frames"].as_u64().unwrap());
    assert_eq!(r.audio_frames, exp["audio"]["frames"].as_u64().unwrap_or(0));
    out
}

fn h264_sample_to_flv_and_hls(sample: &str) {
    if !have("ffprobe", &["-version"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let flv = remux_to(sample, "flv", dir.path());
    check_ffmpeg_output(sample, &flv);
    check_audio(sample, &flv, true);
    let m3u8 = remux_to(sample, "m3u8", dir.path());
    let playlist = std::fs::read_to_string(&m3u8).unwrap();
    assert!(playlist.trim_end().ends_with("#EXT-X-ENDLIST"), "{playlist}");
    check_ffmpeg_output(sample, &m3u8);
    // G.711 has no place in TS: HLS carries video only.
    let g711 = expected(sample)["audio"]["codec"] == "g711a";
    check_audio(sample, &m3u8, !g711);
    let ts = remux_to(sample, "ts", dir.path());
    check_ffmpeg_output(sample, &ts);
}

#[test]
fn h264_aac_sample_remuxes_to_flv_and_hls_with_every_frame() {
    h264_sample_to_flv_and_hls("h264_aac.ps");
}

#[test]
fn h264_g711a_sample_remuxes_to_flv_with_alaw_and_to_video_only_hls() {
    h264_sample_to_flv_and_hls("h264_g711a.ps");
}

#[test]
fn h264_only_sample_remuxes_to_flv_and_hls_with_every_frame() {
    h264_sample_to_flv_and_hls("h264_only.ps");
}

#[test]
fn h265_aac_sample_remuxes_to_hls_read_by_ffmpeg() {
    if !have("ffprobe", &["-version"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let m3u8 = remux_to("h265_aac.ps", "m3u8", dir.path());
    check_ffmpeg_output("h265_aac.ps", &m3u8);
    check_audio("h265_aac.ps", &m3u8, true);
}

#[test]
fn h265_aac_sample_remuxes_to_enhanced_flv_read_by_pyav() {
    if !have("python3", &["-c", "import av"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let flv = remux_to("h265_aac.ps", "flv", dir.path());
    let script = r#"
import av, sys
c = av.open(sys.argv[1])
v = c.streams.video[0]
a = c.streams.audio[0]
nv = na = 0
first = None
last_dts = None
mono = True
for pkt in c.demux():
    if pkt.size == 0:
        continue
    if pkt.stream.type == 'video':
        if first is None:
            first = pkt.is_keyframe
        if last_dts is not None and pkt.dts <= last_dts:
            mono = False
        last_dts = pkt.dts
        nv += len(pkt.decode())
    else:
        na += 1
nv += len(v.codec_context.decode(None)) if hasattr(v.codec_context, 'decode') else 0
print(v.codec_context.name, v.codec_context.width, v.codec_context.height, nv, a.codec_context.name, na, first, mono)
"#;
    let out = Command::new("python3").args(["-c", script]).arg(&flv).output().unwrap();
    assert!(out.status.success(), "PyAV: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.split_whitespace().collect::<Vec<_>>(),
        ["hevc", "1280", "720", "250", "aac", "158", "True", "True"],
        "{text}"
    );
}

#[test]
fn probe_reports_counts_codecs_and_resolution_of_each_sample() {
    for sample in ["h264_aac.ps", "h264_g711a.ps", "h264_only.ps", "h265_aac.ps"] {
        let exp = expected(sample);
        let r = probe(&testdata(sample), DemuxPolicy::default()).unwrap();
        assert_eq!(r.input, InputKind::Ps);
        let v = r.video.as_ref().unwrap();
        assert_eq!(v.codec.unwrap().name(), exp["video"]["codec"].as_str().unwrap());
        assert_eq!(v.frames, 250);
        assert_eq!(v.keyframes, 5);
        assert_eq!((v.width, v.height), (Some(1280), Some(720)));
        assert_eq!(r.packs, exp["layout"]["packs"].as_u64().unwrap());
        assert_eq!(r.psms, exp["layout"]["psm"].as_u64().unwrap());
        assert_eq!(r.resyncs, 0);
        assert!((r.duration_s - 10.0).abs() < 0.2, "{sample}: {}", r.duration_s);
        match exp["audio"]["frames"].as_u64() {
            Some(n) => assert_eq!(r.audio.as_ref().unwrap().frames, n),
            None => assert!(r.audio.is_none()),
        }
    }
}

#[test]
fn probe_and_remux_read_rfc4571_rtp_captures() {
    // Packetise a sample into RTP in RFC 4571 framing (a TCP session's payload) and read it back.
    let ps = std::fs::read(testdata("h264_aac.ps")).unwrap();
    let mut cap = Vec::new();
    for (i, chunk) in ps.chunks(1400).enumerate() {
        let pkt = gbrelay::proto::rtp::RtpPacket::new(
            96,
            i as u16,
            0,
            0x0200_0001,
            false,
            bytes::Bytes::copy_from_slice(chunk),
        )
        .encode();
        cap.extend_from_slice(&gbrelay::proto::rtp::frame_4571(&pkt));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cap.rtp");
    std::fs::write(&file, &cap).unwrap();
    let r = probe(&file, DemuxPolicy::default()).unwrap();
    assert_eq!(r.input, InputKind::Rtp4571);
    assert_eq!(r.video.as_ref().unwrap().frames, 250);
    assert_eq!(r.audio.as_ref().unwrap().frames, 158);
    assert_eq!(r.rtp.as_ref().unwrap().lost, 0);
    let out = dir.path().join("cap.flv");
    let rr = remux(&file, &out, DemuxPolicy::default(), HevcMode::Enhanced).unwrap();
    assert_eq!((rr.video_frames, rr.audio_frames), (250, 158));
}
