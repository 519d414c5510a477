//! Storage the host asks for (AddStorage, and a container's own storages):
//! the virtio-fs share, tmpfs volumes shared by containers, bind mounts.
//!
//! A bind of a path inside a tmpfs storage (a subPath of a Pod's emptyDir
//! volume) is resolved first and must stay inside that volume; what is
//! missing there is created as directories of mode 0777, as kubelet creates a
//! missing subPath of an emptyDir (the volume's mode, whatever the umask), and
//! a file is bound on a file.
//!
//! Each mount is remembered by the caller's id so that RemoveStorage (or the
//! container's removal) can undo it. Mounting goes through
//! [`crate::mounts::Syscalls`], so the option parsing and bookkeeping are
//! tested without root.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use husk_proto::pb;

use crate::mounts::Syscalls;

/// At most this many storages at once.
pub const MAX_STORAGES: usize = 1024;

/// Errors of storage requests.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid storage: {0}")]
    Invalid(String),
    #[error("storage {0:?} exists")]
    Exists(String),
    #[error("no storage {0:?}")]
    NotFound(String),
    #[error("too many storages (limit {MAX_STORAGES})")]
    TooMany,
    #[error("mounting {fstype} {source_name:?} on {}", target.display())]
    Mount {
        fstype: String,
        source_name: String,
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unmounting {}", target.display())]
    Unmount {
        target: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// mount(2) flags and data from mount(8)-style options.
pub fn parse_options(options: &[String]) -> (libc::c_ulong, Option<String>) {
    let mut flags: libc::c_ulong = 0;
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= libc::MS_RDONLY,
            "rw" | "defaults" => flags &= !libc::MS_RDONLY,
            "nosuid" => flags |= libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            "relatime" => flags |= libc::MS_RELATIME,
            "noatime" => flags |= libc::MS_NOATIME,
            "bind" => flags |= libc::MS_BIND,
            "rbind" => flags |= libc::MS_BIND | libc::MS_REC,
            other => data.push(other),
        }
    }
    let data = (!data.is_empty()).then(|| data.join(","));
    (flags, data)
}

/// One storage's mount.
struct Mounted {
    target: PathBuf,
    /// A tmpfs: a volume that binds may take paths inside of.
    tmpfs: bool,
}

/// The mounts made for storage requests.
#[derive(Default)]
pub struct Storages {
    mounted: Mutex<HashMap<String, Mounted>>,
}

/// The tmpfs volume among `mounted` that `source` names a path inside of
/// (lexically: absolute, no `..`).
fn volume_of(mounted: &HashMap<String, Mounted>, source: &Path) -> Option<PathBuf> {
    use std::path::Component;
    if !source.is_absolute() || source.components().any(|c| c == Component::ParentDir) {
        return None;
    }
    mounted
        .values()
        .find(|m| m.tmpfs && source.starts_with(&m.target))
        .map(|m| m.target.clone())
}

/// The mode of a directory made for a subPath: an emptyDir's, as kubelet makes it.
const SUBPATH_MODE: u32 = 0o777;

/// `source` inside the volume `volume`, symlinks resolved, created as a
/// directory if missing; whether it is a directory. A path that resolves
/// outside the volume is refused.
fn volume_source(
    sys: &dyn Syscalls,
    volume: &Path,
    source: &Path,
) -> Result<(PathBuf, bool), StorageError> {
    let err = |source: io::Error| StorageError::Mount {
        fstype: "bind".into(),
        source_name: volume.display().to_string(),
        target: volume.to_owned(),
        source,
    };
    let found = match sys.resolve(source) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // The missing directories, outermost first.
            let missing: Vec<&Path> = source
                .ancestors()
                .take_while(|dir| *dir != volume && sys.resolve(dir).is_err())
                .collect();
            for dir in missing.into_iter().rev() {
                sys.mkdir_all(dir, SUBPATH_MODE).map_err(err)?;
                sys.chmod(dir, SUBPATH_MODE).map_err(err)?;
            }
            sys.resolve(source)
        }
        other => other,
    };
    let (real, is_dir) = found.map_err(err)?;
    let (root, _) = sys.resolve(volume).map_err(err)?;
    if !real.starts_with(&root) {
        return Err(StorageError::Invalid(format!(
            "{} leaves its volume {}",
            source.display(),
            volume.display()
        )));
    }
    Ok((real, is_dir))
}

