//! The KVM test host: "run this script on a machine whose /dev/kvm boots stock
//! Linux guests".
//!
//! - [`HostKind::Native`]: this machine's own VMX/SVM KVM. The script runs here.
//! - [`HostKind::Emulated`]: this machine's /dev/kvm is PVM (or missing), so the
//!   script runs inside "L2", a QEMU software-emulated (TCG) x86 machine with an
//!   AMD EPYC CPU, booting Debian's stock kernel with `kvm-amd` loaded. Our VMM then
//!   boots its guest ("L3") under L2's nested KVM.
//!
//! Tests call [`kvm_host_or_skip`] (or [`require_kvm_host!`](crate::require_kvm_host)),
//! then [`run`] a [`Job`]. See `docs/testing.md`.

mod cpio;
mod detect;
#[cfg(test)]
mod e2e;
mod emulated;
mod kmod;
mod ldd;
mod native;
mod protocol;
mod tempdir;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use detect::{detect, detect_quiet, find_static_busybox};

/// Which kind of machine runs the jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKind {
    /// This machine's /dev/kvm is VMX/SVM KVM; `module` is `kvm_intel` or `kvm_amd`.
    Native { module: String },
    /// A QEMU TCG machine (L2) with nested KVM.
    Emulated(EmulatedHost),
}

/// How the emulated test host is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmulatedHost {
    /// The prepared L2 kernel directory (`vmlinuz`, `lib/modules/<release>/`),
    /// as `tests/testhost/setup.sh` lays it out.
    pub l2_kernel: PathBuf,
    /// The image QEMU boots: `vmlinux` (ELF, PVH entry, nothing to decompress
    /// under emulation) if setup.sh could extract it, else `vmlinuz`.
    pub boot_image: PathBuf,
    /// The L2 kernel release, e.g. `6.1.0-56-amd64`.
    pub kernel_release: String,
    /// The `qemu-system-x86_64` binary.
    pub qemu: PathBuf,
    /// A statically linked busybox for L2's initramfs.
    pub busybox: PathBuf,
    /// Why this machine cannot run the jobs natively, e.g. "/dev/kvm is PVM".
    pub reason: String,
}

impl HostKind {
    /// One line for humans: "native KVM (kvm_intel)", or
    /// "emulated QEMU TCG test host (L2 kernel 6.1.0-56-amd64), because /dev/kvm is PVM".
    pub fn describe(&self) -> String {
        match self {
            HostKind::Native { module } => format!("native KVM ({module})"),
            HostKind::Emulated(e) => format!(
                "emulated QEMU TCG test host (L2 kernel {}), because {}",
                e.kernel_release, e.reason
            ),
        }
    }

    pub fn is_emulated(&self) -> bool {
        matches!(self, HostKind::Emulated(_))
    }
}

/// A host file the job can use, at `$HUSK_FILES/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFile {
    pub host_path: PathBuf,
    /// A plain file name: no '/', not empty, not "." or "..".
    pub name: String,
}

/// A shell script to run on the KVM host, and what it needs.
///
/// The script runs with `sh` (busybox ash in L2, the host's /bin/sh natively),
/// with its working directory and `$HUSK_FILES` set to the directory holding the
/// files, `$HUSK_TESTHOST` set to `native` or `emulated`, stdin from /dev/null, and
/// stdout and stderr merged. In L2 it runs as root (PID 1's child) with /proc, /sys,
/// /dev, /dev/pts, /dev/shm, cgroup2, a tmpfs /tmp and /run, and /dev/kvm.
#[derive(Debug, Clone)]
pub struct Job {
    pub script: String,
    pub files: Vec<JobFile>,
    /// Kill the job (and the test host) after this long. Waiting for a free test
    /// host slot does not count.
    pub timeout: Duration,
    /// L2's memory in MiB.
    pub memory_mib: u32,
    /// L2's vCPUs (emulated host only). One by default: on 2026-12-07 ten runs of
    /// `ctr_husk`'s 50 cycles with two lost 10 of 12 attempts to L2 wedges, soft
    /// lockups and guest hangs, and two runs with one lost none (see
    /// `docs/testing.md`, "What the harness retries").
    pub cpus: u32,
    /// Extra kernel modules to load in L2 (with their dependencies), e.g. "tun".
    pub modules: Vec<String>,
    /// Emulated only: share this machine's root file system into L2 read-only over
    /// 9p, and run the script chrooted in a writable (tmpfs overlay) view of it, so
    /// that any host program can run. `$HUSK_FILES` is then `/husk` in that view,
    /// and writes stay in L2. Costs about 1 s more boot (virtio-pci, 9p, overlay
    /// modules). Natively the script runs on this machine anyway: no effect there.
    pub host_root: bool,
    /// The job makes a husk guest triple-fault on purpose, so a triple fault in its output
    /// is not taken for the emulated host failing (see [`Job::guest_faults_expected`]).
    pub guest_faults_expected: bool,
}

