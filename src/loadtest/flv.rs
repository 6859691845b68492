//! A streaming FLV tag scanner for the harness's viewers (Adobe FLV spec v10.1, Annex E; Enhanced
//! RTMP v1 for the extended video header).
//!
//! Belongs here: finding tag boundaries in an FLV byte stream that arrives in arbitrary chunks,
//! telling video keyframes from sequence headers, and keeping the first bytes of a keyframe's body
//! so the harness can recognise which keyframe it is. Does not belong: sockets and timing (the
//! viewer calls this with the bytes it read and records the instants), muxing (`crate::proto::mux`).

/// FLV file header (9 bytes, §E.2) plus PreviousTagSize0 (4 bytes, §E.3).
const FILE_HEADER: usize = 13;
/// FLV tag header (§E.4.1): TagType, DataSize(24), Timestamp(24), TimestampExtended, StreamID(24).
const TAG_HEADER: usize = 11;

/// Malformed FLV.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FlvError {
    #[error("FLV signature missing at stream byte {offset} (expected 'FLV', §E.2)")]
    Signature { offset: u64 },
    #[error("unknown tag type {tag_type} at stream byte {offset} (expected 8, 9 or 18, §E.4.1)")]
    TagType { tag_type: u8, offset: u64 },
}

/// A complete tag, reported when its last body byte has been seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    /// 8 audio, 9 video, 18 script data.
    pub tag_type: u8,
    pub data_size: u32,
    /// Milliseconds (24 bits + extended byte, §E.4.1).
    pub timestamp: u32,
    /// A video frame whose FrameType is 1 (keyframe) and that is not a sequence header.
    pub keyframe: bool,
    /// A video sequence header (AVCPacketType 0, or Enhanced RTMP PacketTypeSequenceStart).
    pub sequence_header: bool,
    /// The first bytes of the body (up to the scanner's capture limit) of video keyframes.
    pub head: Vec<u8>,
}

#[derive(Debug)]
enum State {
    FileHeader,
    TagHeader,
    Body { remaining: u32 },
    PrevSize { remaining: u8 },
}

/// Streaming scanner: feed chunks, get complete tags.
#[derive(Debug)]
pub struct FlvScanner {
    state: State,
    hdr: Vec<u8>,
    cur: Option<Tag>,
    /// Whether the current tag's body is being captured (first body bytes decide).
    capture: bool,
    capture_limit: usize,
    offset: u64,
}

/// Classify a video tag body from its first bytes: (keyframe, sequence_header), or None when too
/// short to tell. Legacy (§E.4.3.1): FrameType(4) CodecID(4) [AVCPacketType]; Enhanced RTMP:
/// IsExHeader(1) FrameType(3) PacketType(4).
pub fn classify_video(body: &[u8]) -> Option<(bool, bool)> {
    let b0 = *body.first()?;
    if b0 & 0x80 != 0 {
        let frame_type = (b0 >> 4) & 7;
        let packet_type = b0 & 0x0F;
        // PacketTypeSequenceStart = 0, PacketTypeMPEG2TSSequenceStart = 5.
        let seq = packet_type == 0 || packet_type == 5;
        Some((frame_type == 1 && !seq, seq))
    } else {
        let frame_type = b0 >> 4;
        let codec = b0 & 0x0F;
        if codec == 7 || codec == 12 {
            let packet_type = *body.get(1)?;
            let seq = packet_type == 0;
            Some((frame_type == 1 && !seq, seq))
        } else {
            Some((frame_type == 1, false))
        }
    }
}

