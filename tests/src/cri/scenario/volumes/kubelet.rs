//! A Pod's host directory as kubelet lays it out (`<root>/pods/<uid>/…`), for
//! the `volumes` scenario: emptyDirs (a `medium: Memory` one is a tmpfs
//! mounted on its directory), subPath binds under `volume-subpaths/`, a
//! secret's file, a termination-log file and `etc-hosts`. The mounts it makes
//! are undone when it is dropped, so that the scratch directory can go.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cri::{CriError, Result};

/// kubelet's directory of one Pod, and the host mounts made in it.
pub struct PodDir {
    pub dir: PathBuf,
    mounts: Vec<PathBuf>,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> CriError {
    CriError::io(format!("{what} {}", path.display()), e)
}

fn mkdir(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path).map_err(|e| io("creating", path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| io("chmod", path, e))
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io("creating", parent, e))?;
    }
    std::fs::write(path, text).map_err(|e| io("writing", path, e))
}

/// Runs `mount` (util-linux) with `args`.
fn mount(args: &[&str]) -> Result<()> {
    let out = Command::new("mount")
        .args(args)
        .output()
        .map_err(|e| CriError::io("running mount", e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(CriError::Check(format!(
            "mount {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim_end()
        )))
    }
}

impl PodDir {
    /// `<root>/pods/<uid>`, created.
    pub fn new(root: &Path, uid: &str) -> Result<PodDir> {
        let dir = root.join("pods").join(uid);
        mkdir(&dir, 0o750)?;
        Ok(PodDir {
            dir,
            mounts: Vec::new(),
        })
    }

    /// The emptyDir `name`: `volumes/kubernetes.io~empty-dir/<name>`, mode 0777 as kubelet makes it.
    pub fn empty_dir(&self, name: &str) -> Result<PathBuf> {
        let path = self.dir.join("volumes/kubernetes.io~empty-dir").join(name);
        mkdir(&path, 0o777)?;
        Ok(path)
    }

    /// An emptyDir with `medium: Memory` and a sizeLimit: kubelet mounts a
    /// tmpfs of that size on its directory.
    pub fn memory_empty_dir(&mut self, name: &str, size_limit: &str) -> Result<PathBuf> {
        let path = self.empty_dir(name)?;
        let options = format!("size={size_limit},mode=0777");
        mount(&[
            "-t",
            "tmpfs",
            "-o",
            &options,
            "tmpfs",
            &path.to_string_lossy(),
        ])?;
        self.mounts.push(path.clone());
        Ok(path)
    }

    /// kubelet's subPath bind of `target` (a directory or a file inside a
    /// volume) for mount `index` of `container`:
    /// `volume-subpaths/<volume>/<container>/<index>`.
    pub fn subpath(
        &mut self,
        volume: &str,
        container: &str,
        index: u32,
        target: &Path,
    ) -> Result<PathBuf> {
        let parent = self
            .dir
            .join("volume-subpaths")
            .join(volume)
            .join(container);
        mkdir(&parent, 0o750)?;
        let path = parent.join(index.to_string());
        if target.is_dir() {
            mkdir(&path, 0o750)?;
        } else {
            write(&path, "")?;
        }
        mount(&["--bind", &target.to_string_lossy(), &path.to_string_lossy()])?;
        self.mounts.push(path.clone());
        Ok(path)
    }

    /// A file of the secret volume `name` (`volumes/kubernetes.io~secret/<name>/<key>`).
    pub fn secret_file(&self, name: &str, key: &str, value: &str) -> Result<PathBuf> {
        let dir = self.dir.join("volumes/kubernetes.io~secret").join(name);
        let path = dir.join(key);
        write(&path, value)?;
        Ok(path)
    }

    /// The termination-log file kubelet makes for `container` (`containers/<name>/<id>`), empty.
    pub fn termination_log(&self, container: &str) -> Result<PathBuf> {
        let path = self.dir.join("containers").join(container).join("4f6c1e2a");
        write(&path, "")?;
        Ok(path)
    }

    /// kubelet's `etc-hosts` of a Pod with `ip` and `hostname`.
    pub fn etc_hosts(&self, ip: &str, hostname: &str) -> Result<PathBuf> {
        let path = self.dir.join("etc-hosts");
        let text = format!(
            "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost \
             ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\n{ip}\t{hostname}\n"
        );
        write(&path, &text)?;
        Ok(path)
    }
}

impl Drop for PodDir {
    fn drop(&mut self) {
        for path in self.mounts.drain(..).rev() {
            let _ = Command::new("umount").arg("-l").arg(&path).status();
        }
    }
}
