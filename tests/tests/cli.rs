//! `husk-vmm` refuses bad configurations with one clear line and exit status 1, before it
//! touches KVM. These run on any machine.

mod common;

use std::process::Command;

fn vmm(args: &[&str]) -> (i32, String) {
    let bin = common::bin_dir().join("husk-vmm");
    assert!(
        bin.is_file(),
        "{} missing: run cargo build -p husk-vmm",
        bin.display()
    );
    let out = Command::new(bin).args(args).output().expect("run husk-vmm");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), stderr)
}

fn assert_one_error_line(args: &[&str], expected: &str) {
    let (code, stderr) = vmm(args);
    assert_eq!(code, 1, "{args:?}: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: exactly one line expected:\n{stderr}"
    );
    assert!(lines[0].starts_with("husk-vmm: error: "), "{stderr}");
    assert!(
        lines[0].contains(expected),
        "{args:?}: want {expected:?} in {stderr}"
    );
}

#[test]
fn missing_kernel() {
    assert_one_error_line(
        &["--kernel", "/nonexistent/vmlinux"],
        "kernel image \"/nonexistent/vmlinux\" does not exist",
    );
}

#[test]
fn missing_initramfs() {
    assert_one_error_line(
        &[
            "--kernel",
            "/proc/self/exe",
            "--initramfs",
            "/nonexistent/i.cpio",
        ],
        "initramfs \"/nonexistent/i.cpio\" does not exist",
    );
}

#[test]
fn zero_vcpus() {
    assert_one_error_line(
        &["--kernel", "/proc/self/exe", "--vcpus", "0"],
        "vCPU count must be between 1 and 32, got 0",
    );
}

#[test]
fn too_little_memory() {
    assert_one_error_line(
        &["--kernel", "/proc/self/exe", "--memory", "16"],
        "guest memory must be at least 64 MiB, got 16 MiB",
    );
}

#[test]
fn bad_console() {
    assert_one_error_line(
        &["--kernel", "/proc/self/exe", "--console", "tty"],
        "console must be stdout, none or file:PATH",
    );
}

#[test]
fn no_kvm_device() {
    assert_one_error_line(
        &[
            "--kernel",
            "/proc/self/exe",
            "--kvm-device",
            "/nonexistent/kvm",
        ],
        "cannot open /nonexistent/kvm",
    );
}

const K: [&str; 2] = ["--kernel", "/proc/self/exe"];
const MAC: [&str; 2] = ["--net-mac", "02:00:00:00:00:01"];

fn with<'a>(parts: &[&[&'a str]]) -> Vec<&'a str> {
    parts.concat()
}

#[test]
fn net_options_without_a_tap() {
    assert_one_error_line(
        &with(&[&K, &MAC]),
        "--net-mac and --net-mtu need --net-tap or --net-tap-fd",
    );
    assert_one_error_line(
        &with(&[&K, &["--net-mtu", "1500"]]),
        "--net-mac and --net-mtu need --net-tap or --net-tap-fd",
    );
}

#[test]
fn net_tap_without_a_mac() {
    assert_one_error_line(
        &with(&[&K, &["--net-tap", "tap0"]]),
        "--net-mac is required with --net-tap or --net-tap-fd",
    );
}

#[test]
fn net_two_taps() {
    assert_one_error_line(
        &with(&[&K, &MAC, &["--net-tap", "tap0", "--net-tap-fd", "3"]]),
        "--net-tap and --net-tap-fd are mutually exclusive",
    );
}

#[test]
fn net_bad_macs() {
    for mac in [
        "zz",
        "02:00:00:00:00",
        "01:00:5e:00:00:01",
        "00:00:00:00:00:00",
    ] {
        assert_one_error_line(
            &with(&[&K, &["--net-tap", "tap0", "--net-mac", mac]]),
            &format!(
                "--net-mac must be a unicast MAC address like 02:00:00:00:00:01, got \"{mac}\""
            ),
        );
    }
}

#[test]
fn net_mtu_out_of_range() {
    for mtu in ["67", "65536"] {
        assert_one_error_line(
            &with(&[&K, &MAC, &["--net-tap", "tap0", "--net-mtu", mtu]]),
            &format!("--net-mtu must be between 68 and 65535, got {mtu}"),
        );
    }
}

#[test]
fn net_bad_tap_name() {
    for name in ["a/b", "0123456789abcdef", "has space"] {
        assert_one_error_line(
            &with(&[&K, &MAC, &["--net-tap", name]]),
            &format!("--net-tap must be an interface name of 1 to 15 characters without '/', ':' or spaces, got \"{name}\""),
        );
    }
}

#[test]
fn net_tap_fd_stdio_or_closed() {
    assert_one_error_line(
        &with(&[&K, &MAC, &["--net-tap-fd", "2"]]),
        "--net-tap-fd must be 3 or more (0, 1 and 2 are stdio), got 2",
    );
    assert_one_error_line(
        &with(&[&K, &MAC, &["--net-tap-fd", "987654"]]),
        "--net-tap-fd 987654 is not an open file descriptor",
    );
}

/// An inherited descriptor that is not a tap is refused before KVM is touched.
#[test]
fn net_tap_fd_not_a_tap() {
    let bin = common::bin_dir().join("husk-vmm");
    // sh opens /dev/null as descriptor 3 and execs husk-vmm with it.
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"exec "$0" "$@" 3</dev/null"#)
        .arg(&bin)
        .args(with(&[
            &K,
            &MAC,
            &["--net-tap-fd", "3", "--kvm-device", "/nonexistent/kvm"],
        ]))
        .output()
        .expect("run husk-vmm through sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(
            "husk-vmm: error: virtio-net device: file descriptor 3 is not an attached tap: "
        ),
        "{stderr}"
    );
}

#[test]
fn not_a_vmlinux() {
    // Only meaningful where /dev/kvm opens; elsewhere the KVM error comes first.
    if std::fs::File::open("/dev/kvm").is_err() {
        eprintln!("SKIPPED: not_a_vmlinux: /dev/kvm cannot be opened here");
        return;
    }
    let (code, stderr) = vmm(&["--kernel", "/etc/hostname"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("is not an x86_64 ELF"), "{stderr}");
}
