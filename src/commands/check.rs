//! `cohort check PATH`: validate a config file and list every error
//! (exit 0 valid, 1 invalid). The same loading code a reload runs.

use std::path::Path;

use super::Outcome;
use crate::config;

/// Validates the file at `path`.
pub fn check_command(path: &Path) -> Outcome {
    match config::load_file(path) {
        Ok(c) => Outcome {
            stdout: format!(
                "{}: ok (config version {}, {} experiment(s), {} upstream(s))\n",
                path.display(),
                c.version(),
                c.experiments.len(),
                c.upstreams.len()
            ),
            stderr: String::new(),
            code: 0,
        },
        Err(e) => Outcome::fail(e),
    }
}
