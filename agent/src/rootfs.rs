//! Leaving the initramfs: PID 1 moves the guest onto a tmpfs root first.
//!
//! The kernel starts `/init` on "rootfs", the initial ramfs, which can never
//! be unmounted or pivoted away from: `pivot_root(2)` fails with EINVAL in
//! any mount namespace whose root is rootfs. Containers need pivot_root (a
//! chroot can be escaped), so before mounting anything the agent does what
//! `switch_root` does: it copies the initramfs (except `/init`, the agent
//! itself, which stays pinned by the running process and is re-executed
//! through `/proc/self/exe`) into a fresh tmpfs, removes the copies' sources
//! to give their memory back, moves the tmpfs over `/` and chroots into it.

use std::ffi::OsStr;
use std::io;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::debug;
use crate::mounts::Syscalls;

/// Where the new root is assembled.
pub const NEW_ROOT: &str = "/.husk-root";

/// The entries of `/` not copied: the agent, and the new root itself.
const SKIP: &[&str] = &["init", ".husk-root"];

/// Errors leaving the initramfs.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("copying {}", path.display())]
    Copy {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{step}")]
    Switch {
        step: &'static str,
        #[source]
        source: io::Error,
    },
}

fn copy_err(path: &Path) -> impl FnOnce(io::Error) -> RootfsError + '_ {
    move |source| RootfsError::Copy {
        path: path.to_owned(),
        source,
    }
}

fn mknod(path: &Path, mode: u32, rdev: u64) -> io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: c is a valid NUL-terminated path living until the call returns.
    if unsafe { libc::mknod(c.as_ptr(), mode, rdev) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Copies the tree at `from` into `to` (an existing directory): directories,
/// regular files, symlinks and device nodes, with their modes. Top-level
/// names in `skip` are left out. Returns the number of entries copied.
pub fn copy_tree(from: &Path, to: &Path, skip: &[&str]) -> Result<usize, RootfsError> {
    let mut copied = 0;
    for entry in std::fs::read_dir(from).map_err(copy_err(from))? {
        let entry = entry.map_err(copy_err(from))?;
        let name = entry.file_name();
        if skip.iter().any(|s| OsStr::new(s) == name) {
            continue;
        }
        let src = entry.path();
        let dst = to.join(&name);
        let meta = std::fs::symlink_metadata(&src).map_err(copy_err(&src))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            std::fs::create_dir(&dst).map_err(copy_err(&dst))?;
            copied += copy_tree(&src, &dst, &[])?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&src).map_err(copy_err(&src))?;
            symlink(target, &dst).map_err(copy_err(&dst))?;
        } else if ft.is_file() {
            std::fs::copy(&src, &dst).map_err(copy_err(&dst))?;
        } else if ft.is_char_device() || ft.is_block_device() {
            mknod(&dst, meta.mode(), meta.rdev()).map_err(copy_err(&dst))?;
        } else {
            continue; // sockets and FIFOs mean nothing in a fresh root
        }
        if !ft.is_symlink() {
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(copy_err(&dst))?;
        }
        copied += 1;
    }
    Ok(copied)
}

/// Removes what [`copy_tree`] copied from `from` (best effort: it only frees
/// memory).
fn remove_copied(from: &Path, skip: &[&str]) {
    let Ok(entries) = std::fs::read_dir(from) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if skip.iter().any(|s| OsStr::new(s) == name) {
            continue;
        }
        let path = entry.path();
        let _ = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
    }
}

fn chroot_here() -> io::Result<()> {
    // SAFETY: "." is a valid NUL-terminated string literal.
    if unsafe { libc::chroot(c".".as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    std::env::set_current_dir("/")
}

/// Moves PID 1 from the initramfs onto a tmpfs root (see the module's doc).
/// Nothing may be mounted yet.
pub fn leave_initramfs(sys: &dyn Syscalls) -> Result<(), RootfsError> {
    let step = |step: &'static str| move |source| RootfsError::Switch { step, source };
    let new_root = Path::new(NEW_ROOT);
    sys.mkdir_all(new_root, 0o755)
        .map_err(step("creating the new root"))?;
    sys.mount(
        "tmpfs",
        new_root,
        "tmpfs",
        libc::MS_NOSUID,
        Some("mode=0755"),
    )
    .map_err(step("mounting the new root"))?;
    let copied = copy_tree(Path::new("/"), new_root, SKIP)?;
    remove_copied(Path::new("/"), SKIP);
    std::env::set_current_dir(new_root).map_err(step("entering the new root"))?;
    sys.mount(".", Path::new("/"), "", libc::MS_MOVE, None)
        .map_err(step("moving the new root over /"))?;
    chroot_here().map_err(step("chroot into the new root"))?;
    debug!("left the initramfs: {copied} entries on a tmpfs root");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_dirs_files_symlinks_and_modes_but_skips() {
        let base = std::env::temp_dir().join(format!("husk-rootfs-test-{}", std::process::id()));
        let (from, to) = (base.join("from"), base.join("to"));
        std::fs::create_dir_all(from.join("bin")).unwrap();
        std::fs::create_dir_all(&to).unwrap();
        std::fs::write(from.join("bin/busybox"), b"elf").unwrap();
        std::fs::set_permissions(
            from.join("bin/busybox"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        symlink("busybox", from.join("bin/sh")).unwrap();
        std::fs::write(from.join("init"), b"agent").unwrap();
        let n = copy_tree(&from, &to, SKIP).unwrap();
        assert_eq!(n, 3, "bin, bin/busybox, bin/sh");
        assert!(!to.join("init").exists(), "the agent is not copied");
        assert_eq!(std::fs::read(to.join("bin/busybox")).unwrap(), b"elf");
        let mode = std::fs::metadata(to.join("bin/busybox")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o755);
        assert_eq!(
            std::fs::read_link(to.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        remove_copied(&from, SKIP);
        assert!(from.join("init").exists() && !from.join("bin").exists());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
