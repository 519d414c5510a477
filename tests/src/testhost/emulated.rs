//! Runs a job inside "L2": QEMU (TCG) booting Debian's stock kernel with a
//! per-run initramfs (busybox, the KVM modules, the job's files and the shared
//! libraries they need, and a generated `/init`).
//!
//! L2's `ttyS0` is the console, read from QEMU's stdout: kernel messages and the
//! markers of [`protocol`](super::protocol). L2's `ttyS1` carries only the job's
//! output, into a file the harness follows.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::cpio::CpioWriter;
use super::kmod::ModuleDeps;
use super::protocol::{self, InitParams, Marker, FILES_DIR, JOB_SCRIPT};
use super::tempdir::{nonce, TempDir};
use super::{ldd, tail, EmulatedHost, HostKind, Job, JobOutput, L2Timings, TestHostError};

/// After the job's exit marker, how long L2 gets to power off before it is killed.
const POWEROFF_GRACE: Duration = Duration::from_secs(30);
/// The modules a KVM host needs (kvm-amd pulls in irqbypass, kvm and ccp).
const KVM_MODULES: &[&str] = &["kvm_amd"];
/// The modules of the host-root share: virtio PCI transport, 9p, overlayfs.
const HOST_ROOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];
/// Without a heartbeat for this long, L2 is taken to have wedged (nested KVM under TCG can
/// lock L2 up entirely; a slow job still lets the heartbeat through).
const WEDGED_AFTER: Duration = Duration::from_secs(60);
/// How a wedged L2 is reported; `run_on` retries such a job.
pub const L2_WEDGED: &str = "the L2 test host stopped responding";
/// L2's kernel command line. Console output is slow under emulation: keep it quiet.
const CMDLINE: &str = "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init";

