//! Starting a VM under `husk-vmm` with a vsock device (and a virtio-fs share if asked), reaching
//! its agent, and tearing it all down (process, run directory) on every path.

use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use husk_proto::client::{AgentClient, VSOCK_SOCKET};
use tokio::process::{Child, Command};

/// How to start the VM.
pub struct VmOptions {
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub vcpus: u8,
    pub memory_mib: u32,
    /// Parent of the per-VM run directory, e.g. `/run/husk`.
    pub run_base: PathBuf,
    /// `husk-vmm --log-level`; its log goes to `<run-dir>/vmm.log`.
    pub vmm_log_level: String,
    /// A host directory exported over virtio-fs; a relative `dir` is created
    /// inside the run directory.
    pub share: Option<Share>,
    /// The run directory's name under `run_base`; `run-vm-<pid>` if `None`.
    pub name: Option<String>,
    /// A tap-backed virtio-net device.
    pub net: Option<NetDevice>,
}

/// A virtio-net device backed by a tap the caller opened (in the Pod's network
/// namespace); `husk-vmm` inherits the descriptor as [`NetDevice::VMM_FD`].
pub struct NetDevice {
    pub tap: std::os::fd::OwnedFd,
    /// The guest NIC's MAC, "aa:bb:cc:dd:ee:ff".
    pub mac: String,
    pub mtu: u32,
}

impl NetDevice {
    /// The descriptor number the tap has in `husk-vmm`.
    pub const VMM_FD: i32 = 3;

    fn vmm_args(&self) -> Vec<String> {
        vec![
            "--net-tap-fd".into(),
            Self::VMM_FD.to_string(),
            "--net-mac".into(),
            self.mac.clone(),
            "--net-mtu".into(),
            self.mtu.to_string(),
        ]
    }
}

/// A host directory the guest sees over virtio-fs.
pub struct Share {
    pub dir: PathBuf,
    pub tag: String,
    /// `husk-vmm --fs-max-fds`, if not its default.
    pub max_fds: Option<u32>,
}

impl Share {
    /// The `husk-vmm` arguments for this share.
    fn vmm_args(&self) -> Vec<std::ffi::OsString> {
        let mut args = vec!["--fs-share".into(), self.dir.clone().into_os_string()];
        args.extend(["--fs-tag".into(), self.tag.clone().into()]);
        if let Some(max) = self.max_fds {
            args.extend(["--fs-max-fds".into(), max.to_string().into()]);
        }
        args
    }
}

/// The per-VM directory (`<run_base>/<id>/`): vsock socket, console log. Removed on drop.
struct RunDir(PathBuf);

