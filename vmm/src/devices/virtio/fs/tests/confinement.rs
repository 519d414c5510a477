//! The guest stays inside the shared directory: names that are not one plain component,
//! symlinks that point out (to a directory of the test's and to the host's `/etc`), open flags
//! that would follow them, device nodes, and the descriptor budget.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use fuse_backend_rs::abi::fuse_abi::{CreateIn, OpenIn};
use vm_memory::ByteValued;

use super::*;

#[test]
fn names_must_be_one_plain_component() {
    let mut g = Guest::new("names");
    std::fs::create_dir(g.share().join("sub")).unwrap();
    let sub = g.lookup(ROOT, "sub").unwrap();
    for (parent, name) in [(ROOT, ".."), (ROOT, "."), (sub.nodeid, ".."), (ROOT, "")] {
        assert_eq!(
            g.lookup(parent, name).map(|e| e.nodeid),
            Err(libc::EINVAL),
            "LOOKUP {name:?} in {parent}"
        );
    }
    for name in ["../outside", "sub/..", "/etc", "a/b"] {
        assert_eq!(
            g.lookup(ROOT, name).map(|_| ()),
            Err(libc::EINVAL),
            "{name:?}"
        );
        assert_eq!(
            g.mkdir(ROOT, name).map(|_| ()),
            Err(libc::EINVAL),
            "{name:?}"
        );
        assert_eq!(
            g.create(ROOT, name, libc::O_RDWR).map(|_| ()),
            Err(libc::EINVAL),
            "{name:?}"
        );
        assert_eq!(
            g.symlink(ROOT, name, "x").map(|_| ()),
            Err(libc::EINVAL),
            "{name:?}"
        );
        assert_eq!(g.call(op::UNLINK, ROOT, &cstr(name)).errno(), libc::EINVAL);
    }
    let rename = body(&[&ROOT.to_le_bytes(), &cstr("sub"), &cstr("../moved")]);
    assert_eq!(g.call(op::RENAME, ROOT, &rename).errno(), libc::EINVAL);
    assert!(g.dirs.base.join("moved").symlink_metadata().is_err());
    assert_eq!(
        g.lookup(ROOT, &"n".repeat(256)).map(|_| ()),
        Err(libc::ENAMETOOLONG)
    );
    assert_eq!(g.counters().refused, 4 + 4 * 5 + 1 + 1);
}

/// A symlink the host put in the share, pointing at `target`: the guest gets the link, never
/// what it points to.
fn assert_link_is_not_followed(g: &mut Guest, name: &str, target: &std::path::Path) {
    std::os::unix::fs::symlink(target, g.share().join(name)).unwrap();
    let link = g.lookup(ROOT, name).unwrap();
    assert_eq!(
        link.attr.mode & libc::S_IFMT,
        libc::S_IFLNK,
        "{name} is a link"
    );
    let text = g.call(op::READLINK, link.nodeid, &[]);
    assert_eq!(text.body, target.as_os_str().as_encoded_bytes());
    // Nothing can be looked up, opened or listed through it.
    let inside = g.lookup(link.nodeid, "secret").map(|_| ());
    assert!(
        inside == Err(libc::ENOTDIR) || inside == Err(libc::ENOENT),
        "{inside:?}"
    );
    assert!(g.lookup(link.nodeid, "passwd").is_err());
    assert_eq!(g.open(link.nodeid, libc::O_RDONLY), Err(libc::EOPNOTSUPP));
    let opendir = OpenIn {
        flags: (libc::O_RDONLY | libc::O_DIRECTORY) as u32,
        fuse_flags: 0,
    };
    assert_ne!(
        g.call(op::OPENDIR, link.nodeid, opendir.as_slice()).errno(),
        0
    );
    // CREATE of the link's name must not open the target.
    assert!(g.create(ROOT, name, libc::O_RDONLY).is_err());
    assert!(g.create(ROOT, name, libc::O_RDWR | libc::O_TRUNC).is_err());
}

#[test]
fn a_symlink_to_a_host_directory_is_not_followed() {
    let mut g = Guest::new("link-out");
    let outside = g.dirs.outside.clone();
    let before = std::fs::metadata(&outside).unwrap();
    assert_link_is_not_followed(&mut g, "out", &outside);
    let link = g.lookup(ROOT, "out").unwrap();
    // Attribute and xattr changes act on the link (or fail), never on the directory.
    let _ = g.chmod(link.nodeid, 0o777);
    let _ = g.setxattr(link.nodeid, "trusted.husk", b"escaped");
    let _ = g.setxattr(link.nodeid, "user.husk", b"escaped");
    let after = std::fs::metadata(&outside).unwrap();
    assert_eq!(after.permissions().mode(), before.permissions().mode());
    assert_eq!(after.ctime(), before.ctime(), "directory untouched");
    assert_eq!(
        std::fs::read_to_string(outside.join("secret")).unwrap(),
        "host secret\n"
    );
}

#[test]
fn a_symlink_to_the_hosts_etc_is_not_followed() {
    let mut g = Guest::new("link-etc");
    assert_link_is_not_followed(&mut g, "etc", std::path::Path::new("/etc"));
    let link = g.lookup(ROOT, "etc").unwrap();
    assert!(g.getxattr(link.nodeid, "user.x", 64).is_err());
    // A relative link climbing out behaves the same.
    assert_link_is_not_followed(&mut g, "up", std::path::Path::new("../../../../../../etc"));
}

