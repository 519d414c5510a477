//! A small writer for the "newc" cpio format, the one the kernel unpacks as an
//! initramfs (`Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! Parent directories are emitted on demand ("mkdir -p"), because the kernel
//! does not create missing parents itself. Every entry gets its own inode
//! number and a link count of 1, so the kernel never mistakes two files for
//! hard links of each other.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Writes a newc archive to `W`. Call [`CpioWriter::finish`] at the end.
pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
    dirs: BTreeSet<String>,
    names: BTreeSet<String>,
}

/// One entry's metadata, as the header carries it.
struct Header<'a> {
    name: &'a str,
    mode: u32,
    size: u64,
    nlink: u32,
    rdev: (u32, u32),
}

impl CpioWriter<BufWriter<File>> {
    /// Creates the archive file at `path`.
    pub fn create(path: &Path) -> io::Result<Self> {
        Ok(Self::new(BufWriter::with_capacity(
            1 << 20,
            File::create(path)?,
        )))
    }
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            next_ino: 1,
            written: 0,
            dirs: BTreeSet::new(),
            names: BTreeSet::new(),
        }
    }

    /// Whether an entry of this name (absolute or relative) was written.
    pub fn contains(&self, name: &str) -> bool {
        let n = normalize(name);
        self.names.contains(&n) || self.dirs.contains(&n)
    }

    /// A directory and its missing parents, mode 0755.
    pub fn dir(&mut self, name: &str) -> io::Result<()> {
        let name = normalize(name);
        if name.is_empty() || self.dirs.contains(&name) {
            return Ok(());
        }
        self.parents(&name)?;
        self.header(&Header {
            name: &name,
            mode: S_IFDIR | 0o755,
            size: 0,
            nlink: 2,
            rdev: (0, 0),
        })?;
        self.dirs.insert(name);
        Ok(())
    }

    /// A regular file with the given contents and permission bits.
    pub fn file_bytes(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        let name = self.begin_entry(name)?;
        self.header(&Header {
            name: &name,
            mode: S_IFREG | (perm & 0o7777),
            size: data.len() as u64,
            nlink: 1,
            rdev: (0, 0),
        })?;
        self.data(data)?;
        self.pad()
    }

    /// A regular file copied from the host (symlinks are followed).
    pub fn file_from(&mut self, name: &str, host: &Path) -> io::Result<()> {
        let mut src = File::open(host)?;
        let meta = src.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", host.display()),
            ));
        }
        let size = meta.len();
        let name = self.begin_entry(name)?;
        self.header(&Header {
            name: &name,
            mode: S_IFREG | (std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777),
            size,
            nlink: 1,
            rdev: (0, 0),
        })?;
        let copied = io::copy(&mut (&mut src).take(size), &mut self.out)?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} shrank while being copied", host.display()),
            ));
        }
        self.written += copied;
        self.pad()
    }

    /// A symbolic link `name` -> `target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        let name = self.begin_entry(name)?;
        self.header(&Header {
            name: &name,
            mode: S_IFLNK | 0o777,
            size: target.len() as u64,
            nlink: 1,
            rdev: (0, 0),
        })?;
        self.data(target.as_bytes())?;
        self.pad()
    }

    /// A character device node.
    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        let name = self.begin_entry(name)?;
        self.header(&Header {
            name: &name,
            mode: S_IFCHR | (perm & 0o7777),
            size: 0,
            nlink: 1,
            rdev: (major, minor),
        })
    }

    /// Writes the trailer and flushes; returns the writer and the archive size.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.header(&Header {
            name: TRAILER,
            mode: 0,
            size: 0,
            nlink: 1,
            rdev: (0, 0),
        })?;
        // The kernel reads the archive in 512-byte blocks; pad like cpio(1) does.
        let rem = (self.written % 512) as usize;
        if rem != 0 {
            self.data(&[0u8; 512][..512 - rem])?;
        }
        self.out.flush()?;
        Ok((self.out, self.written))
    }

    fn begin_entry(&mut self, name: &str) -> io::Result<String> {
        let name = normalize(name);
        if name.is_empty() || self.names.contains(&name) || self.dirs.contains(&name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("duplicate or empty initramfs entry {name:?}"),
            ));
        }
        self.parents(&name)?;
        self.names.insert(name.clone());
        Ok(name)
    }

    fn parents(&mut self, name: &str) -> io::Result<()> {
        if let Some((parent, _)) = name.rsplit_once('/') {
            self.dir(parent)?;
        }
        Ok(())
    }

    fn header(&mut self, h: &Header<'_>) -> io::Result<()> {
        let size = u32::try_from(h.size)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file over 4 GiB"))?;
        let ino = self.next_ino;
        self.next_ino += 1;
        let name_size = h.name.len() + 1;
        let fields = [
            ino,
            h.mode,
            0,
            0,
            h.nlink,
            0,
            size,
            0,
            0,
            h.rdev.0,
            h.rdev.1,
            name_size as u32,
            0,
        ];
        let mut buf = String::with_capacity(110 + name_size);
        buf.push_str(MAGIC);
        for f in fields {
            buf.push_str(&format!("{f:08x}"));
        }
        buf.push_str(h.name);
        buf.push('\0');
        self.data(buf.as_bytes())?;
        self.pad()
    }

    fn data(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.write_all(data)?;
        self.written += data.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let rem = (self.written % 4) as usize;
        if rem != 0 {
            self.data(&[0u8; 4][..4 - rem])?;
        }
        Ok(())
    }
}

