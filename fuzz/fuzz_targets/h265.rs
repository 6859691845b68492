#![no_main]
//! H.265 parsers on arbitrary input: SPS parsing, parameter-set collection, the
//! HEVCDecoderConfigurationRecord (parse, and build → parse round trip), and the FLV muxer in
//! both HEVC modes over the same bytes as an access unit. None may panic.
use bytes::Bytes;
use gbrelay::proto::codec::h265::{parameter_sets, parse_sps, HevcDecoderConfig};
use gbrelay::proto::codec::{Codec, Frame};
use gbrelay::proto::mux::{FlvMuxer, FlvOptions, HevcMode, TsMuxer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_sps(data);
    let _ = HevcDecoderConfig::parse(data);
    let au = Bytes::copy_from_slice(data);
    let ps = parameter_sets(&au);
    if let Ok(cfg) = HevcDecoderConfig::from_parameter_sets(&ps) {
        let round = HevcDecoderConfig::parse(&cfg.to_bytes()).expect("own record parses");
        assert_eq!(round, cfg);
        let _ = cfg.codec_string();
    }
    let frame = Frame { codec: Codec::H265, pts: 0, dts: 0, keyframe: true, discontinuity: false, data: au };
    for hevc in [HevcMode::Enhanced, HevcMode::CodecId12] {
        let mut tags = Vec::new();
        FlvMuxer::new(FlvOptions { hevc }).push(&frame, &mut tags);
    }
    let mut out = Vec::new();
    TsMuxer::new().push(&frame, &mut out);
    assert_eq!(out.len() % 188, 0);
});
