//! What the proxy tells the outside world about each request.

pub(crate) mod access_log;
pub(crate) mod metrics;
pub(crate) mod srm;
pub(crate) mod time;
