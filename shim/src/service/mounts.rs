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
                if e.raw_os_error() != Some(libc::EINVAL) {
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
