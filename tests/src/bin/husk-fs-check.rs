//! `husk-fs-check`: what busybox cannot do on a virtio-fs mount, for the VM tests and the
//! benchmark. Runs in the guest (from the share, through the dynamic loader copied next to it)
//! and on the test host.
//!
//! ```text
//! husk-fs-check xattr FILE          # set/get/list/remove trusted.* xattrs; CHECK lines
//! husk-fs-check locks FILE          # flock and fcntl locks against a child process
//! husk-fs-check mmap FILE           # shared writable mmap, then read(2) back
//! husk-fs-check getxattr FILE NAME  # print the value, or the error
//! husk-fs-check meta DIR N [--drop-caches]
//!                                   # create, stat, unlink N files; MARK and OWN lines
//!                                   # (dropping the page, dentry and inode caches between)
//! husk-fs-check stamp [PREFIX]      # copy stdin to stdout, each line prefixed
//!                                   # `[PREFIX ]T=<ms since start> `
//! ```
//! Checks print `CHECK <name> ok` or `CHECK <name> FAILED: <why>`; the exit status is 1 if any
//! failed.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// The file `mmap` writes: 64 KiB of `i % 251`.
const MMAP_LEN: usize = 64 * 1024;

struct Checks {
    failed: bool,
}

impl Checks {
    fn check(&mut self, name: &str, result: Result<()>) {
        match result {
            Ok(()) => println!("CHECK {name} ok"),
            Err(e) => {
                println!("CHECK {name} FAILED: {e:#}");
                self.failed = true;
            }
        }
    }
}

fn cpath(path: &Path) -> Result<CString> {
    Ok(CString::new(path.as_os_str().as_bytes())?)
}

fn last_error(what: &str) -> anyhow::Error {
    anyhow::Error::new(std::io::Error::last_os_error()).context(what.to_string())
}

fn setxattr(path: &Path, name: &str, value: &[u8]) -> Result<()> {
    let (p, n) = (cpath(path)?, CString::new(name)?);
    // SAFETY: both strings are NUL-terminated and live across the call; value is a valid slice.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(last_error(&format!("setxattr {name}")));
    }
    Ok(())
}

fn getxattr(path: &Path, name: &str) -> Result<Vec<u8>> {
    let (p, n) = (cpath(path)?, CString::new(name)?);
    let mut buf = vec![0u8; 4096];
    // SAFETY: strings are NUL-terminated; the kernel writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        return Err(last_error(&format!("getxattr {name}")));
    }
    buf.truncate(rc as usize);
    Ok(buf)
}

fn listxattr(path: &Path) -> Result<Vec<String>> {
    let p = cpath(path)?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: p is NUL-terminated; the kernel writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        return Err(last_error("listxattr"));
    }
    buf.truncate(rc as usize);
    Ok(buf
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect())
}

fn removexattr(path: &Path, name: &str) -> Result<()> {
    let (p, n) = (cpath(path)?, CString::new(name)?);
    // SAFETY: both strings are NUL-terminated and live across the call.
    if unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) } != 0 {
        return Err(last_error(&format!("removexattr {name}")));
    }
    Ok(())
}

/// trusted.* xattrs (tmpfs before Linux 6.6 has no user.* xattrs); user.* is reported.
fn xattrs(file: &Path, c: &mut Checks) -> Result<()> {
    File::create(file)?;
    c.check(
        "xattr-set-get",
        (|| {
            setxattr(file, "trusted.husk", b"v1")?;
            let got = getxattr(file, "trusted.husk")?;
            if got != b"v1" {
                bail!("got {got:?}");
            }
            Ok(())
        })(),
    );
    c.check(
        "xattr-list",
        (|| {
            let names = listxattr(file)?;
            if !names.iter().any(|n| n == "trusted.husk") {
                bail!("listed {names:?}");
            }
            Ok(())
        })(),
    );
    c.check(
        "xattr-remove",
        (|| {
            setxattr(file, "trusted.gone", b"x")?;
            removexattr(file, "trusted.gone")?;
            match getxattr(file, "trusted.gone") {
                Err(e) if e.root_cause().to_string().contains("No data") => Ok(()),
                other => bail!("after removal: {other:?}"),
            }
        })(),
    );
    match setxattr(file, "user.husk", b"u") {
        Ok(()) => println!("INFO user-xattr supported"),
        Err(e) => println!("INFO user-xattr {:#}", e),
    }
    Ok(())
}

/// Runs `f` in a child process and returns whether it exited 0.
fn in_child(f: impl FnOnce() -> bool) -> Result<bool> {
    // SAFETY: the program is single-threaded here; the child only does system calls and exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(last_error("fork"));
    }
    if pid == 0 {
        let ok = f();
        // SAFETY: _exit ends the child without running the parent's destructors.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked; status is a valid int.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        return Err(last_error("waitpid"));
    }
    Ok(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0)
}

fn flock(file: &File, op: i32) -> bool {
    // SAFETY: flock on an open descriptor.
    unsafe { libc::flock(file.as_raw_fd(), op) == 0 }
}

fn write_lock(len: i64) -> libc::flock {
    libc::flock {
        l_type: libc::F_WRLCK as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: 0,
        l_len: len,
        l_pid: 0,
    }
}

