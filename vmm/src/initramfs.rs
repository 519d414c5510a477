//! A reproducible writer of `newc` cpio archives, the format of a Linux
//! initramfs.
//!
//! Each entry is a 110-byte ASCII header (the magic `070701`, then 13 fields
//! of 8 hex digits), the NUL-terminated name padded so that header and name
//! end on a 4-byte boundary, then the data padded to 4 bytes. The archive ends
//! with an entry named `TRAILER!!!`.
//!
//! The output depends only on the entries added, never on the host or on the
//! order of the calls: entries are sorted by path, missing parent directories
//! are added (mode 0755) before their children, inode numbers count up from 1
//! in output order, and mtime, uid and gid are 0. A file added from a host path
//! takes only its contents from the host, not its mode, owner or time.
//!
//! ```no_run
//! # fn main() -> Result<(), vmm::initramfs::InitramfsError> {
//! use vmm::initramfs::Initramfs;
//! let mut cpio = Initramfs::new();
//! cpio.file_from_host("/init", 0o755, "target/husk-agent")?
//!     .char_device("/dev/console", 0o600, 5, 1)?;
//! let bytes = cpio.to_bytes()?;
//! # let _ = bytes;
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::PathBuf;

/// The `newc` magic.
const MAGIC: &[u8; 6] = b"070701";
/// Size of a `newc` header.
const HEADER_LEN: usize = 110;
/// The name of the last entry.
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
/// The permission bits a mode may carry (rwx for all, setuid, setgid, sticky).
const PERMISSION_BITS: u32 = 0o7777;
/// Mode of the parent directories added automatically.
const AUTO_DIR_MODE: u32 = 0o755;

