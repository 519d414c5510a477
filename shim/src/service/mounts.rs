//! Host mounts that put a container's rootfs and bind mounts into the
//! sandbox's `shared/` directory, and their undoing.
//!
//! [`Mounts`] remembers every mount point it made; [`Mounts::undo`] unmounts
//! them in reverse order (lazily, so a busy mount cannot block a cleanup) and
//! removes the container's directory. Callers undo on every failure path and
//! on delete.

use std::io;
use std::path::{Path, PathBuf};

use containerd_shim::protos::types::mount::Mount;

/// Errors mounting on the host.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mounting on {}", target.display())]
    Mount {
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mounting the rootfs on {}: {message}", target.display())]
    Rootfs { target: PathBuf, message: String },
    #[error("preparing {}", path.display())]
    Prepare {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn mount(
    source: &Path,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
) -> io::Result<()> {
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
    };
    let (src, dst) = (c(source)?, c(target)?);
    let fstype = fstype
        .map(std::ffi::CString::new)
        .transpose()
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: all pointers are NUL-terminated strings (or null for fstype)
    // that live until the call returns; mount(2) only reads them.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
            flags,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The mounts made for one container.
#[derive(Debug, Default)]
pub struct Mounts {
    /// The container's directory in `shared/`, removed by [`Mounts::undo`].
    pub dir: Option<PathBuf>,
    made: Vec<PathBuf>,
}

impl Mounts {
    /// Starts with the container's directory, created here.
    pub fn new(dir: PathBuf) -> Result<Mounts, MountError> {
        std::fs::create_dir_all(&dir).map_err(|source| MountError::Prepare {
            path: dir.clone(),
            source,
        })?;
        Ok(Mounts {
            dir: Some(dir),
            made: Vec::new(),
        })
    }

    /// Mounts containerd's rootfs (usually one overlay) on `target`, or bind
    /// mounts `bundle_rootfs` there when containerd gave no mounts.
    pub async fn rootfs(
        &mut self,
        mounts: &[Mount],
        bundle_rootfs: &Path,
        target: &Path,
    ) -> Result<(), MountError> {
        std::fs::create_dir_all(target).map_err(|source| MountError::Prepare {
            path: target.to_owned(),
            source,
        })?;
        if mounts.is_empty() {
            return self.bind(bundle_rootfs, target, false);
        }
        for m in mounts {
            containerd_shim::asynchronous::util::mount_rootfs(m, target)
                .await
                .map_err(|e| MountError::Rootfs {
                    target: target.to_owned(),
                    message: e.to_string(),
                })?;
            self.made.push(target.to_owned());
        }
        Ok(())
    }

    /// Bind-mounts `source` (a file or a directory) on `target`, read-only if
    /// asked.
    pub fn bind(&mut self, source: &Path, target: &Path, readonly: bool) -> Result<(), MountError> {
        let prepare = |source| MountError::Prepare {
            path: target.to_owned(),
            source,
        };
        let is_dir = std::fs::metadata(source)
            .map_err(|source| MountError::Prepare {
                path: target.to_owned(),
                source,
            })?
            .is_dir();
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(prepare)?;
        }
        if is_dir {
            std::fs::create_dir_all(target).map_err(prepare)?;
        } else if !target.exists() {
            std::fs::File::create(target).map_err(prepare)?;
        }
        let err = |source| MountError::Mount {
            target: target.to_owned(),
            source,
        };
        mount(source, target, None, libc::MS_BIND | libc::MS_REC).map_err(err)?;
        self.made.push(target.to_owned());
        if readonly {
            let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
            mount(Path::new(""), target, None, flags).map_err(err)?;
        }
        Ok(())
    }

    /// Unmounts everything in reverse order and removes the directory.
    /// Returns the mount points that would not unmount.
    pub fn undo(&mut self) -> Vec<PathBuf> {
        let mut stuck = Vec::new();
        while let Some(target) = self.made.pop() {
            let Ok(c) = std::ffi::CString::new(target.as_os_str().as_encoded_bytes()) else {
                continue;
            };
            // SAFETY: c is a NUL-terminated path living until the call returns.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                let e = io::Error::last_os_error();
                // EINVAL: not a mount point (any more); ENOENT: the path itself is gone
                // (the sandbox's run directory went with a dead VMM). Neither is mounted.
                if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) {
                    log::warn!("unmounting {}: {e}", target.display());
                    stuck.push(target);
                }
            }
        }
        if let Some(dir) = self.dir.take() {
            if stuck.is_empty() {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    if e.kind() != io::ErrorKind::NotFound {
                        log::warn!("removing {}: {e}", dir.display());
                    }
                }
            }
        }
        stuck
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        if !self.made.is_empty() || self.dir.is_some() {
            self.undo();
        }
    }
}

/// The size in bytes of the tmpfs mounted exactly on `dir`, or `None` if
/// `dir` is not a tmpfs mount point. kubelet mounts an emptyDir with
/// `medium: Memory` as a tmpfs sized to the volume's sizeLimit.
pub fn tmpfs_size(dir: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let here = std::fs::metadata(dir).ok()?;
    let parent = std::fs::metadata(dir.join("..")).ok()?;
    if here.dev() == parent.dev() {
        // Not a mount point: a directory on its parent's file system.
        return None;
    }
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statfs is plain data, for which all zeroes is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a NUL-terminated path and st a writable statfs, both
    // living until the call returns.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    if st.f_type != libc::TMPFS_MAGIC {
        return None;
    }
    let bsize = u64::try_from(st.f_bsize).ok()?;
    st.f_blocks.checked_mul(bsize)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dead VMM's sandbox loses its run directory before the containers are
    /// deleted: mount points that no longer exist are not "stuck", and the
    /// container's directory is still removed.
    #[test]
    fn undo_counts_vanished_and_unmounted_targets_as_done() {
        let dir = std::env::temp_dir().join(format!("husk-mounts-undo-{}", std::process::id()));
        let mut m = Mounts::new(dir.clone()).unwrap();
        m.made.push(dir.join("gone/rootfs"));
        std::fs::create_dir_all(dir.join("plain")).unwrap();
        m.made.push(dir.join("plain"));
        assert!(m.undo().is_empty());
        assert!(!dir.exists());
    }

    #[test]
    fn only_a_tmpfs_mount_point_has_a_tmpfs_size() {
        assert_eq!(tmpfs_size(Path::new("/nonexistent-husk")), None);
        // /proc is a mount point but not a tmpfs.
        assert_eq!(tmpfs_size(Path::new("/proc")), None);
        let shm = Path::new("/dev/shm");
        let Some(size) = tmpfs_size(shm) else {
            eprintln!("SKIPPED part: /dev/shm is not a tmpfs mount point here");
            return;
        };
        assert!(size > 0);
        // A directory inside the tmpfs is no mount point of its own.
        let dir = shm.join(format!("husk-tmpfs-size-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let inside = tmpfs_size(&dir);
        std::fs::remove_dir(&dir).unwrap();
        assert_eq!(inside, None);
    }
}