impl Job {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

    pub fn new(script: impl Into<String>) -> Self {
        Self {
            script: script.into(),
            files: Vec::new(),
            timeout: Self::DEFAULT_TIMEOUT,
            memory_mib: 2048,
            cpus: 1,
            modules: Vec::new(),
            guest_faults_expected: false,
            host_root: false,
        }
    }

    /// Adds a host file as `$HUSK_FILES/<name>`.
    pub fn file(mut self, host_path: impl Into<PathBuf>, name: impl Into<String>) -> Self {
        self.files.push(JobFile {
            host_path: host_path.into(),
            name: name.into(),
        });
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    pub fn module(mut self, name: impl Into<String>) -> Self {
        self.modules.push(name.into());
        self
    }

    pub fn host_root(mut self, on: bool) -> Self {
        self.host_root = on;
        self
    }

    /// Says that the job triple-faults a guest on purpose. Otherwise, on the emulated
    /// host, a guest triple fault in the job's output earns the job a retry.
    pub fn guest_faults_expected(mut self) -> Self {
        self.guest_faults_expected = true;
        self
    }

    fn validate(&self) -> Result<(), TestHostError> {
        for f in &self.files {
            let n = f.name.as_str();
            if n.is_empty() || n == "." || n == ".." || n.contains('/') || n.contains('\0') {
                return Err(TestHostError::InvalidJob(format!("bad file name {n:?}")));
            }
            if !f.host_path.exists() {
                return Err(TestHostError::InvalidJob(format!(
                    "{} does not exist",
                    f.host_path.display()
                )));
            }
        }
        let mut names: Vec<&str> = self.files.iter().map(|f| f.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(TestHostError::InvalidJob(format!(
                "file name {:?} used twice",
                w[0]
            )));
        }
        if self.timeout.is_zero() || self.cpus == 0 || self.memory_mib < 256 {
            return Err(TestHostError::InvalidJob(
                "timeout and cpus must be > 0, memory_mib >= 256".into(),
            ));
        }
        Ok(())
    }
}

/// Where L2 spent its time before the job started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L2Timings {
    /// QEMU start until L2's `/init` ran (firmware, kernel, initramfs unpack).
    pub to_init: Duration,
    /// Loading the KVM (and other) modules.
    pub module_load: Duration,
}

/// What a finished job left.
#[derive(Debug, Clone)]
pub struct JobOutput {
    pub kind: HostKind,
    /// The script's stdout and stderr, merged; no kernel console noise.
    pub stdout: String,
    pub exit_code: i32,
    /// Host start until the script started: zero natively.
    pub host_boot: Duration,
    /// The breakdown of `host_boot` (emulated only).
    pub l2: Option<L2Timings>,
    /// From the call until the host was gone again.
    pub total: Duration,
    /// L2's serial console (kernel messages, init's markers); empty natively.
    pub console: String,
}

impl JobOutput {
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TestHostError {
    /// Neither native KVM nor the emulated test host can be had here.
    #[error("no KVM test host: {0}")]
    Unavailable(String),
    #[error("invalid job: {0}")]
    InvalidJob(String),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "job timed out after {timeout:?}\n--- job output (tail) ---\n{output_tail}\n--- console (tail) ---\n{console_tail}"
    )]
    Timeout {
        timeout: Duration,
        output_tail: String,
        console_tail: String,
    },
    #[error("test host failed: {reason}\n--- console (tail) ---\n{console_tail}")]
    HostFailed {
        reason: String,
        console_tail: String,
    },
}

