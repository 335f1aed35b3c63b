//! Go's text conventions etcdctl's output inherits; they live in
//! `keel_api::go_format` (the server's flags parse Go durations too).

pub use keel_api::go_format::*;
