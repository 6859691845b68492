//! FLV muxer: frames in, FLV tags out, each tag built once as one `Bytes`.
//!
//! What belongs here: the FLV file header and tag layout (Adobe FLV spec v10.1, Annex E), the
//! `onMetaData` script tag (AMF0, §E.5), AVC video tags (§E.4.3.1: AVCPacketType 0 = sequence
//! header with the AVCDecoderConfigurationRecord, 1 = NALUs with composition time), HEVC either as
//! Enhanced RTMP (veovera enhanced-rtmp v1: ExVideoTagHeader, FourCC `hvc1`) or as the unofficial
//! codec id 12 laid out like AVC, AAC audio (§E.4.2.2: AACPacketType 0 = AudioSpecificConfig,
//! 1 = raw frame) and G.711 (SoundFormat 7/8). What does not: parameter-set parsing
//! (`proto::codec`), fan-out and GOP caching (`hub`), HTTP (`http`).
//!
//! Behaviour:
//! - Timestamps are milliseconds of DTS relative to the first DTS this muxer saw, clamped to be
//!   never negative and never decreasing per track.
//! - Video frames before the first usable parameter sets are dropped (no decoder can use them).
//! - A sequence header (and a fresh `onMetaData`) is emitted when parameter sets first appear,
//!   when they change, and on a frame marked `discontinuity`.
//! - Parameter sets and AUDs are stripped from NALU tags (they live in the sequence header); every
//!   other NAL is written with a 4-byte length, the payload copied exactly once into the tag.
//! - Enhanced RTMP HEVC frames use PacketType CodedFrames (1, with composition time) always;
//!   CodedFramesX is not used, for the widest player support.

use bytes::Bytes;

use crate::proto::codec::aac::{AdtsHeader, AudioSpecificConfig};
use crate::proto::codec::g711::G711Descriptor;
use crate::proto::codec::nal::{
    h264_type, h265_type, split_annexb, H264_AUD, H264_PPS, H264_SPS, H265_AUD, H265_PPS, H265_SPS, H265_VPS,
};
use crate::proto::codec::{h264, h265, Codec, Frame};

/// How H.265 is written into FLV.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HevcMode {
    /// Enhanced RTMP: ExVideoTagHeader with FourCC `hvc1` (current FFmpeg, mpegts.js).
    #[default]
    Enhanced,
    /// The unofficial legacy layout with CodecID 12 (patched players in the GB/T 28181 field).
    CodecId12,
}

/// Muxer options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlvOptions {
    pub hevc: HevcMode,
}

/// The FLV TagType (§E.4.1): 8 audio, 9 video, 18 script data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagKind {
    Script,
    Audio,
    Video,
}

/// One complete FLV tag, trailing PreviousTagSize included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlvTag {
    pub data: Bytes,
    pub kind: TagKind,
    /// Video: a frame a decoder can start from. Audio and script: false.
    pub keyframe: bool,
    /// A sequence header (AVC/HEVC decoder configuration, AAC AudioSpecificConfig) or `onMetaData`.
    pub seq_header: bool,
    pub timestamp_ms: u32,
}

/// What the video stream is, for stream info and `onMetaData`.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoInfo {
    pub codec: Codec,
    pub width: u32,
    pub height: u32,
    /// H.264 profile_idc / H.265 general_profile_idc.
    pub profile: u8,
    /// H.264 level_idc (e.g. 31) / H.265 general_level_idc (30 × level, e.g. 93).
    pub level: u8,
    /// From the SPS VUI timing if present, else measured from DTS.
    pub fps: Option<f64>,
    /// RFC 6381 codec string (`avc1.64001f`, `hvc1.1.6.L93.B0`).
    pub codec_string: String,
}

/// What the audio stream is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioInfo {
    pub codec: Codec,
    pub sample_rate: u32,
    pub channels: u8,
    /// False for G.711: browser players (MSE) cannot decode it.
    pub browser_playable: bool,
}

struct VideoState {
    codec: Codec,
    /// The parameter sets the current config was built from (change detection).
    params: Vec<Bytes>,
    seq_tag_body: Bytes,
    width: u32,
    height: u32,
    profile: u8,
    level: u8,
    sps_fps: Option<f64>,
    codec_string: String,
}

enum AudioState {
    Aac { asc: AudioSpecificConfig, seq_tag_body: Bytes },
    G711(G711Descriptor),
}

