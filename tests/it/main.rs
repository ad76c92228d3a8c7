//! cohort's integration tests: the real binary, real sockets, real files.
//! One test binary so the 2-core CI links once.

mod access_log;
mod durability;
mod hostile;
mod http1;
mod operator;
mod proxy;
mod reload;
mod util;
