//! The offline commands `gbrelay probe` and `gbrelay remux`: the media core used on files.
//!
//! Input is an MPEG-PS file or a file of RTP packets in RFC 4571 framing (a TCP session's payload),
//! detected by content ([`detect_input`]). What belongs here: file reading, the choice of output by
//! extension, and the report. The parsing and muxing themselves live in `proto`.

use crate::proto::codec::{Codec, Frame};
use crate::proto::mux::flv::{FlvMuxer, FlvOptions, FlvTag, HevcMode};
use crate::proto::mux::hls::{HlsOptions, HlsSegmenter};
use crate::proto::ps::{DemuxPolicy, PsDemuxer};
use crate::proto::rtp;
use bytes::Bytes;
use serde::Serialize;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ToolError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{0}")]
    Input(String),
    #[error("unsupported output {0:?}: use .flv, .ts or .m3u8")]
    Output(String),
}

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputKind {
    /// MPEG-PS (ISO/IEC 13818-1 §2.5).
    Ps,
    /// RTP packets each preceded by a 2-byte big-endian length (RFC 4571).
    Rtp4571,
}

/// Tell PS from RFC 4571-framed RTP by content: three consecutive length-prefixed RTP version-2
/// headers (or as many as the file holds) make it RTP; a pack start code near the start makes it PS.
pub fn detect_input(data: &[u8]) -> Result<InputKind, ToolError> {
    if data.len() >= 4 && data[..4] == [0, 0, 1, 0xba] {
        return Ok(InputKind::Ps);
    }
    let mut pos = 0usize;
    let mut frames = 0;
    while frames < 3 && pos + 2 <= data.len() {
        let len = usize::from(u16::from_be_bytes([data[pos], data[pos + 1]]));
        if len < 12 || pos + 2 + len > data.len() || data[pos + 2] >> 6 != 2 {
            break;
        }
        pos += 2 + len;
        frames += 1;
    }
    if frames == 3 || (frames > 0 && pos == data.len()) {
        return Ok(InputKind::Rtp4571);
    }
    if data.windows(4).take(64 * 1024).any(|w| w == [0, 0, 1, 0xba]) {
        return Ok(InputKind::Ps);
    }
    Err(ToolError::Input("neither MPEG-PS (no pack start code) nor RFC 4571-framed RTP".into()))
}