fn locks(path: &Path, c: &mut Checks) -> Result<()> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)?;
    c.check(
        "flock-exclusive",
        (|| {
            if !flock(&file, libc::LOCK_EX) {
                return Err(last_error("flock"));
            }
            let blocked = in_child(|| {
                let other = File::open(path).ok();
                other.is_some_and(|f| !flock(&f, libc::LOCK_EX | libc::LOCK_NB))
            })?;
            flock(&file, libc::LOCK_UN);
            let free = in_child(|| {
                File::open(path)
                    .ok()
                    .is_some_and(|f| flock(&f, libc::LOCK_EX | libc::LOCK_NB))
            })?;
            if !(blocked && free) {
                bail!("other process blocked while held: {blocked}, free after unlock: {free}");
            }
            Ok(())
        })(),
    );
    c.check(
        "fcntl-posix-lock",
        (|| {
            let lock = write_lock(10);
            // SAFETY: F_SETLK reads a valid flock struct.
            if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &lock) } != 0 {
                return Err(last_error("F_SETLK"));
            }
            let me = std::process::id() as i32;
            let seen = in_child(|| {
                let Ok(other) = OpenOptions::new().read(true).write(true).open(path) else {
                    return false;
                };
                let mut probe = write_lock(10);
                // SAFETY: F_GETLK reads and writes a valid flock struct.
                let got = unsafe { libc::fcntl(other.as_raw_fd(), libc::F_GETLK, &mut probe) } == 0;
                let try_lock = write_lock(10);
                // SAFETY: F_SETLK reads a valid flock struct.
                let refused =
                    unsafe { libc::fcntl(other.as_raw_fd(), libc::F_SETLK, &try_lock) } != 0;
                got && probe.l_type == libc::F_WRLCK as i16 && probe.l_pid == me && refused
            })?;
            if !seen {
                bail!("another process did not see the lock as held by {me}");
            }
            Ok(())
        })(),
    );
    Ok(())
}

fn pattern() -> Vec<u8> {
    (0..MMAP_LEN).map(|i| (i % 251) as u8).collect()
}

fn mmap_check(path: &Path, c: &mut Checks) -> Result<()> {
    c.check(
        "mmap-shared-write",
        (|| {
            let file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(path)?;
            file.set_len(MMAP_LEN as u64)?;
            // SAFETY: maps MMAP_LEN bytes of a file that long; checked for MAP_FAILED below.
            let map = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    MMAP_LEN,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    file.as_raw_fd(),
                    0,
                )
            };
            if map == libc::MAP_FAILED {
                return Err(last_error("mmap"));
            }
            let data = pattern();
            // SAFETY: the mapping is MMAP_LEN bytes, writable, and not aliased by Rust references.
            unsafe {
                std::ptr::copy_nonoverlapping(data.as_ptr(), map.cast::<u8>(), MMAP_LEN);
                if libc::msync(map, MMAP_LEN, libc::MS_SYNC) != 0 {
                    return Err(last_error("msync"));
                }
                libc::munmap(map, MMAP_LEN);
            }
            drop(file);
            let mut back = Vec::new();
            File::open(path)?.read_to_end(&mut back)?;
            if back != data {
                bail!("read back differs from what was written through the mapping");
            }
            Ok(())
        })(),
    );
    Ok(())
}

/// `sync`, then drops the page, dentry and inode caches (needs root).
fn drop_caches() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    if let Err(e) = std::fs::write("/proc/sys/vm/drop_caches", "3") {
        println!("INFO cannot drop caches: {e}");
    }
}

/// Creates, stats and unlinks `n` files in `dir`, marking each phase.
fn meta(dir: &Path, n: usize, drop_first: bool) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let names: Vec<_> = (0..n).map(|i| dir.join(format!("f{i:05}"))).collect();
    let phase = |name: &str, f: &dyn Fn(&Path) -> std::io::Result<()>| -> Result<()> {
        if drop_first {
            drop_caches();
        }
        println!("MARK {name} start");
        let t = Instant::now();
        for p in &names {
            f(p).with_context(|| format!("{name} {}", p.display()))?;
        }
        println!("MARK {name} end");
        println!("OWN {name} {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
        Ok(())
    };
    phase("create", &|p| File::create(p).map(drop))?;
    phase("stat", &|p| std::fs::metadata(p).map(drop))?;
    phase("unlink", &|p| std::fs::remove_file(p))?;
    Ok(())
}

fn stamp(prefix: &str) -> Result<()> {
    let start = Instant::now();
    let stdout = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut out = stdout.lock();
        writeln!(out, "{prefix}T={} {line}", start.elapsed().as_millis())?;
        out.flush()?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut c = Checks { failed: false };
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    match argv.as_slice() {
        ["xattr", file] => xattrs(Path::new(file), &mut c)?,
        ["locks", file] => locks(Path::new(file), &mut c)?,
        ["mmap", file] => mmap_check(Path::new(file), &mut c)?,
        ["getxattr", file, name] => match getxattr(Path::new(file), name) {
            Ok(v) => println!("{}", String::from_utf8_lossy(&v)),
            Err(e) => println!("ERROR {:#}", e),
        },
        ["meta", dir, n] => meta(Path::new(dir), n.parse().context("N")?, false)?,
        ["meta", dir, n, "--drop-caches"] => meta(Path::new(dir), n.parse().context("N")?, true)?,
        ["stamp"] => stamp("")?,
        ["stamp", prefix] => stamp(&format!("{prefix} "))?,
        _ => bail!(
            "usage: husk-fs-check xattr|locks|mmap FILE | getxattr FILE NAME | meta DIR N | stamp"
        ),
    }
    std::io::stdout().flush()?;
    if c.failed {
        std::process::exit(1);
    }
    Ok(())
}
