//! The guest's early mounts, behind the [`Syscalls`] seam.
//!
//! [`PLAN`] is data: the file systems PID 1 mounts, in order. [`mount_all`]
//! and [`unmount_all`] carry it out through a [`Syscalls`] implementation:
//! [`Linux`] in the guest, a recording fake in the unit tests, so that the plan
//! and its error handling are tested without root.

use std::ffi::CString;
use std::io;
use std::path::Path;

use crate::debug;

/// The system calls that mounting needs.
pub trait Syscalls {
    /// Creates `path` and its missing parents with `mode`; an existing
    /// directory is not an error.
    fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<()>;
    /// mount(2).
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> io::Result<()>;
    /// umount2(2) without flags.
    fn umount(&self, target: &Path) -> io::Result<()>;
    /// `path` with every symlink resolved, and whether it is a directory.
    fn resolve(&self, path: &Path) -> io::Result<(std::path::PathBuf, bool)>;
    /// Creates an empty regular file at `path` if nothing is there.
    fn create_file(&self, path: &Path) -> io::Result<()>;
    /// chmod(2): `mode` exactly, whatever the umask.
    fn chmod(&self, path: &Path, mode: u32) -> io::Result<()>;
}

/// One mount of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountSpec {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: libc::c_ulong,
    pub data: Option<&'static str>,
}

