//! Shared helpers for the muxer tests: split ffmpeg-made elementary streams into `Frame`s, and
//! run ffprobe / ffmpeg / PyAV on the output (skipped with a notice when the tools are missing,
//! unless `GBRELAY_REQUIRE_TOOLS=1`).
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use gbrelay::proto::codec::aac::AdtsHeader;
use gbrelay::proto::codec::nal::{h264_type, h265_type, split_annexb};
use gbrelay::proto::codec::{Codec, Frame};

pub const FRAME_90K: i64 = 3600; // 25 fps

fn annexb(nals: &[&[u8]]) -> Bytes {
    let mut v = Vec::new();
    for n in nals {
        v.extend_from_slice(&[0, 0, 0, 1]);
        v.extend_from_slice(n);
    }
    Bytes::from(v)
}

/// Split an Annex B stream into access units (H.264 §7.4.1.2.3 / H.265 §7.4.2.4.4: a new AU
/// starts at an AUD, parameter set or SEI after a VCL NAL, or at a slice that is the first of
/// its picture).
fn split_aus(data: &[u8], h265: bool) -> Vec<(Bytes, bool)> {
    let mut aus = Vec::new();
    let mut cur: Vec<&[u8]> = Vec::new();
    let mut has_vcl = false;
    let mut key = false;
    for nal in split_annexb(data) {
        let (is_vcl, first_in_pic, starts_au, is_key) = if h265 {
            let t = h265_type(nal).unwrap();
            let vcl = t < 32;
            (
                vcl,
                vcl && nal.len() > 2 && nal[2] & 0x80 != 0,
                matches!(t, 32..=35 | 39),
                (16..=21).contains(&t),
            )
        } else {
            let t = h264_type(nal).unwrap();
            let vcl = (1..=5).contains(&t);
            (vcl, vcl && nal.len() > 1 && nal[1] & 0x80 != 0, matches!(t, 6..=9), t == 5)
        };
        if has_vcl && (starts_au || first_in_pic) {
            aus.push((annexb(&cur), key));
            cur.clear();
            has_vcl = false;
            key = false;
        }
        cur.push(nal);
        has_vcl |= is_vcl;
        key |= is_key;
    }
    if has_vcl {
        aus.push((annexb(&cur), key));
    }
    aus
}

/// Video frames of an Annex B file at 25 fps, DTS from `start`.
pub fn video_frames(path: &str, codec: Codec, start: i64) -> Vec<Frame> {
    let data = std::fs::read(path).unwrap();
    split_aus(&data, codec == Codec::H265)
        .into_iter()
        .enumerate()
        .map(|(i, (data, keyframe))| Frame {
            codec,
            pts: start + i as i64 * FRAME_90K,
            dts: start + i as i64 * FRAME_90K,
            keyframe,
            discontinuity: false,
            data,
        })
        .collect()
}

/// One frame per ADTS frame, DTS from `start`.
pub fn aac_frames(path: &str, start: i64) -> Vec<Frame> {
    let data = Bytes::from(std::fs::read(path).unwrap());
    let mut out = Vec::new();
    let mut pos = 0;
    let mut samples: i64 = 0;
    while pos < data.len() {
        let h = AdtsHeader::parse(&data[pos..]).unwrap();
        let dts = start + samples * 90_000 / i64::from(h.sample_rate);
        out.push(Frame {
            codec: Codec::Aac,
            pts: dts,
            dts,
            keyframe: true,
            discontinuity: false,
            data: data.slice(pos..pos + h.frame_len),
        });
        samples += 1024;
        pos += h.frame_len;
    }
    out
}

/// G.711 in 320-byte (40 ms) frames.
pub fn g711_frames(path: &str, codec: Codec, start: i64) -> Vec<Frame> {
    let data = Bytes::from(std::fs::read(path).unwrap());
    (0..data.len())
        .step_by(320)
        .enumerate()
        .map(|(i, pos)| Frame {
            codec,
            pts: start + i as i64 * 3600,
            dts: start + i as i64 * 3600,
            keyframe: true,
            discontinuity: false,
            data: data.slice(pos..(pos + 320).min(data.len())),
        })
        .collect()
}

/// Merge by DTS (video first on ties), as a demuxer would deliver them.
pub fn interleave(mut a: Vec<Frame>, b: Vec<Frame>) -> Vec<Frame> {
    a.extend(b);
    a.sort_by_key(|f| (f.dts, !f.codec.is_video()));
    a
}

