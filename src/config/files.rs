//! The files a config names (admin token, log-unit key, overrides lists),
//! read through [`Files`] so that validation is a pure function of its
//! inputs: the process reads the disk ([`Disk`]), tests hand in
//! [`InMemory`] files.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// Where validation reads the files a config names.
pub trait Files {
    /// The bytes of `path` (already resolved against the config's folder).
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
}

/// The real file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct Disk;

impl Files for Disk {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
}

/// Files held in memory: any other path is not found.
#[derive(Debug, Clone, Default)]
pub struct InMemory {
    files: BTreeMap<PathBuf, Vec<u8>>,
}

impl InMemory {
    /// Adds (or replaces) the file at `path`.
    pub fn with(mut self, path: impl Into<PathBuf>, bytes: impl Into<Vec<u8>>) -> InMemory {
        self.files.insert(path.into(), bytes.into());
        self
    }
}

impl Files for InMemory {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.files
            .get(path)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "No such file or directory"))
    }
}