/// FLV muxer for one stream. See the module header for its behaviour.
pub struct FlvMuxer {
    opts: FlvOptions,
    video: Option<VideoState>,
    audio: Option<AudioState>,
    base_dts: Option<i64>,
    last_video_ms: u32,
    last_audio_ms: u32,
    last_ts_ms: u32,
    fps_first_dts: Option<i64>,
    fps_last_dts: i64,
    fps_frames: u64,
    /// Scratch list of (start, end) NAL ranges, reused across frames.
    nal_ranges: Vec<(usize, usize)>,
}

const TAG_AUDIO: u8 = 8;
const TAG_VIDEO: u8 = 9;
const TAG_SCRIPT: u8 = 18;

/// FourCC of Enhanced RTMP HEVC.
const FOURCC_HVC1: [u8; 4] = *b"hvc1";

/// Build one tag: 11-byte header (§E.4.1), body, PreviousTagSize.
fn build_tag(tag_type: u8, ts: u32, body_len: usize, fill: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let mut v = Vec::with_capacity(11 + body_len + 4);
    v.push(tag_type);
    let len = body_len as u32;
    v.extend_from_slice(&len.to_be_bytes()[1..]); // DataSize UI24
    v.extend_from_slice(&ts.to_be_bytes()[1..]); // Timestamp UI24 (lower 24 bits)
    v.push((ts >> 24) as u8); // TimestampExtended
    v.extend_from_slice(&[0, 0, 0]); // StreamID
    fill(&mut v);
    debug_assert_eq!(v.len(), 11 + body_len);
    v.extend_from_slice(&((11 + body_len) as u32).to_be_bytes()); // PreviousTagSize
    Bytes::from(v)
}

fn amf_key(v: &mut Vec<u8>, k: &str) {
    v.extend_from_slice(&(k.len() as u16).to_be_bytes());
    v.extend_from_slice(k.as_bytes());
}

fn amf_num(v: &mut Vec<u8>, k: &str, n: f64) {
    amf_key(v, k);
    v.push(0x00); // Number
    v.extend_from_slice(&n.to_be_bytes());
}

fn amf_bool(v: &mut Vec<u8>, k: &str, b: bool) {
    amf_key(v, k);
    v.push(0x01); // Boolean
    v.push(u8::from(b));
}

fn amf_str(v: &mut Vec<u8>, k: &str, s: &str) {
    amf_key(v, k);
    v.push(0x02); // String
    amf_key(v, s);
}

impl FlvMuxer {
    pub fn new(opts: FlvOptions) -> Self {
        FlvMuxer {
            opts,
            video: None,
            audio: None,
            base_dts: None,
            last_video_ms: 0,
            last_audio_ms: 0,
            last_ts_ms: 0,
            fps_first_dts: None,
            fps_last_dts: 0,
            fps_frames: 0,
            nal_ranges: Vec::new(),
        }
    }

    /// The 9-byte FLV header (§E.2) followed by PreviousTagSize0 (= 0).
    pub fn header(has_video: bool, has_audio: bool) -> Bytes {
        let flags = (u8::from(has_audio) << 2) | u8::from(has_video);
        Bytes::copy_from_slice(&[b'F', b'L', b'V', 1, flags, 0, 0, 0, 9, 0, 0, 0, 0])
    }

    /// Video stream description, once parameter sets have been seen.
    pub fn video_info(&self) -> Option<VideoInfo> {
        let v = self.video.as_ref()?;
        let measured = match self.fps_first_dts {
            Some(first) if self.fps_frames >= 2 && self.fps_last_dts > first => {
                Some((self.fps_frames - 1) as f64 * 90_000.0 / (self.fps_last_dts - first) as f64)
            }
            _ => None,
        };
        Some(VideoInfo {
            codec: v.codec,
            width: v.width,
            height: v.height,
            profile: v.profile,
            level: v.level,
            fps: v.sps_fps.or(measured),
            codec_string: v.codec_string.clone(),
        })
    }

    /// Audio stream description, once the first audio frame has been seen.
    pub fn audio_info(&self) -> Option<AudioInfo> {
        match self.audio.as_ref()? {
            AudioState::Aac { asc, .. } => Some(AudioInfo {
                codec: Codec::Aac,
                sample_rate: asc.sample_rate,
                channels: asc.channels(),
                browser_playable: true,
            }),
            AudioState::G711(d) => Some(AudioInfo {
                codec: if d.flv_sound_format() == 7 { Codec::G711A } else { Codec::G711U },
                sample_rate: d.sample_rate,
                channels: d.channels,
                browser_playable: d.browser_playable(),
            }),
        }
    }

