//! A rename on the host racing the guest's lookups, opens and creates: the directory the guest
//! walks through is swapped, again and again, with a symlink to a directory outside the share
//! (`docs/virtio-fs.md`, "races with rename"). Names are resolved one component at a time from
//! held descriptors, with `O_NOFOLLOW`, so the guest reaches either the real directory (under
//! whichever name it has now) or the link itself, never what the link points to. A path-based
//! reader on the host, racing the same way, does read the outside: the control that shows the
//! race is real.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::*;

/// What the directory inside the share holds, as `secret`.
const INSIDE: &[u8] = b"inside\n";
/// What `Dirs::new` puts in `outside/secret`.
const OUTSIDE: &[u8] = b"host secret\n";
/// At least this many guest walks, and more until every case was seen.
const MIN_ROUNDS: u32 = 3000;
const DEADLINE: Duration = Duration::from_secs(60);

/// Swaps two names atomically (`renameat2(RENAME_EXCHANGE)`).
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    let a = CString::new(a.as_os_str().as_bytes())?;
    let b = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both pointers are NUL-terminated strings that live across the call, which only
    // reads them.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A share with `d/` (holding `secret` = [`INSIDE`]) and `l -> <outside>` (whose `secret` is
/// [`OUTSIDE`]).
fn setup(name: &str) -> Guest {
    let g = Guest::new(name);
    std::fs::create_dir(g.share().join("d")).unwrap();
    std::fs::write(g.share().join("d/secret"), INSIDE).unwrap();
    std::os::unix::fs::symlink(&g.dirs.outside, g.share().join("l")).unwrap();
    g
}

/// Looks up `secret` in the directory `dir`, opens and reads it; returns the bytes.
fn read_secret(g: &mut Guest, dir: u64) -> Vec<u8> {
    let f = g
        .lookup(dir, "secret")
        .expect("a directory the guest holds keeps its file");
    let fh = g.open(f.nodeid, libc::O_RDONLY).expect("OPEN secret");
    let data = g.read(f.nodeid, fh, 0, 4096).expect("READ secret");
    g.release(f.nodeid, fh);
    g.forget(f.nodeid, 1);
    data
}

#[test]
fn a_held_directory_moved_and_replaced_by_an_outside_link_stays_the_directory() {
    let mut g = setup("rename-held");
    let d = g.lookup(ROOT, "d").unwrap();
    assert_eq!(d.attr.mode & libc::S_IFMT, libc::S_IFDIR);
    exchange(&g.share().join("d"), &g.share().join("l")).unwrap();
    // The host now sees the outside under d/.
    assert_eq!(std::fs::read(g.share().join("d/secret")).unwrap(), OUTSIDE);
    // The guest's held inode moved with the directory (now named l).
    assert_eq!(read_secret(&mut g, d.nodeid), INSIDE);
    let (made, fh) = g.create(d.nodeid, "made", libc::O_RDWR).unwrap();
    g.release(made.nodeid, fh);
    assert!(g.share().join("l/made").is_file());
    // A fresh lookup of d gets the link, and nothing through it.
    let link = g.lookup(ROOT, "d").unwrap();
    assert_eq!(link.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    assert!(g.lookup(link.nodeid, "secret").is_err());
    assert!(g.create(link.nodeid, "escaped", libc::O_RDWR).is_err());
    assert_outside_untouched(&g);
}

/// What the racing walks saw.
#[derive(Debug, Default)]
struct Tally {
    rounds: u32,
    /// LOOKUP d gave the directory / the link.
    dirs: u32,
    links: u32,
    /// Files the guest created in the directory it held.
    created: u32,
    /// Host-side path reads of `d/secret` that got the outside's file (the control).
    host_path_escapes: u32,
}

impl Tally {
    fn all_seen(&self) -> bool {
        self.rounds >= MIN_ROUNDS && self.dirs > 0 && self.links > 0 && self.host_path_escapes > 0
    }
}

/// One guest walk: LOOKUP d, then through it LOOKUP, OPEN and READ `secret`, and CREATE a file.
fn walk(g: &mut Guest, t: &mut Tally) {
    let d = g
        .lookup(ROOT, "d")
        .expect("d exists under one of its two names");
    match d.attr.mode & libc::S_IFMT {
        libc::S_IFDIR => {
            t.dirs += 1;
            // The swap may land between any two of these requests.
            let data = read_secret(g, d.nodeid);
            assert_eq!(
                data, INSIDE,
                "a read raced with rename (round {})",
                t.rounds
            );
            let name = format!("new{}", t.rounds);
            let (made, fh) = g
                .create(d.nodeid, &name, libc::O_RDWR)
                .expect("CREATE in the held directory");
            g.release(made.nodeid, fh);
            g.forget(made.nodeid, 1);
            t.created += 1;
        }
        libc::S_IFLNK => {
            t.links += 1;
            assert!(
                g.lookup(d.nodeid, "secret").is_err(),
                "lookup through the link"
            );
            assert!(
                g.open(d.nodeid, libc::O_RDONLY).is_err(),
                "OPEN of the link"
            );
            assert!(
                g.create(d.nodeid, "escaped", libc::O_RDWR).is_err(),
                "CREATE through the link"
            );
        }
        other => panic!("d has mode {other:#o}"),
    }
    g.forget(d.nodeid, 1);
}

fn assert_outside_untouched(g: &Guest) {
    let names: Vec<_> = std::fs::read_dir(&g.dirs.outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["secret"], "nothing was created outside");
    assert_eq!(
        std::fs::read(g.dirs.outside.join("secret")).unwrap(),
        OUTSIDE
    );
}

#[test]
fn lookups_and_opens_racing_a_swap_with_an_outside_link_never_leave_the_share() {
    let mut g = setup("rename-race");
    let (d, l) = (g.share().join("d"), g.share().join("l"));
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let racer = {
        let (stop, swaps) = (Arc::clone(&stop), Arc::clone(&swaps));
        let (d, l) = (d.clone(), l.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                exchange(&d, &l).expect("RENAME_EXCHANGE");
                swaps.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let start = Instant::now();
    let mut t = Tally::default();
    while !t.all_seen() && start.elapsed() < DEADLINE {
        t.rounds += 1;
        walk(&mut g, &mut t);
        if std::fs::read(d.join("secret")).is_ok_and(|b| b == OUTSIDE) {
            t.host_path_escapes += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    racer.join().unwrap();
    let swaps = swaps.load(Ordering::Relaxed);
    assert!(
        t.all_seen(),
        "the race was not exercised: {t:?}, {swaps} swaps"
    );
    assert!(swaps > 100, "{swaps} swaps");
    assert_outside_untouched(&g);
    // Every file the guest created is in the real directory, under whichever name it has now.
    let real = if d.symlink_metadata().unwrap().is_dir() {
        d
    } else {
        l
    };
    let made = std::fs::read_dir(&real).unwrap().count() as u32;
    assert_eq!(made, t.created + 1, "{t:?}");
    assert_eq!(std::fs::read(real.join("secret")).unwrap(), INSIDE);
    assert_eq!(g.counters().fd_budget_hits, 0);
}