impl TestHostError {
    fn io(what: impl Into<String>, source: io::Error) -> Self {
        TestHostError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Runs `job` on the KVM host [`detect`] finds.
pub fn run(job: &Job) -> Result<JobOutput, TestHostError> {
    run_streaming(job, &mut io::sink())
}

/// Like [`run`], and copies the job's output to `out` as it arrives.
pub fn run_streaming(job: &Job, out: &mut dyn Write) -> Result<JobOutput, TestHostError> {
    let kind = detect()?;
    run_on(&kind, job, out)
}

/// Runs `job` on the given host.
pub fn run_on(kind: &HostKind, job: &Job, out: &mut dyn Write) -> Result<JobOutput, TestHostError> {
    job.validate()?;
    match kind {
        HostKind::Native { .. } => native::run(kind, job, out),
        HostKind::Emulated(host) => {
            let mut attempt = 1;
            loop {
                let result = emulated::run(kind, host, job, out);
                let Some(why) = emulated_host_fault(job, &result) else {
                    return result;
                };
                if attempt == EMULATED_ATTEMPTS {
                    let _ = writeln!(
                        io::stderr(),
                        "husk testhost: WARNING: the emulated test host failed ({why}) \
                         in all {EMULATED_ATTEMPTS} attempts; giving up"
                    );
                    return result;
                }
                let _ = writeln!(
                    io::stderr(),
                    "husk testhost: WARNING: the emulated test host failed ({why}); \
                     retrying the job (attempt {} of {EMULATED_ATTEMPTS})",
                    attempt + 1
                );
                if let Ok(output) = &result {
                    // What led up to a guest's fault, for the post-mortem the retry erases.
                    let _ = writeln!(io::stderr(), "{}", fault_context(&output.stdout));
                }
                attempt += 1;
            }
        }
    }
}

/// How often a job runs on the emulated host when the emulation, not the job, fails:
/// seen 2026-11-23, an L2 that wedged and then, in the retry, panicked (a kernel stack
/// overflow under `svm_vcpu_run`); on 2026-12-02, two of the first three jobs of a CI
/// rehearsal needed a second run, and one long job failed in all of three. A run that
/// would fail anyway costs the retries' time only.
const EMULATED_ATTEMPTS: u32 = 5;

/// The VMM's one-line verdict when a vCPU triple-faults, `husk-vmm: vCPU N triple-faulted`,
/// found anywhere in `line` (it may be embedded in a containerd log line).
fn vmm_triple_fault(line: &str) -> Option<&str> {
    const HEAD: &str = "husk-vmm: vCPU ";
    const TAIL: &str = " triple-faulted";
    let start = line.find(HEAD)?;
    let rest = &line[start + HEAD.len()..];
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    (digits > 0 && rest[digits..].starts_with(TAIL))
        .then(|| &line[start..start + HEAD.len() + digits + TAIL.len()])
}

/// The lines of `stdout` up to its first guest triple fault: the last
/// [`FAULT_CONTEXT_LINES`], each cut to 300 bytes.
fn fault_context(stdout: &str) -> String {
    let lines: Vec<&str> = stdout.lines().collect();
    let end = lines
        .iter()
        .position(|l| vmm_triple_fault(l).is_some())
        .map_or(lines.len(), |i| i + 1);
    let start = end.saturating_sub(FAULT_CONTEXT_LINES);
    let mut out = String::from("--- the job's output before the fault ---");
    for line in &lines[start..end] {
        let cut = (0..=line.len().min(300))
            .rev()
            .find(|&i| line.is_char_boundary(i))
            .unwrap_or(0);
        out.push('\n');
        out.push_str(&line[..cut]);
    }
    out
}

const FAULT_CONTEXT_LINES: usize = 25;

/// Whether a job on the emulated host failed in a way that is the emulation's, not the job's,
/// and so earns a retry, up to [`EMULATED_ATTEMPTS`] runs in all (see `docs/testing.md`,
/// "What the harness retries"):
/// - L2's own kernel panicked (seen: a kernel stack overflow in `exc_page_fault` under
///   `KVM_RUN`), or L2 wedged (no heartbeat, or a soft lockup on its console, also one
///   the job outlived);
/// - a husk guest triple-faulted in the job (`husk-vmm: vCPU N triple-faulted` in its
///   output), unless the job does that on purpose. Under nested SVM on TCG an L3 guest
///   occasionally dies this way with nothing on its console; KVM resets the vCPU on the
///   SVM shutdown intercept, so the VMM cannot even report where. Jobs often finish with
///   status 0 and leave the verdict to the test's checks, so the status is not consulted.
///   On native KVM the same fault fails the test: there it would be husk's bug.
fn emulated_host_fault(job: &Job, result: &Result<JobOutput, TestHostError>) -> Option<String> {
    match result {
        Err(TestHostError::HostFailed {
            reason,
            console_tail,
        }) => {
            if reason.starts_with(emulated::L2_WEDGED) {
                Some(reason.clone())
            } else if console_tail.contains("Kernel panic") {
                Some("its kernel panicked".to_owned())
            } else {
                None
            }
        }
        Ok(output) if output.console.contains(emulated::SOFT_LOCKUP) => {
            Some("L2's kernel reported a soft lockup during the job".to_owned())
        }
        Ok(output) if !job.guest_faults_expected => output
            .stdout
            .lines()
            .find_map(vmm_triple_fault)
            .map(|line| format!("a husk guest triple-faulted: {line}")),
        _ => None,
    }
}

/// For tests: the KVM host, or `None` after printing one loud
/// `SKIPPED: <test>: no KVM test host: <reason>` line to stderr (uncaptured).
///
/// # Panics
/// When `HUSK_REQUIRE_KVM=1` (CI) and there is no KVM host: CI never passes a VM
/// test by skipping it.
pub fn kvm_host_or_skip(test: &str) -> Option<HostKind> {
    match detect() {
        Ok(kind) => Some(kind),
        Err(e) => {
            let reason = match &e {
                TestHostError::Unavailable(r) => r.clone(),
                other => other.to_string(),
            };
            if require_kvm() {
                panic!("{test}: no KVM test host: {reason} (and HUSK_REQUIRE_KVM=1)");
            }
            // Straight to fd 2: the test harness captures eprintln!, not this.
            let _ = writeln!(io::stderr(), "SKIPPED: {test}: no KVM test host: {reason}");
            None
        }
    }
}

/// Whether `HUSK_REQUIRE_KVM` asks for a KVM host (`1`, `true` or `yes`).
pub fn require_kvm() -> bool {
    std::env::var("HUSK_REQUIRE_KVM")
        .map(|v| matches!(v.trim(), "1" | "true" | "yes"))
        .unwrap_or(false)
}

/// In a test: the [`HostKind`], or return from the test after one loud SKIPPED line
/// (panics instead when `HUSK_REQUIRE_KVM=1`).
///
/// ```no_run
/// #[test]
/// fn boots() {
///     let host = husk_tests::require_kvm_host!();
///     let out = husk_tests::testhost::run(&husk_tests::testhost::Job::new("true")).unwrap();
///     assert!(out.success(), "{host:?}");
/// }
/// ```
#[macro_export]
macro_rules! require_kvm_host {
    () => {{
        fn f() {}
        let name = ::std::any::type_name_of_val(&f);
        let name = name.strip_suffix("::f").unwrap_or(name);
        match $crate::testhost::kvm_host_or_skip(name) {
            Some(kind) => kind,
            None => return,
        }
    }};
}

/// The L2 kernel preparation script shipped with this crate.
pub fn setup_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testhost/setup.sh")
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_output(exit_code: i32, stdout: &str) -> Result<JobOutput, TestHostError> {
        Ok(JobOutput {
            kind: HostKind::Native {
                module: "kvm_amd".into(),
            },
            stdout: stdout.into(),
            exit_code,
            host_boot: Duration::ZERO,
            l2: None,
            total: Duration::ZERO,
            console: String::new(),
        })
    }

    #[test]
    fn a_guest_triple_fault_is_the_emulations_fault_unless_expected() {
        let out = "\x1b[31mERROR vCPU triple-faulted vcpu=1\nlevel=error msg=\"x\\nhusk-vmm: vCPU 12 triple-faulted\\n\"";
        let job = Job::new("true");
        let why = emulated_host_fault(&job, &job_output(0, out)).expect("retried");
        assert_eq!(
            why,
            "a husk guest triple-faulted: husk-vmm: vCPU 12 triple-faulted"
        );
        let on_purpose = Job::new("true").guest_faults_expected();
        assert_eq!(emulated_host_fault(&on_purpose, &job_output(1, out)), None);
        // The tracing line alone, or a mention without a vCPU number, is not the verdict.
        let no = "ERROR vCPU triple-faulted vcpu=1\nhusk-vmm: vCPU x triple-faulted";
        assert_eq!(emulated_host_fault(&job, &job_output(1, no)), None);
    }

    #[test]
    fn the_fault_context_ends_at_the_first_fault() {
        let mut out: Vec<String> = (0..40).map(|i| format!("line {i}")).collect();
        out[30] = "husk-vmm: vCPU 0 triple-faulted".into();
        out.push("x".repeat(400));
        let context = fault_context(&out.join("\n"));
        let lines: Vec<&str> = context.lines().collect();
        assert_eq!(lines.len(), 1 + FAULT_CONTEXT_LINES);
        assert_eq!(lines[1], "line 6");
        assert_eq!(lines.last(), Some(&"husk-vmm: vCPU 0 triple-faulted"));
        // No fault: the tail, with long lines cut.
        let context = fault_context(&out[31..].join("\n"));
        assert!(context.ends_with(&"x".repeat(300)), "{context}");
        assert!(!context.contains(&"x".repeat(301)));
    }

    #[test]
    fn a_panicked_or_wedged_l2_is_the_emulations_fault() {
        let failed = |reason: &str, console: &str| {
            Err(TestHostError::HostFailed {
                reason: reason.into(),
                console_tail: console.into(),
            })
        };
        let job = Job::new("true");
        let panicked = failed("L2 exited", "Kernel panic - not syncing: stack overflow");
        assert_eq!(
            emulated_host_fault(&job, &panicked).as_deref(),
            Some("its kernel panicked")
        );
        let mut lockup = job_output(0, "");
        if let Ok(o) = lockup.as_mut() {
            o.console = "[ 99.1] watchdog: BUG: soft lockup - CPU#0 stuck for 22s!".into();
        }
        assert!(emulated_host_fault(&job, &lockup).is_some());
        let wedged = format!("{}: no heartbeat for 60s", emulated::L2_WEDGED);
        assert_eq!(
            emulated_host_fault(&job, &failed(&wedged, "")),
            Some(wedged.clone())
        );
        assert_eq!(
            emulated_host_fault(&job, &failed("QEMU exited 1", "")),
            None
        );
    }

    #[test]
    fn job_validation() {
        assert!(Job::new("true").validate().is_ok());
        let here = env!("CARGO_MANIFEST_DIR");
        assert!(Job::new("true").file(here, "a/b").validate().is_err());
        assert!(Job::new("true").file(here, "..").validate().is_err());
        assert!(Job::new("true")
            .file("/nonexistent/x", "x")
            .validate()
            .is_err());
        assert!(Job::new("true")
            .file(here, "x")
            .file(here, "x")
            .validate()
            .is_err());
        assert!(Job::new("true").timeout(Duration::ZERO).validate().is_err());
    }

    #[test]
    fn describe_lines() {
        let native = HostKind::Native {
            module: "kvm_intel".into(),
        };
        assert_eq!(native.describe(), "native KVM (kvm_intel)");
        let emu = HostKind::Emulated(EmulatedHost {
            l2_kernel: "/c".into(),
            boot_image: "/c/vmlinux".into(),
            kernel_release: "6.1.0-56-amd64".into(),
            qemu: "/q".into(),
            busybox: "/b".into(),
            reason: "/dev/kvm is PVM".into(),
        });
        assert_eq!(
            emu.describe(),
            "emulated QEMU TCG test host (L2 kernel 6.1.0-56-amd64), because /dev/kvm is PVM"
        );
    }

    #[test]
    fn tail_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
