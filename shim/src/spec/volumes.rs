//! kubelet's emptyDir volumes, which the guest provides itself.
//!
//! kubelet hands CRI an emptyDir as a bind mount of its host directory
//! `<kubelet root>/pods/<uid>/volumes/kubernetes.io~empty-dir/<name>`, and a
//! subPath of any volume as a bind mount of
//! `<kubelet root>/pods/<uid>/volume-subpaths/<volume>/<container>/<index>`
//! (a bind of the subdirectory, made by kubelet). Instead of sharing an
//! emptyDir over virtio-fs, the guest gives the Pod one tmpfs per emptyDir
//! ([`guest_volume_dir`]), mounted on first use and shared by every container
//! of the Pod that mounts it; a subPath of an emptyDir becomes a guest bind of
//! the subdirectory of that tmpfs ([`guest_subpath_dir`]), as kubelet's own
//! subPath binds are on the host. See `docs/decisions/0008-emptydir-in-the-guest.md`.

use std::path::Path;

/// kubelet's volume plugin directory of emptyDir volumes.
pub const EMPTY_DIR_PLUGIN: &str = "kubernetes.io~empty-dir";

/// Where the guest mounts the Pod's emptyDir tmpfs volumes, one directory per name.
pub const GUEST_POD_VOLUMES: &str = "/run/husk/emptydir";

/// Where the guest binds the subPaths of emptyDir volumes, under kubelet's
/// `<volume>/<container>/<index>` names.
pub const GUEST_SUBPATHS: &str = "/run/husk/subpaths";

/// An emptyDir of the Pod that a container mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmptyDir {
    /// The volume's name (the last component of its host directory).
    pub name: String,
    /// kubelet's host directory of the volume. With `medium: Memory` it is a
    /// tmpfs whose size is the volume's sizeLimit; otherwise nothing on the
    /// host says the limit.
    pub host_dir: String,
}

/// A subPath of an emptyDir that a container mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubPath {
    /// The emptyDir's name.
    pub volume: String,
    /// The path inside the volume (no `.` or `..` components).
    pub path: String,
    /// The guest bind of it that the container's mount names.
    pub guest_dir: String,
}

/// The guest directory of the Pod's emptyDir `name`.
pub fn guest_volume_dir(name: &str) -> String {
    format!("{GUEST_POD_VOLUMES}/{name}")
}

/// The guest directory of kubelet's subPath bind `<volume>/<container>/<index>`.
pub fn guest_subpath_dir(volume: &str, container: &str, index: &str) -> String {
    format!("{GUEST_SUBPATHS}/{volume}/{container}/{index}")
}

/// A volume, container or index name kubelet puts in a path: one plain
/// component (kubelet's names are DNS labels, at most 63 bytes).
fn plain_component(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The components of an absolute path, without empty ones; `None` if one is
/// `.` or `..` (kubelet's paths have none, and such a path is not taken apart).
fn components(path: &str) -> Option<Vec<&str>> {
    if !path.starts_with('/') {
        return None;
    }
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    (!parts.iter().any(|c| *c == "." || *c == "..")).then_some(parts)
}

/// The emptyDir `source` is kubelet's host directory of, if it is one:
/// `…/pods/<uid>/volumes/kubernetes.io~empty-dir/<name>`.
pub fn empty_dir_of(source: &str) -> Option<EmptyDir> {
    let parts = components(source)?;
    let [.., pods, uid, volumes, plugin, name] = parts.as_slice() else {
        return None;
    };
    let shaped = *pods == "pods"
        && plain_component(uid)
        && *volumes == "volumes"
        && *plugin == EMPTY_DIR_PLUGIN
        && plain_component(name);
    shaped.then(|| EmptyDir {
        name: (*name).to_owned(),
        host_dir: format!("/{}", parts.join("/")),
    })
}

/// kubelet's subPath bind `…/pods/<uid>/volume-subpaths/<volume>/<container>/<index>`
/// taken apart: the host directory the volume has if it is an emptyDir, and
/// the guest directory its subPath gets then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubPathBind {
    /// `…/pods/<uid>/volumes/kubernetes.io~empty-dir/<volume>`.
    pub empty_dir: EmptyDir,
    /// [`guest_subpath_dir`] of it.
    pub guest_dir: String,
}

/// `source` as kubelet's subPath bind, if it has that shape (whether its
/// volume is an emptyDir is for the host to say).
pub fn subpath_bind_of(source: &str) -> Option<SubPathBind> {
    let parts = components(source)?;
    let n = parts.len();
    let [.., pods, uid, subpaths, volume, container, index] = parts.as_slice() else {
        return None;
    };
    let shaped = *pods == "pods"
        && plain_component(uid)
        && *subpaths == "volume-subpaths"
        && [volume, container, index]
            .iter()
            .all(|c| plain_component(c));
    if !shaped {
        return None;
    }
    let pod_dir = parts[..n - 4].join("/");
    Some(SubPathBind {
        empty_dir: EmptyDir {
            name: (*volume).to_owned(),
            host_dir: format!("/{pod_dir}/volumes/{EMPTY_DIR_PLUGIN}/{volume}"),
        },
        guest_dir: guest_subpath_dir(volume, container, index),
    })
}