pub fn run(
    kind: &HostKind,
    host: &EmulatedHost,
    job: &Job,
    out: &mut dyn Write,
) -> Result<JobOutput, TestHostError> {
    let _slot = Slot::acquire();
    let start = Instant::now();
    let tmp = TempDir::new()?;
    let nonce = nonce();
    let initrd = tmp.path().join("initrd.cpio");
    build_initramfs(host, job, &nonce, &initrd)?;
    let job_log = tmp.path().join("job.out");
    File::create(&job_log).map_err(|e| TestHostError::io("creating job.out", e))?;
    let mut job_reader =
        File::open(&job_log).map_err(|e| TestHostError::io("opening job.out", e))?;

    let boot = Instant::now();
    let mut qemu = QemuGuard(Some(
        qemu_command(host, job, &initrd, &job_log)
            .spawn()
            .map_err(|e| TestHostError::io(format!("spawning {}", host.qemu.display()), e))?,
    ));
    let (lines, stderr) = qemu.watch()?;
    let verbose = std::env::var("HUSK_TESTHOST_VERBOSE").is_ok_and(|v| v == "1");

    let deadline = Instant::now() + job.timeout;
    let mut st = RunState::default();
    let mut output = Vec::new();
    loop {
        match lines.recv_timeout(Duration::from_millis(50)) {
            Ok((at, line)) => {
                if verbose {
                    let t = at.saturating_duration_since(boot).as_secs_f64();
                    eprintln!("[L2 {t:6.2}] {line}");
                }
                st.on_line(at, &line, &nonce);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                st.console_eof = true;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        follow(&mut job_reader, &mut output, out)?;
        if st.exited.is_none() {
            st.exited = qemu.try_wait()?;
        }
        if st.exited.is_some() && st.console_eof {
            break;
        }
        if let Some((_, at)) = st.exit {
            if at.elapsed() > POWEROFF_GRACE {
                break; // We have the result; L2 just did not power off.
            }
        } else if st.alive.is_some_and(|t| t.elapsed() > WEDGED_AFTER) || st.soft_lockup {
            qemu.kill();
            follow(&mut job_reader, &mut output, out)?;
            let why = if st.soft_lockup {
                "its kernel reported a soft lockup".to_owned()
            } else {
                format!("no heartbeat for {WEDGED_AFTER:?}")
            };
            return Err(TestHostError::HostFailed {
                reason: format!("{L2_WEDGED}: {why}"),
                console_tail: tail(&st.console, 40),
            });
        } else if Instant::now() > deadline {
            qemu.kill();
            follow(&mut job_reader, &mut output, out)?;
            return Err(TestHostError::Timeout {
                timeout: job.timeout,
                output_tail: tail(&String::from_utf8_lossy(&output), 30),
                console_tail: tail(&st.console, 40),
            });
        }
    }
    qemu.kill();
    follow(&mut job_reader, &mut output, out)?;
    let _ = out.flush();
    let qemu_stderr = stderr.join().unwrap_or_default();

    let Some((exit_code, _)) = st.exit else {
        let reason = match (&st.error, st.exited) {
            (Some(e), _) => format!("L2 init: {e}"),
            (None, Some(status)) => format!(
                "QEMU exited ({status}) before the job finished{}",
                if qemu_stderr.trim().is_empty() {
                    String::new()
                } else {
                    format!(": {}", qemu_stderr.trim())
                }
            ),
            (None, None) => "L2 stopped talking before the job finished".into(),
        };
        return Err(TestHostError::HostFailed {
            reason,
            console_tail: tail(&st.console, 40),
        });
    };
    let at = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(boot));
    let host_boot = at(st.begin).unwrap_or_default();
    let l2 = match (st.init, st.mods) {
        (Some(i), Some(m)) => Some(L2Timings {
            to_init: i.saturating_duration_since(boot),
            module_load: m.saturating_duration_since(i),
        }),
        _ => None,
    };
    Ok(JobOutput {
        kind: kind.clone(),
        stdout: String::from_utf8_lossy(&output).into_owned(),
        exit_code,
        host_boot,
        l2,
        total: start.elapsed(),
        console: st.console,
    })
}

/// What the console told so far.
#[derive(Default)]
struct RunState {
    console: String,
    console_eof: bool,
    init: Option<Instant>,
    mods: Option<Instant>,
    begin: Option<Instant>,
    /// The last sign of life from L2's init (BEGIN or a heartbeat).
    alive: Option<Instant>,
    exit: Option<(i32, Instant)>,
    error: Option<String>,
    exited: Option<String>,
    /// L2's kernel reported a CPU stuck in the kernel (a soft lockup): nested
    /// KVM under TCG has wedged a vCPU thread inside KVM_RUN.
    soft_lockup: bool,
}

/// What L2's watchdog prints when a CPU is stuck in the kernel.
pub const SOFT_LOCKUP: &str = "BUG: soft lockup";

impl RunState {
    fn on_line(&mut self, at: Instant, line: &str, nonce: &str) {
        self.console.push_str(line);
        self.console.push('\n');
        self.soft_lockup |= line.contains(SOFT_LOCKUP);
        match protocol::parse_marker(line, nonce) {
            Some(Marker::Init) => self.init = Some(at),
            Some(Marker::ModulesLoaded) => self.mods = Some(at),
            Some(Marker::Begin) => {
                self.begin = Some(at);
                self.alive = Some(at);
            }
            Some(Marker::Heartbeat) => self.alive = Some(at),
            Some(Marker::Exit(code)) => self.exit = Some((code, at)),
            Some(Marker::Error(e)) => self.error = Some(e),
            None => {}
        }
    }
}

/// Copies what the job wrote to ttyS1 since the last call.
fn follow(f: &mut File, output: &mut Vec<u8>, out: &mut dyn Write) -> Result<(), TestHostError> {
    let mut buf = [0u8; 16384];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| TestHostError::io("reading job output", e))?;
        if n == 0 {
            return Ok(());
        }
        let _ = out.write_all(&buf[..n]);
        output.extend_from_slice(&buf[..n]);
    }
}

