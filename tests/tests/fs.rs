//! virtio-fs end to end: `husk run-vm --share DIR` boots a guest that mounts the share with
//! `mount -t virtiofs husk /mnt` and does what containers do to it (files, renames, links,
//! xattrs, locks, mmap, a file past 4 GiB), while the test host checks the results in the
//! directory itself; a symlink to the host's /etc and `..` above the mount must not lead out.
//! A second guest runs with a descriptor budget of 64. All cases share one test-host run.
//!
//! Busybox lacks xattr, lock and mmap tools: `husk-fs-check` (a tests-crate binary) does
//! those. It runs in the guest from the share itself, through the dynamic loader and
//! libraries the test copies next to it, which also exercises executable mmap over virtio-fs.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{line_value, run_once, section, SharedRun};
use husk_tests::testhost::Job;
use sha2::{Digest, Sha256};

/// The guest's part, written into the share as `.husk/guest.sh` by the test host's part.
const GUEST: &str = r#"
M=/mnt
X="$M/.husk/lib/ld.so --library-path $M/.husk/lib $M/.husk/husk-fs-check"
MARKER=$(cat $M/.husk/marker-name)
check() { name=$1; shift; if "$@"; then echo "CHECK $name ok"; else echo "CHECK $name FAILED: $*"; fi; }

echo "written in the guest" > $M/written-by-guest
check write-read [ "$(cat $M/written-by-guest)" = "written in the guest" ]
check host-file-visible [ "$(cat $M/host-file)" = "from the host" ]
echo one > $M/r1; echo two > $M/r2; mv $M/r1 $M/r2
check rename-over-existing [ "$(cat $M/r2)" = one ]
check rename-source-gone [ ! -e $M/r1 ]
echo x > $M/gone; rm $M/gone
check unlink [ ! -e $M/gone ]
mkdir $M/dir; echo in > $M/dir/a; mkdir $M/dir/sub; rmdir $M/dir/sub
check mkdir [ -f $M/dir/a ]
check rmdir [ ! -e $M/dir/sub ]
check dotdot-inside-share sh -c "cd $M/dir && cd .. && [ -f host-file ]"
echo hl > $M/hard1; ln $M/hard1 $M/hard2
check hardlink-count [ "$(stat -c %h $M/hard1)" = 2 ]
check hardlink-inode [ "$(stat -c %i $M/hard1)" = "$(stat -c %i $M/hard2)" ]
ln -s written-by-guest $M/sym
check symlink-readlink [ "$(readlink $M/sym)" = written-by-guest ]
check symlink-follow [ "$(cat $M/sym)" = "written in the guest" ]

echo HUSK-BIG | dd of=$M/big bs=1M seek=5120 conv=notrunc 2>/dev/null
check big-size [ "$(stat -c %s $M/big)" = 5368709129 ]
check big-read [ "$(dd if=$M/big bs=1M skip=5120 2>/dev/null)" = HUSK-BIG ]
check big-hole-reads-zeros [ "$(dd if=$M/big bs=4096 skip=1000 count=1 2>/dev/null | tr -d '\0' | wc -c)" = 0 ]

echo "SHA-GUEST-FROM-HOST $(sha256sum < $M/random-from-host | cut -d' ' -f1)"
head -c 16777216 /dev/urandom > $M/random-from-guest
echo "SHA-GUEST-FROM-GUEST $(sha256sum < $M/random-from-guest | cut -d' ' -f1)"

$X xattr $M/xattr-file
$X locks $M/lock-file
$X mmap $M/mmap-file

check etc-link-is-a-link [ -L $M/etc-link ]
check marker-not-in-guest-etc [ ! -e /etc/$MARKER ]
mkdir -p /etc; echo "guest etc" > /etc/husk-guest-marker
check etc-link-resolves-in-the-guest [ "$(cat $M/etc-link/husk-guest-marker)" = "guest etc" ]
check etc-rel-resolves-in-the-guest [ "$(cat $M/etc-rel/husk-guest-marker)" = "guest etc" ]
check etc-link-hides-host-etc [ ! -e $M/etc-link/$MARKER ]
check etc-rel-hides-host-etc [ ! -e $M/etc-rel/$MARKER ]
echo "ETC-LINK-READ $(cat $M/etc-link/$MARKER 2>&1)"
echo "ETC-LINK-LS $(ls $M/etc-link/ 2>&1 | tr '\n' ' ')"
cd $M; cd ..
check dotdot-is-guest-root [ "$(pwd)" = / ]
check dotdot-no-outside-marker [ ! -e $M/../outside-marker ]
check guest-root-is-not-the-hosts [ ! -e /husk-job.sh ]
echo "DOTDOT-LS $(ls $M/.. | tr '\n' ' ')"
echo GUEST-DONE
"#;