impl Storages {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Mounted>> {
        self.mounted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Mounts `s` and remembers it as `s.id`.
    pub fn add(&self, sys: &dyn Syscalls, s: &pb::Storage) -> Result<(), StorageError> {
        if s.id.is_empty() || s.id.len() > husk_proto::MAX_ID_LEN {
            return Err(StorageError::Invalid("id length".into()));
        }
        let target = Path::new(&s.mount_point);
        if !target.is_absolute() || s.mount_point.contains('\0') || s.source.contains('\0') {
            return Err(StorageError::Invalid(format!(
                "mount_point {:?} must be an absolute path",
                s.mount_point
            )));
        }
        let fstype = match s.fstype.as_str() {
            "virtiofs" | "tmpfs" => s.fstype.as_str(),
            "bind" => "",
            other => return Err(StorageError::Invalid(format!("fstype {other:?}"))),
        };
        let mut mounted = self.lock();
        if mounted.contains_key(&s.id) {
            return Err(StorageError::Exists(s.id.clone()));
        }
        if mounted.len() >= MAX_STORAGES {
            return Err(StorageError::TooMany);
        }
        let (mut flags, data) = parse_options(&s.options);
        if s.fstype == "bind" {
            flags |= libc::MS_BIND;
        }
        let err = |source| StorageError::Mount {
            fstype: s.fstype.clone(),
            source_name: s.source.clone(),
            target: target.to_owned(),
            source,
        };
        let volume = (s.fstype == "bind")
            .then(|| volume_of(&mounted, Path::new(&s.source)))
            .flatten();
        let (source, dir) = match volume {
            Some(volume) => {
                let (real, is_dir) = volume_source(sys, &volume, Path::new(&s.source))?;
                (real.to_string_lossy().into_owned(), is_dir)
            }
            None => (s.source.clone(), true),
        };
        if dir {
            sys.mkdir_all(target, 0o755).map_err(err)?;
        } else {
            if let Some(parent) = target.parent() {
                sys.mkdir_all(parent, 0o755).map_err(err)?;
            }
            sys.create_file(target).map_err(err)?;
        }
        sys.mount(&source, target, fstype, flags, data.as_deref())
            .map_err(err)?;
        // A read-only bind needs a remount: MS_BIND ignores MS_RDONLY.
        if flags & libc::MS_BIND != 0 && flags & libc::MS_RDONLY != 0 {
            let remount = flags | libc::MS_REMOUNT;
            if let Err(e) = sys.mount("", target, "", remount, None) {
                let _ = sys.umount(target);
                return Err(err(e));
            }
        }
        let tmpfs = s.fstype == "tmpfs";
        mounted.insert(
            s.id.clone(),
            Mounted {
                target: target.to_owned(),
                tmpfs,
            },
        );
        Ok(())
    }

