//! What the proxy tells the outside world about each request.

pub mod access_log;
pub mod time;