    /// `onMetaData` plus the current video and audio sequence headers (timestamp 0), for a
    /// viewer that joins mid-stream. Empty until something is known.
    pub fn init_tags(&self) -> Vec<Bytes> {
        let mut out = Vec::new();
        if self.video.is_none() && self.audio.is_none() {
            return out;
        }
        out.push(self.meta_tag(0).data);
        if let Some(v) = &self.video {
            out.push(self.video_seq_tag(v, 0).data);
        }
        if let Some(AudioState::Aac { seq_tag_body, .. }) = &self.audio {
            out.push(build_tag(TAG_AUDIO, 0, seq_tag_body.len(), |b| b.extend_from_slice(seq_tag_body)));
        }
        out
    }

    fn video_codec_id(&self, codec: Codec) -> f64 {
        match (codec, self.opts.hevc) {
            (Codec::H265, HevcMode::Enhanced) => f64::from(u32::from_be_bytes(FOURCC_HVC1)),
            (Codec::H265, HevcMode::CodecId12) => 12.0,
            _ => 7.0,
        }
    }

    /// The `onMetaData` script tag (§E.5): AMF0 string "onMetaData" then an ECMA array.
    fn meta_tag(&self, ts: u32) -> FlvTag {
        let mut body = Vec::with_capacity(256);
        body.push(0x02);
        amf_key(&mut body, "onMetaData");
        body.push(0x08); // ECMA array
        let count_at = body.len();
        body.extend_from_slice(&[0, 0, 0, 0]);
        let mut n = 0u32;
        amf_num(&mut body, "duration", 0.0);
        n += 1;
        if let Some(v) = self.video_info() {
            amf_num(&mut body, "width", f64::from(v.width));
            amf_num(&mut body, "height", f64::from(v.height));
            amf_num(&mut body, "videocodecid", self.video_codec_id(v.codec));
            n += 3;
            if let Some(fps) = v.fps {
                amf_num(&mut body, "framerate", fps);
                n += 1;
            }
        }
        if let Some(a) = self.audio_info() {
            let id = match a.codec {
                Codec::G711A => 7.0,
                Codec::G711U => 8.0,
                _ => 10.0,
            };
            amf_num(&mut body, "audiocodecid", id);
            amf_num(&mut body, "audiosamplerate", f64::from(a.sample_rate));
            amf_num(&mut body, "audiosamplesize", 16.0);
            amf_bool(&mut body, "stereo", a.channels > 1);
            n += 4;
        }
        amf_str(&mut body, "encoder", "gbrelay");
        n += 1;
        body[count_at..count_at + 4].copy_from_slice(&n.to_be_bytes());
        body.extend_from_slice(&[0, 0, 9]); // object end marker
        FlvTag {
            data: build_tag(TAG_SCRIPT, ts, body.len(), |b| b.extend_from_slice(&body)),
            kind: TagKind::Script,
            keyframe: false,
            seq_header: true,
            timestamp_ms: ts,
        }
    }

    fn video_seq_tag(&self, v: &VideoState, ts: u32) -> FlvTag {
        FlvTag {
            data: build_tag(TAG_VIDEO, ts, v.seq_tag_body.len(), |b| b.extend_from_slice(&v.seq_tag_body)),
            kind: TagKind::Video,
            keyframe: true,
            seq_header: true,
            timestamp_ms: ts,
        }
    }

    fn ts_ms(&mut self, dts: i64, video: bool) -> u32 {
        let base = *self.base_dts.get_or_insert(dts);
        let ms = ((dts - base).max(0) / 90).min(i64::from(u32::MAX)) as u32;
        let last = if video { &mut self.last_video_ms } else { &mut self.last_audio_ms };
        let ms = ms.max(*last);
        *last = ms;
        self.last_ts_ms = self.last_ts_ms.max(ms);
        ms
    }

    /// Mux one frame: appends 0..n tags (`onMetaData` and sequence headers when parameters
    /// appear or change, then the frame's own tag).
    pub fn push(&mut self, frame: &Frame, out: &mut Vec<FlvTag>) {
        match frame.codec {
            Codec::H264 | Codec::H265 => self.push_video(frame, out),
            Codec::Aac => self.push_aac(frame, out),
            Codec::G711A | Codec::G711U => self.push_g711(frame, out),
        }
    }

