//! Placeholder: RTP (RFC 3550), RFC 4571 framing, reorder window.