/// What the spec rewrite needs to know from the host's file systems.
pub trait HostPaths {
    /// The path inside the host directory `volume` of what the bind mount
    /// `source` shows (kubelet binds a subPath's directory there), relative
    /// and without `.` or `..`; `None` if `volume` is not a directory or
    /// `source` shows nothing inside it.
    fn path_inside(&self, volume: &str, source: &str) -> Option<String>;
}

/// The host's real file systems.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostFs;

/// At most this many directory entries are looked at to find a subPath in a
/// host emptyDir directory. With husk that directory holds only what kubelet
/// made there: the subPath directories themselves.
const MAX_ENTRIES: usize = 10_000;

impl HostPaths for HostFs {
    fn path_inside(&self, volume: &str, source: &str) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let root = std::fs::symlink_metadata(volume).ok()?;
        if !root.is_dir() {
            return None;
        }
        // The bind mount point shows the very inode it binds.
        let want = std::fs::metadata(source).ok()?;
        let want = (want.dev(), want.ino());
        let mut todo = vec![(Path::new(volume).to_path_buf(), String::new())];
        let mut seen = 0;
        while let Some((dir, rel)) = todo.pop() {
            for entry in std::fs::read_dir(&dir).ok()?.flatten() {
                seen += 1;
                if seen > MAX_ENTRIES {
                    return None;
                }
                // Not followed: a symlink is not where a subPath bind points.
                let Ok(meta) = entry.path().symlink_metadata() else {
                    continue;
                };
                let name = entry.file_name().to_string_lossy().into_owned();
                let path = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                if (meta.dev(), meta.ino()) == want {
                    return Some(path);
                }
                if meta.is_dir() {
                    todo.push((entry.path(), path));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelets_empty_dir_paths_are_recognised() {
        let e = empty_dir_of("/var/lib/kubelet/pods/0f3a-9/volumes/kubernetes.io~empty-dir/cache")
            .unwrap();
        assert_eq!(e.name, "cache");
        assert_eq!(
            e.host_dir,
            "/var/lib/kubelet/pods/0f3a-9/volumes/kubernetes.io~empty-dir/cache"
        );
        // Another kubelet root, and a trailing slash.
        let e = empty_dir_of("/data/k/pods/u/volumes/kubernetes.io~empty-dir/scratch/").unwrap();
        assert_eq!(
            e.host_dir,
            "/data/k/pods/u/volumes/kubernetes.io~empty-dir/scratch"
        );
        for not in [
            "/var/lib/kubelet/pods/u/volumes/kubernetes.io~configmap/cfg",
            "/var/lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir",
            "/var/lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir/cache/sub",
            "/var/lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir/..",
            "/var/lib/kubelet/pods/u/x/../volumes/kubernetes.io~empty-dir/cache",
            "/var/lib/kubelet/nopods/u/volumes/kubernetes.io~empty-dir/cache",
            "pods/u/volumes/kubernetes.io~empty-dir/cache",
            "/srv/cache",
        ] {
            assert_eq!(empty_dir_of(not), None, "{not}");
        }
    }

    #[test]
    fn kubelets_subpath_binds_are_taken_apart() {
        let s = subpath_bind_of("/var/lib/kubelet/pods/u1/volume-subpaths/cache/app/2").unwrap();
        assert_eq!(s.empty_dir.name, "cache");
        assert_eq!(
            s.empty_dir.host_dir,
            "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/cache"
        );
        assert_eq!(s.guest_dir, "/run/husk/subpaths/cache/app/2");
        for not in [
            "/var/lib/kubelet/pods/u1/volume-subpaths/cache/app",
            "/var/lib/kubelet/pods/u1/volumes/cache/app/2",
            "/var/lib/kubelet/pods/u1/volume-subpaths/../app/2",
        ] {
            assert_eq!(subpath_bind_of(not), None, "{not}");
        }
    }

    #[test]
    fn a_subpath_is_found_inside_its_host_volume() {
        let dir = std::env::temp_dir().join(format!("husk-subpath-{}", std::process::id()));
        let vol = dir.join("cache");
        std::fs::create_dir_all(vol.join("a/b")).unwrap();
        std::fs::create_dir_all(vol.join("other")).unwrap();
        std::fs::write(vol.join("a/file"), "x").unwrap();
        std::os::unix::fs::symlink("/", vol.join("link")).unwrap();
        let v = vol.to_str().unwrap();
        // A bind mount shows the inode it binds: the directory itself does too.
        let inside = |p: &str| HostFs.path_inside(v, vol.join(p).to_str().unwrap());
        assert_eq!(inside("a/b").as_deref(), Some("a/b"));
        assert_eq!(inside("a/file").as_deref(), Some("a/file"));
        assert_eq!(inside("other").as_deref(), Some("other"));
        // Outside the volume, or the volume missing: nothing.
        assert_eq!(HostFs.path_inside(v, dir.to_str().unwrap()), None);
        assert_eq!(HostFs.path_inside(v, "/"), None);
        assert_eq!(HostFs.path_inside("/nonexistent/vol", v), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