/// True if ffmpeg/ffprobe can run; otherwise print a notice, or panic under
/// `GBRELAY_REQUIRE_TOOLS=1`.
pub fn have_tool(tool: &str, args: &[&str]) -> bool {
    let ok = Command::new(tool).args(args).output().map(|o| o.status.success()).unwrap_or(false);
    if !ok {
        if std::env::var("GBRELAY_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("{tool} is required (GBRELAY_REQUIRE_TOOLS=1) but not runnable");
        }
        eprintln!("NOTICE: {tool} not available, skipping this check");
    }
    ok
}

pub fn have_ffmpeg() -> bool {
    have_tool("ffprobe", &["-version"]) && have_tool("ffmpeg", &["-version"])
}

pub fn have_pyav() -> bool {
    have_tool("python3", &["-c", "import av"])
}

#[derive(Debug, Default, Clone)]
pub struct ProbedStream {
    pub codec_name: String,
    pub codec_type: String,
    pub width: u64,
    pub height: u64,
    pub nb_read_frames: u64,
    pub first_packet_key: bool,
    pub dts_increasing: bool,
    pub packets: u64,
}

/// ffprobe -count_frames: per stream codec, size, decoded frames, first-packet keyframe flag and
/// strictly increasing DTS.
pub fn ffprobe(path: &Path) -> Vec<ProbedStream> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-show_entries"])
        .arg("stream=index,codec_name,codec_type,width,height,nb_read_frames:packet=stream_index,dts,flags")
        .args(["-of", "json"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "ffprobe failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut streams: Vec<ProbedStream> = v["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| ProbedStream {
            codec_name: s["codec_name"].as_str().unwrap_or("").to_string(),
            codec_type: s["codec_type"].as_str().unwrap_or("").to_string(),
            width: s["width"].as_u64().unwrap_or(0),
            height: s["height"].as_u64().unwrap_or(0),
            nb_read_frames: s["nb_read_frames"].as_str().and_then(|x| x.parse().ok()).unwrap_or(0),
            first_packet_key: false,
            dts_increasing: true,
            packets: 0,
        })
        .collect();
    let mut last: Vec<Option<i64>> = vec![None; streams.len()];
    for p in v["packets"].as_array().unwrap() {
        let i = p["stream_index"].as_u64().unwrap() as usize;
        let s = &mut streams[i];
        if s.packets == 0 {
            s.first_packet_key = p["flags"].as_str().unwrap_or("").starts_with('K');
        }
        s.packets += 1;
        if let Some(dts) = p["dts"].as_i64() {
            if let Some(prev) = last[i] {
                if dts <= prev {
                    s.dts_increasing = false;
                }
            }
            last[i] = Some(dts);
        }
    }
    streams
}

/// `ffmpeg -v error -i PATH -f null -`: returns stderr (empty = decoded without error).
pub fn ffmpeg_decode_errors(path: &Path) -> String {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(out.status.success(), "ffmpeg failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Decode every frame with PyAV (current FFmpeg): returns (video codec, width, height,
/// video frames, audio frames, error log lines).
pub fn pyav_decode(path: &Path) -> (String, u64, u64, u64, u64, String) {
    let script = r#"
import sys, json, av, av.logging
errors = []
av.logging.set_level(av.logging.ERROR)
with av.logging.Capture() as logs:
    c = av.open(sys.argv[1])
    v = c.streams.video[0] if c.streams.video else None
    counts = {"video": 0, "audio": 0}
    for pkt in c.demux():
        for f in pkt.decode():
            counts[pkt.stream.type] = counts.get(pkt.stream.type, 0) + 1
errors = [l for l in logs if l[0] <= av.logging.ERROR]
print(json.dumps({"codec": v.codec_context.name if v else "", "w": v.codec_context.width if v else 0,
  "h": v.codec_context.height if v else 0, "video": counts["video"], "audio": counts["audio"],
  "errors": [str(e) for e in errors]}))
"#;
    let out = Command::new("python3").arg("-c").arg(script).arg(path).output().unwrap();
    assert!(out.status.success(), "PyAV failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["codec"].as_str().unwrap().to_string(),
        v["w"].as_u64().unwrap(),
        v["h"].as_u64().unwrap(),
        v["video"].as_u64().unwrap(),
        v["audio"].as_u64().unwrap(),
        v["errors"].to_string(),
    )
}