fn qemu_command(host: &EmulatedHost, job: &Job, initrd: &Path, job_log: &Path) -> Command {
    let mut c = Command::new(&host.qemu);
    c.args(["-M", "pc", "-cpu", "EPYC", "-accel", "tcg,thread=multi"])
        .args([
            "-smp",
            &job.cpus.to_string(),
            "-m",
            &job.memory_mib.to_string(),
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(["-serial", "stdio", "-serial"])
        .arg(format!("file:{}", job_log.display()))
        .arg("-kernel")
        .arg(&host.boot_image)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(match std::env::var("HUSK_TESTHOST_APPEND") {
            // For debugging, e.g. "ignore_loglevel" to see the whole boot.
            Ok(extra) => format!("{CMDLINE} {extra}"),
            Err(_) => CMDLINE.to_string(),
        });
    // For experiments and debugging: extra QEMU arguments, split on whitespace.
    if let Ok(extra) = std::env::var("HUSK_TESTHOST_QEMU_ARGS") {
        c.args(extra.split_whitespace());
    }
    if job.host_root {
        c.args([
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ]);
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn build_initramfs(
    host: &EmulatedHost,
    job: &Job,
    nonce: &str,
    path: &Path,
) -> Result<(), TestHostError> {
    let rel = &host.kernel_release;
    let mod_dir = host.l2_kernel.join("lib/modules").join(rel);
    let dep_text = fs::read_to_string(mod_dir.join("modules.dep"))
        .map_err(|e| TestHostError::io(format!("reading {}/modules.dep", mod_dir.display()), e))?;
    let mut names: Vec<&str> = KVM_MODULES.to_vec();
    names.extend(job.modules.iter().map(String::as_str));
    if job.host_root {
        names.extend_from_slice(HOST_ROOT_MODULES);
    }
    let modules = ModuleDeps::parse(&dep_text)
        .load_order(&names)
        .map_err(TestHostError::InvalidJob)?;

    let io = |what: &str| {
        let what = what.to_string();
        move |e| TestHostError::io(format!("initramfs: {what}"), e)
    };
    let mut w = CpioWriter::create(path).map_err(io("creating"))?;
    w.char_dev("dev/console", 0o600, 5, 1)
        .map_err(io("dev/console"))?;
    w.char_dev("dev/null", 0o666, 1, 3)
        .map_err(io("dev/null"))?;
    w.file_from("bin/busybox", &host.busybox)
        .map_err(io("busybox"))?;
    w.symlink("bin/sh", "busybox").map_err(io("bin/sh"))?;
    let init = protocol::init_script(&InitParams {
        nonce,
        kernel_release: rel,
        modules: &modules,
        host_root: job.host_root,
    });
    w.file_bytes("init", 0o755, init.as_bytes())
        .map_err(io("init"))?;
    w.file_bytes(JOB_SCRIPT, 0o755, job.script.as_bytes())
        .map_err(io("job script"))?;
    for m in &modules {
        w.file_from(&format!("lib/modules/{rel}/{m}"), &mod_dir.join(m))
            .map_err(io(m))?;
    }
    w.dir(FILES_DIR).map_err(io(FILES_DIR))?;
    let mut elves = Vec::new();
    for f in &job.files {
        add_tree(
            &mut w,
            &format!("{FILES_DIR}/{}", f.name),
            &f.host_path,
            true,
            &mut elves,
        )?;
    }
    // With the host root, the job's programs find their libraries there.
    if !job.host_root {
        for lib in shared_libs_of(&elves)? {
            let name = lib.to_string_lossy();
            if !w.contains(&name) {
                w.file_from(&name, &lib).map_err(io(&name))?;
            }
        }
    }
    w.finish().map_err(io("finishing"))?;
    Ok(())
}

/// Adds a file, or a directory recursively (symlinks inside it stay symlinks),
/// and collects the ELF files among them.
fn add_tree<W: Write>(
    w: &mut CpioWriter<W>,
    name: &str,
    host: &Path,
    follow_link: bool,
    elves: &mut Vec<PathBuf>,
) -> Result<(), TestHostError> {
    let err = |e| TestHostError::io(format!("adding {} to the initramfs", host.display()), e);
    let meta = if follow_link {
        fs::metadata(host)
    } else {
        fs::symlink_metadata(host)
    }
    .map_err(err)?;
    if meta.file_type().is_symlink() {
        let target = fs::read_link(host).map_err(err)?;
        w.symlink(name, &target.to_string_lossy()).map_err(err)?;
    } else if meta.is_dir() {
        w.dir(name).map_err(err)?;
        let mut entries: Vec<_> = fs::read_dir(host)
            .map_err(err)?
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        entries.sort();
        for e in entries {
            let child = format!("{name}/{}", e.to_string_lossy());
            add_tree(w, &child, &host.join(&e), false, elves)?;
        }
    } else if meta.is_file() {
        w.file_from(name, host).map_err(err)?;
        if ldd::is_elf(host) {
            elves.push(host.to_path_buf());
        }
    }
    // Sockets, FIFOs and devices are skipped: they mean nothing in L2.
    Ok(())
}

fn shared_libs_of(elves: &[PathBuf]) -> Result<Vec<PathBuf>, TestHostError> {
    let mut libs: Vec<PathBuf> = Vec::new();
    for e in elves {
        for l in ldd::shared_libs(e)? {
            if !libs.contains(&l) {
                libs.push(l);
            }
        }
    }
    Ok(libs)
}

/// Console lines with the time they arrived, and QEMU's stderr once it exits.
type Watch = (mpsc::Receiver<(Instant, String)>, JoinHandle<String>);

/// QEMU, killed on drop.
struct QemuGuard(Option<Child>);

impl QemuGuard {
    fn watch(&mut self) -> Result<Watch, TestHostError> {
        let missing = || TestHostError::io("QEMU pipes", std::io::ErrorKind::BrokenPipe.into());
        let child = self.0.as_mut().ok_or_else(missing)?;
        let stdout = child.stdout.take().ok_or_else(missing)?;
        let mut stderr = child.stderr.take().ok_or_else(missing)?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            while let Ok(n) = r.read_until(b'\n', &mut buf) {
                if n == 0 {
                    break;
                }
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\n', '\r'])
                    .to_string();
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
                buf.clear();
            }
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Ok((rx, err))
    }

    fn try_wait(&mut self) -> Result<Option<String>, TestHostError> {
        match self.0.as_mut() {
            Some(c) => c
                .try_wait()
                .map(|s| s.map(|s| s.to_string()))
                .map_err(|e| TestHostError::io("waiting for QEMU", e)),
            None => Ok(None),
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for QemuGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Limits how many L2 machines this process runs at once (`HUSK_TESTHOST_JOBS`,
/// default: half the CPUs, at least 1): each keeps about one host core busy.
struct Slot;

static SLOTS: OnceLock<(Mutex<usize>, Condvar)> = OnceLock::new();

impl Slot {
    fn acquire() -> Slot {
        let (m, cv) = slots();
        let mut free = m.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = cv.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let (m, cv) = slots();
        *m.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        cv.notify_one();
    }
}

fn slots() -> &'static (Mutex<usize>, Condvar) {
    SLOTS.get_or_init(|| {
        let n = std::env::var("HUSK_TESTHOST_JOBS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() / 2))
            .max(1);
        (Mutex::new(n), Condvar::new())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_soft_lockup_on_l2s_console_marks_the_host_wedged() {
        let mut st = RunState::default();
        let now = Instant::now();
        st.on_line(now, "HUSK-TESTHOST:ab:HB", "ab");
        assert!(!st.soft_lockup);
        st.on_line(
            now,
            "[  440.658407] watchdog: BUG: soft lockup - CPU#1 stuck for 395s! [vcpu0:242]",
            "ab",
        );
        assert!(st.soft_lockup);
        assert!(st.console.contains("stuck for 395s"));
    }
}