/// Summary of a stream, as `probe` prints it.
#[derive(Debug, Default, Serialize)]
pub struct StreamReport {
    pub codec: Option<Codec>,
    pub frames: u64,
    pub keyframes: u64,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub first_pts: Option<i64>,
    pub last_pts: Option<i64>,
    pub bytes: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct RtpReport {
    pub packets: u64,
    pub malformed: u64,
    pub ssrcs: Vec<u32>,
    pub lost: u64,
    pub payload_type: Option<u8>,
}

#[derive(Debug, Serialize)]
pub struct ProbeReport {
    pub file: String,
    pub input: InputKind,
    pub bytes: u64,
    pub duration_s: f64,
    pub video: Option<StreamReport>,
    pub audio: Option<StreamReport>,
    pub packs: u64,
    pub psms: u64,
    pub system_headers: u64,
    pub resyncs: u64,
    pub bytes_skipped: u64,
    pub quirks: Vec<QuirkReport>,
    pub quirk_counts: std::collections::BTreeMap<String, u64>,
    pub rtp: Option<RtpReport>,
    pub discontinuities: u64,
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct QuirkReport {
    pub name: String,
    pub offset: u64,
    pub detail: String,
}

/// Feeds a whole input (PS or RFC 4571 RTP) into a demuxer and hands every frame to `sink`.
fn demux_all(
    data: Bytes,
    kind: InputKind,
    demuxer: &mut PsDemuxer,
    rtp_report: &mut RtpReport,
    mut sink: impl FnMut(Frame),
) {
    match kind {
        InputKind::Ps => {
            // Feed in 64 KiB pieces, as a network would, so memory stays bounded on large files.
            let mut rest = data;
            while !rest.is_empty() {
                let n = rest.len().min(64 * 1024);
                demuxer.push(rest.split_to(n));
                while let Some(f) = demuxer.poll_frame() {
                    sink(f);
                }
            }
        }
        InputKind::Rtp4571 => {
            let mut deframer = rtp::Deframer::new(64 * 1024);
            deframer.push(&data);
            let mut last_seq: Option<u16> = None;
            while let Some(item) = deframer.next() {
                let pkt = match item.and_then(rtp::parse) {
                    Ok(p) => p,
                    Err(_) => {
                        rtp_report.malformed += 1;
                        continue;
                    }
                };
                rtp_report.packets += 1;
                rtp_report.payload_type.get_or_insert(pkt.payload_type);
                if !rtp_report.ssrcs.contains(&pkt.ssrc) && rtp_report.ssrcs.len() < 16 {
                    rtp_report.ssrcs.push(pkt.ssrc);
                }
                if let Some(prev) = last_seq {
                    let gap = pkt.seq.wrapping_sub(prev);
                    if gap != 1 && gap < 0x8000 {
                        rtp_report.lost += u64::from(gap - 1);
                        demuxer.notify_loss();
                    }
                }
                last_seq = Some(pkt.seq);
                demuxer.push(pkt.payload);
                if pkt.marker {
                    demuxer.end_of_unit();
                }
                while let Some(f) = demuxer.poll_frame() {
                    sink(f);
                }
            }
        }
    }
    demuxer.flush();
    while let Some(f) = demuxer.poll_frame() {
        sink(f);
    }
}

fn read(path: &Path) -> Result<Bytes, ToolError> {
    std::fs::read(path)
        .map(Bytes::from)
        .map_err(|source| ToolError::Io { path: path.display().to_string(), source })
}

/// `gbrelay probe FILE`.
pub fn probe(path: &Path, policy: DemuxPolicy) -> Result<ProbeReport, ToolError> {
    let data = read(path)?;
    let kind = detect_input(&data)?;
    let mut demuxer = PsDemuxer::new(policy);
    let mut rtp_report = RtpReport::default();
    let mut video: Option<StreamReport> = None;
    let mut audio: Option<StreamReport> = None;
    let mut discontinuities = 0;
    // The FLV muxer parses parameter sets; reuse it for width/height.
    let mut flv = FlvMuxer::new(FlvOptions { hevc: HevcMode::Enhanced });
    let mut tags: Vec<FlvTag> = Vec::new();
    let total = data.len() as u64;
    demux_all(data, kind, &mut demuxer, &mut rtp_report, |f| {
        if f.discontinuity {
            discontinuities += 1;
        }
        let slot = if f.codec.is_video() { &mut video } else { &mut audio };
        let s = slot.get_or_insert_with(StreamReport::default);
        s.codec = Some(f.codec);
        s.frames += 1;
        s.keyframes += u64::from(f.keyframe && f.codec.is_video());
        s.bytes += f.data.len() as u64;
        s.first_pts = Some(s.first_pts.map_or(f.pts, |p| p.min(f.pts)));
        s.last_pts = Some(s.last_pts.map_or(f.pts, |p| p.max(f.pts)));
        tags.clear();
        flv.push(&f, &mut tags);
    });
    if let (Some(v), Some(info)) = (video.as_mut(), flv.video_info()) {
        v.width = Some(info.width);
        v.height = Some(info.height);
    }
    let span = |s: &Option<StreamReport>| match s {
        Some(StreamReport { first_pts: Some(a), last_pts: Some(b), frames, .. }) if *frames > 1 => {
            // Add one frame's duration: the last frame lasts too.
            let d = (b - a) as f64 / 90_000.0;
            d + d / (*frames as f64 - 1.0)
        }
        _ => 0.0,
    };
    let duration_s = span(&video).max(span(&audio));
    let st = demuxer.stats();
    let mut notes = Vec::new();
    if audio.as_ref().and_then(|a| a.codec).is_some_and(|c| matches!(c, Codec::G711A | Codec::G711U)) {
        notes.push(
            "G.711 audio: kept in FLV (SoundFormat 7/8) but browsers' FLV/HLS players play no sound; \
             HLS carries video only"
                .into(),
        );
    }
    Ok(ProbeReport {
        file: path.display().to_string(),
        input: kind,
        bytes: total,
        duration_s: (duration_s * 1000.0).round() / 1000.0,
        video,
        audio,
        packs: st.packs,
        psms: st.psms,
        system_headers: st.system_headers,
        resyncs: st.resyncs,
        bytes_skipped: st.bytes_skipped,
        quirks: st
            .quirks
            .iter()
            .map(|q| QuirkReport { name: q.name.to_string(), offset: q.offset, detail: q.detail.clone() })
            .collect(),
        quirk_counts: st.quirk_counts.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        rtp: (kind == InputKind::Rtp4571).then_some(rtp_report),
        discontinuities,
        notes,
    })
}

impl ProbeReport {
    /// Human-readable form.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ =
            writeln!(s, "{}: {:?}, {} bytes, {:.3} s", self.file, self.input, self.bytes, self.duration_s);
        for (label, st) in [("video", &self.video), ("audio", &self.audio)] {
            if let Some(st) = st {
                let _ = write!(
                    s,
                    "  {label}: {} frames={} keyframes={}",
                    st.codec.map(|c| c.name()).unwrap_or("?"),
                    st.frames,
                    st.keyframes
                );
                if let (Some(w), Some(h)) = (st.width, st.height) {
                    let _ = write!(s, " {w}x{h}");
                }
                s.push('\n');
            }
        }
        let _ = writeln!(
            s,
            "  packs={} psm={} system_headers={} resyncs={} bytes_skipped={} discontinuities={}",
            self.packs,
            self.psms,
            self.system_headers,
            self.resyncs,
            self.bytes_skipped,
            self.discontinuities
        );
        if let Some(r) = &self.rtp {
            let _ = writeln!(
                s,
                "  rtp: packets={} malformed={} lost={} ssrcs={:?}",
                r.packets, r.malformed, r.lost, r.ssrcs
            );
        }
        for (k, v) in &self.quirk_counts {
            let _ = writeln!(s, "  quirk {k}: {v}");
        }
        for q in &self.quirks {
            let _ = writeln!(s, "    at {}: {} {}", q.offset, q.name, q.detail);
        }
        for n in &self.notes {
            let _ = writeln!(s, "  note: {n}");
        }
        s
    }
}

/// What `remux` wrote.
#[derive(Debug, Default, Serialize)]
pub struct RemuxReport {
    pub video_frames: u64,
    pub audio_frames: u64,
    pub files: Vec<String>,
    pub notes: Vec<String>,
}

/// `gbrelay remux IN OUT`: OUT is `.flv`, `.ts` or `.m3u8` (segments written beside it, a VOD
/// playlist ending in `EXT-X-ENDLIST`).
pub fn remux(
    input: &Path,
    output: &Path,
    policy: DemuxPolicy,
    hevc: HevcMode,
) -> Result<RemuxReport, ToolError> {
    let ext = output.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if !matches!(ext.as_str(), "flv" | "ts" | "m3u8") {
        return Err(ToolError::Output(output.display().to_string()));
    }
    let data = read(input)?;
    let kind = detect_input(&data)?;
    let mut demuxer = PsDemuxer::new(policy);
    let mut rtp_report = RtpReport::default();
    let mut report = RemuxReport::default();
    let mut frames: Vec<Frame> = Vec::new();
    demux_all(data, kind, &mut demuxer, &mut rtp_report, |f| frames.push(f));
    let has_video = frames.iter().any(|f| f.codec.is_video());
    let has_audio = frames.iter().any(|f| !f.codec.is_video());
    report.video_frames = frames.iter().filter(|f| f.codec.is_video()).count() as u64;
    report.audio_frames = frames.len() as u64 - report.video_frames;
    let write = |path: &Path, bytes: &[u8]| {
        std::fs::write(path, bytes)
            .map_err(|source| ToolError::Io { path: path.display().to_string(), source })
    };
    match ext.as_str() {
        "flv" => {
            let mut flv = FlvMuxer::new(FlvOptions { hevc });
            let mut out = Vec::with_capacity(frames.iter().map(|f| f.data.len() + 32).sum());
            out.extend_from_slice(&FlvMuxer::header(has_video, has_audio));
            let mut tags = Vec::new();
            for f in &frames {
                tags.clear();
                flv.push(f, &mut tags);
                for t in &tags {
                    out.extend_from_slice(&t.data);
                }
            }
            write(output, &out)?;
            report.files.push(output.display().to_string());
        }
        _ => {
            if frames.iter().any(|f| matches!(f.codec, Codec::G711A | Codec::G711U)) {
                report
                    .notes
                    .push("G.711 audio has no place in MPEG-TS: HLS/TS output carries video only".into());
            }
            let mut hls = HlsSegmenter::new(HlsOptions {
                target_duration_90k: 2 * 90_000,
                window: usize::MAX,
                vod: true,
            });
            for f in &frames {
                hls.push(f);
            }
            hls.finish();
            if ext == "ts" {
                let mut out = Vec::new();
                for seg in hls.segments() {
                    out.extend_from_slice(&seg.data);
                }
                write(output, &out)?;
                report.files.push(output.display().to_string());
            } else {
                let dir = output.parent().unwrap_or(Path::new("."));
                for seg in hls.segments() {
                    let p = dir.join(format!("{}.ts", seg.seq));
                    write(&p, &seg.data)?;
                    report.files.push(p.display().to_string());
                }
                write(output, hls.playlist().as_bytes())?;
                report.files.push(output.display().to_string());
            }
        }
    }
    Ok(report)
}