    /// Build a new video config from the parameter sets in `frame`, if it carries any.
    fn video_config(&self, frame: &Frame) -> Option<VideoState> {
        let legacy_id = match (frame.codec, self.opts.hevc) {
            (Codec::H265, HevcMode::CodecId12) => 12u8,
            _ => 7,
        };
        match frame.codec {
            Codec::H264 => {
                let (sps, pps) = h264::parameter_sets(&frame.data);
                if sps.is_empty() || pps.is_empty() {
                    return None;
                }
                let parsed = h264::parse_sps(&sps[0]).ok()?;
                let cfg = h264::AvcDecoderConfig::from_parameter_sets(&sps, &pps).ok()?;
                let mut body = vec![0x10 | 7, 0, 0, 0, 0]; // keyframe|AVC, seq header, cts 0
                body.extend_from_slice(&cfg.to_bytes());
                Some(VideoState {
                    codec: Codec::H264,
                    params: sps.into_iter().chain(pps).collect(),
                    seq_tag_body: Bytes::from(body),
                    width: parsed.width,
                    height: parsed.height,
                    profile: parsed.profile_idc,
                    level: parsed.level_idc,
                    sps_fps: parsed.frame_rate,
                    codec_string: cfg.codec_string(),
                })
            }
            Codec::H265 => {
                let ps = h265::parameter_sets(&frame.data);
                if ps.vps.is_empty() || ps.sps.is_empty() || ps.pps.is_empty() {
                    return None;
                }
                let parsed = h265::parse_sps(&ps.sps[0]).ok()?;
                let cfg = h265::HevcDecoderConfig::from_parameter_sets(&ps).ok()?;
                let mut body = match self.opts.hevc {
                    // ExVideoTagHeader: IsExHeader | FrameType 1 | PacketType SequenceStart (0).
                    HevcMode::Enhanced => {
                        let mut b = vec![0x80 | 0x10];
                        b.extend_from_slice(&FOURCC_HVC1);
                        b
                    }
                    HevcMode::CodecId12 => vec![0x10 | legacy_id, 0, 0, 0, 0],
                };
                body.extend_from_slice(&cfg.to_bytes());
                Some(VideoState {
                    codec: Codec::H265,
                    params: ps.vps.into_iter().chain(ps.sps).chain(ps.pps).collect(),
                    seq_tag_body: Bytes::from(body),
                    width: parsed.width,
                    height: parsed.height,
                    profile: parsed.ptl.profile_idc,
                    level: parsed.ptl.level_idc,
                    sps_fps: None,
                    codec_string: cfg.codec_string(),
                })
            }
            _ => None,
        }
    }

    fn push_video(&mut self, frame: &Frame, out: &mut Vec<FlvTag>) {
        // Only frames that can carry parameter sets are searched (keyframes, in practice).
        let changed = if frame.keyframe || self.video.is_none() {
            match self.video_config(frame) {
                Some(new) => {
                    let same =
                        self.video.as_ref().is_some_and(|v| v.codec == new.codec && v.params == new.params);
                    if !same {
                        self.video = Some(new);
                    }
                    !same
                }
                None => false,
            }
        } else {
            false
        };
        let Some(codec) = self.video.as_ref().map(|v| v.codec) else {
            return; // no decoder configuration yet: the frame is undecodable
        };
        if codec != frame.codec {
            return; // codec switched without new parameter sets: wait for them
        }
        let ts = self.ts_ms(frame.dts, true);
        // fps measurement over the stream's DTS (restarted on discontinuity).
        if frame.discontinuity || self.fps_first_dts.is_none() {
            self.fps_first_dts = Some(frame.dts);
            self.fps_frames = 0;
        }
        self.fps_frames += 1;
        self.fps_last_dts = frame.dts;
        if changed || frame.discontinuity {
            out.push(self.meta_tag(ts));
            if let Some(v) = &self.video {
                out.push(self.video_seq_tag(v, ts));
            }
        }
        // NAL ranges to keep: everything but parameter sets and AUDs.
        let base = frame.data.as_ptr() as usize;
        self.nal_ranges.clear();
        let mut payload = 0usize;
        for nal in split_annexb(&frame.data) {
            let skip = match codec {
                Codec::H264 => matches!(h264_type(nal), Some(H264_SPS | H264_PPS | H264_AUD)),
                _ => matches!(h265_type(nal), Some(H265_VPS | H265_SPS | H265_PPS | H265_AUD)),
            };
            if !skip {
                let start = nal.as_ptr() as usize - base;
                self.nal_ranges.push((start, start + nal.len()));
                payload += 4 + nal.len();
            }
        }
        if self.nal_ranges.is_empty() {
            return;
        }
        let cts = (frame.cts() / 90).clamp(-(1 << 23), (1 << 23) - 1) as i32;
        let cts_bytes = cts.to_be_bytes();
        let frame_type: u8 = if frame.keyframe { 1 } else { 2 };
        let enhanced = codec == Codec::H265 && self.opts.hevc == HevcMode::Enhanced;
        let codec_id: u8 = if codec == Codec::H265 { 12 } else { 7 };
        let header_len = if enhanced { 8 } else { 5 };
        let data = &frame.data;
        let ranges = &self.nal_ranges;
        let tag = build_tag(TAG_VIDEO, ts, header_len + payload, |b| {
            if enhanced {
                // IsExHeader | FrameType | PacketType CodedFrames (1), FourCC, CompositionTime SI24.
                b.push(0x80 | (frame_type << 4) | 1);
                b.extend_from_slice(&FOURCC_HVC1);
            } else {
                b.push((frame_type << 4) | codec_id);
                b.push(1); // AVCPacketType NALU
            }
            b.extend_from_slice(&cts_bytes[1..]);
            for &(s, e) in ranges {
                b.extend_from_slice(&((e - s) as u32).to_be_bytes());
                b.extend_from_slice(&data[s..e]);
            }
        });
        out.push(FlvTag {
            data: tag,
            kind: TagKind::Video,
            keyframe: frame.keyframe,
            seq_header: false,
            timestamp_ms: ts,
        });
    }

