//! The simulator's MPEG-PS file slicer: cuts a program stream (ISO/IEC 13818-1 §2.5) into the units a
//! GB/T 28181 device sends as one RTP "frame" — a pack (pack header, optional system header and PSM,
//! video PES) or a run of audio PES without a pack header, as Hikvision sends audio — and records
//! each unit's pacing clock (the pack SCR) and RTP timestamp (the first PTS), plus where the SCR/PTS/DTS
//! fields are so a looped file can continue its clock. Independent of `crate::proto::ps` on purpose.
//! No IO here beyond the caller handing in the bytes.

use bytes::{Bytes, BytesMut};

/// One sendable unit: `data[start..end]` of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsUnit {
    pub start: usize,
    pub end: usize,
    /// 90 kHz time since the first unit by which this unit is due (from the pack SCRs, wrap-corrected).
    pub pace: u64,
    /// RTP timestamp source (90 kHz, 33-bit): the unit's first PTS, else its pack SCR.
    pub ts: u64,
    /// Absolute file offsets of timestamp fields inside this unit.
    pub patches: Vec<Patch>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Patch {
    /// MPEG-2 pack header SCR (ISO/IEC 13818-1 §2.5.3.3), at the offset of the pack's byte 4.
    Scr(usize),
    /// A 5-byte PTS or DTS field (ISO/IEC 13818-1 §2.4.3.7).
    Pts(usize),
}

/// A PS file cut into units; shared (read-only) by every stream that sends it.
#[derive(Debug)]
pub struct PsFile {
    pub data: Bytes,
    pub units: Vec<PsUnit>,
    /// 90 kHz length of one pass of the file (last pace + one average unit step): the clock offset
    /// added per loop.
    pub loop_duration: u64,
}

const WRAP33: u64 = 1 << 33;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pack,
    Audio,
    Video,
}

/// Finds the next `00 00 01 xx` with `xx >= 0xB9` (a system-level start code; NAL start codes inside
/// H.264/H.265 PES carry a NAL header byte < 0x80 and are skipped) at or after `from`.
fn next_start(d: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i + 3 < d.len() {
        if d[i + 2] > 1 {
            i += 3;
            continue;
        }
        if d[i] == 0 && d[i + 1] == 0 && d[i + 2] == 1 && d[i + 3] >= 0xB9 {
            return Some(i);
        }
        i += 1;
    }
    None
}

pub fn read_scr(d: &[u8]) -> u64 {
    ((d[0] as u64 >> 3) & 7) << 30
        | (d[0] as u64 & 3) << 28
        | (d[1] as u64) << 20
        | (d[2] as u64 >> 3) << 15
        | (d[2] as u64 & 3) << 13
        | (d[3] as u64) << 5
        | (d[4] as u64 >> 3)
}

fn write_scr(d: &mut [u8], v: u64) {
    let v = v % WRAP33;
    d[0] = (d[0] & 0xC4) | (((v >> 30) & 7) as u8) << 3 | ((v >> 28) & 3) as u8;
    d[1] = (v >> 20) as u8;
    d[2] = (d[2] & 0x04) | (((v >> 15) & 0x1f) as u8) << 3 | ((v >> 13) & 3) as u8;
    d[3] = (v >> 5) as u8;
    d[4] = (d[4] & 0x07) | ((v & 0x1f) as u8) << 3;
}

pub fn read_pts(d: &[u8]) -> u64 {
    ((d[0] as u64 >> 1) & 7) << 30
        | (d[1] as u64) << 22
        | (d[2] as u64 >> 1) << 15
        | (d[3] as u64) << 7
        | (d[4] as u64 >> 1)
}

fn write_pts(d: &mut [u8], v: u64) {
    let v = v % WRAP33;
    d[0] = (d[0] & 0xF1) | (((v >> 30) & 7) as u8) << 1;
    d[1] = (v >> 22) as u8;
    d[2] = ((((v >> 15) & 0x7f) as u8) << 1) | 1;
    d[3] = (v >> 7) as u8;
    d[4] = (((v & 0x7f) as u8) << 1) | 1;
}

