//! Helpers shared by unit tests of different modules: asking the kernel
//! about a file's page cache.

use std::path::Path;

/// The page-cache pages of the file at `path` that are dirty (written,
/// not yet on the disk), by `cachestat(2)` (Linux 6.5), called through
/// Python's ctypes (this crate forbids `unsafe`); `None` where it cannot be
/// asked (no python3, an older kernel).
pub(crate) fn dirty_pages(path: &Path) -> Option<u64> {
    const ASK: &str = r#"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(sys.argv[1], os.O_RDONLY)
rng = (ctypes.c_uint64 * 2)(0, 0)   # offset 0, length 0: the whole file
st = (ctypes.c_uint64 * 5)()        # cache, dirty, writeback, evicted, recently evicted
if libc.syscall(451, fd, rng, st, 0) != 0:  # SYS_cachestat, on every architecture
    sys.exit(3)
print(st[1])
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", ASK])
        .arg(path)
        .output()
        .ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

/// A scratch directory under `target/`, not in /tmp (which may be tmpfs,
/// where nothing is ever written back), in which [`dirty_pages`] can see
/// a written page dirty; `None` where it cannot (no python3, a kernel
/// without cachestat, tmpfs, overlayfs, which reports every page clean):
/// the caller skips.
pub(crate) fn writeback_dir() -> Option<tempfile::TempDir> {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let dir = tempfile::tempdir_in(target).ok()?;
    let probe = dir.path().join("probe");
    std::fs::write(&probe, [1u8; 4096]).ok()?;
    let seen = dirty_pages(&probe).is_some_and(|n| n >= 1);
    std::fs::remove_file(&probe).ok()?;
    if !seen {
        eprintln!("skipped: dirty pages cannot be seen here (no python3, no cachestat(2), or tmpfs/overlayfs)");
    }
    seen.then_some(dir)
}
