//! Placeholder: filled in by its owner (see lib.rs layer map).

pub mod devices;