impl PsFile {
    /// Cuts `data` into units. Bytes that are not a recognisable structure (leading garbage, junk after
    /// a declared length) stay in the unit they follow, so the units always tile the whole file.
    pub fn parse(data: Bytes) -> std::io::Result<PsFile> {
        let d = &data[..];
        let Some(first) = next_start(d, 0) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no MPEG-PS start code in media file",
            ));
        };
        // Raw (not yet unit-assigned) unit boundaries and facts.
        struct Raw {
            start: usize,
            kind: Kind,
            scr: Option<u64>,
            pts: Option<u64>,
            patches: Vec<Patch>,
        }
        let mut raws: Vec<Raw> =
            vec![Raw { start: 0, kind: Kind::Pack, scr: None, pts: None, patches: vec![] }];
        let mut pos = first;
        let mut first_structure = true;
        while pos + 4 <= d.len() {
            if !(d[pos] == 0 && d[pos + 1] == 0 && d[pos + 2] == 1 && d[pos + 3] >= 0xB9) {
                match next_start(d, pos) {
                    Some(p) => {
                        pos = p;
                        continue;
                    }
                    None => break,
                }
            }
            let sc = d[pos + 3];
            let cur_kind = raws.last().map(|r| r.kind).unwrap_or(Kind::Pack);
            let begin = |kind: Kind, raws: &mut Vec<Raw>| {
                if first_structure {
                    // Leading garbage joins the first unit.
                    raws[0].kind = kind;
                } else {
                    raws.push(Raw { start: pos, kind, scr: None, pts: None, patches: vec![] });
                }
            };
            let len = match sc {
                0xBA => {
                    begin(Kind::Pack, &mut raws);
                    if pos + 14 <= d.len() && d[pos + 4] & 0xC0 == 0x40 {
                        // MPEG-2 pack header: 14 bytes + pack_stuffing_length (§2.5.3.3).
                        let r = raws.last_mut().expect("a unit was just begun");
                        r.scr = Some(read_scr(&d[pos + 4..pos + 9]));
                        r.patches.push(Patch::Scr(pos + 4));
                        14 + (d[pos + 13] & 7) as usize
                    } else if d.get(pos + 4).is_some_and(|b| b & 0xF0 == 0x20) {
                        12 // MPEG-1 pack header (ISO/IEC 11172-1): not rewritten.
                    } else {
                        4
                    }
                }
                0xB9 => 4,
                0xC0..=0xEF | 0xBD => {
                    let kind = if (0xC0..=0xDF).contains(&sc) {
                        Kind::Audio
                    } else if sc >= 0xE0 {
                        Kind::Video
                    } else {
                        cur_kind
                    };
                    let starts_new = match (cur_kind, kind) {
                        (Kind::Audio, Kind::Audio) => false,
                        (Kind::Audio, _) => true,
                        (_, Kind::Audio) => true,
                        (Kind::Video, Kind::Video) => false,
                        _ => false,
                    };
                    if starts_new || first_structure {
                        begin(kind, &mut raws);
                    }
                    let plen = if pos + 6 <= d.len() {
                        u16::from_be_bytes([d[pos + 4], d[pos + 5]]) as usize
                    } else {
                        0
                    };
                    // PES header (§2.4.3.6): '10' marker, PTS_DTS_flags in byte 7.
                    let declared_end = if plen == 0 { d.len() } else { pos + 6 + plen };
                    if pos + 9 <= d.len() && d[pos + 6] & 0xC0 == 0x80 {
                        let flags = d[pos + 7];
                        let r = raws.last_mut().expect("a unit exists");
                        if flags & 0x80 != 0 && pos + 14 <= d.len().min(declared_end) {
                            if r.pts.is_none() {
                                r.pts = Some(read_pts(&d[pos + 9..pos + 14]));
                            }
                            r.patches.push(Patch::Pts(pos + 9));
                            if flags & 0x40 != 0 && pos + 19 <= d.len().min(declared_end) {
                                r.patches.push(Patch::Pts(pos + 14));
                            }
                        }
                    }
                    if plen == 0 {
                        // Unbounded video PES (§2.4.3.7): runs to the next system start code.
                        next_start(d, pos + 4).unwrap_or(d.len()) - pos
                    } else {
                        6 + plen
                    }
                }
                _ => {
                    // System header, PSM, padding, private 2, ECM/EMM, directory …: 16-bit length.
                    if pos + 6 <= d.len() {
                        6 + u16::from_be_bytes([d[pos + 4], d[pos + 5]]) as usize
                    } else {
                        4
                    }
                }
            };
            first_structure = false;
            pos = (pos + len).min(d.len());
        }
        // Pacing clock: SCR of the latest pack, wrap-corrected into a monotonic count.
        let mut units = Vec::with_capacity(raws.len());
        let mut last_scr: Option<u64> = None;
        let mut last_ts: Option<u64> = None;
        let mut pace: u64 = 0;
        let mut pack_units = 0u64;
        for (i, r) in raws.iter().enumerate() {
            let end = raws.get(i + 1).map(|n| n.start).unwrap_or(d.len());
            let clock = r.scr.or(if last_scr.is_none() { r.pts } else { None });
            if let Some(c) = clock {
                if let Some(prev) = last_scr {
                    let delta = c.wrapping_sub(prev) % WRAP33;
                    // A backwards jump (delta in the upper half) does not move the pacing clock.
                    if delta < WRAP33 / 2 {
                        pace += delta;
                    }
                }
                if r.scr.is_some() || last_scr.is_none() {
                    last_scr = Some(c);
                }
                pack_units += 1;
            }
            let ts = r.pts.or(r.scr).or(last_ts).unwrap_or(0);
            last_ts = Some(ts);
            units.push(PsUnit { start: r.start, end, pace, ts, patches: r.patches.clone() });
        }
        let last_pace = units.last().map(|u| u.pace).unwrap_or(0);
        let step = if pack_units > 1 { last_pace / (pack_units - 1) } else { 3600 };
        let loop_duration = (last_pace + step.max(1)).max(1);
        Ok(PsFile { data, units, loop_duration })
    }

    /// The bytes of unit `i` for pass number `pass` (0 = as in the file; later passes have every SCR,
    /// PTS and DTS advanced by `pass × loop_duration`, so the looped stream's clock keeps going).
    pub fn unit_bytes(&self, i: usize, pass: u64) -> Bytes {
        let u = &self.units[i];
        let raw = self.data.slice(u.start..u.end);
        if pass == 0 || u.patches.is_empty() {
            return raw;
        }
        let add = pass.wrapping_mul(self.loop_duration);
        let mut b = BytesMut::from(&raw[..]);
        for p in &u.patches {
            let (Patch::Scr(off) | Patch::Pts(off)) = *p;
            if off < u.start || off + 5 > u.end {
                continue; // a field cut short by the next structure (hostile input): leave it alone
            }
            match *p {
                Patch::Scr(off) => {
                    let o = off - u.start;
                    let v = read_scr(&b[o..o + 5]);
                    write_scr(&mut b[o..o + 5], v + add);
                }
                Patch::Pts(off) => {
                    let o = off - u.start;
                    let v = read_pts(&b[o..o + 5]);
                    write_pts(&mut b[o..o + 5], v + add);
                }
            }
        }
        b.freeze()
    }

    /// RTP timestamp (90 kHz, mod 2^32) of unit `i` in pass `pass`.
    pub fn rtp_timestamp(&self, i: usize, pass: u64) -> u32 {
        (self.units[i].ts.wrapping_add(pass.wrapping_mul(self.loop_duration)) % WRAP33) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> Bytes {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(name);
        Bytes::from(std::fs::read(p).expect("testdata sample"))
    }

    #[test]
    fn units_tile_the_file_and_one_unit_starts_per_pack() {
        for name in ["h264_aac.ps", "h265_aac.ps", "h264_g711a.ps", "h264_only.ps"] {
            let data = sample(name);
            let f = PsFile::parse(data.clone()).unwrap();
            assert_eq!(f.units[0].start, 0);
            for w in f.units.windows(2) {
                assert_eq!(w[0].end, w[1].start);
                assert!(w[0].pace <= w[1].pace, "{name}: pacing clock must not go backwards");
            }
            assert_eq!(f.units.last().unwrap().end, data.len());
            let packs = f.units.iter().filter(|u| data[u.start + 3] == 0xBA).count();
            let json = std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("testdata")
                    .join(format!("{name}.json")),
            )
            .unwrap();
            let v: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(packs as u64, v["layout"]["packs"].as_u64().unwrap(), "{name}");
            // 10 s of media at 90 kHz.
            assert!((850_000..=950_000).contains(&f.loop_duration), "{name}: {}", f.loop_duration);
        }
    }

    #[test]
    fn audio_pes_runs_become_their_own_units() {
        let data = sample("h264_aac.ps");
        let f = PsFile::parse(data.clone()).unwrap();
        let audio_units: Vec<_> =
            f.units.iter().filter(|u| (0xC0..=0xDF).contains(&data[u.start + 3])).collect();
        assert!(!audio_units.is_empty());
        for u in audio_units {
            // An audio unit holds only audio PES (no pack, no video).
            let mut p = u.start;
            while p < u.end {
                assert!((0xC0..=0xDF).contains(&data[p + 3]));
                p += 6 + u16::from_be_bytes([data[p + 4], data[p + 5]]) as usize;
            }
            assert_eq!(p, u.end);
        }
    }

    #[test]
    fn later_passes_shift_every_timestamp_by_the_loop_duration() {
        let data = sample("h264_only.ps");
        let f = PsFile::parse(data).unwrap();
        for i in [0, 1, 10, f.units.len() - 1] {
            assert_eq!(f.unit_bytes(i, 0), f.data.slice(f.units[i].start..f.units[i].end));
            let b2 = f.unit_bytes(i, 2);
            assert_eq!(b2.len(), f.units[i].end - f.units[i].start);
            for p in &f.units[i].patches {
                match *p {
                    Patch::Scr(o) => {
                        let rel = o - f.units[i].start;
                        assert_eq!(
                            read_scr(&b2[rel..]),
                            (read_scr(&f.data[o..]) + 2 * f.loop_duration) % WRAP33
                        );
                    }
                    Patch::Pts(o) => {
                        let rel = o - f.units[i].start;
                        assert_eq!(
                            read_pts(&b2[rel..]),
                            (read_pts(&f.data[o..]) + 2 * f.loop_duration) % WRAP33
                        );
                    }
                }
            }
            assert_eq!(f.rtp_timestamp(i, 1), ((f.units[i].ts + f.loop_duration) % WRAP33) as u32);
        }
    }

    #[test]
    fn scr_and_pts_codecs_round_trip_with_markers_kept() {
        for v in [0u64, 1, 90_000, WRAP33 - 1, 0x1_2345_6789] {
            let mut s = [0x44u8, 0, 0x04, 0, 0x04];
            write_scr(&mut s, v);
            assert_eq!(read_scr(&s), v);
            assert_eq!(s[0] & 0xC4, 0x44);
            let mut p = [0x21u8, 0, 1, 0, 1];
            write_pts(&mut p, v);
            assert_eq!(read_pts(&p), v);
            assert_eq!(p[0] & 0xF1, 0x21);
        }
    }

    proptest::proptest! {
        #[test]
        fn hostile_bytes_never_panic_and_units_always_tile(
            chunks in proptest::collection::vec(
                (proptest::prop_oneof![
                    proptest::strategy::Just(0xBAu8), proptest::strategy::Just(0xE0), proptest::strategy::Just(0xC0),
                    proptest::strategy::Just(0xBC), proptest::strategy::Just(0xBD), proptest::strategy::Just(0xB9)
                ], proptest::collection::vec(proptest::num::u8::ANY, 0..40)),
                1..12)
        ) {
            let mut data = Vec::new();
            for (sc, tail) in chunks {
                data.extend_from_slice(&[0, 0, 1, sc]);
                data.extend_from_slice(&tail);
            }
            let len = data.len();
            let f = PsFile::parse(Bytes::from(data)).unwrap();
            proptest::prop_assert_eq!(f.units[0].start, 0);
            proptest::prop_assert_eq!(f.units.last().unwrap().end, len);
            for i in 0..f.units.len() {
                let b = f.unit_bytes(i, 3);
                proptest::prop_assert_eq!(b.len(), f.units[i].end - f.units[i].start);
                let _ = f.rtp_timestamp(i, 3);
            }
        }
    }

    #[test]
    fn garbage_without_start_codes_is_an_error_and_junk_never_panics() {
        assert!(PsFile::parse(Bytes::from_static(b"hello world")).is_err());
        let junk = Bytes::from_static(&[0, 0, 1, 0xBA, 0x44, 0, 0, 1, 0xE0, 0xFF, 0xFF, 0, 0, 1, 0xC0]);
        let f = PsFile::parse(junk.clone()).unwrap();
        assert_eq!(f.units.last().unwrap().end, junk.len());
    }
}
