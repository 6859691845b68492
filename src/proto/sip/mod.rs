//! SIP for GB/T 28181 (RFC 3261): message parse/build over `rsip` with device-tolerant
//! pre-normalisation, stream framing, digest authentication, and sans-IO client transactions.
//!
//! Pure: no sockets, no clock reads (time is passed in). The transports and the registrar live in
//! `crate::signal`.

pub mod digest;
pub mod framing;
pub mod message;
pub mod transaction;

pub use message::{Message, ParseError};
