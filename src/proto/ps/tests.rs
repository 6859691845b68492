//! Behaviour tests of the PS demuxer over `testdata/*.ps` and vendor variants derived from them
//! by [`super::quirks`]. Each named quirk of `mod.rs` has a test here whose bytes show it.

use bytes::Bytes;
use proptest::prelude::*;

use super::quirks::{self, CrcStyle, PsmEntrySpec, Unit};
use super::{DemuxPolicy, PsDemuxer, PsStats};
use crate::proto::codec::{nal, Codec, Frame};

const SAMPLES: [&str; 4] = ["h264_aac", "h264_g711a", "h265_aac", "h264_only"];

fn sample(name: &str) -> Vec<u8> {
    let p = format!("{}/testdata/{name}.ps", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(p).expect("sample present")
}

fn expected(name: &str) -> serde_json::Value {
    let p = format!("{}/testdata/{name}.ps.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_slice(&std::fs::read(p).expect("json present")).expect("valid json")
}

fn run(chunks: impl IntoIterator<Item = Bytes>, policy: DemuxPolicy) -> (Vec<Frame>, PsStats) {
    let mut d = PsDemuxer::new(policy);
    let mut frames = Vec::new();
    for c in chunks {
        d.push(c);
        while let Some(f) = d.poll_frame() {
            frames.push(f);
        }
        d.check_invariants();
    }
    d.flush();
    while let Some(f) = d.poll_frame() {
        frames.push(f);
    }
    d.check_invariants();
    (frames, d.stats().clone())
}

fn one_shot(data: &[u8]) -> (Vec<Frame>, PsStats) {
    run([Bytes::copy_from_slice(data)], DemuxPolicy::default())
}

fn chunked(data: &[u8], size: usize) -> (Vec<Frame>, PsStats) {
    let all = Bytes::copy_from_slice(data);
    let chunks: Vec<Bytes> =
        (0..data.len()).step_by(size).map(|i| all.slice(i..(i + size).min(data.len()))).collect();
    run(chunks, DemuxPolicy::default())
}

fn video(frames: &[Frame]) -> Vec<&Frame> {
    frames.iter().filter(|f| f.codec.is_video()).collect()
}

fn audio(frames: &[Frame]) -> Vec<&Frame> {
    frames.iter().filter(|f| !f.codec.is_video()).collect()
}

/// Frames in per-track order (a variant may interleave tracks differently).
fn tracks(frames: &[Frame]) -> (Vec<Frame>, Vec<Frame>) {
    (video(frames).into_iter().cloned().collect(), audio(frames).into_iter().cloned().collect())
}

fn variant(name: &str, f: impl FnOnce(Vec<Unit>) -> Vec<Unit>) -> Vec<u8> {
    quirks::write(&f(quirks::parse(&sample(name)).expect("clean sample")))
}

fn count(stats: &PsStats, quirk: &str) -> u64 {
    stats.quirk_counts.get(quirk).copied().unwrap_or(0)
}

/// Bytes of the first `n` packs (everything before pack `n`).
fn prefix_packs(data: &[u8], n: usize) -> Vec<u8> {
    let units = quirks::parse(data).expect("clean sample");
    let end = quirks::nth_pack(&units, n).unwrap_or(units.len());
    quirks::write(&units[..end])
}

#[test]
fn samples_reproduce_expected_counts_codecs_and_keyframes() {
    for name in SAMPLES {
        let data = sample(name);
        let exp = expected(name);
        let mut d = PsDemuxer::new(DemuxPolicy::default());
        d.push(Bytes::from(data));
        let mut frames = Vec::new();
        while let Some(f) = d.poll_frame() {
            frames.push(f);
        }
        d.flush();
        while let Some(f) = d.poll_frame() {
            frames.push(f);
        }
        let s = d.stats().clone();
        let v = video(&frames);
        let a = audio(&frames);
        let lay = &exp["layout"];
        assert_eq!(v.len() as u64, exp["video"]["frames"].as_u64().unwrap(), "{name} video frames");
        assert_eq!(
            v.iter().filter(|f| f.keyframe).count() as u64,
            exp["video"]["keyframes"].as_u64().unwrap(),
            "{name} keyframes"
        );
        let exp_audio = exp["audio"]["frames"].as_u64().unwrap_or(0);
        assert_eq!(a.len() as u64, exp_audio, "{name} audio frames");
        assert_eq!(s.packs, lay["packs"].as_u64().unwrap(), "{name} packs");
        assert_eq!(s.psms, lay["psm"].as_u64().unwrap(), "{name} psms");
        assert_eq!(s.system_headers, lay["system_headers"].as_u64().unwrap(), "{name}");
        assert_eq!(s.video_pes, lay["video_pes"].as_u64().unwrap(), "{name} video pes");
        assert_eq!(s.audio_pes, lay["audio_pes"].as_u64().unwrap(), "{name} audio pes");
        assert_eq!(s.private_pes, lay["private_pes"].as_u64().unwrap(), "{name} private pes");
        assert_eq!((s.frames_video, s.frames_audio), (v.len() as u64, a.len() as u64));
        assert_eq!((s.resyncs, s.bytes_skipped), (0, 0), "{name} is clean");
        assert!(s.quirk_counts.is_empty(), "{name} has no quirks: {:?}", s.quirk_counts);

        let vcodec = if exp["video"]["codec"] == "h265" { Codec::H265 } else { Codec::H264 };
        assert_eq!(d.video_codec(), Some(vcodec));
        assert!(v.iter().all(|f| f.codec == vcodec));
        assert!(v[0].keyframe, "{name} starts with a keyframe");
        for f in &v {
            let k = match vcodec {
                Codec::H265 => nal::h265_is_keyframe(&f.data),
                _ => nal::h264_is_keyframe(&f.data),
            };
            assert_eq!(f.keyframe, k, "early-exit keyframe test agrees with the full scan");
            assert!(!f.discontinuity);
        }
        assert!(v.windows(2).all(|w| w[1].dts > w[0].dts), "{name} DTS increasing");
        assert!(v.windows(2).all(|w| w[1].dts - w[0].dts == 3600), "{name} 25 fps");
        assert_eq!(v[0].pts, 90_000, "timeline keeps the source origin");
        let sps = d.parameter_sets().sps.clone().expect("SPS captured");
        assert!(v[0].data.windows(sps.len()).any(|w| w == &sps[..]));
        match exp["audio"]["codec"].as_str() {
            Some("aac") => {
                assert_eq!(d.audio_codec(), Some(Codec::Aac));
                assert!(a.iter().all(|f| f.data[0] == 0xFF && f.data[1] & 0xF6 == 0xF0));
                assert!(a.windows(2).all(|w| w[1].pts - w[0].pts == 5760), "1024 samples at 16 kHz");
            }
            Some("g711a") => {
                assert_eq!(d.audio_codec(), Some(Codec::G711A));
                assert!(a.iter().all(|f| f.data.len() == 160 && f.codec == Codec::G711A));
                assert!(a.windows(2).all(|w| w[1].pts - w[0].pts == 1800), "160 samples at 8 kHz");
            }
            _ => assert!(a.is_empty() && d.audio_codec().is_none()),
        }
    }
}

#[test]
fn every_split_point_of_the_first_packs_gives_the_one_shot_result() {
    for name in ["h264_aac", "h265_aac", "h264_g711a"] {
        // Pack 0 is the keyframe with system header and PSM; pack 1 a P-frame with audio.
        let data = prefix_packs(&sample(name), 2);
        let want = one_shot(&data);
        assert_eq!(video(&want.0).len(), 2);
        let all = Bytes::from(data.clone());
        for split in 0..=data.len() {
            let got = run([all.slice(..split), all.slice(split..)], DemuxPolicy::default());
            assert!(got == want, "{name}: split at {split} differs");
        }
    }
}

#[test]
fn chunked_feeds_of_whole_files_give_the_one_shot_result() {
    for name in SAMPLES {
        let data = sample(name);
        let want = one_shot(&data);
        for size in [61, 1400, 65_536] {
            assert!(chunked(&data, size) == want, "{name}: chunks of {size} differ");
        }
    }
    let data = prefix_packs(&sample("h264_aac"), 12);
    for size in [1, 3, 188] {
        assert!(chunked(&data, size) == one_shot(&data), "chunks of {size} differ");
    }
}

#[test]
fn one_frame_over_several_pes_with_pts_only_on_the_first_is_one_frame() {
    let base = one_shot(&sample("h264_aac"));
    let data = variant("h264_aac", |u| quirks::split_video_pes(u, 1000));
    let got = one_shot(&data);
    assert_eq!(tracks(&got.0), tracks(&base.0));
    assert!(got.1.video_pes > 1000);
    assert!(count(&got.1, "pts_only_on_first_pes") > 1000);
    // Every split of a keyframe pack spread over PES still gives the same frames.
    let small = prefix_packs(&data, 2);
    let want = one_shot(&small);
    let all = Bytes::from(small.clone());
    for split in (0..small.len()).step_by(7) {
        assert!(run([all.slice(..split), all.slice(split..)], DemuxPolicy::default()) == want);
    }
}

#[test]
fn hikvision_one_nal_per_pes_is_reassembled_with_pts_on_first_or_on_all() {
    for name in ["h264_aac", "h265_aac"] {
        let base = one_shot(&sample(name));
        for pts_on_all in [false, true] {
            let data = variant(name, |u| quirks::one_nal_per_pes(u, pts_on_all));
            let got = one_shot(&data);
            assert_eq!(tracks(&got.0), tracks(&base.0), "{name} pts_on_all={pts_on_all}");
            assert!(got.1.video_pes > base.1.video_pes);
            let q = if pts_on_all { "pts_repeated_in_frame" } else { "pts_only_on_first_pes" };
            assert!(count(&got.1, q) > 0);
        }
    }
}

#[test]
fn video_pes_with_length_zero_runs_to_the_next_plausible_header() {
    for name in SAMPLES {
        let base = one_shot(&sample(name));
        let data = variant(name, quirks::video_length_zero);
        let got = one_shot(&data);
        assert_eq!(tracks(&got.0), tracks(&base.0), "{name}");
        assert_eq!(count(&got.1, "pes_length_zero"), 250);
        assert!(chunked(&data, 1400) == got, "{name}: unbounded PES across chunks");
    }
    // Every split point, including splits inside the `00 00 01 xx` that ends the payload.
    let units = quirks::parse(&prefix_packs(&sample("h264_aac"), 3)).unwrap();
    let data = quirks::write(&quirks::video_length_zero(units));
    let want = one_shot(&data);
    assert_eq!(video(&want.0).len(), 3);
    let all = Bytes::from(data.clone());
    for split in 0..=data.len() {
        assert!(
            run([all.slice(..split), all.slice(split..)], DemuxPolicy::default()) == want,
            "split {split}"
        );
    }
}

#[test]
fn private_stream_0xbd_after_frames_and_unknown_ids_are_skipped_by_length() {
    let base = one_shot(&sample("h264_aac"));
    // Bodies full of start-code look-alikes: only the length can skip them.
    let data = variant("h264_aac", |u| {
        let u = quirks::after_each_video(u, quirks::opaque_pes(0xBD, 300));
        quirks::after_each_video(u, quirks::opaque_pes(0xF0, 33))
    });
    let got = one_shot(&data);
    assert_eq!(tracks(&got.0), tracks(&base.0));
    assert_eq!(got.1.private_pes, 250);
    assert_eq!(got.1.skipped_pes, 250);
    assert_eq!(count(&got.1, "unknown_stream_skipped"), 250);
    assert_eq!(got.1.resyncs, 0);
    assert!(chunked(&data, 100) == got);
}

#[test]
fn missing_psm_takes_codecs_from_nal_units_and_adts_sync() {
    for name in SAMPLES {
        let base = one_shot(&sample(name));
        let got = one_shot(&variant(name, quirks::without_psm));
        assert_eq!(tracks(&got.0), tracks(&base.0), "{name}");
        assert_eq!(count(&got.1, "psm_missing_codec_from_nal"), 1);
        let exp = expected(name);
        match exp["audio"]["codec"].as_str() {
            Some("aac") => assert_eq!(count(&got.1, "psm_missing_codec_from_adts"), 1),
            Some("g711a") => assert_eq!(count(&got.1, "audio_codec_guessed_g711"), 1),
            _ => {}
        }
    }
    // Without a PSM, G.711 law comes from the policy.
    let data = variant("h264_g711a", quirks::without_psm);
    let (frames, _) = run([Bytes::from(data)], DemuxPolicy { g711_0x90_is_ulaw: true });
    assert!(audio(&frames).iter().all(|f| f.codec == Codec::G711U));
}

#[test]
fn psm_with_bad_zero_or_little_endian_crc_is_used_not_rejected() {
    let base = one_shot(&sample("h264_aac"));
    for (style, q) in [
        (CrcStyle::Zero, "psm_crc_zero"),
        (CrcStyle::LittleEndian, "psm_crc_little_endian"),
        (CrcStyle::Value(0xdeadbeef), "psm_crc_bad"),
    ] {
        // With a wrong codec type in the map the CRC would be the only thing protecting it;
        // the map is still read: its AAC entry is what names the audio here.
        let got = one_shot(&variant("h264_aac", |u| quirks::map_psm(u, |p| p.crc = style)));
        assert_eq!(got.0, base.0);
        assert_eq!(count(&got.1, q), 5);
        assert_eq!(got.1.psms, 5);
        assert_eq!(count(&got.1, "psm_missing_codec_from_adts"), 0);
    }
}

#[test]
fn psm_with_hk_descriptors_and_an_empty_entry_is_read_past() {
    let base = one_shot(&sample("h265_aac"));
    let data = variant("h265_aac", |u| {
        quirks::map_psm(u, |p| {
            quirks::hk_descriptors(p);
            p.entries.insert(1, PsmEntrySpec { stream_type: 0, stream_id: 0, descriptors: vec![] });
            p.crc = CrcStyle::LittleEndian;
        })
    });
    let got = one_shot(&data);
    assert_eq!(got.0, base.0);
    assert_eq!(count(&got.1, "psm_vendor_descriptor"), 5);
    assert_eq!(count(&got.1, "psm_empty_entry"), 5);
    assert_eq!(count(&got.1, "psm_crc_little_endian"), 5);
}

#[test]
fn psm_naming_the_wrong_video_codec_loses_to_the_nal_units() {
    for (name, wrong, right) in [("h264_aac", 0x24, Codec::H264), ("h265_aac", 0x1b, Codec::H265)] {
        let base = one_shot(&sample(name));
        let data = variant(name, |u| {
            quirks::map_psm(u, |p| {
                p.entries.iter_mut().filter(|e| e.stream_id == 0xE0).for_each(|e| e.stream_type = wrong)
            })
        });
        let got = one_shot(&data);
        assert_eq!(got.0, base.0, "{name}");
        assert!(video(&got.0).iter().all(|f| f.codec == right));
        assert_eq!(count(&got.1, "psm_wrong_video_codec"), 5, "once per PSM");
        assert_eq!(count(&got.1, "codec_change"), 0);
    }
    // MPEG-4 Visual (0x10) named for H.264 data: the NAL units decide too.
    let data = variant("h264_only", |u| quirks::map_psm(u, |p| p.entries[0].stream_type = 0x10));
    let got = one_shot(&data);
    assert_eq!(video(&got.0).len(), 250);
    assert!(count(&got.1, "psm_unsupported_stream_type") > 0);
}

#[test]
fn pack_stuffing_that_is_not_ff_and_looks_like_start_codes_is_skipped_exactly() {
    let base = one_shot(&sample("h264_g711a"));
    let stuffing = [0x00, 0x00, 0x01, 0xBA, 0x00, 0x00, 0x01];
    let data = variant("h264_g711a", |u| quirks::pack_stuffing(u, &stuffing));
    let got = one_shot(&data);
    assert_eq!(got.0, base.0);
    assert_eq!(count(&got.1, "pack_stuffing_not_ff"), 250);
    assert_eq!(got.1.packs, 250);
    assert_eq!(got.1.resyncs, 0);
    assert!(chunked(&data, 5) == got);
}

#[test]
fn garbage_between_packs_resyncs_at_the_next_pack_and_loses_no_pack() {
    let base = one_shot(&sample("h264_aac"));
    let garbage = |k: usize| -> Option<Vec<u8>> {
        (k % 10 == 3).then(|| {
            let mut g: Vec<u8> = (0..(k * 37 % 200 + 1)).map(|i| (i * 151 + k) as u8).collect();
            // Look-alikes: a pack start code with bad marker bits, a PES start code, a cut one.
            g.extend_from_slice(&[0, 0, 1, 0xBA, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            g.extend_from_slice(&[0, 0, 1, 0xE0, 0x10, 0x00, 0x80, 0x80, 0x05, 0x21, 0, 0, 1]);
            g
        })
    };
    let data = variant("h264_aac", |u| quirks::garbage_before_packs(u, garbage));
    let got = one_shot(&data);
    assert_eq!(got.0, base.0, "no frame lost");
    assert_eq!(got.1.packs, 250);
    assert_eq!(got.1.resyncs, 25);
    assert_eq!(count(&got.1, "garbage_resync"), 25);
    assert!(got.1.bytes_skipped > 25 * 27);
    assert!(chunked(&data, 1400) == got, "chunks of 1400");
    let small = quirks::parse(&prefix_packs(&sample("h264_aac"), 40)).unwrap();
    let small = quirks::write(&quirks::garbage_before_packs(small, garbage));
    for size in [1, 13] {
        assert!(chunked(&small, size) == one_shot(&small), "chunks of {size}");
    }
    // Garbage before the first pack (joining mid-stream) is skipped the same way.
    let mut late = vec![0x47, 0x11, 0, 0, 1];
    late.extend_from_slice(&sample("h264_only"));
    let got = one_shot(&late);
    assert_eq!(video(&got.0).len(), 250);
    assert_eq!((got.1.resyncs, got.1.bytes_skipped), (1, 5));
}

#[test]
fn pts_and_scr_wrap_of_33_bits_mid_stream_stays_monotonic() {
    let base = one_shot(&sample("h264_aac"));
    // Shift so the wrap falls 5 s into the clip.
    let shift = (1u64 << 33) - 90_000 * 6;
    let data = variant("h264_aac", |u| quirks::map_timestamps(u, 0, |t| t + shift));
    let got = one_shot(&data);
    let (bv, ba) = tracks(&base.0);
    let (gv, ga) = tracks(&got.0);
    assert_eq!(gv.len(), bv.len());
    for (g, b) in gv.iter().zip(&bv).chain(ga.iter().zip(&ba)) {
        assert_eq!(g.pts - b.pts, shift as i64);
        assert_eq!(g.data, b.data);
        assert!(!g.discontinuity);
    }
    assert!(gv.iter().any(|f| f.pts > 1 << 33), "values go past 2^33");
    assert_eq!(count(&got.1, "pts_wrap"), 1);
    assert_eq!(count(&got.1, "timestamp_jump"), 0);
}

#[test]
fn timestamp_jump_of_a_rebooted_camera_is_rebased_and_flagged() {
    let units = quirks::parse(&sample("h264_aac")).unwrap();
    // A keyframe pack in the middle: 100th frame (frames 0, 50, 100, ... are keyframes).
    let cut = quirks::nth_pack(&units, 100).unwrap();
    for (label, f) in [
        ("backwards to zero", Box::new(|t: u64| t - 440_000) as Box<dyn Fn(u64) -> u64>),
        ("an hour forward", Box::new(|t: u64| t + 3600 * 90_000)),
    ] {
        let data = quirks::write(&quirks::map_timestamps(units.clone(), cut, f));
        let got = one_shot(&data);
        let (v, a) = tracks(&got.0);
        assert_eq!(v.len(), 250, "{label}");
        assert!(v.windows(2).all(|w| w[1].dts > w[0].dts), "{label}: video DTS increasing");
        assert!(a.windows(2).all(|w| w[1].pts > w[0].pts), "{label}: audio PTS increasing");
        assert!(!v[99].discontinuity && v[100].discontinuity, "{label}");
        assert_eq!(v[100].dts - v[99].dts, 3600, "{label}: one frame duration after the last");
        assert!(v[101..].iter().all(|f| !f.discontinuity));
        assert_eq!(a.iter().filter(|f| f.discontinuity).count(), 1, "{label}");
        assert_eq!(count(&got.1, "timestamp_jump"), 1, "{label}");
    }
}

#[test]
fn codec_and_resolution_change_mid_stream_set_discontinuity() {
    // H.264 then H.265, timestamps continuing: a codec change.
    let a = quirks::parse(&sample("h264_only")).unwrap();
    let b = quirks::map_timestamps(quirks::parse(&sample("h265_aac")).unwrap(), 0, |t| t + 900_000);
    let data = quirks::write(&[a, b].concat());
    let got = one_shot(&data);
    let v = video(&got.0);
    assert_eq!(v.len(), 500);
    assert!(v[..250].iter().all(|f| f.codec == Codec::H264 && !f.discontinuity));
    assert!(v[250].codec == Codec::H265 && v[250].discontinuity && v[250].keyframe);
    assert!(v[251..].iter().all(|f| f.codec == Codec::H265 && !f.discontinuity));
    assert!(v.windows(2).all(|w| w[1].dts > w[0].dts));
    assert_eq!(count(&got.1, "codec_change"), 1);

    // Same codec, new SPS (other resolution): flagged at the keyframe that brings it.
    let mut units = quirks::parse(&sample("h264_only")).unwrap();
    let mid = quirks::nth_pack(&units, 150).unwrap();
    for u in units.iter_mut().skip(mid) {
        if let Unit::Pes(p) = u {
            if p.payload[4] & 0x1f == 7 {
                let mut pl = p.payload.to_vec();
                pl[8] ^= 0x10; // a bit inside the SPS (pic_width/height side)
                p.payload = Bytes::from(pl);
            }
        }
    }
    let got = one_shot(&quirks::write(&units));
    let v = video(&got.0);
    let flagged: Vec<usize> = (0..v.len()).filter(|&i| v[i].discontinuity).collect();
    assert_eq!(flagged, vec![150]);
    assert_eq!(count(&got.1, "sps_change"), 1);
}

#[test]
fn g711_stream_types_0x90_and_0x91_follow_policy() {
    let data = sample("h264_g711a");
    let (f, _) = run([Bytes::from(data.clone())], DemuxPolicy { g711_0x90_is_ulaw: true });
    assert!(audio(&f).iter().all(|f| f.codec == Codec::G711U));
    let u = variant("h264_g711a", |u| {
        quirks::map_psm(u, |p| {
            p.entries.iter_mut().filter(|e| e.stream_id == 0xC0).for_each(|e| e.stream_type = 0x91)
        })
    });
    let (f, _) = one_shot(&u);
    assert_eq!(audio(&f).len(), 500);
    assert!(audio(&f).iter().all(|f| f.codec == Codec::G711U));
    // An audio type we cannot carry (MPEG-1 audio) is skipped, video unaffected.
    let mp3 = variant("h264_aac", |u| {
        quirks::map_psm(u, |p| {
            p.entries.iter_mut().filter(|e| e.stream_id == 0xC0).for_each(|e| e.stream_type = 0x03)
        })
    });
    let (f, s) = one_shot(&mp3);
    assert_eq!((video(&f).len(), audio(&f).len()), (250, 0));
    assert_eq!(s.skipped_pes, 158, "every audio PES (the PSM comes first)");
}

#[test]
fn hikvision_audio_without_pack_header_is_demuxed() {
    let base = one_shot(&sample("h264_aac"));
    // Only keyframes keep a pack header; audio PES stand between video PES on their own.
    let got = one_shot(&variant("h264_aac", quirks::packs_only_at_keyframes));
    assert_eq!(tracks(&got.0), tracks(&base.0));
    assert_eq!(got.1.packs, 5);
    // A stream that starts at an audio PES (no pack header before it at all).
    let units = quirks::parse(&sample("h264_aac")).unwrap();
    let first_audio = units.iter().position(Unit::is_audio).unwrap();
    let got = one_shot(&quirks::write(&units[first_audio..]));
    assert_eq!(audio(&got.0).len(), 158);
    assert_eq!(got.1.resyncs, 0);
}

#[test]
fn several_adts_frames_in_one_pes_become_one_frame_each() {
    let base = one_shot(&sample("h264_aac"));
    // Merge each pair of audio PES into one, keeping the first PTS.
    let units = quirks::parse(&sample("h264_aac")).unwrap();
    let mut out: Vec<Unit> = Vec::new();
    let mut pending: Option<quirks::PesSpec> = None;
    for u in units {
        match u {
            Unit::Pes(p) if p.stream_id == 0xC0 => match pending.take() {
                None => pending = Some(p),
                Some(mut q) => {
                    q.payload = Bytes::from([&q.payload[..], &p.payload[..]].concat());
                    out.push(Unit::Pes(q));
                }
            },
            u => out.push(u),
        }
    }
    out.extend(pending.map(Unit::Pes));
    let got = one_shot(&quirks::write(&out));
    assert_eq!(got.1.audio_pes, 79);
    assert_eq!(tracks(&got.0).1, tracks(&base.0).1, "same frames, PTS advanced by 1024 samples");
}

#[test]
fn notify_loss_drops_the_partial_frame_and_resyncs_at_the_next_pack() {
    let data = sample("h264_aac");
    let base = one_shot(&data);
    let units = quirks::parse(&data).unwrap();
    // Lose 500 bytes inside the video PES of pack 10.
    let p10 = quirks::write(&units[..quirks::nth_pack(&units, 10).unwrap()]).len();
    let hole = p10 + 3000;
    let mut d = PsDemuxer::default();
    let mut frames = Vec::new();
    d.push(Bytes::copy_from_slice(&data[..hole]));
    while let Some(f) = d.poll_frame() {
        frames.push(f);
    }
    d.notify_loss();
    d.push(Bytes::copy_from_slice(&data[hole + 500..]));
    d.flush();
    while let Some(f) = d.poll_frame() {
        frames.push(f);
    }
    let (v, _) = tracks(&frames);
    let (bv, _) = tracks(&base.0);
    assert_eq!(v.len(), 249, "only the frame hit by the loss is missing");
    assert_eq!(v[..10], bv[..10]);
    assert_eq!(v[10..], bv[11..]);
    let s = d.stats();
    assert_eq!(s.resyncs, 1);
    assert_eq!(count(s, "loss_dropped_frame"), 1);
}

#[test]
fn a_frame_over_the_size_cap_is_dropped_and_the_stream_goes_on() {
    let mut units = quirks::parse(&prefix_packs(&sample("h264_only"), 3)).unwrap();
    let huge = quirks::PesSpec {
        stream_id: 0xE0,
        pts: Some(1),
        dts: None,
        payload: Bytes::from(vec![0x11; super::MAX_FRAME_BYTES + 100]),
        unbounded: true,
    };
    let at = quirks::nth_pack(&units, 1).unwrap();
    units.insert(at, Unit::Pes(huge));
    let (frames, s) = one_shot(&quirks::write(&units));
    assert_eq!(video(&frames).len(), 3);
    assert_eq!(count(&s, "frame_too_large"), 1);
}

#[test]
fn hostile_inputs_do_not_panic() {
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![0, 0, 1],
        vec![0, 0, 1, 0xBA],
        vec![0, 0, 1, 0xE0, 0, 0, 0x80, 0x80, 0xff],
        vec![0, 0, 1, 0xBC, 0, 6, 0, 0, 0xff, 0xff, 0xff, 0xff],
        vec![0, 0, 1, 0xBC, 0xff, 0xff, 0, 1, 0xff, 0xff],
        vec![0, 0, 1, 0xC0, 0, 3, 0x80, 0x00, 0x00, 0, 0, 1, 0xC0, 0, 0, 0x80, 0, 0, 0xff, 0xf1],
        vec![0xff; 1000],
        vec![0; 1000],
    ];
    for c in cases {
        let got = one_shot(&c);
        assert!(got.0.iter().all(|f| !f.data.is_empty()));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn random_garbage_with_random_splits_matches_one_shot(
        garbage in proptest::collection::vec(any::<u8>(), 0..3000),
        at in any::<prop::sample::Index>(),
        splits in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        // Garbage inserted into a real prefix, then split at random points.
        let mut data = prefix_packs(&sample("h264_aac"), 3);
        let pos = at.index(data.len());
        data.splice(pos..pos, garbage);
        let want = one_shot(&data);
        let all = Bytes::from(data.clone());
        let mut cuts: Vec<usize> = splits.iter().map(|s| s.index(data.len() + 1)).collect();
        cuts.push(0);
        cuts.push(data.len());
        cuts.sort_unstable();
        let chunks: Vec<Bytes> = cuts.windows(2).map(|w| all.slice(w[0]..w[1])).collect();
        let got = run(chunks, DemuxPolicy::default());
        prop_assert!(got == want);
    }
}

// ---- Transport frame marks (RTP marker bit): `PsDemuxer::end_of_unit` ----

/// The units a GB device sends as one RTP "frame" each (the last packet marked): a pack with what
/// follows it, and a run of audio PES after video on its own.
fn rtp_units(units: &[Unit]) -> Vec<Vec<Unit>> {
    let mut out: Vec<Vec<Unit>> = Vec::new();
    for u in units {
        let new = match u {
            Unit::Pack { .. } => true,
            _ if u.is_audio() => out.last().is_some_and(|g| g.iter().any(Unit::is_video)),
            _ => false,
        };
        if new || out.is_empty() {
            out.push(Vec::new());
        }
        out.last_mut().expect("a group").push(u.clone());
    }
    out
}

/// Feed each unit in `chunk`-byte pieces, marking its last piece; after each unit, check that
/// every video frame whose PES has arrived is out already. Returns (frames, stats).
fn run_marked(groups: &[Vec<Unit>], chunk: usize, check_prompt: bool) -> (Vec<Frame>, PsStats) {
    let mut d = PsDemuxer::new(DemuxPolicy::default());
    let mut frames = Vec::new();
    let mut pts_seen = std::collections::BTreeSet::new();
    for (i, g) in groups.iter().enumerate() {
        let bytes = Bytes::from(quirks::write(g));
        let mut k = 0;
        while k < bytes.len() {
            let e = (k + chunk).min(bytes.len());
            d.push(bytes.slice(k..e));
            if e == bytes.len() {
                d.end_of_unit();
            }
            while let Some(f) = d.poll_frame() {
                frames.push(f);
            }
            d.check_invariants();
            k = e;
        }
        for u in g {
            if let Unit::Pes(p) = u {
                if u.is_video() {
                    pts_seen.extend(p.pts);
                }
            }
        }
        if check_prompt {
            assert_eq!(
                video(&frames).len(),
                pts_seen.len(),
                "unit {i}: every frame whose last packet came is out at its mark"
            );
        }
    }
    d.flush();
    while let Some(f) = d.poll_frame() {
        frames.push(f);
    }
    (frames, d.stats().clone())
}

#[test]
fn rtp_marks_hand_each_frame_on_at_its_last_packet_and_change_no_frame() {
    for name in SAMPLES {
        let base = one_shot(&sample(name));
        let groups = rtp_units(&quirks::parse(&sample(name)).expect("clean sample"));
        let got = run_marked(&groups, 1400, true);
        assert_eq!(tracks(&got.0), tracks(&base.0), "{name}");
        assert_eq!(count(&got.1, "rtp_marker_misplaced"), 0, "{name}");
        // Every byte split of the first units gives the same frames, as promptly.
        for chunk in [1, 2, 3, 5, 188] {
            let head = &groups[..groups.len().min(12)];
            let want = run_marked(head, 1400, true);
            let got = run_marked(head, chunk, true);
            assert_eq!(tracks(&got.0), tracks(&want.0), "{name} chunk {chunk}");
        }
    }
}

#[test]
fn rtp_marks_end_an_unbounded_video_pes_at_once() {
    for name in SAMPLES {
        let base = one_shot(&sample(name));
        let units = quirks::video_length_zero(quirks::parse(&sample(name)).expect("clean sample"));
        let got = run_marked(&rtp_units(&units), 1400, true);
        assert_eq!(tracks(&got.0), tracks(&base.0), "{name}");
        assert_eq!(count(&got.1, "rtp_marker_misplaced"), 0, "{name}");
    }
}

#[test]
fn rtp_marks_on_every_packet_are_distrusted_before_they_cut_a_frame() {
    let data = sample("h264_aac");
    let base = one_shot(&data);
    let all = Bytes::from(data.clone());
    let mut d = PsDemuxer::new(DemuxPolicy::default());
    let mut frames = Vec::new();
    for k in (0..all.len()).step_by(1400) {
        d.push(all.slice(k..(k + 1400).min(all.len())));
        d.end_of_unit();
        while let Some(f) = d.poll_frame() {
            frames.push(f);
        }
    }
    d.flush();
    while let Some(f) = d.poll_frame() {
        frames.push(f);
    }
    assert_eq!(tracks(&frames), tracks(&base.0));
    assert_eq!(count(d.stats(), "rtp_marker_misplaced"), 1);
}

#[test]
fn rtp_marks_after_each_pes_of_a_split_frame_are_distrusted_after_one_cut() {
    // A device that marks the end of every PES, and splits frames into PES with the PTS on the
    // first only: the first mark inside a frame cuts it (visible only at the next PES); then
    // marks are ignored, and the rest of the stream is exactly as without marks.
    let units = quirks::split_video_pes(quirks::parse(&sample("h264_aac")).expect("clean sample"), 4000);
    let base = one_shot(&quirks::write(&units));
    let per_pes: Vec<Vec<Unit>> = units.iter().map(|u| vec![u.clone()]).collect();
    let (frames, stats) = run_marked(&per_pes, 1400, false);
    assert_eq!(count(&stats, "rtp_marker_misplaced"), 1);
    let (v, a) = tracks(&frames);
    let (bv, ba) = tracks(&base.0);
    assert_eq!(a, ba, "audio is untouched");
    assert_eq!(v.len(), bv.len() + 1, "one frame was cut in two");
    assert_eq!(v[v.len() - 100..], bv[bv.len() - 100..], "after the cut, frames are as without marks");
}

#[test]
fn a_mark_on_parameter_sets_alone_waits_for_the_slice() {
    // One NAL per PES with the PTS on each: a mark after the SPS PES must not make a frame of it.
    let units = quirks::one_nal_per_pes(quirks::parse(&sample("h264_aac")).expect("clean sample"), true);
    let base = one_shot(&quirks::write(&units));
    let mut groups: Vec<Vec<Unit>> = Vec::new();
    for u in &units {
        groups.push(vec![u.clone()]);
        if !u.is_video() {
            continue;
        }
        // Mark only after PES holding parameter sets: they must stay with their slice.
        let Unit::Pes(p) = u else { continue };
        let nal_type = p.payload.iter().skip_while(|&&b| b == 0).nth(1).map(|b| b & 0x1f);
        if !matches!(nal_type, Some(nal::H264_SPS | nal::H264_PPS)) {
            let last = groups.pop().expect("just pushed");
            groups.last_mut().expect("a group before").extend(last);
        }
    }
    let (frames, stats) = run_marked(&groups, 1400, false);
    assert_eq!(tracks(&frames), tracks(&base.0));
    assert_eq!(count(&stats, "rtp_marker_misplaced"), 0);
}