/// The test host's part.
const SCRIPT: &str = r#"
F="$HUSK_FILES"
export HUSK_KERNEL="$F/vmlinux" HUSK_INITRAMFS="$F/initramfs.cpio"
H="$F/husk"
B=/tmp/husk-fs-test; S=$B/share; S2=$B/share2
rm -rf $B; mkdir -p $S/.husk/lib $S2
run() { name=$1; shift; echo "BEGIN $name"; "$@" 2>&1; echo "END $name exit=$?"; }

# A marker in the test host's /etc that the guest must never see. Natively (on the real
# host) /etc is not ours to write: /etc/passwd plays the marker.
if [ "$HUSK_TESTHOST" = native ]; then MARKER=passwd
else MARKER=husk-host-marker; mkdir -p /etc; echo "host marker" > /etc/$MARKER; fi
echo $MARKER > $S/.husk/marker-name
echo "outside the share" > $B/outside-marker
echo "from the host" > $S/host-file
ln -s /etc $S/etc-link
ln -s ../../../../../../../../etc $S/etc-rel
cp "$F/husk-fs-check" $S/.husk/
cp "$RT_LD" $S/.husk/lib/ld.so
for lib in $RT_LIBS; do cp "$lib" $S/.husk/lib/; done
cat > $S/.husk/guest.sh <<'GUEST_EOF'
@GUEST@
GUEST_EOF
head -c 16777216 /dev/urandom > $S/random-from-host
echo "SHA-HOST-FROM-HOST $(sha256sum < $S/random-from-host | cut -d' ' -f1)"

run guest "$H" run-vm --vmm "$F/husk-vmm" --memory 512 --share $S -- \
    sh -c 'mkdir -p /mnt && mount -t virtiofs husk /mnt && exec sh /mnt/.husk/guest.sh'

echo "BEGIN host"
echo "HOST-WRITTEN $(cat $S/written-by-guest)"
echo "HOST-RENAMED $(cat $S/r2) $(ls $S/r1 2>/dev/null || echo r1-gone)"
echo "HOST-UNLINKED $(ls $S/gone 2>/dev/null || echo gone)"
echo "HOST-DIR $(ls $S/dir | tr '\n' ' ')"
echo "HOST-NLINK $(stat -c %h $S/hard1) $(stat -c %h $S/hard2)"
echo "HOST-SYMLINK $(readlink $S/sym)"
echo "HOST-BIG-SIZE $(stat -c %s $S/big)"
echo "HOST-BIG-TAIL $(dd if=$S/big bs=1M skip=5120 2>/dev/null)"
echo "HOST-BIG-BLOCKS $(stat -c %b $S/big)"
echo "HOST-SHA-FROM-GUEST $(sha256sum < $S/random-from-guest | cut -d' ' -f1)"
echo "HOST-XATTR $("$F/husk-fs-check" getxattr $S/xattr-file trusted.husk)"
echo "HOST-XATTR-GONE $("$F/husk-fs-check" getxattr $S/xattr-file trusted.gone)"
echo "HOST-MMAP $(sha256sum < $S/mmap-file | cut -d' ' -f1)"
echo "HOST-ETC-LINK $(readlink $S/etc-link)"
echo "END host exit=0"

run budget "$H" run-vm --vmm "$F/husk-vmm" --share $S2 --share-max-fds 64 -- sh -c '
    mkdir -p /mnt && mount -t virtiofs husk /mnt || exit 1
    i=0; while [ $i -lt 300 ]; do touch /mnt/f$i 2>/tmp/err || break; i=$((i+1)); done
    echo "CREATED $i"; sed "s/^/TOUCH-ERROR /" /tmp/err
    sync; echo 3 > /proc/sys/vm/drop_caches
    j=0; tries=0
    while [ $j -lt 20 ] && [ $tries -lt 120 ]; do
        if touch /mnt/g$j 2>/dev/null; then j=$((j+1)); else tries=$((tries+1)); sleep 0.5; fi
    done
    echo "AFTER-DROP $j"'
echo "HOST-BUDGET-FILES $(ls $S2 | wc -l)"
rm -rf $B
"#;

/// The dynamic loader and the libraries `bin` needs, from `ldd`.
fn runtime(bin: &std::path::Path) -> (PathBuf, Vec<PathBuf>) {
    let out = Command::new("ldd").arg(bin).output().expect("run ldd");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut loader = None;
    let mut libs = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [_, "=>", path, ..] if path.starts_with('/') => libs.push(PathBuf::from(path)),
            [path, ..] if path.starts_with('/') && path.contains("ld-linux") => {
                loader = Some(PathBuf::from(path))
            }
            _ => {}
        }
    }
    (loader.expect("a dynamic loader in ldd's output"), libs)
}