const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// The mounts PID 1 makes at boot, parents before children.
pub const PLAN: &[MountSpec] = &[
    MountSpec {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    MountSpec {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    MountSpec {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: libc::MS_NOSUID,
        data: Some("mode=0755"),
    },
    MountSpec {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: libc::MS_NOSUID | libc::MS_NOEXEC,
        data: Some("newinstance,ptmxmode=0666,mode=0620"),
    },
    MountSpec {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: Some("mode=1777"),
    },
    MountSpec {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    MountSpec {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: Some("mode=0755"),
    },
    MountSpec {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        data: Some("mode=1777"),
    },
];

/// A mount of the plan failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("creating mount point {target}")]
    MountPoint {
        target: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("mounting {fstype} on {target}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Mounts every entry of `plan` in order. A target that is already mounted
/// (`EBUSY`) counts as done; any other failure stops the plan.
pub fn mount_all(sys: &dyn Syscalls, plan: &[MountSpec]) -> Result<(), MountError> {
    for m in plan {
        let target = Path::new(m.target);
        sys.mkdir_all(target, 0o755)
            .map_err(|source| MountError::MountPoint {
                target: m.target,
                source,
            })?;
        match sys.mount(m.source, target, m.fstype, m.flags, m.data) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                debug!("{} already mounted", m.target);
            }
            Err(source) => {
                return Err(MountError::Mount {
                    fstype: m.fstype,
                    target: m.target,
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Unmounts the entries of `plan` in reverse order, best effort: a mount that
/// is busy (the console keeps `/dev` open) or already gone is left alone.
pub fn unmount_all(sys: &dyn Syscalls, plan: &[MountSpec]) {
    for m in plan.iter().rev() {
        if let Err(e) = sys.umount(Path::new(m.target)) {
            debug!("unmounting {}: {e}", m.target);
        }
    }
}

/// The real system calls.
pub struct Linux;

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn path_cstring(p: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

impl Syscalls for Linux {
    fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
    }

    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> io::Result<()> {
        let source = cstring(source)?;
        let target = path_cstring(target)?;
        let fstype = cstring(fstype)?;
        let data = data.map(cstring).transpose()?;
        let data_ptr = data
            .as_ref()
            .map_or(std::ptr::null(), |d| d.as_ptr().cast::<libc::c_void>());
        // SAFETY: source, target and fstype are valid NUL-terminated strings
        // and data is either null or one, all living until the call returns;
        // mount(2) only reads them.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                flags,
                data_ptr,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn umount(&self, target: &Path) -> io::Result<()> {
        let target = path_cstring(target)?;
        // SAFETY: target is a valid NUL-terminated string that outlives the
        // call; umount2(2) only reads it.
        let rc = unsafe { libc::umount2(target.as_ptr(), 0) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn resolve(&self, path: &Path) -> io::Result<(std::path::PathBuf, bool)> {
        let real = std::fs::canonicalize(path)?;
        let is_dir = std::fs::metadata(&real)?.is_dir();
        Ok((real, is_dir))
    }

    fn create_file(&self, path: &Path) -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o644)
            .open(path)
            .map(drop)
    }

    fn chmod(&self, path: &Path, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }
}

#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::path::PathBuf;

    /// One recorded call.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Call {
        Mkdir(PathBuf, u32),
        Mount {
            source: String,
            target: PathBuf,
            fstype: String,
            flags: libc::c_ulong,
            data: Option<String>,
        },
        Umount(PathBuf),
        CreateFile(PathBuf),
        Chmod(PathBuf, u32),
    }

    /// Records every call; fails mount or umount of chosen targets with
    /// chosen errnos. Remembers what mkdir_all and create_file made (path ->
    /// is a directory) for resolve, which also follows `links`.
    #[derive(Default)]
    pub struct Recorder {
        pub calls: RefCell<Vec<Call>>,
        pub fail_mount: HashMap<PathBuf, i32>,
        pub fail_umount: HashMap<PathBuf, i32>,
        pub existing: RefCell<HashMap<PathBuf, bool>>,
        pub links: HashMap<PathBuf, PathBuf>,
    }

    impl Recorder {
        pub fn calls(&self) -> Vec<Call> {
            self.calls.borrow().clone()
        }
    }

    impl Syscalls for Recorder {
        fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<()> {
            self.calls
                .borrow_mut()
                .push(Call::Mkdir(path.to_path_buf(), mode));
            let mut existing = self.existing.borrow_mut();
            for dir in path.ancestors() {
                existing.insert(dir.to_path_buf(), true);
            }
            Ok(())
        }

        fn resolve(&self, path: &Path) -> io::Result<(PathBuf, bool)> {
            let real = self.links.get(path).cloned().unwrap_or(path.to_path_buf());
            match self.existing.borrow().get(&real) {
                Some(&is_dir) => Ok((real, is_dir)),
                None => Err(io::Error::from(io::ErrorKind::NotFound)),
            }
        }

        fn create_file(&self, path: &Path) -> io::Result<()> {
            self.calls
                .borrow_mut()
                .push(Call::CreateFile(path.to_path_buf()));
            self.existing.borrow_mut().insert(path.to_path_buf(), false);
            Ok(())
        }

        fn chmod(&self, path: &Path, mode: u32) -> io::Result<()> {
            self.calls
                .borrow_mut()
                .push(Call::Chmod(path.to_path_buf(), mode));
            Ok(())
        }

        fn mount(
            &self,
            source: &str,
            target: &Path,
            fstype: &str,
            flags: libc::c_ulong,
            data: Option<&str>,
        ) -> io::Result<()> {
            self.calls.borrow_mut().push(Call::Mount {
                source: source.to_owned(),
                target: target.to_path_buf(),
                fstype: fstype.to_owned(),
                flags,
                data: data.map(str::to_owned),
            });
            match self.fail_mount.get(target) {
                Some(&errno) => Err(io::Error::from_raw_os_error(errno)),
                None => Ok(()),
            }
        }

        fn umount(&self, target: &Path) -> io::Result<()> {
            self.calls
                .borrow_mut()
                .push(Call::Umount(target.to_path_buf()));
            match self.fail_umount.get(target) {
                Some(&errno) => Err(io::Error::from_raw_os_error(errno)),
                None => Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{Call, Recorder};
    use super::*;
    use std::path::PathBuf;

    fn mounted_targets(calls: &[Call]) -> Vec<String> {
        calls
            .iter()
            .filter_map(|c| match c {
                Call::Mount { target, .. } => Some(target.display().to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn plan_mounts_everything_in_order_with_mount_points_first() {
        let sys = Recorder::default();
        mount_all(&sys, PLAN).expect("fake never fails");
        let calls = sys.calls();
        assert_eq!(
            mounted_targets(&calls),
            [
                "/proc",
                "/sys",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/sys/fs/cgroup",
                "/run",
                "/tmp"
            ]
        );
        // Every mount is directly preceded by the creation of its mount point.
        assert_eq!(calls.len(), 2 * PLAN.len());
        for pair in calls.chunks(2) {
            match pair {
                [Call::Mkdir(dir, 0o755), Call::Mount { target, .. }] => assert_eq!(dir, target),
                other => panic!("unexpected calls {other:?}"),
            }
        }
    }

    #[test]
    fn plan_has_the_required_types_and_options() {
        let sys = Recorder::default();
        mount_all(&sys, PLAN).expect("fake never fails");
        let find = |t: &str| {
            sys.calls()
                .into_iter()
                .find_map(|c| match c {
                    Call::Mount {
                        target,
                        fstype,
                        flags,
                        data,
                        ..
                    } if target == Path::new(t) => Some((fstype, flags, data)),
                    _ => None,
                })
                .expect("target in plan")
        };
        assert_eq!(find("/proc").0, "proc");
        assert_eq!(find("/sys").0, "sysfs");
        assert_eq!(find("/dev").0, "devtmpfs");
        let (fstype, flags, data) = find("/dev/pts");
        assert_eq!(fstype, "devpts");
        assert_ne!(flags & libc::MS_NOEXEC, 0);
        let data = data.expect("devpts options");
        assert!(data.split(',').any(|o| o == "newinstance"));
        assert!(data.split(',').any(|o| o == "ptmxmode=0666"));
        assert_eq!(find("/dev/shm").0, "tmpfs");
        assert_eq!(find("/sys/fs/cgroup").0, "cgroup2");
        assert_eq!(
            find("/run"),
            (
                "tmpfs".into(),
                libc::MS_NOSUID | libc::MS_NODEV,
                Some("mode=0755".into())
            )
        );
        assert_eq!(find("/tmp").0, "tmpfs");
    }

    #[test]
    fn every_parent_mount_comes_before_its_children() {
        for (i, child) in PLAN.iter().enumerate() {
            for parent in &PLAN[i + 1..] {
                assert!(
                    !Path::new(child.target).starts_with(parent.target),
                    "{} is mounted after its child {}",
                    parent.target,
                    child.target
                );
            }
        }
    }

    #[test]
    fn already_mounted_is_not_an_error() {
        let mut sys = Recorder::default();
        sys.fail_mount.insert(PathBuf::from("/dev"), libc::EBUSY);
        mount_all(&sys, PLAN).expect("EBUSY is ignored");
        assert_eq!(mounted_targets(&sys.calls()).len(), PLAN.len());
    }

    #[test]
    fn a_failed_mount_stops_the_plan_and_names_the_target() {
        let mut sys = Recorder::default();
        sys.fail_mount.insert(PathBuf::from("/proc"), libc::ENODEV);
        let err = mount_all(&sys, PLAN).expect_err("ENODEV is fatal");
        assert_eq!(err.to_string(), "mounting proc on /proc");
        match err {
            MountError::Mount { source, .. } => {
                assert_eq!(source.raw_os_error(), Some(libc::ENODEV))
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert_eq!(mounted_targets(&sys.calls()), ["/proc"]);
    }

    #[test]
    fn unmount_is_reverse_order_and_best_effort() {
        let mut sys = Recorder::default();
        sys.fail_umount.insert(PathBuf::from("/dev"), libc::EBUSY);
        unmount_all(&sys, PLAN);
        let unmounted: Vec<String> = sys
            .calls()
            .iter()
            .map(|c| match c {
                Call::Umount(t) => t.display().to_string(),
                other => panic!("unexpected call {other:?}"),
            })
            .collect();
        let mut expected: Vec<String> = PLAN.iter().map(|m| m.target.to_owned()).collect();
        expected.reverse();
        assert_eq!(unmounted, expected);
    }
}
