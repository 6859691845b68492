#![no_main]
//! H.264 parsers on arbitrary input: SPS parsing, parameter-set collection, the
//! AVCDecoderConfigurationRecord (parse, and build → parse round trip), and the FLV muxer over
//! the same bytes as an access unit. None may panic.
use bytes::Bytes;
use gbrelay::proto::codec::h264::{parameter_sets, parse_sps, AvcDecoderConfig};
use gbrelay::proto::codec::{Codec, Frame};
use gbrelay::proto::mux::{FlvMuxer, FlvOptions, TsMuxer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_sps(data);
    let _ = AvcDecoderConfig::parse(data);
    let au = Bytes::copy_from_slice(data);
    let (sps, pps) = parameter_sets(&au);
    if let Ok(cfg) = AvcDecoderConfig::from_parameter_sets(&sps, &pps) {
        let round = AvcDecoderConfig::parse(&cfg.to_bytes()).expect("own record parses");
        assert_eq!(round.sps, cfg.sps);
        assert_eq!(round.pps, cfg.pps);
    }
    let frame = Frame { codec: Codec::H264, pts: 0, dts: 0, keyframe: true, discontinuity: false, data: au };
    let mut tags = Vec::new();
    FlvMuxer::new(FlvOptions::default()).push(&frame, &mut tags);
    let mut out = Vec::new();
    TsMuxer::new().push(&frame, &mut out);
    assert_eq!(out.len() % 188, 0);
});