/// Building or writing an archive failed.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("duplicate entry {0:?}")]
    Duplicate(String),
    #[error("parent of {0:?} is not a directory")]
    ParentNotDirectory(String),
    #[error("invalid mode {mode:#o} for {path:?}")]
    InvalidMode { path: String, mode: u32 },
    #[error("invalid symlink target {target:?} for {path:?}")]
    InvalidSymlinkTarget { path: String, target: String },
    #[error("{path:?} is too large for newc ({size} bytes)")]
    TooLarge { path: String, size: u64 },
    #[error("reading {}", path.display())]
    ReadHost {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing the archive")]
    Write(#[source] io::Error),
}

/// Where a regular file's contents come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Contents {
    Bytes(Vec<u8>),
    /// Read when the archive is written.
    Host(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Directory,
    File(Contents),
    Symlink(String),
    CharDevice { major: u32, minor: u32 },
}

impl Kind {
    fn type_bits(&self) -> u32 {
        match self {
            Kind::Directory => S_IFDIR,
            Kind::File(_) => S_IFREG,
            Kind::Symlink(_) => S_IFLNK,
            Kind::CharDevice { .. } => S_IFCHR,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: Kind,
    /// Permission bits only.
    permissions: u32,
}

/// An initramfs under construction. Paths may be given with or without a
/// leading `/`; they are stored relative to the archive's root, as the kernel
/// expects.
#[derive(Debug, Clone, Default)]
pub struct Initramfs {
    entries: BTreeMap<String, Entry>,
}

/// Normalises `path` to the archive's form: relative, no `.` or empty
/// components. Rejects `..`, NUL bytes and the root itself.
pub fn normalize(path: &str) -> Result<String, InitramfsError> {
    let invalid = |reason| InitramfsError::InvalidPath {
        path: path.to_owned(),
        reason,
    };
    if path.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(invalid("contains '..'")),
            part => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Err(invalid("names the root"));
    }
    Ok(parts.join("/"))
}

/// The parents of a normalised path, outermost first: `a/b/c` → `a`, `a/b`.
fn parents(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

impl Initramfs {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    fn insert(
        &mut self,
        path: &str,
        kind: Kind,
        permissions: u32,
    ) -> Result<&mut Self, InitramfsError> {
        let name = normalize(path)?;
        if permissions & !PERMISSION_BITS != 0 {
            return Err(InitramfsError::InvalidMode {
                path: name,
                mode: permissions,
            });
        }
        if self.entries.contains_key(&name) {
            return Err(InitramfsError::Duplicate(name));
        }
        self.entries.insert(name, Entry { kind, permissions });
        Ok(self)
    }

    /// Adds a directory with permission bits `mode` (e.g. `0o755`).
    pub fn directory(&mut self, path: &str, mode: u32) -> Result<&mut Self, InitramfsError> {
        self.insert(path, Kind::Directory, mode)
    }

    /// Adds a regular file with the given contents.
    pub fn file(
        &mut self,
        path: &str,
        mode: u32,
        contents: impl Into<Vec<u8>>,
    ) -> Result<&mut Self, InitramfsError> {
        self.insert(path, Kind::File(Contents::Bytes(contents.into())), mode)
    }

    /// Adds a regular file whose contents are read from `host_path` when the
    /// archive is written. Only the contents are taken from the host.
    pub fn file_from_host(
        &mut self,
        path: &str,
        mode: u32,
        host_path: impl Into<PathBuf>,
    ) -> Result<&mut Self, InitramfsError> {
        self.insert(path, Kind::File(Contents::Host(host_path.into())), mode)
    }

    /// Adds a symbolic link to `target` (mode 0777, as symlinks have).
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self, InitramfsError> {
        if target.is_empty() || target.contains('\0') {
            return Err(InitramfsError::InvalidSymlinkTarget {
                path: path.to_owned(),
                target: target.to_owned(),
            });
        }
        self.insert(path, Kind::Symlink(target.to_owned()), 0o777)
    }

    /// Adds a character device node, e.g. `dev/console` 5:1 mode 0600.
    pub fn char_device(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<&mut Self, InitramfsError> {
        self.insert(path, Kind::CharDevice { major, minor }, mode)
    }

    /// Every entry to write, parents added, in output order.
    fn resolved(&self) -> Result<BTreeMap<&str, Entry>, InitramfsError> {
        let mut all: BTreeMap<&str, Entry> = BTreeMap::new();
        for (name, entry) in &self.entries {
            for parent in parents(name) {
                match self.entries.get(parent) {
                    Some(Entry {
                        kind: Kind::Directory,
                        ..
                    }) => {}
                    Some(_) => return Err(InitramfsError::ParentNotDirectory(name.clone())),
                    None => {
                        all.entry(parent).or_insert(Entry {
                            kind: Kind::Directory,
                            permissions: AUTO_DIR_MODE,
                        });
                    }
                }
            }
            all.insert(name, entry.clone());
        }
        Ok(all)
    }

    /// Writes the archive to `out`. Returns the number of bytes written.
    pub fn write_to<W: Write>(&self, out: W) -> Result<u64, InitramfsError> {
        let entries = self.resolved()?;
        let mut writer = CpioWriter { out, written: 0 };
        for (ino, (name, entry)) in (1u32..).zip(&entries) {
            let data = match &entry.kind {
                Kind::File(Contents::Bytes(bytes)) => std::borrow::Cow::Borrowed(bytes.as_slice()),
                Kind::File(Contents::Host(path)) => {
                    std::borrow::Cow::Owned(std::fs::read(path).map_err(|source| {
                        InitramfsError::ReadHost {
                            path: path.clone(),
                            source,
                        }
                    })?)
                }
                Kind::Symlink(target) => std::borrow::Cow::Borrowed(target.as_bytes()),
                Kind::Directory | Kind::CharDevice { .. } => std::borrow::Cow::Borrowed(&[][..]),
            };
            let size = u32::try_from(data.len()).map_err(|_| InitramfsError::TooLarge {
                path: (*name).to_owned(),
                size: data.len() as u64,
            })?;
            let (rdev_major, rdev_minor) = match entry.kind {
                Kind::CharDevice { major, minor } => (major, minor),
                _ => (0, 0),
            };
            let header = Header {
                ino,
                mode: entry.kind.type_bits() | entry.permissions,
                nlink: if entry.kind == Kind::Directory { 2 } else { 1 },
                filesize: size,
                rdev_major,
                rdev_minor,
            };
            writer.entry(&header, name, &data)?;
        }
        writer.entry(
            &Header {
                ino: 0,
                mode: 0,
                nlink: 1,
                filesize: 0,
                rdev_major: 0,
                rdev_minor: 0,
            },
            TRAILER,
            &[],
        )?;
        writer.out.flush().map_err(InitramfsError::Write)?;
        Ok(writer.written)
    }

    /// The archive as bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, InitramfsError> {
        let mut bytes = Vec::new();
        self.write_to(&mut bytes)?;
        Ok(bytes)
    }
}

/// The fields of a header that vary; the others are 0 for reproducibility.
struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    filesize: u32,
    rdev_major: u32,
    rdev_minor: u32,
}

struct CpioWriter<W> {
    out: W,
    written: u64,
}

/// Padding that brings `len` to a multiple of 4.
fn pad4(len: usize) -> usize {
    (4 - len % 4) % 4
}

impl<W: Write> CpioWriter<W> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), InitramfsError> {
        self.out.write_all(bytes).map_err(InitramfsError::Write)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn entry(&mut self, h: &Header, name: &str, data: &[u8]) -> Result<(), InitramfsError> {
        let namesize = name.len() + 1;
        let namesize_field = u32::try_from(namesize).map_err(|_| InitramfsError::InvalidPath {
            path: name.to_owned(),
            reason: "name too long",
        })?;
        let fields = [
            h.ino,
            h.mode,
            0, // uid
            0, // gid
            h.nlink,
            0, // mtime
            h.filesize,
            0, // devmajor
            0, // devminor
            h.rdev_major,
            h.rdev_minor,
            namesize_field,
            0, // check (only for the 070702 "crc" format)
        ];
        let mut header = Vec::with_capacity(HEADER_LEN + namesize + 3);
        header.extend_from_slice(MAGIC);
        for field in fields {
            header.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        header.extend_from_slice(name.as_bytes());
        header.push(0);
        header.resize(header.len() + pad4(HEADER_LEN + namesize), 0);
        self.put(&header)?;
        self.put(data)?;
        self.put(&[0; 3][..pad4(data.len())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(fields: [u32; 13]) -> String {
        let mut s = String::from("070701");
        for f in fields {
            s.push_str(&format!("{f:08x}"));
        }
        s
    }

    #[test]
    fn tiny_archive_is_byte_exact() {
        let mut cpio = Initramfs::new();
        cpio.file("/hi", 0o644, "abcde").expect("valid");
        let bytes = cpio.to_bytes().expect("writes");

        let mut expected = Vec::new();
        // "hi": header 110 + name 3 = 113, padded by 3 to 116; data 5 padded by 3.
        expected
            .extend_from_slice(header([1, 0o100_644, 0, 0, 1, 0, 5, 0, 0, 0, 0, 3, 0]).as_bytes());
        expected.extend_from_slice(b"hi\0\0\0\0");
        expected.extend_from_slice(b"abcde\0\0\0");
        // Trailer: 110 + 11 = 121, padded by 3 to 124; no data.
        expected.extend_from_slice(header([0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 11, 0]).as_bytes());
        expected.extend_from_slice(b"TRAILER!!!\0\0\0\0");
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            String::from_utf8_lossy(&expected)
        );
        assert_eq!(bytes.len(), 116 + 8 + 124);
    }

    #[test]
    fn hand_computed_header_text() {
        // The first header of the archive above, written out by hand.
        let mut cpio = Initramfs::new();
        cpio.file("hi", 0o644, "abcde").expect("valid");
        let bytes = cpio.to_bytes().expect("writes");
        let text = "070701\
                    00000001000081a4000000000000000000000001000000000000000500000000\
                    0000000000000000000000000000000300000000";
        assert_eq!(&bytes[..110], text.as_bytes());
    }

    #[test]
    fn every_entry_starts_aligned_and_data_is_padded() {
        let mut cpio = Initramfs::new();
        cpio.file("a", 0o644, "1")
            .and_then(|c| c.file("bb", 0o644, "22"))
            .and_then(|c| c.file("ccc", 0o644, "333"))
            .and_then(|c| c.file("dddd", 0o644, "4444"))
            .and_then(|c| c.symlink("link", "dddd"))
            .expect("valid");
        let bytes = cpio.to_bytes().expect("writes");
        assert_eq!(bytes.len() % 4, 0);
        let mut offset = 0;
        let mut names = Vec::new();
        loop {
            assert_eq!(offset % 4, 0);
            assert_eq!(&bytes[offset..offset + 6], MAGIC);
            let field = |i: usize| {
                let start = offset + 6 + 8 * i;
                let text = std::str::from_utf8(&bytes[start..start + 8]).expect("ascii");
                usize::from_str_radix(text, 16).expect("hex")
            };
            let (filesize, namesize) = (field(6), field(11));
            let name_start = offset + HEADER_LEN;
            let name = &bytes[name_start..name_start + namesize];
            assert_eq!(name.last(), Some(&0));
            let name = String::from_utf8(name[..namesize - 1].to_vec()).expect("utf8");
            let data_start = name_start + namesize + pad4(HEADER_LEN + namesize);
            assert_eq!(data_start % 4, 0);
            // Padding bytes are zero.
            assert!(bytes[name_start + namesize..data_start]
                .iter()
                .all(|&b| b == 0));
            offset = data_start + filesize + pad4(filesize);
            assert!(bytes[data_start + filesize..offset].iter().all(|&b| b == 0));
            names.push(name.clone());
            if name == TRAILER {
                break;
            }
        }
        assert_eq!(offset, bytes.len());
        assert_eq!(names, ["a", "bb", "ccc", "dddd", "link", "TRAILER!!!"]);
    }

    #[test]
    fn trailer_ends_the_archive() {
        let bytes = Initramfs::new().to_bytes().expect("writes");
        assert_eq!(bytes.len(), 124);
        assert_eq!(&bytes[110..121], b"TRAILER!!!\0");
    }

    type Step = fn(&mut Initramfs) -> Result<(), InitramfsError>;

    fn sample(reversed: bool) -> Vec<u8> {
        let mut steps: Vec<Step> = vec![
            |c| c.file("/init", 0o755, "agent").map(drop),
            |c| c.char_device("/dev/console", 0o600, 5, 1).map(drop),
            |c| c.directory("/proc", 0o555).map(drop),
            |c| c.directory("/tmp", 0o1777).map(drop),
            |c| c.symlink("/bin/sh", "busybox").map(drop),
            |c| c.file("/etc/husk/config", 0o644, "x=1\n").map(drop),
        ];
        if reversed {
            steps.reverse();
        }
        let mut cpio = Initramfs::new();
        for step in steps {
            step(&mut cpio).expect("valid");
        }
        cpio.to_bytes().expect("writes")
    }

    #[test]
    fn reproducible_and_order_independent() {
        let a = sample(false);
        assert_eq!(a, sample(false));
        assert_eq!(a, sample(true));
    }

    #[test]
    fn parents_come_first_with_sequential_inodes() {
        let mut cpio = Initramfs::new();
        cpio.file("a/b/c", 0o600, "x")
            .and_then(|c| c.directory("a", 0o700))
            .and_then(|c| c.file("a-b", 0o644, ""))
            .expect("valid");
        let resolved = cpio.resolved().expect("valid");
        let order: Vec<(&str, u32)> = resolved
            .iter()
            .map(|(n, e)| (*n, e.kind.type_bits() | e.permissions))
            .collect();
        assert_eq!(
            order,
            [
                ("a", S_IFDIR | 0o700),
                ("a-b", S_IFREG | 0o644),
                ("a/b", S_IFDIR | 0o755),
                ("a/b/c", S_IFREG | 0o600),
            ]
        );
        // Inode numbers follow output order.
        let bytes = cpio.to_bytes().expect("writes");
        let text = String::from_utf8_lossy(&bytes);
        let inodes: Vec<&str> = text
            .match_indices("070701")
            .map(|(i, _)| &text[i + 6..i + 14])
            .collect();
        assert_eq!(
            inodes,
            ["00000001", "00000002", "00000003", "00000004", "00000000"]
        );
    }

    #[test]
    fn names_are_normalised_and_validated() {
        assert_eq!(normalize("/init").expect("valid"), "init");
        assert_eq!(normalize("./dev//console/").expect("valid"), "dev/console");
        assert_eq!(normalize("a/./b").expect("valid"), "a/b");
        for bad in ["", "/", ".", "//./", "../x", "a/../b", "a\0b"] {
            assert!(
                matches!(normalize(bad), Err(InitramfsError::InvalidPath { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn duplicates_are_rejected_after_normalisation() {
        let mut cpio = Initramfs::new();
        cpio.directory("/dev", 0o755).expect("valid");
        assert!(matches!(
            cpio.directory("dev/", 0o755),
            Err(InitramfsError::Duplicate(name)) if name == "dev"
        ));
    }

    #[test]
    fn parent_must_be_a_directory() {
        let mut cpio = Initramfs::new();
        cpio.file("etc", 0o644, "")
            .and_then(|c| c.file("etc/passwd", 0o644, ""))
            .expect("both insertable");
        assert!(matches!(
            cpio.to_bytes(),
            Err(InitramfsError::ParentNotDirectory(name)) if name == "etc/passwd"
        ));
    }

    #[test]
    fn bad_modes_and_targets_are_rejected() {
        let mut cpio = Initramfs::new();
        assert!(matches!(
            cpio.file("x", 0o100_644, ""),
            Err(InitramfsError::InvalidMode { .. })
        ));
        assert!(matches!(
            cpio.symlink("l", ""),
            Err(InitramfsError::InvalidSymlinkTarget { .. })
        ));
    }

    #[test]
    fn device_numbers_and_symlinks_are_encoded() {
        let mut cpio = Initramfs::new();
        cpio.char_device("dev/console", 0o600, 5, 1)
            .and_then(|c| c.symlink("sh", "/bin/busybox"))
            .expect("valid");
        let bytes = cpio.to_bytes().expect("writes");
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let console = text.find("dev/console").expect("console entry") - HEADER_LEN;
        let field = |at: usize, i: usize| &text[at + 6 + 8 * i..at + 14 + 8 * i];
        assert_eq!(field(console, 1), "00002180"); // S_IFCHR | 0600 = 0o20600
        assert_eq!(field(console, 9), "00000005");
        assert_eq!(field(console, 10), "00000001");
        let sh = text.find("sh\0").expect("sh entry") - HEADER_LEN;
        assert_eq!(field(sh, 1), "0000a1ff"); // S_IFLNK | 0777
        assert_eq!(field(sh, 6), "0000000c"); // "/bin/busybox"
        assert!(text.contains("sh\0\0\0\0/bin/busybox"));
    }

    #[test]
    fn host_files_contribute_only_contents() {
        let path = std::env::temp_dir().join(format!("husk-initramfs-test-{}", std::process::id()));
        std::fs::write(&path, b"from host").expect("write temp file");
        let mut from_host = Initramfs::new();
        from_host
            .file_from_host("init", 0o755, &path)
            .expect("valid");
        let mut from_bytes = Initramfs::new();
        from_bytes.file("init", 0o755, "from host").expect("valid");
        let result = from_host.to_bytes();
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            result.expect("writes"),
            from_bytes.to_bytes().expect("writes")
        );

        assert!(matches!(
            from_host.to_bytes(),
            Err(InitramfsError::ReadHost { .. })
        ));
    }

    #[test]
    fn debian_cpio_lists_the_names() {
        use std::process::{Command, Stdio};
        let available = Command::new("cpio")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !available {
            eprintln!("SKIPPED debian_cpio_lists_the_names: `cpio` is not installed (apt-get install cpio)");
            return;
        }
        let bytes = sample(false);
        let mut child = Command::new("cpio")
            .args(["-i", "-t", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cpio");
        let mut stdin = child.stdin.take().expect("piped stdin");
        let writer = std::thread::spawn(move || stdin.write_all(&bytes));
        let output = child.wait_with_output().expect("cpio runs");
        writer.join().expect("writer thread").expect("feed cpio");
        assert!(
            output.status.success(),
            "cpio failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let listed: Vec<&str> = std::str::from_utf8(&output.stdout)
            .expect("utf8")
            .lines()
            .collect();
        assert_eq!(
            listed,
            [
                "bin",
                "bin/sh",
                "dev",
                "dev/console",
                "etc",
                "etc/husk",
                "etc/husk/config",
                "init",
                "proc",
                "tmp"
            ]
        );
    }
}