impl RunDir {
    fn create(base: &Path, name: Option<&str>) -> Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(base)
            .with_context(|| format!("creating {}", base.display()))?;
        let dir = match name {
            Some(name) => base.join(name),
            None => base.join(format!("run-vm-{}", std::process::id())),
        };
        if dir.exists() {
            // Left over by an earlier process with our pid that was killed.
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        // Never recurse into a mount (a container's rootfs, a bind-mounted host
        // directory): detach everything below first, and keep the directory if
        // anything stays mounted.
        if unmount_under(&self.0) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The mount points at or below `dir`, deepest first (from /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        // Octal escapes (\040 for a space) are left as they are: such paths
        // are not ours.
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// Lazily unmounts everything at or below `dir`. Returns whether nothing
/// is mounted there any more.
pub fn unmount_under(dir: &Path) -> bool {
    for target in mounts_under(dir) {
        let Ok(c) = std::ffi::CString::new(target.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: c is a NUL-terminated path living until the call returns.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    mounts_under(dir).is_empty()
}

/// `husk-vmm` exited before its agent answered: the guest never came up
/// (a guest crash or reset during boot, or a VMM failure).
#[derive(Debug, thiserror::Error)]
#[error("husk-vmm ended before the agent answered ({status}){diagnostics}")]
pub struct VmEndedEarly {
    pub status: std::process::ExitStatus,
    /// The tails of the VMM's log and the guest console.
    pub diagnostics: String,
}

/// A running `husk-vmm` process. Killed if dropped while running.
pub struct RunningVm {
    child: Child,
    // Dropped after `child` (declaration order), so the VMM is gone before its files.
    run_dir: RunDir,
}

impl RunningVm {
    /// Spawns `husk-vmm` for `opts`.
    pub fn start(opts: &VmOptions) -> Result<Self> {
        let run_dir = RunDir::create(&opts.run_base, opts.name.as_deref())?;
        let share = opts.share.as_ref().map(|s| Share {
            dir: run_dir.0.join(&s.dir),
            tag: s.tag.clone(),
            max_fds: s.max_fds,
        });
        if let Some(s) = &share {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&s.dir)
                .with_context(|| format!("creating {}", s.dir.display()))?;
        }
        let console = run_dir.0.join("console.log");
        let vmm_log =
            std::fs::File::create(run_dir.0.join("vmm.log")).context("creating vmm.log")?;
        let mut command = Command::new(&opts.vmm);
        let tap = opts.net.as_ref().map(|n| n.tap.as_raw_fd());
        // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
        // dup2(2) and fcntl(2), which are async-signal-safe; it reads only `tap`, a copy.
        unsafe {
            command.pre_exec(move || {
                // The VMM dies with us even if we are killed without a chance to clean up.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                // The tap at a fixed number, without FD_CLOEXEC (dup2 clears it; a
                // descriptor that already has the number needs it cleared by hand).
                if let Some(fd) = tap {
                    let vmm_fd = NetDevice::VMM_FD;
                    let ok = if fd == vmm_fd {
                        libc::fcntl(fd, libc::F_SETFD, 0) != -1
                    } else {
                        libc::dup2(fd, vmm_fd) != -1
                    };
                    if !ok {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = command
            .arg("--kernel")
            .arg(&opts.kernel)
            .arg("--initramfs")
            .arg(&opts.initramfs)
            .args(["--vcpus", &opts.vcpus.to_string()])
            .args(["--memory", &opts.memory_mib.to_string()])
            .arg("--vsock-uds")
            .arg(run_dir.0.join(VSOCK_SOCKET))
            .arg(format!("--console=file:{}", console.display()))
            .arg(format!("--log-level={}", opts.vmm_log_level))
            .args(share.iter().flat_map(Share::vmm_args))
            .args(opts.net.iter().flat_map(NetDevice::vmm_args))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(vmm_log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", opts.vmm.display()))?;
        Ok(Self { child, run_dir })
    }

    /// The VM's run directory.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir.0
    }

    /// The VMM's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits for the VMM to exit by itself.
    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait().await
    }

    /// Connects to the agent once it listens, failing early if the VMM exits first.
    pub async fn connect(&mut self, timeout: Duration) -> Result<AgentClient> {
        let run_dir = self.run_dir.0.clone();
        tokio::select! {
            client = AgentClient::connect_when_ready(&run_dir, timeout) => {
                client.context("connecting to the guest agent")
            }
            status = self.child.wait() => {
                let status = status.context("waiting for husk-vmm")?;
                Err(VmEndedEarly {
                    status,
                    diagnostics: self.diagnostics(),
                }
                .into())
            }
        }
    }

    /// The tails of the VMM's log and of the guest console, for error messages.
    pub fn diagnostics(&self) -> String {
        let tail = |name: &str| {
            let text = std::fs::read_to_string(self.run_dir.0.join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        };
        format!(
            "\n--- husk-vmm log (tail) ---\n{}\n--- guest console (tail) ---\n{}",
            tail("vmm.log"),
            tail("console.log")
        )
    }

    /// Asks the guest to power off and waits for the VMM; kills it once
    /// `timeout` has passed, counted from the request: a guest that does not
    /// answer must not hold up the shim's Shutdown for the agent API's longer
    /// request timeout.
    pub async fn shutdown(mut self, agent: &AgentClient, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let why = match tokio::time::timeout_at(deadline, agent.power_off()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("power-off request failed ({e})")),
            Err(_) => Some(format!("no answer to power-off within {timeout:?}")),
        };
        if let Some(why) = why {
            eprintln!("husk: {why}; stopping the VMM");
            let _ = self.child.start_kill();
        }
        match tokio::time::timeout_at(deadline, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => bail!("husk-vmm ended with {status}{}", self.diagnostics()),
            // A subreaper's reaper (containerd-shim's) may have collected it.
            Ok(Err(e)) if e.raw_os_error() == Some(libc::ECHILD) => Ok(()),
            Ok(Err(e)) => Err(e).context("waiting for husk-vmm"),
            Err(_) => {
                let _ = self.child.kill().await;
                bail!("the guest did not power off within {timeout:?}; VMM killed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::net::UnixListener;

    /// A hybrid-vsock socket at `socket` whose guest accepts connections
    /// and then never says another word, like a hung agent.
    fn silent_guest(socket: &Path) {
        let listener = UnixListener::bind(socket).expect("bind the vsock socket");
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn);
                    let mut line = String::new();
                    if reader.read_line(&mut line).is_err() || !line.starts_with("CONNECT ") {
                        return;
                    }
                    let _ = reader.get_mut().write_all(b"OK 1\n");
                    // Swallow whatever the host sends until it hangs up.
                    let _ = std::io::copy(&mut reader.take(u64::MAX), &mut std::io::sink());
                });
            }
        });
    }

    #[tokio::test]
    async fn shutdown_kills_the_vmm_when_the_guest_does_not_answer_in_time() {
        let base = std::env::temp_dir().join(format!("husk-shim-vm-test-{}", std::process::id()));
        let run_dir = RunDir::create(&base, Some("silent")).expect("run dir");
        silent_guest(&run_dir.0.join(VSOCK_SOCKET));
        let child = Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id().expect("pid") as libc::pid_t;
        let vm = RunningVm { child, run_dir };
        // The agent API's own request timeout stays long, as in the shim.
        let agent = AgentClient::connect(&vm.run_dir.0)
            .await
            .expect("connect")
            .with_timeout(Duration::from_secs(60));

        let started = std::time::Instant::now();
        let err = vm
            .shutdown(&agent, Duration::from_millis(500))
            .await
            .expect_err("a silent guest cannot power off");
        let took = started.elapsed();

        assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
        assert!(
            err.to_string().contains("did not power off"),
            "unexpected error: {err:#}"
        );
        // SAFETY: kill(2) with signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "the VMM stand-in (pid {pid}) is still there");
        let _ = std::fs::remove_dir_all(&base);
    }
}
