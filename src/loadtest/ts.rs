//! Just enough MPEG-TS reading (ISO/IEC 13818-1 §2.4.3) for an HLS viewer to tell whether a segment
//! starts with a keyframe and which one.
//!
//! Belongs here: walking 188-byte packets, collecting the payload of the first video PES
//! (stream_id 0xE0–0xEF, found by its PES start code on a payload_unit_start packet, so no PAT/PMT
//! is needed). Does not belong: a general demuxer (the gateway's muxer is checked by ffprobe tests).

/// The first bytes (up to `limit`) of the elementary stream of the segment's first video PES.
pub fn first_video_es(seg: &[u8], limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut pid = None;
    for pkt in seg.chunks_exact(188) {
        // §2.4.3.2: sync byte 0x47.
        if pkt[0] != 0x47 {
            break;
        }
        let pusi = pkt[1] & 0x40 != 0;
        let this = (u16::from(pkt[1] & 0x1F) << 8) | u16::from(pkt[2]);
        let afc = (pkt[3] >> 4) & 3;
        let mut at = 4;
        if afc & 2 != 0 {
            at += 1 + pkt[4] as usize;
        }
        if afc & 1 == 0 || at >= 188 {
            continue;
        }
        let payload = &pkt[at..];
        match pid {
            None => {
                // §2.4.3.6: a PES packet begins 00 00 01 stream_id.
                if pusi
                    && payload.len() > 9
                    && payload[..3] == [0, 0, 1]
                    && (0xE0..=0xEF).contains(&payload[3])
                {
                    pid = Some(this);
                    let h = 9 + payload[8] as usize;
                    if h < payload.len() {
                        out.extend_from_slice(&payload[h..]);
                    }
                }
            }
            Some(p) if p == this => {
                if pusi {
                    break; // next PES: the first one is complete
                }
                out.extend_from_slice(payload);
            }
            Some(_) => {}
        }
        if out.len() >= limit {
            out.truncate(limit);
            break;
        }
    }
    out
}

/// Whether the first coded slice of an Annex B buffer is a keyframe (H.264 IDR or H.265 IRAP);
/// None when no slice is found.
pub fn first_slice_is_key(es: &[u8]) -> Option<bool> {
    use crate::proto::codec::nal;
    let h265 = nal::guess_video_codec(es) == Some(crate::proto::codec::Codec::H265);
    nal::split_annexb(es).find_map(|n| {
        if h265 {
            let t = nal::h265_type(n)?;
            (t <= 21 && !(10..=15).contains(&t)).then_some(nal::h265_is_irap(t))
        } else {
            let t = nal::h264_type(n)?;
            (t == 1 || t == 5).then_some(t == 5)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts_packet(pid: u16, pusi: bool, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x47, ((pusi as u8) << 6) | (pid >> 8) as u8, pid as u8];
        let stuffing = 184 - payload.len();
        if stuffing > 0 {
            p.push(0x30);
            p.push((stuffing - 1) as u8);
            if stuffing > 1 {
                p.push(0x40); // random_access_indicator
                p.extend(std::iter::repeat_n(0xFF, stuffing - 2));
            }
        } else {
            p.push(0x10);
        }
        p.extend_from_slice(payload);
        assert_eq!(p.len(), 188);
        p
    }

    #[test]
    fn first_video_pes_is_collected_across_packets() {
        let mut es = vec![0, 0, 0, 1, 0x09, 0xF0, 0, 0, 0, 1, 0x67, 0x64, 0, 0, 0, 1, 0x65];
        es.extend(std::iter::repeat_n(0xAB, 300));
        let mut pes = vec![0, 0, 1, 0xE0, 0, 0, 0x80, 0x80, 5, 0x21, 0, 1, 0, 1];
        pes.extend_from_slice(&es);
        let mut seg = ts_packet(0, true, &[0; 10]);
        seg.extend(ts_packet(0x101, true, &pes[..184]));
        seg.extend(ts_packet(0x102, true, &[0, 0, 1, 0xC0, 0, 0, 0x80, 0, 0]));
        seg.extend(ts_packet(0x101, false, &pes[184..]));
        seg.extend(ts_packet(0x101, true, &[0, 0, 1, 0xE0, 0, 0, 0x80, 0, 0, 0, 0, 1, 0x41]));
        let got = first_video_es(&seg, 1 << 20);
        assert_eq!(got, es);
        assert_eq!(first_slice_is_key(&got), Some(true));
        assert_eq!(first_slice_is_key(&[0, 0, 1, 0x09, 0, 0, 1, 0x41, 0, 0, 1, 0x65]), Some(false));
        assert_eq!(first_slice_is_key(&[0, 0, 1, 0x67]), None);
        assert_eq!(first_video_es(b"not ts", 10), Vec::<u8>::new());
    }
}
