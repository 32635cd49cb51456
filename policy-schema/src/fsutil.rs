//! Crash-safe file replacement: write a temp file, fsync it, rename it over the target, fsync the
//! directory. A reader sees the old bytes or the new bytes, never a mix, whatever instant a
//! crash happens at. Files are created with O_EXCL|O_NOFOLLOW so a planted symlink is refused.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

const O_NOFOLLOW: i32 = 0o400000;

/// Atomically replaces `dir/name` with `bytes`, mode `mode`.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    // A stale temp file from a crash is ours to remove; remove_file does not follow symlinks.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let result = (|| {
        let mut f =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).custom_flags(O_NOFOLLOW).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, dir.join(name))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// fsyncs a directory so a rename or unlink in it is durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Creates `dir` (and parents) if missing, then checks it is a real directory, not a symlink.
pub fn ensure_dir(dir: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    match std::fs::DirBuilder::new().recursive(true).mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.file_type().is_dir() {
        return Err(std::io::Error::other(format!("{} is not a directory", dir.display())));
    }
    Ok(())
}

/// Reads a whole file without following a symlink at its last component, refusing anything
/// larger than `max` bytes.
pub fn read_capped(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let f = std::fs::OpenOptions::new().read(true).custom_flags(O_NOFOLLOW).open(path)?;
    let len = f.metadata()?.len();
    if len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("{} is {len} bytes, over the {max}-byte cap", path.display()),
        ));
    }
    let mut buf = Vec::with_capacity(len as usize);
    f.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("{} grew over the {max}-byte cap", path.display()),
        ));
    }
    Ok(buf)
}
