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
