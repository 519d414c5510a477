//! What containers do to a shared directory, through FUSE: the handshake, create/write/read,
//! rename over a file, hard links, symlinks, xattrs, a file past 4 GiB, FIFOs, and the
//! counters that follow them.

use std::os::unix::fs::MetadataExt;

use fuse_backend_rs::abi::fuse_abi::{InitOut, ReleaseIn};
use fuse_backend_rs::api::filesystem::FsOptions;
use vm_memory::ByteValued;

use super::*;

#[test]
fn init_negotiates_big_requests_and_no_dax_locks_export_or_writeback() {
    let mut g = Guest::new("init");
    let out: InitOut = g.init();
    assert_eq!(out.major, 7);
    assert_eq!(out.max_pages, 256, "1 MiB requests");
    assert_eq!(out.max_write, 1 << 20);
    let granted = FsOptions::from_bits_truncate(u64::from(out.flags));
    for wanted in [
        FsOptions::MAX_PAGES,
        FsOptions::BIG_WRITES,
        FsOptions::DO_READDIRPLUS,
        FsOptions::AUTO_INVAL_DATA,
        FsOptions::HANDLE_KILLPRIV_V2,
    ] {
        assert!(granted.contains(wanted), "{wanted:?} in {granted:?}");
    }
    for denied in [
        FsOptions::EXPORT_SUPPORT,
        FsOptions::POSIX_LOCKS,
        FsOptions::FLOCK_LOCKS,
        FsOptions::WRITEBACK_CACHE,
        FsOptions::ZERO_MESSAGE_OPEN,
        FsOptions::ZERO_MESSAGE_OPENDIR,
    ] {
        assert!(!granted.contains(denied), "{denied:?} in {granted:?}");
    }
}

#[test]
fn create_write_read_and_the_host_sees_it() {
    let mut g = Guest::new("rw");
    let (entry, fh) = g.create(ROOT, "hello.txt", libc::O_RDWR).unwrap();
    assert_eq!(
        g.write(entry.nodeid, fh, 0, b"hello from the guest\n"),
        Ok(21)
    );
    assert_eq!(
        g.read(entry.nodeid, fh, 6, 4).unwrap(),
        b"from",
        "read at an offset"
    );
    g.release(entry.nodeid, fh);
    assert_eq!(
        std::fs::read_to_string(g.share().join("hello.txt")).unwrap(),
        "hello from the guest\n"
    );
    let c = g.counters();
    assert_eq!(c.bytes_written, 21);
    assert_eq!(c.bytes_read, 4);
    assert_eq!(c.malformed, 0);
    assert_eq!(c.error_replies, 0);
    // INIT, CREATE, WRITE, READ, RELEASE.
    assert_eq!(c.requests, 5);
}

#[test]
fn create_without_excl_opens_an_existing_file() {
    let mut g = Guest::new("create-existing");
    std::fs::write(g.share().join("f"), "old").unwrap();
    let (entry, fh) = g.create(ROOT, "f", libc::O_RDWR).unwrap();
    assert_eq!(g.read(entry.nodeid, fh, 0, 16).unwrap(), b"old");
    g.release(entry.nodeid, fh);
    assert_eq!(
        g.create(ROOT, "f", libc::O_RDWR | libc::O_EXCL).map(|_| ()),
        Err(libc::EEXIST)
    );
    assert_eq!(g.fs.fds_in_use(), 1, "one inode held, no handle");
}

#[test]
fn rename_over_an_existing_file_unlink_and_hard_links() {
    let mut g = Guest::new("rename");
    let (a, fh) = g.create(ROOT, "a", libc::O_WRONLY).unwrap();
    g.write(a.nodeid, fh, 0, b"A").unwrap();
    g.release(a.nodeid, fh);
    std::fs::write(g.share().join("b"), "B").unwrap();
    let dir = g.mkdir(ROOT, "d").unwrap();

    // RENAME: a over b.
    let rename = body(&[&ROOT.to_le_bytes(), &cstr("a"), &cstr("b")]);
    assert_eq!(g.call(op::RENAME, ROOT, &rename).errno(), 0);
    assert!(!g.share().join("a").exists());
    assert_eq!(std::fs::read_to_string(g.share().join("b")).unwrap(), "A");

    // LINK: d/c is b.
    let b = g.lookup(ROOT, "b").unwrap();
    let link = body(&[&b.nodeid.to_le_bytes(), &cstr("c")]);
    let linked: EntryOut = g.call(op::LINK, dir.nodeid, &link).ok().unwrap();
    assert_eq!(linked.nodeid, b.nodeid, "a hard link is the same inode");
    assert_eq!(linked.attr.nlink, 2);
    assert_eq!(std::fs::metadata(g.share().join("d/c")).unwrap().nlink(), 2);

    // UNLINK b: d/c stays with one link.
    assert_eq!(g.call(op::UNLINK, ROOT, &cstr("b")).errno(), 0);
    assert_eq!(g.getattr(b.nodeid).unwrap().nlink, 1);
    assert_eq!(std::fs::read_to_string(g.share().join("d/c")).unwrap(), "A");
    assert_eq!(g.lookup(ROOT, "b").map(|_| ()), Err(libc::ENOENT));
}