    fn push_aac(&mut self, frame: &Frame, out: &mut Vec<FlvTag>) {
        let mut pos = 0usize;
        let mut dts = frame.dts;
        let mut first = true;
        // One ADTS frame per Frame by contract; several back to back are tolerated.
        while pos < frame.data.len() {
            let Ok(h) = AdtsHeader::parse(&frame.data[pos..]) else {
                return;
            };
            let end = (pos + h.frame_len).min(frame.data.len());
            let raw = &frame.data[pos + h.header_len.min(end - pos)..end];
            let asc = h.audio_specific_config();
            let changed = !matches!(&self.audio, Some(AudioState::Aac { asc: a, .. }) if *a == asc);
            let ts = self.ts_ms(dts, false);
            if changed {
                let mut body = vec![0xaf, 0]; // AAC, 44 kHz, 16-bit, stereo (§E.4.2.1: always for AAC); seq header
                body.extend_from_slice(&asc.to_bytes());
                self.audio = Some(AudioState::Aac { asc, seq_tag_body: Bytes::from(body) });
            }
            if changed || (first && frame.discontinuity) {
                if changed {
                    out.push(self.meta_tag(ts));
                }
                if let Some(AudioState::Aac { seq_tag_body, .. }) = &self.audio {
                    out.push(FlvTag {
                        data: build_tag(TAG_AUDIO, ts, seq_tag_body.len(), |b| {
                            b.extend_from_slice(seq_tag_body)
                        }),
                        kind: TagKind::Audio,
                        keyframe: false,
                        seq_header: true,
                        timestamp_ms: ts,
                    });
                }
            }
            out.push(FlvTag {
                data: build_tag(TAG_AUDIO, ts, 2 + raw.len(), |b| {
                    b.extend_from_slice(&[0xaf, 1]);
                    b.extend_from_slice(raw);
                }),
                kind: TagKind::Audio,
                keyframe: false,
                seq_header: false,
                timestamp_ms: ts,
            });
            pos = end;
            dts += h.duration_90k();
            first = false;
        }
    }

    fn push_g711(&mut self, frame: &Frame, out: &mut Vec<FlvTag>) {
        let Some(d) = G711Descriptor::for_codec(frame.codec) else {
            return;
        };
        if frame.data.is_empty() {
            return;
        }
        let ts = self.ts_ms(frame.dts, false);
        if !matches!(&self.audio, Some(AudioState::G711(cur)) if *cur == d) {
            self.audio = Some(AudioState::G711(d));
            out.push(self.meta_tag(ts));
        }
        // SoundFormat 7/8, SoundRate 0 (5.5 kHz: "special", as FFmpeg writes for 8 kHz),
        // SoundSize 1 (16-bit), SoundType 0 (mono): FFmpeg flvenc's flags for PCMA/PCMU.
        let flags = (d.flv_sound_format() << 4) | (1 << 1);
        out.push(FlvTag {
            data: build_tag(TAG_AUDIO, ts, 1 + frame.data.len(), |b| {
                b.push(flags);
                b.extend_from_slice(&frame.data);
            }),
            kind: TagKind::Audio,
            keyframe: false,
            seq_header: false,
            timestamp_ms: ts,
        });
    }
}
