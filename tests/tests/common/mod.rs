//! Shared pieces of the VM tests: where the built artifacts are, and parsing what the
//! guest prints.

#![allow(dead_code)]

pub mod cri;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use husk_tests::testhost::{self, Job, JobOutput};

/// The files a VM test needs, as built by `kernel-config/build.sh`,
/// `scripts/build-guest.sh` and `cargo build`.
pub struct Artifacts {
    pub vmm: PathBuf,
    pub vmlinux: PathBuf,
    pub initramfs: PathBuf,
    /// The release of the guest kernel that `kernel-config/` built.
    pub kernel_release: String,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The directory holding the workspace's binaries for this test build.
pub fn bin_dir() -> PathBuf {
    // Integration tests run from target/<profile>/deps/.
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .to_path_buf()
}

/// `build/guest/` (or `$HUSK_BUILD_DIR/guest/`): the guest kernel, initramfs and probe.
fn guest_build_dir() -> PathBuf {
    std::env::var_os("HUSK_BUILD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("build"))
        .join("guest")
}

fn need_file(p: PathBuf, how: &str) -> PathBuf {
    assert!(p.is_file(), "{} is missing: run {how}", p.display());
    p
}

/// The static `husk-probe` that container images carry, or a panic naming the build step.
pub fn probe() -> PathBuf {
    need_file(
        guest_build_dir().join("husk-probe"),
        "scripts/build-guest.sh",
    )
}

impl Artifacts {
    /// Finds the artifacts, or panics saying which build step is missing.
    pub fn locate() -> Self {
        let build = guest_build_dir();
        let need = need_file;
        let vmm = need(bin_dir().join("husk-vmm"), "cargo build -p husk-vmm");
        let vmlinux = need(build.join("vmlinux"), "kernel-config/build.sh");
        let release_file = need(build.join("kernel-release"), "kernel-config/build.sh");
        let initramfs = need(build.join("initramfs.cpio"), "scripts/build-guest.sh");
        let kernel_release = std::fs::read_to_string(release_file)
            .expect("read kernel-release")
            .trim()
            .to_string();
        assert!(!kernel_release.is_empty(), "empty kernel-release");
        Self {
            vmm,
            vmlinux,
            initramfs,
            kernel_release,
        }
    }
}

/// The artifacts and the output of a test file's shared test-host run.
pub type SharedRun = (Artifacts, JobOutput);

/// A test file's shared run: its value, or why it failed.
pub type Shared<T> = OnceLock<Result<T, String>>;

/// The value `init` makes, made once for all the tests of a file. When `init` panics, the
/// failure is kept: that test fails with the whole message, and every later one fails at
/// once with its first line instead of running the job again (a plain `OnceLock` would
/// run `init` again, an uncounted retry that doubles a failing file's wall time).
pub fn once<T: Send + Sync>(cell: &'static Shared<T>, init: impl FnOnce() -> T) -> &'static T {
    let mut first = false;
    let got = cell.get_or_init(|| {
        first = true;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(init)).map_err(|payload| {
            payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic without a message".to_owned())
        })
    });
    match got {
        Ok(value) => value,
        Err(why) if first => panic!("{why}"),
        Err(why) => panic!(
            "this file's shared test-host run failed in an earlier test: {}",
            why.lines().next().unwrap_or_default()
        ),
    }
}

/// Runs the job `make_job` builds once per test binary (one L2 boot when emulated), for all
/// the tests in it; `None` after a loud SKIPPED line when there is no KVM host. Panics if the
/// job itself fails.
pub fn run_once(
    cell: &'static Shared<SharedRun>,
    test: &str,
    make_job: impl FnOnce(&Artifacts) -> Job,
) -> Option<&'static SharedRun> {
    testhost::kvm_host_or_skip(test)?;
    Some(once(cell, || {
        let artifacts = Artifacts::locate();
        let output = testhost::run(&make_job(&artifacts)).expect("test host run");
        eprintln!(
            "{test}: shared run on {}; host boot {:?}, total {:?}",
            output.kind.describe(),
            output.host_boot,
            output.total
        );
        assert!(output.success(), "job failed:\n{}", output.stdout);
        (artifacts, output)
    }))
}

/// The rest of the first line of `text` that starts with `prefix`, trimmed.
pub fn line_value<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{text}"))
        .trim()
}

