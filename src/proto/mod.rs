//! Pure protocol code: no async runtime, no sockets, no clock reads, no metrics.
//!
//! Everything here is sans-IO: parsers take bytes (and, where time matters, a `now` passed in by
//! the caller) and return values, events and errors. Each parser is fuzzed (`fuzz/`) and tested at
//! every byte split. CI holds the purity rule with a grep for the runtime crate, the socket module and
//! the clock-reading calls (see `.ci/run` and DESIGN.md §2).

pub mod codec;
pub mod gb;
pub mod mux;
pub mod ps;
pub mod rtp;
pub mod sdp;
pub mod sip;
