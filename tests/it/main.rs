//! cohort's integration tests: the real binary, real sockets, real files.
//! One test binary so the 2-core CI links once.

mod access_log;
mod deploy;
mod docs;
mod durability;
mod edge_util;
mod golden;
mod grpc;
mod h2;
mod hostile;
mod http1;
mod limits;
mod metrics;
mod newcomer;
mod operator;
mod proxy;
mod redis_core;
mod reload;
mod replicas;
mod report;
mod rotation;
mod streaming;
mod tls;
mod upgrade;
mod upstream_tls;
mod upstreams;
mod util;
mod vendor;
mod warehouse;
mod workers;