impl FlvScanner {
    /// A scanner keeping up to `capture_limit` body bytes of each video keyframe.
    pub fn new(capture_limit: usize) -> Self {
        FlvScanner {
            state: State::FileHeader,
            hdr: Vec::with_capacity(16),
            cur: None,
            capture: false,
            capture_limit,
            offset: 0,
        }
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Feed the next chunk; complete tags are pushed to `out`.
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<Tag>) -> Result<(), FlvError> {
        while !data.is_empty() {
            match &mut self.state {
                State::FileHeader => {
                    let need = FILE_HEADER - self.hdr.len();
                    let take = need.min(data.len());
                    self.hdr.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    self.offset += take as u64;
                    if self.hdr.len() >= 3 && &self.hdr[..3] != b"FLV" {
                        return Err(FlvError::Signature { offset: 0 });
                    }
                    if self.hdr.len() == FILE_HEADER {
                        self.hdr.clear();
                        self.state = State::TagHeader;
                    }
                }
                State::TagHeader => {
                    let need = TAG_HEADER - self.hdr.len();
                    let take = need.min(data.len());
                    self.hdr.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    self.offset += take as u64;
                    if self.hdr.len() == TAG_HEADER {
                        let h = &self.hdr;
                        // §E.4.1: Reserved(2) Filter(1) TagType(5).
                        let tag_type = h[0] & 0x1F;
                        if !matches!(tag_type, 8 | 9 | 18) {
                            return Err(FlvError::TagType {
                                tag_type,
                                offset: self.offset - TAG_HEADER as u64,
                            });
                        }
                        let data_size = u32::from_be_bytes([0, h[1], h[2], h[3]]);
                        let timestamp = u32::from_be_bytes([h[7], h[4], h[5], h[6]]);
                        self.hdr.clear();
                        self.capture = tag_type == 9;
                        self.cur = Some(Tag {
                            tag_type,
                            data_size,
                            timestamp,
                            keyframe: false,
                            sequence_header: false,
                            head: Vec::new(),
                        });
                        if data_size == 0 {
                            self.finish_body();
                        } else {
                            self.state = State::Body { remaining: data_size };
                        }
                    }
                }
                State::Body { remaining } => {
                    let take = (*remaining as usize).min(data.len());
                    *remaining -= take as u32;
                    let done = *remaining == 0;
                    if self.capture {
                        let cur = self.cur.as_mut().expect("a tag is open while in Body");
                        let room = self.capture_limit.max(2).saturating_sub(cur.head.len());
                        cur.head.extend_from_slice(&data[..take.min(room)]);
                        if let Some((key, seq)) = classify_video(&cur.head) {
                            cur.keyframe = key;
                            cur.sequence_header = seq;
                            if !key {
                                // Only keyframes keep their first bytes.
                                self.capture = false;
                                cur.head.clear();
                            }
                        }
                    }
                    data = &data[take..];
                    self.offset += take as u64;
                    if done {
                        self.finish_body();
                    }
                }
                State::PrevSize { remaining } => {
                    let take = (*remaining as usize).min(data.len());
                    *remaining -= take as u8;
                    data = &data[take..];
                    self.offset += take as u64;
                    if *remaining == 0 {
                        let tag = self.cur.take().expect("a tag is open while in PrevSize");
                        out.push(tag);
                        self.state = State::TagHeader;
                    }
                }
            }
        }
        Ok(())
    }