/// The agent's readiness report.
#[derive(Debug, serde::Deserialize)]
pub struct Ready {
    pub kernel_release: String,
    pub uptime_ms: u64,
    pub vcpus: Option<u32>,
    pub ram_kib: Option<u64>,
    pub mem_total_kib: u64,
    pub agent_version: String,
}

/// Parses the `HUSK-READY {json}` line in `text`; panics if there is none or it is bad.
pub fn ready_line(text: &str) -> Ready {
    let json = text
        .lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix("HUSK-READY "))
        .unwrap_or_else(|| panic!("no HUSK-READY line in:\n{text}"));
    serde_json::from_str(json).unwrap_or_else(|e| panic!("bad HUSK-READY line {json:?}: {e}"))
}

/// The text between `BEGIN <name>` and `END <name> exit=<code>` in a job's output, and the
/// code.
pub fn section<'a>(out: &'a str, name: &str) -> (&'a str, i32) {
    let begin = format!("BEGIN {name}\n");
    let end = format!("END {name} exit=");
    let start = out
        .find(&begin)
        .unwrap_or_else(|| panic!("no section {name} in:\n{out}"))
        + begin.len();
    let len = out[start..]
        .find(&end)
        .unwrap_or_else(|| panic!("section {name} never ended in:\n{out}"));
    let body = &out[start..start + len];
    let code = out[start + len + end.len()..]
        .lines()
        .next()
        .and_then(|c| c.trim().parse().ok())
        .unwrap_or_else(|| panic!("section {name} has no exit code"));
    (body, code)
}

/// A minimal x86_64 ELF whose only instruction at 1 MiB is `ud2`: with the VMM's empty IDT
/// the guest triple-faults at once.
pub fn triple_fault_elf() -> Vec<u8> {
    const ENTRY: u64 = 0x10_0000;
    let code = [0x0f, 0x0b]; // ud2
    let mut elf = Vec::new();
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&ENTRY.to_le_bytes());
    elf.extend_from_slice(&64u64.to_le_bytes()); // program headers right after
    elf.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    elf.extend_from_slice(&0u32.to_le_bytes());
    elf.extend_from_slice(&64u16.to_le_bytes());
    elf.extend_from_slice(&56u16.to_le_bytes());
    elf.extend_from_slice(&1u16.to_le_bytes());
    elf.extend_from_slice(&[0; 6]);
    assert_eq!(elf.len(), 64);
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R+X
    elf.extend_from_slice(&120u64.to_le_bytes()); // offset of the code
    elf.extend_from_slice(&ENTRY.to_le_bytes());
    elf.extend_from_slice(&ENTRY.to_le_bytes());
    elf.extend_from_slice(&(code.len() as u64).to_le_bytes());
    elf.extend_from_slice(&(code.len() as u64).to_le_bytes());
    elf.extend_from_slice(&0x1000u64.to_le_bytes());
    assert_eq!(elf.len(), 120);
    elf.extend_from_slice(&code);
    elf
}

/// The static busybox the test host uses, for the containers' root file systems.
pub fn busybox() -> PathBuf {
    testhost::find_static_busybox().unwrap_or_else(|e| panic!("{e}"))
}

/// The body of the section `name` of a job's output, after checking that it exited with
/// `code` (the panic shows the section and the whole run).
pub fn step<'a>(out: &'a JobOutput, name: &str, code: i32) -> &'a str {
    let (body, rc) = section(&out.stdout, name);
    assert_eq!(
        rc, code,
        "{name} exited {rc}:\n{body}\n--- whole run ---\n{}",
        out.stdout
    );
    body
}