fn shared(test: &str) -> Option<&'static SharedRun> {
    static RUN: common::Shared<SharedRun> = common::Shared::new();
    run_once(&RUN, test, |a| {
        let bin = common::bin_dir();
        let check = PathBuf::from(env!("CARGO_BIN_EXE_husk-fs-check"));
        let (loader, libs) = runtime(&check);
        let libs: Vec<String> = libs.iter().map(|p| p.display().to_string()).collect();
        let script = format!(
            "RT_LD={}\nRT_LIBS=\"{}\"\n{}",
            loader.display(),
            libs.join(" "),
            SCRIPT.replace("@GUEST@", GUEST.trim())
        );
        Job::new(script)
            .file(&a.vmm, "husk-vmm")
            .file(bin.join("husk"), "husk")
            .file(&check, "husk-fs-check")
            .file(&a.vmlinux, "vmlinux")
            .file(&a.initramfs, "initramfs.cpio")
            .memory_mib(1024)
            .timeout(Duration::from_secs(1500))
    })
}

/// The guest's section, after checking that it ran to the end.
fn guest_text(out: &SharedRun) -> &str {
    let (text, code) = section(&out.1.stdout, "guest");
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("GUEST-DONE"),
        "the guest script ended early:\n{text}"
    );
    text
}

fn host_text(out: &SharedRun) -> &str {
    section(&out.1.stdout, "host").0
}

fn assert_checks(text: &str, names: &[&str]) {
    for name in names {
        assert!(
            text.lines().any(|l| l.trim() == format!("CHECK {name} ok")),
            "CHECK {name} did not pass:\n{text}"
        );
    }
}

#[test]
fn files_written_in_the_guest_reach_the_host_intact() {
    let Some(out) = shared("files_written_in_the_guest_reach_the_host_intact") else {
        return;
    };
    let (guest, host) = (guest_text(out), host_text(out));
    assert_checks(guest, &["write-read", "host-file-visible"]);
    assert_eq!(line_value(host, "HOST-WRITTEN "), "written in the guest");
    let from_host = line_value(&out.1.stdout, "SHA-HOST-FROM-HOST ");
    assert_eq!(from_host.len(), 64);
    assert_eq!(
        line_value(guest, "SHA-GUEST-FROM-HOST "),
        from_host,
        "host → guest"
    );
    let from_guest = line_value(guest, "SHA-GUEST-FROM-GUEST ");
    assert_eq!(from_guest.len(), 64);
    assert_eq!(
        line_value(host, "HOST-SHA-FROM-GUEST "),
        from_guest,
        "guest → host"
    );
}

#[test]
fn rename_unlink_and_directories() {
    let Some(out) = shared("rename_unlink_and_directories") else {
        return;
    };
    let (guest, host) = (guest_text(out), host_text(out));
    assert_checks(
        guest,
        &[
            "rename-over-existing",
            "rename-source-gone",
            "unlink",
            "mkdir",
            "rmdir",
            "dotdot-inside-share",
        ],
    );
    assert_eq!(line_value(host, "HOST-RENAMED "), "one r1-gone");
    assert_eq!(line_value(host, "HOST-UNLINKED "), "gone");
    assert_eq!(line_value(host, "HOST-DIR "), "a");
}

#[test]
fn hard_links_and_symlinks() {
    let Some(out) = shared("hard_links_and_symlinks") else {
        return;
    };
    let (guest, host) = (guest_text(out), host_text(out));
    assert_checks(
        guest,
        &[
            "hardlink-count",
            "hardlink-inode",
            "symlink-readlink",
            "symlink-follow",
        ],
    );
    assert_eq!(line_value(host, "HOST-NLINK "), "2 2");
    assert_eq!(line_value(host, "HOST-SYMLINK "), "written-by-guest");
}

#[test]
fn xattrs_locks_and_mmap() {
    let Some(out) = shared("xattrs_locks_and_mmap") else {
        return;
    };
    let (guest, host) = (guest_text(out), host_text(out));
    assert_checks(
        guest,
        &[
            "xattr-set-get",
            "xattr-list",
            "xattr-remove",
            "flock-exclusive",
            "fcntl-posix-lock",
            "mmap-shared-write",
        ],
    );
    assert_eq!(line_value(host, "HOST-XATTR "), "v1");
    assert!(
        line_value(host, "HOST-XATTR-GONE ").contains("No data"),
        "{host}"
    );
    let pattern: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let expected: String = Sha256::digest(&pattern)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        line_value(host, "HOST-MMAP "),
        expected,
        "mmap writes on the host"
    );
}

