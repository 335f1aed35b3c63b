//! The `keel-jepsen` command line.
fn main() {}
