//! A minimal ustar (POSIX.1-1988) archive writer: directories, regular files
//! and symbolic links, owned by root, with one fixed modification time, so that
//! the same input always gives the same bytes (and the same digest).

use std::io::{self, Write};

use super::image::ImageError;

/// The size of a tar block; headers and data are padded to it.
const BLOCK: usize = 512;
/// Longest name (and link target) that fits a ustar header without extensions.
const NAME_MAX: usize = 100;
/// Largest file size the 11 octal digits of the size field can hold (8 GiB - 1).
const SIZE_MAX: u64 = 0o77777777777;

/// The kinds of entries this writer makes (the ustar `typeflag`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File = b'0' as isize,
    Symlink = b'2' as isize,
    Dir = b'5' as isize,
}

/// Writes a tar archive to `out`. Call [`TarWriter::finish`] to write the end
/// of the archive; without it the archive is truncated.
pub struct TarWriter<W: Write> {
    out: W,
    mtime: u64,
}

impl<W: Write> TarWriter<W> {
    /// A writer whose entries all carry the modification time `mtime`
    /// (seconds since the epoch).
    pub fn new(out: W, mtime: u64) -> Self {
        Self { out, mtime }
    }

    /// A directory `path` (written with a trailing `/`) with permission bits `mode`.
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<(), ImageError> {
        let name = format!("{}/", path.trim_end_matches('/'));
        self.header(&name, Kind::Dir, mode, 0, "")
    }

    /// A regular file `path` holding `data`, with permission bits `mode`.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<(), ImageError> {
        self.header(path, Kind::File, mode, data.len() as u64, "")?;
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    /// A symbolic link `path` pointing at `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), ImageError> {
        self.header(path, Kind::Symlink, 0o777, 0, target)
    }

    /// Writes the two zero blocks that end an archive and returns the output.
    pub fn finish(mut self) -> Result<W, ImageError> {
        self.out.write_all(&[0; 2 * BLOCK])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn pad(&mut self, len: usize) -> Result<(), ImageError> {
        let rem = len % BLOCK;
        if rem != 0 {
            self.out.write_all(&[0; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }

    fn header(
        &mut self,
        name: &str,
        kind: Kind,
        mode: u32,
        size: u64,
        link: &str,
    ) -> Result<(), ImageError> {
        let h = header(name, kind, mode, size, link, self.mtime)?;
        self.out.write_all(&h)?;
        Ok(())
    }
}

/// One ustar header block.
fn header(
    name: &str,
    kind: Kind,
    mode: u32,
    size: u64,
    link: &str,
    mtime: u64,
) -> Result<[u8; BLOCK], ImageError> {
    for s in [name, link] {
        if s.len() > NAME_MAX || s.contains('\0') {
            return Err(ImageError::TarName(s.to_string()));
        }
    }
    if name.is_empty() {
        return Err(ImageError::TarName(String::new()));
    }
    if size > SIZE_MAX {
        return Err(ImageError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name}: {size} bytes is too big for a ustar entry"),
        )));
    }
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], u64::from(mode & 0o7777));
    octal(&mut h[108..116], 0); // uid
    octal(&mut h[116..124], 0); // gid
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], mtime);
    h[156] = kind as u8;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    octal(&mut h[329..337], 0); // devmajor
    octal(&mut h[337..345], 0); // devminor
                                // The checksum is the byte sum of the header with its own field read as spaces,
                                // written as six octal digits, a NUL and a space.
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    octal(&mut h[148..155], u64::from(sum));
    h[155] = b' ';
    Ok(h)
}

