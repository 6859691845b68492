//! Placeholder: the GB/T 28181 subset of SDP (RFC 4566) with y= and f= lines.
