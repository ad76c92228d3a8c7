//! Reload: how a config file becomes the applied config, in one place.
//!
//! ```text
//! watch (file poll, SIGHUP, admin) -> load + validate (config/)
//!   -> plan against the epoch ledger (plan: epochs, orphan checks, the
//!      typed config diff) -> apply (journal, build snapshot, swap) -> report
//! ```
//!
//! This module sits above both [`crate::config`] (a leaf: files to a
//! validated `Config`) and [`crate::assign`] (the assignment contract and
//! its store), which never import each other. Start-up is judged exactly
//! like a reload, against the ledger the store replayed.

pub(crate) mod apply;
pub(crate) mod diff;
pub mod plan;
pub(crate) mod report;
pub(crate) mod watch;

pub use apply::{redis_options, StartError};
pub(crate) use apply::{ReloadError, Reloaded};
