//! File operations of the installer: paths under `--prefix`, atomic writes that keep a
//! file's mode and owner, copies that skip identical files, and the shim's symlink.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// The node's root file system, mounted at `prefix` (`/` on the node itself).
#[derive(Debug, Clone)]
pub struct Root {
    prefix: PathBuf,
}

impl Root {
    /// `prefix` must be an existing absolute directory.
    pub fn new(prefix: &Path) -> Result<Self> {
        if !prefix.is_absolute() {
            bail!("--prefix {} is not an absolute path", prefix.display());
        }
        if !prefix.is_dir() {
            bail!("--prefix {} is not a directory", prefix.display());
        }
        Ok(Root {
            prefix: prefix.to_owned(),
        })
    }

    /// Where the node's `host` path (absolute) is here.
    pub fn local(&self, host: &Path) -> PathBuf {
        self.prefix.join(host.strip_prefix("/").unwrap_or(host))
    }

    /// Creates the node's directory `host` and its missing parents; returns those it created,
    /// parents first, as node paths.
    pub fn create_dirs(&self, host: &Path) -> Result<Vec<PathBuf>> {
        let mut missing = Vec::new();
        let mut dir = Some(host);
        while let Some(d) = dir {
            if self.local(d).is_dir() {
                break;
            }
            missing.push(d.to_owned());
            dir = d.parent();
        }
        missing.reverse();
        for d in &missing {
            let local = self.local(d);
            fs::create_dir(&local).with_context(|| format!("creating {}", local.display()))?;
        }
        Ok(missing)
    }
}

/// The file's text, `None` if it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Hex SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The temporary name a new version of `path` is written under before the rename.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.husk-tmp"))
}

/// Replaces `path` with `bytes` by writing a temporary file beside it and renaming it over
/// (so a reader sees the old or the new file, never half of one, and a running binary is not
/// disturbed). An existing file's mode and owner are kept; a new file gets `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    match fs::metadata(path) {
        Ok(m) => replace(path, bytes, m.mode() & 0o7777, Some((m.uid(), m.gid()))),
        Err(_) => replace(path, bytes, mode, None),
    }
}

/// Copies `src` to `dest` with `mode` unless `dest` already has the same bytes and mode;
/// returns whether it copied. The copy is a new file owned by the caller. Both are streamed:
/// a debug shim is 200 MB, and the installer DaemonSet runs under a memory limit.
pub fn install_file(src: &Path, dest: &Path, mode: u32) -> Result<bool> {
    let read = |p: &Path| fs::File::open(p).with_context(|| format!("reading {}", p.display()));
    if let Ok(m) = fs::metadata(dest) {
        let same_meta =
            m.len() == fs::metadata(src)?.len() && m.permissions().mode() & 0o7777 == mode;
        if same_meta && same_bytes(read(src)?, read(dest)?)? {
            return Ok(false);
        }
    }
    let mut from = read(src)?;
    replace_with(dest, mode, None, |file| {
        std::io::copy(&mut from, file).map(drop)
    })?;
    Ok(true)
}

