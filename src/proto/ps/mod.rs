//! MPEG-2 Program Stream demuxer (ISO/IEC 13818-1 §2.5) for what GB/T 28181 devices send
//! (GB/T 28181-2016 Annex C), sans-IO over `bytes::Bytes`.
//!
//! What belongs here: turning PS bytes (RTP payloads or file chunks, split anywhere) into
//! [`Frame`](crate::proto::codec::Frame)s, and a writer of vendor variants for tests and the
//! simulated device ([`quirks`]). What does not: RTP (`proto::rtp`), codec configuration
//! records (`proto::codec`), muxing (`proto::mux`), metrics (the media layer reads [`PsStats`]).
//!
//! ```
//! use gbrelay::proto::ps::{DemuxPolicy, PsDemuxer};
//! let mut d = PsDemuxer::new(DemuxPolicy::default());
//! d.push(bytes::Bytes::from_static(&[0, 0, 1, 0xBA])); // any split
//! while let Some(frame) = d.poll_frame() { let _ = frame; }
//! d.flush();
//! ```
//!
//! # Frames
//! - Video: one Annex B access unit as received (all PES payloads of the frame, copied once when
//!   there is more than one piece, zero-copy otherwise). A new access unit starts at a PES with a
//!   PTS different from the current one, at a PES that begins with an AUD, or at a PES without
//!   PTS that follows a new pack header and begins with a start code. Emitted when the next
//!   one starts (or at `flush`). `keyframe` from the first slice NAL (IDR / IRAP).
//! - AAC: one frame per ADTS frame; later frames of one PES are 1024 samples apart.
//! - G.711: one frame per PES.
//! - Timestamps: 90 kHz, from PES only (never RTP), unwrapped from 33 bits into one monotonic
//!   `i64` timeline for both tracks (see `timeline.rs`); DTS = PTS when absent.
//!   `discontinuity` on the first frame after a rebase (jump > 10 s forward or > 1 s back: camera
//!   reboot), a codec change, or a new SPS (resolution change).
//!
//! # Named quirk behaviours
//! Each is counted in [`PsStats::quirk_counts`] under the name given, with the first
//! [`MAX_QUIRK_EVENTS`] kept as [`QuirkEvent`]s. Each has a test in `tests.rs` over bytes
//! derived from `testdata/*.ps` by [`quirks`].
//!
//! | name | behaviour |
//! |---|---|
//! | (none) | PS split anywhere across pushes: identical output for every split |
//! | `pts_only_on_first_pes` | a frame over several PES with the PTS only on the first: continued |
//! | `pts_repeated_in_frame` | one NAL per PES each repeating the frame's PTS (Hikvision): continued |
//! | `pes_length_zero` | PES_packet_length 0: payload runs to the next plausible PS header |
//! | `private_stream_skipped` | 0xBD private stream (Hikvision, after frames): skipped by length |
//! | `unknown_stream_skipped` | 0xBF, 0xF0..=0xFF and other unknown ids: skipped by length |
//! | `psm_missing_codec_from_nal` | no PSM: video codec from the NAL units |
//! | `psm_missing_codec_from_adts` / `audio_codec_guessed_g711` | no PSM: audio by ADTS sync word, else G.711 per policy |
//! | `psm_crc_zero` / `psm_crc_little_endian` / `psm_crc_bad` | CRC classified, map still used (Dahua, Hikvision) |
//! | `psm_vendor_descriptor` | 'HK' descriptors in the PSM (Hikvision): read past |
//! | `psm_empty_entry` | an all-zero entry in the PSM (Dahua): ignored |
//! | `psm_wrong_video_codec` | PSM names another video codec than the NAL units: NAL units win |
//! | `psm_unsupported_stream_type` | video: NAL units decide; audio: the stream is skipped |
//! | `pack_stuffing_not_ff` | stuffing that is not 0xFF (even `00 00 01 BA`): skipped by its length |
//! | `garbage_resync` | garbage where a header belongs: resync at the next pack header (`resyncs`) |
//! | `pts_wrap` | 33-bit PTS wrap mid-stream: continues monotonically |
//! | `timestamp_jump` | > 10 s forward / > 1 s back: rebased, `discontinuity` |
//! | `timestamp_backwards_clamped` | a smaller step back within a track: clamped |
//! | `codec_change` / `sps_change` | new codec / parameter sets mid-stream: `discontinuity` |
//! | `frame_too_large` | a frame over [`MAX_FRAME_BYTES`]: dropped |
//! | `adts_sync_lost` / `adts_split_across_pes` | AAC bytes without sync skipped / ADTS frame completed from the next PES |
//! | `pts_missing_extrapolated` / `no_timestamp` | no PTS at all: one frame duration after the last, else dropped |
//! | `loss_dropped_frame` | [`PsDemuxer::notify_loss`]: the frame being assembled is dropped |
//! | `rtp_marker_misplaced` | [`PsDemuxer::end_of_unit`] (RTP marker) inside a PES or a frame: marks ignored from then on |
//! | `truncated_at_end` | `flush` with an unfinished PES or header: dropped |
//! | `video_codec_unknown` | no PSM and no parameter set yet: frame dropped |
//! | `psm_invalid` / `psm_length_clamped` / `pes_header_invalid` / `pack_marker_bits` | malformed structures |
//!
//! Hikvision audio PES without a pack header of their own need no special case: PES are read
//! wherever they stand.

pub mod demux;
mod es;
pub mod header;
mod input;
pub mod quirks;
mod timeline;

#[cfg(test)]
mod tests;

pub use demux::{
    DemuxPolicy, ParameterSets, PsDemuxer, PsStats, QuirkEvent, MAX_FRAME_BYTES, MAX_QUIRK_EVENTS,
};
pub use header::ParseError;
