//! gbrelay: a GB/T 28181 media gateway.
//!
//! Layer map (dependency directions, see `DESIGN.md` §2 in the README's design notes):
//!
//! - [`proto`]: pure, sans-IO protocol code (GB ids and MANSCDP XML, SIP helpers, SDP, RTP, MPEG-PS,
//!   codecs, FLV/TS/HLS muxers). Never touches tokio, sockets or the clock.
//! - [`signal`]: SIP transports (UDP + TCP), registrar, keepalive, catalog, invite sessions. → `proto`, `store`.
//! - [`media`]: RTP receivers (shared port, port pool, TCP passive/active) and the rtp → ps → frames
//!   pipeline. → `proto`, `hub` (publisher side).
//! - [`hub`]: one stream per channel, muxed once, GOP ring, viewer cursors, on-demand lifecycle.
//! - [`http`]: play routes (FLV, WS-FLV, HLS), REST API, `/metrics`. → `hub`, `store`, `signal` handle.
//! - [`store`]: persistence of devices and channels (SQLite).
//! - [`config`]: `gateway.toml` → typed [`config::Config`].
//! - [`metrics`]: every metric's name and labels.

pub mod config;
pub mod http;
pub mod hub;
pub mod loadtest;
pub mod media;
pub mod metrics;
pub mod proto;
pub mod signal;
pub mod sim;
pub mod store;
