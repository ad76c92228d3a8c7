//! The one-shot commands behind the CLI, one file each: [`check`], [`plan`],
//! [`history`], [`import`] and [`migrate`] (`cohort store migrate`). Each
//! returns an [`Outcome`] (its output and exit code)
//! and prints nothing itself; `main` prints, so every command can be tested
//! without a process.

pub mod check;
pub mod history;
pub mod import;
pub mod migrate;
pub mod plan;

pub use check::check_command;
pub use history::{history_command, history_redis};
pub use import::{import_command, ImportFormat};
pub use migrate::{migrate_command, MigrateTo};
pub use plan::{admin_of, plan_command, PlanAgainst};

/// A command's output and exit code.
pub struct Outcome {
    /// What to print on stdout (the result).
    pub stdout: String,
    /// What to print on stderr (errors).
    pub stderr: String,
    /// The process exit code.
    pub code: u8,
}

impl Outcome {
    /// Exit 1 with `stderr` as the message.
    pub(crate) fn fail(stderr: impl std::fmt::Display) -> Outcome {
        Outcome {
            stdout: String::new(),
            stderr: format!("{stderr}\n"),
            code: 1,
        }
    }
}