/// Writes `value` into `field` as zero-padded octal digits followed by a NUL.
/// Callers keep `value` within the field (sizes are checked before).
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    let text = &text.as_bytes()[text.len().saturating_sub(digits)..];
    field[..digits].copy_from_slice(text);
    field[digits] = 0;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Read;
    use std::process::{Command, Stdio};

    /// One entry read back from an archive: name, typeflag, mode, link target, data.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct TarEntry {
        pub name: String,
        pub kind: u8,
        pub mode: u32,
        pub link: String,
        pub data: Vec<u8>,
    }

    fn field_str(f: &[u8]) -> String {
        let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
        String::from_utf8(f[..end].to_vec()).unwrap()
    }

    fn field_octal(f: &[u8]) -> u64 {
        let s = field_str(f);
        u64::from_str_radix(s.trim(), 8).unwrap()
    }

    /// Reads an archive this module wrote, checking every header's checksum and
    /// the two zero blocks at the end.
    pub fn read_tar(bytes: &[u8]) -> Vec<TarEntry> {
        assert_eq!(bytes.len() % BLOCK, 0, "archive not block aligned");
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let h = &bytes[at..at + BLOCK];
            if h.iter().all(|&b| b == 0) {
                assert!(bytes[at..].iter().all(|&b| b == 0));
                assert_eq!(bytes.len() - at, 2 * BLOCK, "end is two zero blocks");
                return out;
            }
            let mut copy = [0u8; BLOCK];
            copy.copy_from_slice(h);
            copy[148..156].fill(b' ');
            let sum: u64 = copy.iter().map(|&b| u64::from(b)).sum();
            assert_eq!(field_octal(&h[148..155]), sum, "checksum of {at}");
            assert_eq!(&h[257..263], b"ustar\0");
            let size = field_octal(&h[124..136]) as usize;
            let data = bytes[at + BLOCK..at + BLOCK + size].to_vec();
            out.push(TarEntry {
                name: field_str(&h[..100]),
                kind: h[156],
                mode: field_octal(&h[100..108]) as u32,
                link: field_str(&h[157..257]),
                data,
            });
            at += BLOCK + size.div_ceil(BLOCK) * BLOCK;
        }
    }

    fn sample() -> Vec<u8> {
        let mut t = TarWriter::new(Vec::new(), 1_700_000_000);
        t.dir("bin", 0o755).unwrap();
        t.dir("tmp/", 0o1777).unwrap();
        t.file("bin/busybox", 0o755, &[7u8; 1000]).unwrap();
        t.file("empty", 0o644, b"").unwrap();
        t.file("etc-passwd", 0o644, &[1u8; 512]).unwrap();
        t.symlink("bin/sh", "busybox").unwrap();
        t.finish().unwrap()
    }

    #[test]
    fn entries_round_trip_with_valid_checksums() {
        let bytes = sample();
        let e = read_tar(&bytes);
        let names: Vec<&str> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin/",
                "tmp/",
                "bin/busybox",
                "empty",
                "etc-passwd",
                "bin/sh"
            ]
        );
        assert_eq!((e[1].kind, e[1].mode), (b'5', 0o1777));
        assert_eq!((e[2].kind, e[2].mode), (b'0', 0o755));
        assert_eq!(e[2].data, vec![7u8; 1000]);
        assert!(e[3].data.is_empty());
        assert_eq!(e[4].data.len(), 512);
        assert_eq!((e[5].kind, e[5].link.as_str()), (b'2', "busybox"));
        // Same input, same bytes.
        assert_eq!(bytes, sample());
    }

    #[test]
    fn gnu_tar_reads_the_archive() {
        let mut child = match Command::new("tar")
            .args(["-tvf", "-"])
            .env("TZ", "UTC")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("SKIPPED: gnu_tar_reads_the_archive: no tar binary: {e}");
                return;
            }
        };
        child.stdin.take().unwrap().write_all(&sample()).unwrap();
        let mut listing = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut listing)
            .unwrap();
        assert!(child.wait().unwrap().success(), "{listing}");
        assert!(listing.contains("drwxrwxrwt root/root"), "{listing}");
        assert!(
            listing.contains("-rwxr-xr-x root/root      1000 2023-11-14"),
            "{listing}"
        );
        assert!(listing.contains("bin/sh -> busybox"), "{listing}");
    }

    #[test]
    fn long_or_empty_names_are_refused() {
        let mut t = TarWriter::new(Vec::new(), 0);
        assert!(matches!(
            t.file(&"x".repeat(101), 0o644, b""),
            Err(ImageError::TarName(_))
        ));
        assert!(matches!(
            t.symlink("a", &"y".repeat(101)),
            Err(ImageError::TarName(_))
        ));
        assert!(matches!(
            t.file("", 0o644, b""),
            Err(ImageError::TarName(_))
        ));
        t.file(&"x".repeat(100), 0o644, b"").unwrap();
    }

    #[test]
    fn octal_fields_are_zero_padded_and_terminated() {
        let mut f = [0xffu8; 8];
        octal(&mut f, 0o755);
        assert_eq!(&f, b"0000755\0");
        let mut s = [0xffu8; 12];
        octal(&mut s, SIZE_MAX);
        assert_eq!(&s, b"77777777777\0");
    }
}
