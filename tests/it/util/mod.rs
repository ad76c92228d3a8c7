//! Test helpers that read like prose: `Backend::spawn("old")`,
//! `Cohort::start(&dir, yaml)`, `client.post(addr, "/predict", Some("alice"))`.
//! Everything runs on real loopback sockets; the proxy is the real binary.
//!
//! Split by role; every helper is re-exported here, so tests just
//! `use crate::util::*`.

mod backends;
mod clients;
mod load;
mod process;
mod redis;

pub(crate) use backends::*;
pub(crate) use clients::*;
pub(crate) use load::*;
pub(crate) use process::*;
pub(crate) use redis::*;

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