#[test]
fn a_sparse_file_past_4_gib() {
    let Some(out) = shared("a_sparse_file_past_4_gib") else {
        return;
    };
    let (guest, host) = (guest_text(out), host_text(out));
    assert_checks(guest, &["big-size", "big-read", "big-hole-reads-zeros"]);
    assert_eq!(line_value(host, "HOST-BIG-SIZE "), "5368709129");
    assert_eq!(line_value(host, "HOST-BIG-TAIL "), "HUSK-BIG");
    let blocks: u64 = line_value(host, "HOST-BIG-BLOCKS ").parse().unwrap();
    assert!(blocks < 1024, "sparse on the host: {blocks} blocks");
}

#[test]
fn a_symlink_to_the_hosts_etc_does_not_reveal_it() {
    let Some(out) = shared("a_symlink_to_the_hosts_etc_does_not_reveal_it") else {
        return;
    };
    let (guest, host) = (guest_text(out), host_text(out));
    assert_checks(
        guest,
        &[
            "etc-link-is-a-link",
            "marker-not-in-guest-etc",
            "etc-link-hides-host-etc",
            "etc-rel-hides-host-etc",
            "etc-link-resolves-in-the-guest",
            "etc-rel-resolves-in-the-guest",
        ],
    );
    assert_eq!(line_value(host, "HOST-ETC-LINK "), "/etc");
    let read = line_value(guest, "ETC-LINK-READ ");
    assert!(
        !read.contains("host marker"),
        "the guest read the host's /etc: {read}"
    );
    assert!(read.contains("No such file"), "{read}");
}

#[test]
fn dotdot_above_the_mount_stays_in_the_guest() {
    let Some(out) = shared("dotdot_above_the_mount_stays_in_the_guest") else {
        return;
    };
    let guest = guest_text(out);
    assert_checks(
        guest,
        &[
            "dotdot-is-guest-root",
            "dotdot-no-outside-marker",
            "guest-root-is-not-the-hosts",
        ],
    );
    let listing = line_value(guest, "DOTDOT-LS ");
    assert!(listing.split(' ').any(|n| n == "mnt"), "{listing}");
    assert!(!listing.contains("outside-marker"), "{listing}");
}

#[test]
fn the_descriptor_budget_gives_emfile_and_recovers() {
    let Some(out) = shared("the_descriptor_budget_gives_emfile_and_recovers") else {
        return;
    };
    let (text, code) = section(&out.1.stdout, "budget");
    assert_eq!(code, 0, "{text}");
    let created: u32 = line_value(text, "CREATED ").parse().unwrap();
    assert!(
        (32..64).contains(&created),
        "created {created} files:\n{text}"
    );
    assert!(text.contains("Too many open files"), "{text}");
    assert_eq!(line_value(text, "AFTER-DROP "), "20", "{text}");
    let on_host: u32 = line_value(&out.1.stdout, "HOST-BUDGET-FILES ")
        .parse()
        .unwrap();
    assert_eq!(on_host, created + 20);
}

/// `husk-vmm` refuses a bad share before touching KVM, in one line. Runs on any machine.
#[test]
fn husk_vmm_refuses_a_bad_share() {
    let bin = common::bin_dir().join("husk-vmm");
    assert!(
        bin.is_file(),
        "{} missing: run cargo build -p husk-vmm",
        bin.display()
    );
    let cases: [(&[&str], &str); 4] = [
        (
            &["--fs-share", "/nonexistent/share"],
            "virtio-fs share \"/nonexistent/share\" does not exist or is not a directory",
        ),
        (
            &["--fs-share", "/proc/self/exe"],
            "virtio-fs share \"/proc/self/exe\" does not exist or is not a directory",
        ),
        (
            &["--fs-share", "/tmp", "--fs-tag", "has space"],
            "virtio-fs tag must be 1 to 36 printable ASCII characters",
        ),
        (
            &["--fs-share", "/tmp", "--fs-max-fds", "3"],
            "virtio-fs descriptor limit must be between 16 and 1000000, got 3",
        ),
    ];
    for (args, expected) in cases {
        let out = Command::new(&bin)
            .args([
                "--kernel",
                "/proc/self/exe",
                "--kvm-device",
                "/nonexistent/kvm",
            ])
            .args(args)
            .output()
            .expect("run husk-vmm");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line expected:\n{stderr}");
        assert!(lines[0].starts_with("husk-vmm: error: "), "{stderr}");
        assert!(
            lines[0].contains(expected),
            "{args:?}: want {expected:?} in {stderr}"
        );
    }
}
