//! Pure protocol code: no tokio, no sockets, no clock reads, no metrics.
//!
//! Everything here is sans-IO: parsers take bytes (and, where time matters, a `now` passed in by
//! the caller) and return values, events and errors. Each parser is fuzzed (`fuzz/`) and tested at
//! every byte split. CI holds the purity rule with
//! `! grep -rE 'tokio|std::net|SystemTime::now|Instant::now' src/proto`.

pub mod codec;
pub mod gb;
pub mod mux;
pub mod ps;
pub mod rtp;
pub mod sdp;
pub mod sip;