fn same_bytes(mut a: fs::File, mut b: fs::File) -> Result<bool> {
    let (mut buf_a, mut buf_b) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = read_full(&mut a, &mut buf_a)?;
        if n != read_full(&mut b, &mut buf_b)? || buf_a[..n] != buf_b[..n] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Reads until `buf` is full or the file ends.
fn read_full(file: &mut fs::File, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn replace(path: &Path, bytes: &[u8], mode: u32, owner: Option<(u32, u32)>) -> Result<()> {
    replace_with(path, mode, owner, |file| file.write_all(bytes))
}

/// Writes a temporary file with `write`, gives it `mode` (and `owner`), and renames it over
/// `path`; the temporary file never outlives a failure.
fn replace_with(
    path: &Path,
    mode: u32,
    owner: Option<(u32, u32)>,
    write: impl FnOnce(&mut fs::File) -> std::io::Result<()>,
) -> Result<()> {
    let tmp = temp_path(path);
    let result = (|| -> std::io::Result<()> {
        // A temporary file left by an interrupted run.
        let _ = fs::remove_file(&tmp);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        write(&mut file)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
        }
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// Makes `link` a symlink to `target`; returns whether it changed anything. Anything else
/// already at `link` is left alone and is an error.
pub fn ensure_symlink(link: &Path, target: &Path) -> Result<bool> {
    match fs::symlink_metadata(link) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            std::os::unix::fs::symlink(target, link)
                .with_context(|| format!("creating the symlink {}", link.display()))?;
            Ok(true)
        }
        Err(e) => Err(e).with_context(|| format!("looking at {}", link.display())),
        Ok(m) if m.file_type().is_symlink() && fs::read_link(link)? == target => Ok(false),
        Ok(_) => bail!(
            "{} exists and is not a symlink to {}: remove it (an earlier manual install?) \
             and run husk install again",
            link.display(),
            target.display()
        ),
    }
}

/// Removes the symlink `link` if it points to `target`; returns whether it did.
pub fn remove_symlink(link: &Path, target: &Path) -> Result<bool> {
    match fs::symlink_metadata(link) {
        Ok(m) if m.file_type().is_symlink() && fs::read_link(link)? == target => {
            fs::remove_file(link).with_context(|| format!("removing {}", link.display()))?;
            Ok(true)
        }
        Ok(_) => Ok(false),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("looking at {}", link.display())),
    }
}

/// Removes `path` if it exists; returns whether it did.
pub fn remove_file(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Removes the directory `path` if it exists and is empty; returns whether it did.
pub fn remove_empty_dir(path: &Path) -> Result<bool> {
    match fs::remove_dir(path) {
        Ok(()) => Ok(true),
        // Busy: a mount point (the installer DaemonSet mounts host directories).
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::NotFound | ErrorKind::DirectoryNotEmpty | ErrorKind::ResourceBusy
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("husk-files-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn atomic_write_keeps_mode_and_leaves_no_temp_file() {
        let dir = scratch("atomic");
        let file = dir.join("config.toml");
        fs::write(&file, "old").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&file, b"new", 0o644).unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), "new");
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o7777, 0o640);
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["config.toml"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn install_file_skips_identical_copies() {
        let dir = scratch("copy");
        let (src, dest) = (dir.join("src"), dir.join("dest"));
        fs::write(&src, "binary").unwrap();
        assert!(install_file(&src, &dest, 0o755).unwrap());
        assert_eq!(fs::metadata(&dest).unwrap().mode() & 0o7777, 0o755);
        assert!(!install_file(&src, &dest, 0o755).unwrap());
        fs::write(&src, "binary 2").unwrap();
        assert!(install_file(&src, &dest, 0o755).unwrap());
        assert_eq!(fs::read_to_string(&dest).unwrap(), "binary 2");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn symlink_is_made_once_and_foreign_files_are_refused() {
        let dir = scratch("link");
        let link = dir.join("containerd-shim-husk-v2");
        let target = Path::new("/opt/husk/bin/containerd-shim-husk-v2");
        assert!(ensure_symlink(&link, target).unwrap());
        assert!(!ensure_symlink(&link, target).unwrap());
        assert!(!remove_symlink(&link, Path::new("/elsewhere")).unwrap());
        assert!(remove_symlink(&link, target).unwrap());
        fs::write(&link, "a manually installed shim").unwrap();
        let e = ensure_symlink(&link, target).unwrap_err().to_string();
        assert!(e.contains("is not a symlink"), "{e}");
        assert!(!remove_symlink(&link, target).unwrap());
        assert!(link.is_file());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn root_maps_node_paths_and_records_created_dirs() {
        let dir = scratch("root");
        let root = Root::new(&dir).unwrap();
        assert_eq!(root.local(Path::new("/etc/husk")), dir.join("etc/husk"));
        let created = root.create_dirs(Path::new("/usr/local/bin")).unwrap();
        assert_eq!(
            created,
            [
                Path::new("/usr"),
                Path::new("/usr/local"),
                Path::new("/usr/local/bin")
            ]
        );
        assert!(root
            .create_dirs(Path::new("/usr/local/bin"))
            .unwrap()
            .is_empty());
        assert!(Root::new(Path::new("relative")).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
