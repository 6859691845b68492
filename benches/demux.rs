//! Criterion bench of the PS → frames stage over every `testdata/*.ps` sample: one push of the
//! whole file, 1400-byte pushes (RTP payload sized, so frames are copied together once), and the
//! PES-length-0 variant (the start-code scan of the payload). Throughput is in PS bytes.
//!
//! Run: `CARGO_TARGET_DIR=/work/tgt-ps cargo bench --bench demux`

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use gbrelay::proto::ps::{quirks, DemuxPolicy, PsDemuxer};

fn demux(chunks: &[Bytes]) -> usize {
    let mut d = PsDemuxer::new(DemuxPolicy::default());
    let mut n = 0;
    for c in chunks {
        d.push(c.clone());
        while let Some(f) = d.poll_frame() {
            n += f.data.len();
        }
    }
    d.flush();
    while let Some(f) = d.poll_frame() {
        n += f.data.len();
    }
    n
}

fn split(data: &Bytes, size: usize) -> Vec<Bytes> {
    (0..data.len()).step_by(size).map(|i| data.slice(i..(i + size).min(data.len()))).collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("ps_demux");
    for name in ["h264_aac", "h264_g711a", "h265_aac", "h264_only"] {
        let path = format!("{}/testdata/{name}.ps", env!("CARGO_MANIFEST_DIR"));
        let raw = std::fs::read(&path).expect("sample present");
        let data = Bytes::from(raw.clone());
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function(format!("{name}/one_push"), |b| {
            b.iter_batched(|| vec![data.clone()], |c| demux(&c), BatchSize::SmallInput)
        });
        let chunks = split(&data, 1400);
        g.bench_function(format!("{name}/1400B_pushes"), |b| b.iter(|| demux(&chunks)));
        let units = quirks::parse(&raw).expect("clean sample");
        let unbounded = Bytes::from(quirks::write(&quirks::video_length_zero(units)));
        let chunks = split(&unbounded, 1400);
        g.throughput(Throughput::Bytes(unbounded.len() as u64));
        g.bench_function(format!("{name}/pes_len0_1400B_pushes"), |b| b.iter(|| demux(&chunks)));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