/// Archive names are relative: "/bin/sh" and "bin/sh/" are both "bin/sh".
fn normalize(name: &str) -> String {
    name.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(entry: &[u8], i: usize) -> u32 {
        let s = std::str::from_utf8(&entry[6 + 8 * i..14 + 8 * i]).unwrap();
        u32::from_str_radix(s, 16).unwrap()
    }

    #[test]
    fn header_layout_and_padding() {
        let mut w = CpioWriter::new(Vec::new());
        w.file_bytes("/a", 0o644, b"xyz").unwrap();
        let (buf, size) = w.finish().unwrap();
        assert_eq!(buf.len() as u64, size);
        assert_eq!(buf.len() % 512, 0);
        assert_eq!(&buf[..6], b"070701");
        assert_eq!(field(&buf, 1), S_IFREG | 0o644);
        assert_eq!(field(&buf, 6), 3); // filesize
        assert_eq!(field(&buf, 11), 2); // namesize "a\0"
                                        // 110-byte header + "a\0" = 112, already aligned; data follows.
        assert_eq!(&buf[110..112], b"a\0");
        assert_eq!(&buf[112..115], b"xyz");
        // Data padded to 4: next header at 116.
        assert_eq!(&buf[116..122], b"070701");
        assert_eq!(&buf[116 + 110..116 + 110 + 11], b"TRAILER!!!\0");
    }

    #[test]
    fn parents_are_created_once_and_first() {
        let mut w = CpioWriter::new(Vec::new());
        w.file_bytes("lib/modules/x/a.ko", 0o644, b"").unwrap();
        w.file_bytes("/lib/modules/x/b.ko", 0o644, b"").unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        assert!(w.contains("/lib/modules"));
        assert!(w.file_bytes("lib//modules/x/a.ko", 0o644, b"").is_err());
        let (buf, _) = w.finish().unwrap();
        let text = String::from_utf8_lossy(&buf);
        let names: Vec<&str> = text
            .split("070701")
            .filter_map(|e| e.get(104..))
            .map(|e| e.split('\0').next().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "lib",
                "lib/modules",
                "lib/modules/x",
                "lib/modules/x/a.ko",
                "lib/modules/x/b.ko",
                "bin",
                "bin/sh",
                "dev",
                "dev/console",
                "TRAILER!!!"
            ]
        );
    }

    #[test]
    fn char_dev_carries_rdev() {
        let mut w = CpioWriter::new(Vec::new());
        w.char_dev("console", 0o600, 5, 1).unwrap();
        let (buf, _) = w.finish().unwrap();
        assert_eq!(field(&buf, 1), S_IFCHR | 0o600);
        assert_eq!(field(&buf, 9), 5);
        assert_eq!(field(&buf, 10), 1);
    }
}
