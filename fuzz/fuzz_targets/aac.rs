#![no_main]
//! AAC parsers on arbitrary input: ADTS header, AudioSpecificConfig (and ASC ↔ ADTS round
//! trips), and the FLV / TS muxers given the bytes as an AAC frame. None may panic.
use bytes::Bytes;
use gbrelay::proto::codec::aac::{AdtsHeader, AudioSpecificConfig};
use gbrelay::proto::codec::{Codec, Frame};
use gbrelay::proto::mux::{FlvMuxer, FlvOptions, TsMuxer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = AdtsHeader::parse(data) {
        let asc = h.audio_specific_config();
        assert_eq!(AudioSpecificConfig::parse(&asc.to_bytes()).ok(), Some(asc));
        if let Some(hdr) = asc.adts_header(h.frame_len.saturating_sub(7)) {
            let back = AdtsHeader::parse(&hdr).expect("own ADTS header parses");
            assert_eq!(back.audio_specific_config(), asc);
        }
        let _ = h.duration_90k();
    }
    if let Ok(asc) = AudioSpecificConfig::parse(data) {
        let _ = asc.to_bytes();
        let _ = asc.channels();
    }
    let frame = Frame { codec: Codec::Aac, pts: 0, dts: 0, keyframe: true, discontinuity: false, data: Bytes::copy_from_slice(data) };
    let mut tags = Vec::new();
    FlvMuxer::new(FlvOptions::default()).push(&frame, &mut tags);
    let mut out = Vec::new();
    TsMuxer::new().push(&frame, &mut out);
    assert_eq!(out.len() % 188, 0);
});