#[test]
fn symlinks_store_their_target_as_text() {
    let mut g = Guest::new("symlink");
    let link = g.symlink(ROOT, "l", "../../some/where").unwrap();
    assert_eq!(link.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    let target = g.call(op::READLINK, link.nodeid, &[]);
    assert_eq!(target.errno(), 0);
    assert_eq!(target.body, b"../../some/where");
    assert_eq!(
        std::fs::read_link(g.share().join("l")).unwrap(),
        std::path::Path::new("../../some/where")
    );
}

#[test]
fn xattrs_set_get_list_remove() {
    let mut g = Guest::new("xattr");
    let (f, fh) = g.create(ROOT, "x", libc::O_RDWR).unwrap();
    g.release(f.nodeid, fh);
    assert_eq!(g.setxattr(f.nodeid, "user.husk", b"v1"), 0);
    assert_eq!(g.getxattr(f.nodeid, "user.husk", 64).unwrap(), b"v1");
    // Size 0 asks for the length.
    let len = g.getxattr(f.nodeid, "user.husk", 0).unwrap();
    assert_eq!(u32::from_le_bytes(len[..4].try_into().unwrap()), 2);
    let list = g.call(op::LISTXATTR, f.nodeid, &[64, 0, 0, 0, 0, 0, 0, 0]);
    assert!(
        list.body.split(|&b| b == 0).any(|n| n == b"user.husk"),
        "{list:?}"
    );
    let host = std::process::Command::new("getfattr")
        .args(["--only-values", "-n", "user.husk"])
        .arg(g.share().join("x"))
        .output();
    if let Ok(out) = host {
        if out.status.success() {
            assert_eq!(out.stdout, b"v1", "the host file carries the xattr");
        }
    }
    assert_eq!(
        g.call(op::REMOVEXATTR, f.nodeid, &cstr("user.husk"))
            .errno(),
        0
    );
    assert_eq!(g.getxattr(f.nodeid, "user.husk", 64), Err(libc::ENODATA));
}

#[test]
fn a_sparse_file_past_4_gib() {
    let mut g = Guest::new("big");
    let (f, fh) = g.create(ROOT, "big", libc::O_RDWR).unwrap();
    let offset = 5u64 << 30;
    assert_eq!(g.write(f.nodeid, fh, offset, b"HUSK-BIG"), Ok(8));
    assert_eq!(g.read(f.nodeid, fh, offset, 8).unwrap(), b"HUSK-BIG");
    assert_eq!(g.getattr(f.nodeid).unwrap().size, offset + 8);
    g.release(f.nodeid, fh);
    let meta = std::fs::metadata(g.share().join("big")).unwrap();
    assert_eq!(meta.len(), offset + 8);
    assert!(meta.blocks() < 1024, "sparse on the host too");
}

#[test]
fn a_megabyte_write_in_one_request() {
    let mut g = Guest::new("mib");
    let (f, fh) = g.create(ROOT, "m", libc::O_RDWR).unwrap();
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    assert_eq!(g.write(f.nodeid, fh, 0, &data), Ok(1 << 20));
    assert_eq!(g.read(f.nodeid, fh, 0, 1 << 20).unwrap(), data);
    g.release(f.nodeid, fh);
}

#[test]
fn fifos_can_be_made_but_not_opened() {
    let mut g = Guest::new("fifo");
    let fifo = g.mknod(ROOT, "p", libc::S_IFIFO | 0o644, 0).unwrap();
    assert_eq!(fifo.attr.mode & libc::S_IFMT, libc::S_IFIFO);
    assert_eq!(g.open(fifo.nodeid, libc::O_RDONLY), Err(libc::EOPNOTSUPP));
    assert_eq!(g.counters().unsupported, 1);
    // A whiteout (character device 0/0) is allowed; real devices are not.
    let whiteout = g.mknod(ROOT, "w", libc::S_IFCHR, 0).unwrap();
    assert_eq!(whiteout.attr.rdev, 0);
}

#[test]
fn release_of_an_unknown_handle_fails_cleanly() {
    let mut g = Guest::new("release");
    let args = ReleaseIn {
        fh: 12345,
        ..Default::default()
    };
    assert_eq!(
        g.call(op::RELEASE, ROOT, args.as_slice()).errno(),
        libc::EBADF
    );
    assert_eq!(g.fs.fds_in_use(), 0);
}