    /// Unmounts the storage `id`.
    pub fn remove(&self, sys: &dyn Syscalls, id: &str) -> Result<(), StorageError> {
        let mut mounted = self.lock();
        let target = mounted
            .get(id)
            .map(|m| m.target.clone())
            .ok_or_else(|| StorageError::NotFound(id.to_owned()))?;
        sys.umount(&target)
            .map_err(|source| StorageError::Unmount {
                target: target.clone(),
                source,
            })?;
        mounted.remove(id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mounts::fake::{Call, Recorder};

    fn storage(id: &str, fstype: &str, source: &str, options: &[&str], at: &str) -> pb::Storage {
        pb::Storage {
            id: id.into(),
            source: source.into(),
            fstype: fstype.into(),
            options: options.iter().map(|s| s.to_string()).collect(),
            mount_point: at.into(),
        }
    }

    fn mount_flags(call: &Call) -> libc::c_ulong {
        match call {
            Call::Mount { flags, .. } => *flags,
            other => panic!("not a mount: {other:?}"),
        }
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let opts: Vec<String> = ["ro", "nosuid", "size=64m", "mode=1777"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (flags, data) = parse_options(&opts);
        assert_eq!(flags, libc::MS_RDONLY | libc::MS_NOSUID);
        assert_eq!(data.as_deref(), Some("size=64m,mode=1777"));
        assert_eq!(parse_options(&[]), (0, None));
    }

    #[test]
    fn add_mounts_and_remove_unmounts_by_id() {
        let sys = Recorder::default();
        let st = Storages::default();
        let share = storage("share", "virtiofs", "husk", &[], "/run/husk/shared");
        st.add(&sys, &share).unwrap();
        let e = st
            .add(&sys, &storage("share", "tmpfs", "tmpfs", &[], "/x"))
            .unwrap_err();
        assert!(matches!(e, StorageError::Exists(_)));
        st.remove(&sys, "share").unwrap();
        assert!(matches!(
            st.remove(&sys, "share"),
            Err(StorageError::NotFound(_))
        ));
        let target = PathBuf::from("/run/husk/shared");
        assert_eq!(
            sys.calls(),
            vec![
                Call::Mkdir(target.clone(), 0o755),
                Call::Mount {
                    source: "husk".into(),
                    target: target.clone(),
                    fstype: "virtiofs".into(),
                    flags: 0,
                    data: None,
                },
                Call::Umount(target),
            ]
        );
    }

    #[test]
    fn a_readonly_bind_is_remounted() {
        let sys = Recorder::default();
        let st = Storages::default();
        st.add(
            &sys,
            &storage("v", "bind", "/run/husk/shared/v", &["ro"], "/vol"),
        )
        .unwrap();
        let calls = sys.calls();
        assert_eq!(calls.len(), 3, "{calls:?}");
        assert_eq!(
            mount_flags(&calls[2]),
            libc::MS_BIND | libc::MS_RDONLY | libc::MS_REMOUNT
        );
    }

    #[test]
    fn a_bind_inside_a_tmpfs_volume_is_created_there_as_kubelet_makes_a_subpath() {
        let sys = Recorder::default();
        let st = Storages::default();
        let vol = "/run/husk/emptydir/cache";
        st.add(&sys, &storage("v", "tmpfs", "tmpfs", &["mode=0777"], vol))
            .unwrap();
        let sub = storage(
            "s",
            "bind",
            "/run/husk/emptydir/cache/logs/app",
            &["rbind"],
            "/run/husk/subpaths/cache/app/0",
        );
        st.add(&sys, &sub).unwrap();
        let calls = sys.calls();
        let logs = PathBuf::from("/run/husk/emptydir/cache/logs");
        assert_eq!(
            calls[2..6],
            [
                Call::Mkdir(logs.clone(), 0o777),
                Call::Chmod(logs.clone(), 0o777),
                Call::Mkdir(logs.join("app"), 0o777),
                Call::Chmod(logs.join("app"), 0o777),
            ]
        );
        assert_eq!(
            calls[6],
            Call::Mkdir("/run/husk/subpaths/cache/app/0".into(), 0o755)
        );
        assert!(matches!(&calls[7], Call::Mount { source, fstype, .. }
            if source == "/run/husk/emptydir/cache/logs/app" && fstype.is_empty()));
        // A file there (a container wrote it) is bound on a file.
        sys.existing
            .borrow_mut()
            .insert("/run/husk/emptydir/cache/app.conf".into(), false);
        let file = storage(
            "f",
            "bind",
            "/run/husk/emptydir/cache/app.conf",
            &["rbind"],
            "/run/husk/subpaths/cache/app/1",
        );
        st.add(&sys, &file).unwrap();
        let calls = sys.calls();
        assert_eq!(
            calls[8..10],
            [
                Call::Mkdir("/run/husk/subpaths/cache/app".into(), 0o755),
                Call::CreateFile("/run/husk/subpaths/cache/app/1".into()),
            ]
        );
        assert!(matches!(&calls[10], Call::Mount { source, .. }
            if source == "/run/husk/emptydir/cache/app.conf"));
    }

    #[test]
    fn a_bind_that_leaves_its_volume_is_refused() {
        let mut sys = Recorder::default();
        sys.links.insert(
            "/run/husk/emptydir/cache/evil".into(),
            "/run/husk/shared".into(),
        );
        sys.existing
            .borrow_mut()
            .insert("/run/husk/shared".into(), true);
        let st = Storages::default();
        st.add(
            &sys,
            &storage("v", "tmpfs", "tmpfs", &[], "/run/husk/emptydir/cache"),
        )
        .unwrap();
        let evil = storage("e", "bind", "/run/husk/emptydir/cache/evil", &[], "/x");
        let e = st.add(&sys, &evil).unwrap_err();
        assert!(matches!(e, StorageError::Invalid(_)), "{e}");
        assert!(e.to_string().contains("leaves its volume"), "{e}");
        // `..` is not taken apart: such a bind is an ordinary one.
        let dotdot = storage("d", "bind", "/run/husk/emptydir/cache/../x", &[], "/y");
        st.add(&sys, &dotdot).unwrap();
        assert!(
            matches!(sys.calls().last(), Some(Call::Mount { source, .. })
            if source == "/run/husk/emptydir/cache/../x")
        );
    }

    #[test]
    fn bad_requests_are_refused_and_failures_not_remembered() {
        let st = Storages::default();
        let sys = Recorder::default();
        for bad in [
            storage("", "tmpfs", "tmpfs", &[], "/a"),
            storage("a", "tmpfs", "tmpfs", &[], "relative"),
            storage("a", "ext4", "/dev/vda", &[], "/a"),
        ] {
            assert!(matches!(st.add(&sys, &bad), Err(StorageError::Invalid(_))));
        }
        let mut failing = Recorder::default();
        failing.fail_mount.insert("/a".into(), libc::ENODEV);
        let e = st
            .add(&failing, &storage("a", "virtiofs", "nope", &[], "/a"))
            .unwrap_err();
        assert!(e.to_string().contains("virtiofs"), "{e}");
        st.add(&sys, &storage("a", "tmpfs", "tmpfs", &[], "/a"))
            .unwrap();
    }
}
