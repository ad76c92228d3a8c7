//! What the proxy tells the outside world about each request.

pub(crate) mod access_log;
pub(crate) mod time;
