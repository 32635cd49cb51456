//! File operations in directories users control, safe against symlink and rename races.
//!
//! Everything the enforcer touches under a watched root is reached from a directory fd of that
//! root with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
//! RESOLVE_NO_XDEV)`, so no path component can lead outside the root, through a symlink, or onto
//! another filesystem, whatever a user swaps in between two calls. Where openat2 is missing
//! (Linux < 5.6) the same walk is done one component at a time with `O_NOFOLLOW` and a device
//! check. Files are identified by `(dev, ino)` of the opened fd, moved with
//! `renameat2(RENAME_NOREPLACE)`, and changed through their fd, never by path.
//! This module never decides anything; `quarantine` and `scan` call it.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path};

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, ResolveFlags, CWD};
use rustix::io::Errno;

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// Identity of a file: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

/// What fstat says about an opened file.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    pub id: FileId,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u64,
    pub is_file: bool,
    pub is_dir: bool,
}

pub fn meta(fd: impl AsFd) -> std::io::Result<Meta> {
    let st = rustix::fs::fstat(fd)?;
    Ok(from_stat(&st))
}

fn from_stat(st: &rustix::fs::Stat) -> Meta {
    let ft = rustix::fs::FileType::from_raw_mode(st.st_mode);
    Meta {
        id: FileId { dev: st.st_dev, ino: st.st_ino },
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size: st.st_size as u64,
        // `st_nlink` is u64 on x86_64 and u32 on aarch64 (the Android build).
        #[allow(clippy::useless_conversion)]
        nlink: u64::from(st.st_nlink),
        is_file: ft == rustix::fs::FileType::RegularFile,
        is_dir: ft == rustix::fs::FileType::Directory,
    }
}

/// `lstat` of `name` in `dir` (never follows a symlink). Names are bytes (`&str`, `&OsStr`):
/// a name that is not UTF-8 is as reachable as any other.
pub fn meta_at(dir: impl AsFd, name: impl rustix::path::Arg) -> std::io::Result<Meta> {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(from_stat(&st))
}

/// Opens a watched root itself: a directory reached from `/` without any symlink in its path.
pub fn open_root(path: &Path) -> std::io::Result<OwnedFd> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    match rustix::fs::openat2(CWD, path, flags, Mode::empty(), ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS)
    {
        Err(Errno::NOSYS) => open_components(None, path, flags),
        other => other.map_err(Into::into),
    }
}

/// Opens `rel` beneath the root `root` (see the module header). `rel` must be relative.
pub fn open_beneath(root: impl AsFd, rel: &Path, flags: OFlags) -> std::io::Result<OwnedFd> {
    if rel.as_os_str().is_empty() {
        return rustix::fs::openat(root, ".", flags | OFlags::CLOEXEC, Mode::empty()).map_err(Into::into);
    }
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat2(root.as_fd(), rel, flags, Mode::empty(), RESOLVE) {
        Err(Errno::NOSYS) => open_components(Some(root.as_fd()), rel, flags),
        other => other.map_err(Into::into),
    }
}

/// The fallback walk: one component at a time, `O_NOFOLLOW`, no `..`, no crossing devices.
fn open_components(root: Option<std::os::fd::BorrowedFd<'_>>, path: &Path, flags: OFlags) -> std::io::Result<OwnedFd> {
    let dir_flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut cur: OwnedFd = match root {
        Some(r) => rustix::fs::openat(r, ".", dir_flags, Mode::empty())?,
        None => rustix::fs::openat(CWD, "/", dir_flags, Mode::empty())?,
    };
    let dev = meta(&cur)?.id.dev;
    let parts: Vec<&std::ffi::OsStr> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(Ok(n)),
            Component::RootDir | Component::CurDir => None,
            _ => Some(Err(std::io::Error::from(Errno::XDEV))),
        })
        .collect::<Result<_, _>>()?;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let next =
            rustix::fs::openat(&cur, *part, if last { flags | OFlags::NOFOLLOW } else { dir_flags }, Mode::empty())?;
        if root.is_some() && meta(&next)?.id.dev != dev {
            return Err(Errno::XDEV.into());
        }
        cur = next;
    }
    Ok(cur)
}

