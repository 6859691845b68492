//! The `gbrelay` binary: CLI dispatch only; everything else lives in the library.

fn main() {
    println!("gbrelay {}", env!("CARGO_PKG_VERSION"));
}