#[test]
fn open_flags_that_would_follow_or_escape_are_refused() {
    let mut g = Guest::new("flags");
    std::os::unix::fs::symlink(g.dirs.outside.join("secret"), g.share().join("l")).unwrap();
    std::fs::write(g.share().join("f"), "x").unwrap();
    let f = g.lookup(ROOT, "f").unwrap();
    for flags in [libc::O_PATH, libc::O_TMPFILE | libc::O_RDWR] {
        assert_eq!(g.open(f.nodeid, flags), Err(libc::EINVAL), "{flags:#o}");
    }
    // CREATE with O_PATH over the link would have opened the target without O_EXCL.
    for flags in [
        libc::O_PATH,
        libc::O_TMPFILE | libc::O_RDWR,
        libc::O_DIRECTORY,
    ] {
        let args = CreateIn {
            flags: flags as u32,
            mode: libc::S_IFREG | 0o644,
            umask: 0,
            fuse_flags: 0,
        };
        let reply = g.call(op::CREATE, ROOT, &body(&[args.as_slice(), &cstr("l")]));
        assert_eq!(reply.errno(), libc::EINVAL, "{flags:#o}");
    }
    // O_CREAT/O_EXCL/O_NOFOLLOW on OPEN are dropped, not honoured.
    let fh = g
        .open(f.nodeid, libc::O_RDONLY | libc::O_CREAT | libc::O_NOFOLLOW)
        .unwrap();
    g.release(f.nodeid, fh);
    assert_eq!(g.counters().refused, 5);
}

#[test]
fn device_nodes_are_refused() {
    let mut g = Guest::new("mknod");
    let dev = libc::makedev(8, 0) as u32;
    assert_eq!(
        g.mknod(ROOT, "sda", libc::S_IFBLK | 0o600, dev).map(|_| ()),
        Err(libc::EPERM)
    );
    assert_eq!(
        g.mknod(
            ROOT,
            "mem",
            libc::S_IFCHR | 0o600,
            libc::makedev(1, 1) as u32
        )
        .map(|_| ()),
        Err(libc::EPERM)
    );
    assert_eq!(
        g.mknod(ROOT, "dir", libc::S_IFDIR | 0o700, 0).map(|_| ()),
        Err(libc::EINVAL)
    );
    assert!(
        std::fs::read_dir(g.share()).unwrap().next().is_none(),
        "nothing created"
    );
    assert_eq!(g.counters().unsupported, 2);
}

#[test]
fn the_descriptor_budget_ends_in_emfile_and_recovers_after_forget() {
    let mut g = Guest::with_budget("budget", 16);
    let mut held = Vec::new();
    let mut refused = None;
    for i in 0..40 {
        match g.create(ROOT, &format!("f{i}"), libc::O_RDWR) {
            Ok((entry, fh)) => {
                g.release(entry.nodeid, fh);
                held.push(entry.nodeid);
            }
            Err(e) => {
                refused = Some((i, e));
                break;
            }
        }
    }
    let (at, errno) = refused.expect("the budget ran out");
    assert_eq!(errno, libc::EMFILE);
    assert!((14..=16).contains(&at), "refused at file {at}");
    assert!(g.fs.fds_in_use() <= 16);
    // Looking up a new inode (made on the host) fills the budget; the next one is refused,
    // while inodes the guest holds can still be looked up.
    std::fs::write(g.share().join("host-a"), "").unwrap();
    std::fs::write(g.share().join("host-b"), "").unwrap();
    assert!(g.lookup(ROOT, "host-a").is_ok());
    assert_eq!(g.fs.fds_in_use(), 16);
    assert_eq!(g.lookup(ROOT, "host-b").map(|_| ()), Err(libc::EMFILE));
    assert_eq!(g.lookup(ROOT, "f0").map(|e| e.nodeid), Ok(held[0]));
    assert!(g.counters().fd_budget_hits >= 2);
    // The guest forgets what it held: room again.
    g.forget(held[0], 2);
    for &nodeid in &held[1..4] {
        g.forget(nodeid, 1);
    }
    assert_eq!(g.fs.fds_in_use(), 12);
    assert!(g.lookup(ROOT, "host-b").is_ok());
    assert!(g.create(ROOT, "again", libc::O_RDWR).is_ok());
}

#[test]
fn readdirplus_entries_count_against_the_budget() {
    let mut g = Guest::with_budget("budget-readdir", 16);
    for i in 0..40 {
        std::fs::write(g.share().join(format!("f{i:02}")), "").unwrap();
    }
    let open = OpenIn {
        flags: (libc::O_RDONLY | libc::O_DIRECTORY) as u32,
        fuse_flags: 0,
    };
    let out: fuse_backend_rs::abi::fuse_abi::OpenOut =
        g.call(op::OPENDIR, ROOT, open.as_slice()).ok().unwrap();
    let read = fuse_backend_rs::abi::fuse_abi::ReadIn {
        fh: out.fh,
        size: 64 * 1024,
        ..Default::default()
    };
    let reply = g.call(op::READDIRPLUS, ROOT, read.as_slice());
    assert_eq!(reply.errno(), 0, "the entries that fit come back");
    assert!(!reply.body.is_empty());
    assert!(g.fs.fds_in_use() <= 16, "{} in use", g.fs.fds_in_use());
    assert!(g.counters().fd_budget_hits >= 1);
}
