//! OCI runtime specs and busybox root file systems for the container tests.
//!
//! [`spec`] gives what `runc spec` gives (namespaces, the standard mounts,
//! masked and read-only paths, the default capabilities), without a network
//! namespace: a container shares the VM's network unless it asks otherwise.
//! Tests change the JSON where they need to.

use std::io;
use std::os::unix::fs::symlink;
use std::path::Path;

use serde_json::{json, Value};

/// The busybox applets a test rootfs links.
pub const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "hostname", "ps", "ls", "sleep", "touch", "ping", "mkdir", "dd", "stty",
    "tty", "grep", "wc", "head", "id", "true", "false", "seq", "rm", "sync", "readlink", "kill",
    "env", "stat", "tail", "uname", "trap",
];

/// The capabilities runc gives a container by default.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// A busybox rootfs at `root`: `/bin/busybox` from `busybox`, the applets as
/// symlinks, the usual empty directories, `/etc/passwd` and `/etc/group`.
pub fn busybox_rootfs(root: &Path, busybox: &Path) -> io::Result<()> {
    for dir in [
        "bin", "etc", "proc", "sys", "dev", "tmp", "root", "vol", "data",
    ] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    std::fs::copy(busybox, root.join("bin/busybox"))?;
    for applet in APPLETS {
        let link = root.join("bin").join(applet);
        if link.symlink_metadata().is_err() {
            symlink("busybox", link)?;
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    std::fs::write(root.join("etc/group"), "root:x:0:\nnobody:x:65534:\n")?;
    Ok(())
}

/// The spec of a container running `args` with its rootfs at `root` (a guest
/// path) and hostname `hostname`.
pub fn spec(root: &str, hostname: &str, args: &[&str]) -> Value {
    let mut process = process(args, false);
    process["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]);
    json!({
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": root, "readonly": false},
        "hostname": hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "mode=1777"]}
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                {"type": "cgroup"}
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                "/proc/sysrq-trigger"
            ],
            "resources": {}
        }
    })
}

/// An OCI process for ExecProcess.
pub fn process(args: &[&str], terminal: bool) -> Value {
    json!({
        "terminal": terminal,
        "user": {"uid": 0, "gid": 0},
        "args": args,
        "env": ["PATH=/bin:/usr/bin:/sbin:/usr/sbin", "TERM=xterm"],
        "cwd": "/",
        "capabilities": {
            "bounding": DEFAULT_CAPS,
            "effective": DEFAULT_CAPS,
            "permitted": DEFAULT_CAPS,
        },
        "noNewPrivileges": true
    })
}

/// A seccomp profile that allows everything but `syscalls`, which fail with
/// EPERM.
pub fn seccomp_deny(syscalls: &[&str]) -> Value {
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": syscalls, "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_has_no_network_namespace_and_the_default_caps() {
        let s = spec("/r", "h", &["sh"]);
        let ns = s["linux"]["namespaces"].as_array().unwrap();
        assert!(ns.iter().all(|n| n["type"] != "network"));
        assert_eq!(
            s["process"]["capabilities"]["bounding"]
                .as_array()
                .unwrap()
                .len(),
            14
        );
        assert_eq!(s["hostname"], "h");
    }

    #[test]
    fn rootfs_has_busybox_and_applets() {
        let dir = std::env::temp_dir().join(format!("husk-oci-test-{}", std::process::id()));
        let bb = dir.join("fake-busybox");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&bb, b"#!fake").unwrap();
        busybox_rootfs(&dir.join("root"), &bb).unwrap();
        // Twice is fine (existing links are kept).
        busybox_rootfs(&dir.join("root"), &bb).unwrap();
        assert_eq!(
            std::fs::read_link(dir.join("root/bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert!(dir.join("root/etc/passwd").is_file());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
