//! Muxer throughput on real encoded data (libx264 / libx265 / FFmpeg AAC, `testdata/ffmpeg_*`):
//! frames → FLV tags, frames → TS packets, frames → HLS segments. Throughput is input bytes/s.
//!
//! Run: `cargo bench --bench mux`. Criterion reports wall-clock throughput; the final
//! `cpu-time` lines report bytes per second of on-CPU time (per core), which stays meaningful on
//! a shared, loaded machine. Numbers are recorded in BENCHMARKS.md.

use criterion::{black_box, criterion_group, Criterion, Throughput};
use gbrelay::proto::codec::{Codec, Frame};
use gbrelay::proto::mux::{FlvMuxer, FlvOptions, HlsOptions, HlsSegmenter, TsMuxer};

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

/// On-CPU nanoseconds of this thread (Linux `/proc/thread-self/schedstat`), so the printed
/// throughput is per core even on a loaded machine where criterion's wall time is diluted.
fn cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Throughput per core in CPU time: frames → FLV and frames → TS.
fn cpu_time_summary() {
    const ITERS: u64 = 2000;
    for (name, frames) in inputs() {
        let bytes: u64 = frames.iter().map(|f| f.data.len() as u64).sum();
        let Some(t0) = cpu_ns() else {
            return;
        };
        let mut tags = Vec::new();
        for _ in 0..ITERS {
            let mut m = FlvMuxer::new(FlvOptions::default());
            tags.clear();
            for f in &frames {
                m.push(f, &mut tags);
            }
            black_box(tags.len());
        }
        let t1 = cpu_ns().unwrap_or(t0);
        let mut out = Vec::new();
        for _ in 0..ITERS {
            let mut m = TsMuxer::new();
            out.clear();
            m.write_psi(&mut out);
            for f in &frames {
                m.push(f, &mut out);
            }
            black_box(out.len());
        }
        let t2 = cpu_ns().unwrap_or(t1);
        let gbs = |ns: u64| (bytes * ITERS) as f64 / ns.max(1) as f64;
        println!(
            "cpu-time {name}: frames->FLV {:.2} GB/s, frames->TS {:.2} GB/s per core ({} frames, {bytes} B per pass)",
            gbs(t1 - t0),
            gbs(t2 - t1),
            frames.len()
        );
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    cpu_time_summary();
}