    fn finish_body(&mut self) {
        if let Some(cur) = self.cur.as_mut() {
            if cur.tag_type == 9 {
                if let Some((key, seq)) = classify_video(&cur.head) {
                    cur.keyframe = key;
                    cur.sequence_header = seq;
                }
                if !cur.keyframe {
                    cur.head = Vec::new();
                }
            }
        }
        self.capture = false;
        self.state = State::PrevSize { remaining: 4 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(t: u8, ts: u32, body: &[u8]) -> Vec<u8> {
        let mut v = vec![t];
        let n = body.len() as u32;
        v.extend_from_slice(&n.to_be_bytes()[1..]);
        v.extend_from_slice(&ts.to_be_bytes()[1..]);
        v.push((ts >> 24) as u8);
        v.extend_from_slice(&[0, 0, 0]);
        v.extend_from_slice(body);
        v.extend_from_slice(&(n + 11).to_be_bytes());
        v
    }

    fn stream() -> Vec<u8> {
        let mut s = b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00".to_vec();
        s.extend(tag(18, 0, b"\x02\x00\x0aonMetaData"));
        s.extend(tag(9, 0, &[0x17, 0, 0, 0, 0, 1, 0x64]));
        s.extend(tag(8, 0, &[0xAF, 0, 0x14, 0x08]));
        let mut key = vec![0x17, 1, 0, 0, 0];
        key.extend((0..200u8).collect::<Vec<_>>());
        s.extend(tag(9, 40, &key));
        s.extend(tag(9, 80, &[0x27, 1, 0, 0, 0, 9, 9]));
        s.extend(tag(8, 0x0100_0000 + 5, &[0xAF, 1, 1, 2]));
        s.extend(tag(9, 120, &[0x93, b'h', b'v', b'c', b'1', 7]));
        s.extend(tag(9, 120, &[0x80, b'h', b'v', b'c', b'1']));
        s
    }

    fn scan(parts: &[&[u8]], cap: usize) -> Vec<Tag> {
        let mut sc = FlvScanner::new(cap);
        let mut out = Vec::new();
        for p in parts {
            sc.feed(p, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn tags_are_found_and_classified() {
        let s = stream();
        let tags = scan(&[&s], 16);
        assert_eq!(tags.len(), 8);
        assert_eq!(tags.iter().map(|t| t.tag_type).collect::<Vec<_>>(), [18, 9, 8, 9, 9, 8, 9, 9]);
        assert!(tags[1].sequence_header && !tags[1].keyframe);
        assert!(tags[3].keyframe && !tags[3].sequence_header);
        assert_eq!(tags[3].timestamp, 40);
        assert_eq!(tags[3].head.len(), 16, "keyframe head captured up to the limit");
        assert!(!tags[4].keyframe && tags[4].head.is_empty());
        assert_eq!(tags[5].timestamp, 0x0100_0005, "extended timestamp byte is the high byte");
        assert!(tags[6].keyframe, "Enhanced RTMP: frame type 1, PacketTypeCodedFramesX");
        assert_eq!(tags[6].head, [0x93, b'h', b'v', b'c', b'1', 7]);
        assert!(tags[7].sequence_header && !tags[7].keyframe);
    }

    #[test]
    fn every_split_point_gives_the_same_tags() {
        let s = stream();
        let whole = scan(&[&s], 64);
        for split in 0..s.len() {
            assert_eq!(scan(&[&s[..split], &s[split..]], 64), whole, "split at {split}");
        }
        let bytes: Vec<&[u8]> = s.chunks(1).collect();
        assert_eq!(scan(&bytes, 64), whole, "byte by byte");
    }

    #[test]
    fn bad_signature_and_tag_type_are_errors() {
        let mut sc = FlvScanner::new(0);
        assert_eq!(sc.feed(b"FLX", &mut Vec::new()), Err(FlvError::Signature { offset: 0 }));
        let mut s = b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00".to_vec();
        s.extend(tag(7, 0, b"x"));
        let mut sc = FlvScanner::new(0);
        assert_eq!(sc.feed(&s, &mut Vec::new()), Err(FlvError::TagType { tag_type: 7, offset: 13 }));
    }

    #[test]
    fn enhanced_rtmp_frame_types() {
        // IsExHeader | FrameType 1 | PacketTypeCodedFrames (1).
        assert_eq!(classify_video(&[0x91]), Some((true, false)));
        // PacketTypeCodedFramesX (3) on a keyframe.
        assert_eq!(classify_video(&[0x93]), Some((true, false)));
        assert_eq!(classify_video(&[0x90]), Some((false, true)));
        assert_eq!(classify_video(&[0xA1]), Some((false, false)));
        assert_eq!(classify_video(&[0x17]), None, "legacy AVC needs the packet type byte");
        assert_eq!(classify_video(&[0x27, 1]), Some((false, false)));
    }
}
