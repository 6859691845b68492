//! Fan-out cost: one stream's muxed tags handed to N viewer cursors (`hub::Ring`).
//!
//! Each iteration pushes one GOP (1 keyframe of 40 KB, 49 P-frames of 4 KB and 50 audio tags,
//! about 2 s of a 2 Mbit/s stream) and lets every cursor read after each video tag, as a caught-up
//! viewer does when woken. Reported per GOP; divide by N for the per-viewer cost. Socket writes
//! are not included (see the load harness for those).

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gbrelay::hub::{Ring, StartInfo};
use std::sync::Arc;

fn gop() -> Vec<(Bytes, bool)> {
    let mut v = vec![(Bytes::from(vec![1u8; 40_000]), true)];
    for i in 0..49 {
        v.push((Bytes::from(vec![i as u8; 4_000]), false));
        v.push((Bytes::from(vec![2u8; 400]), false));
    }
    v.push((Bytes::from(vec![2u8; 400]), false));
    v
}

fn bench(c: &mut Criterion) {
    let tags = gop();
    let start =
        Arc::new(StartInfo { header: Bytes::from_static(b"FLV\x01\x05\0\0\0\x09\0\0\0\0"), init: vec![] });
    let mut g = c.benchmark_group("fanout_gop");
    for n in [1usize, 100, 1000] {
        g.throughput(Throughput::Elements((tags.len() * n) as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            let ring = Ring::new(8 << 20);
            ring.push(tags[0].0.clone(), Some(start.clone()));
            let mut cursors: Vec<_> = (0..n).map(|_| ring.cursor()).collect();
            let mut out = Vec::with_capacity(64);
            b.iter(|| {
                for (i, (data, key)) in tags.iter().enumerate() {
                    ring.push(data.clone(), key.then(|| start.clone()));
                    if i % 2 == 0 {
                        for c in cursors.iter_mut() {
                            out.clear();
                            ring.read(c, &mut out);
                        }
                    }
                }
            });
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
