//! Muxer throughput on real encoded data (libx264 / libx265 / FFmpeg AAC, `testdata/ffmpeg_*`):
//! frames → FLV tags, frames → TS packets, frames → HLS segments. Throughput is input bytes/s.
//!
//! Run: `CARGO_TARGET_DIR=... cargo bench --bench mux`. Numbers are recorded in BENCHMARKS.md.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use gbrelay::proto::codec::{Codec, Frame};
use gbrelay::proto::mux::{FlvMuxer, FlvOptions, HlsOptions, HlsSegmenter, TsMuxer};

#[allow(dead_code)]
#[path = "../tests/mux_support/mod.rs"]
mod mux_support;

fn inputs() -> Vec<(&'static str, Vec<Frame>)> {
    use mux_support::*;
    vec![
        (
            "h264_aac_320x240",
            interleave(
                video_frames("testdata/ffmpeg_h264_320x240.h264", Codec::H264, 0),
                aac_frames("testdata/ffmpeg_aac_48k_mono.aac", 0),
            ),
        ),
        (
            "h265_aac_320x240",
            interleave(
                video_frames("testdata/ffmpeg_h265_320x240.hevc", Codec::H265, 0),
                aac_frames("testdata/ffmpeg_aac_48k_mono.aac", 0),
            ),
        ),
    ]
}

fn bench(c: &mut Criterion) {
    for (name, frames) in inputs() {
        let bytes: u64 = frames.iter().map(|f| f.data.len() as u64).sum();
        let mut g = c.benchmark_group(format!("mux/{name}"));
        g.throughput(Throughput::Bytes(bytes));
        g.bench_function("frames_to_flv", |b| {
            let mut tags = Vec::with_capacity(frames.len() * 2);
            b.iter(|| {
                let mut m = FlvMuxer::new(FlvOptions::default());
                tags.clear();
                for f in &frames {
                    m.push(f, &mut tags);
                }
                black_box(tags.len())
            })
        });
        g.bench_function("frames_to_ts", |b| {
            let mut out = Vec::with_capacity(bytes as usize * 2);
            b.iter(|| {
                let mut m = TsMuxer::new();
                out.clear();
                m.write_psi(&mut out);
                for f in &frames {
                    m.push(f, &mut out);
                }
                black_box(out.len())
            })
        });
        g.bench_function("frames_to_hls", |b| {
            b.iter(|| {
                let mut h =
                    HlsSegmenter::new(HlsOptions { target_duration_90k: 90_000, window: 6, vod: false });
                for f in &frames {
                    h.push(f);
                }
                h.finish();
                black_box(h.latest_seq())
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
