//! The files a config names (admin token, log-unit key, overrides lists),
//! read through [`Files`] so that validation is a pure function of its
//! inputs: the process reads the disk ([`Disk`]), tests hand in
//! `InMemory` files.

use std::io;
use std::path::Path;

/// Where validation reads the files a config names.
pub(crate) trait Files {
    /// The bytes of `path` (already resolved against the config's folder).
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
}

/// The real file system.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Disk;

impl Files for Disk {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
}

/// Files held in memory: any other path is not found.
#[cfg(test)]
#[derive(Debug, Clone, Default)]
pub(crate) struct InMemory {
    files: std::collections::BTreeMap<std::path::PathBuf, Vec<u8>>,
}

#[cfg(test)]
impl InMemory {
    /// Adds (or replaces) the file at `path`.
    pub(crate) fn with(
        mut self,
        path: impl Into<std::path::PathBuf>,
        bytes: impl Into<Vec<u8>>,
    ) -> InMemory {
        self.files.insert(path.into(), bytes.into());
        self
    }
}

#[cfg(test)]
impl Files for InMemory {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.files
            .get(path)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "No such file or directory"))
    }
}