/// Opens a regular file beneath `root` for reading, without blocking on FIFOs.
pub fn open_file_beneath(root: impl AsFd, rel: &Path) -> std::io::Result<(std::fs::File, Meta)> {
    let fd = open_beneath(root, rel, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY)?;
    let m = meta(&fd)?;
    if !m.is_file {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok((std::fs::File::from(fd), m))
}

/// Opens the parent directory of `rel` beneath `root` and returns it with the final name.
pub fn open_parent_beneath(root: impl AsFd, rel: &Path) -> std::io::Result<(OwnedFd, &std::ffi::OsStr)> {
    let name = rel.file_name().ok_or_else(|| std::io::Error::other("no file name"))?;
    let parent = rel.parent().unwrap_or(Path::new(""));
    let fd = open_beneath(root, parent, OFlags::PATH | OFlags::DIRECTORY)?;
    Ok((fd, name))
}

/// `renameat2(RENAME_NOREPLACE)`.
pub fn rename_noreplace(
    from_dir: impl AsFd,
    from: &std::ffi::OsStr,
    to_dir: impl AsFd,
    to: &std::ffi::OsStr,
) -> std::io::Result<()> {
    rustix::fs::renameat_with(from_dir, from, to_dir, to, RenameFlags::NOREPLACE).map_err(Into::into)
}

pub fn fchmod(fd: impl AsFd, mode: u32) -> std::io::Result<()> {
    rustix::fs::fchmod(fd, Mode::from_raw_mode(mode)).map_err(Into::into)
}

pub fn fchown(fd: impl AsFd, uid: u32, gid: u32) -> std::io::Result<()> {
    // SAFETY-free: rustix takes plain ids; a failure (not root) is reported to the caller.
    rustix::fs::fchown(fd, Some(rustix::fs::Uid::from_raw(uid)), Some(rustix::fs::Gid::from_raw(gid)))
        .map_err(Into::into)
}

pub fn unlink_at(dir: impl AsFd, name: impl rustix::path::Arg) -> std::io::Result<()> {
    rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(Into::into)
}

/// Sets an extended attribute through the fd (the quarantine's crash-recovery record).
pub fn set_xattr(fd: impl AsFd, name: &str, value: &[u8]) -> std::io::Result<()> {
    rustix::fs::fsetxattr(fd, name, value, rustix::fs::XattrFlags::empty()).map_err(Into::into)
}

pub fn get_xattr(fd: impl AsFd, name: &str) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    let n = rustix::fs::fgetxattr(fd, name, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// Creates the missing directories of `rel` beneath `root` (mode 0755) and returns the last.
pub fn mkdirs_beneath(root: impl AsFd, rel: &Path) -> std::io::Result<OwnedFd> {
    let mut cur =
        rustix::fs::openat(root.as_fd(), ".", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    for c in rel.components() {
        let Component::Normal(part) = c else { return Err(Errno::XDEV.into()) };
        match rustix::fs::mkdirat(&cur, part, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        cur = open_beneath(&cur, Path::new(part), OFlags::PATH | OFlags::DIRECTORY)?;
    }
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_and_dotdot_never_lead_out() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), root.join("sub/file-link")).unwrap();
        let fd = open_root(&root).unwrap();
        for rel in ["link/secret", "sub/file-link", "../outside/secret", "sub/../../outside/secret"] {
            assert!(open_file_beneath(&fd, Path::new(rel)).is_err(), "{rel} escaped");
            assert!(
                open_components(Some(fd.as_fd()), Path::new(rel), OFlags::RDONLY).is_err(),
                "{rel} escaped (fallback)"
            );
        }
        std::fs::write(root.join("sub/ok"), "y").unwrap();
        assert!(open_file_beneath(&fd, Path::new("sub/ok")).is_ok());
        assert!(open_components(Some(fd.as_fd()), Path::new("sub/ok"), OFlags::RDONLY).is_ok());
        // A root reached through a symlink is refused.
        std::os::unix::fs::symlink(&root, tmp.path().join("root-link")).unwrap();
        assert!(open_root(&tmp.path().join("root-link")).is_err());
    }

    #[test]
    fn rename_noreplace_refuses_to_clobber() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("a"), "a").unwrap();
        std::fs::write(tmp.path().join("b"), "b").unwrap();
        let d = open_root(tmp.path()).unwrap();
        assert!(rename_noreplace(&d, "a".as_ref(), &d, "b".as_ref()).is_err());
        assert_eq!(std::fs::read(tmp.path().join("b")).unwrap(), b"b");
        rename_noreplace(&d, "a".as_ref(), &d, "c".as_ref()).unwrap();
    }
}
