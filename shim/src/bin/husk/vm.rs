//! Starting a VM under `husk-vmm` with a vsock device, reaching its agent, and tearing it
//! all down (process, run directory) on every path.

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
}

/// The per-VM directory (`<run_base>/<id>/`): vsock socket, console log. Removed on drop.
struct RunDir(PathBuf);

impl RunDir {
    fn create(base: &Path) -> Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(base)
            .with_context(|| format!("creating {}", base.display()))?;
        let dir = base.join(format!("run-vm-{}", std::process::id()));
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
        let _ = std::fs::remove_dir_all(&self.0);
    }
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
        let run_dir = RunDir::create(&opts.run_base)?;
        let console = run_dir.0.join("console.log");
        let vmm_log =
            std::fs::File::create(run_dir.0.join("vmm.log")).context("creating vmm.log")?;
        let mut command = Command::new(&opts.vmm);
        // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
        // which is async-signal-safe; it touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                // The VMM dies with us even if we are killed without a chance to clean up.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
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

    /// Connects to the agent once it listens, failing early if the VMM exits first.
    pub async fn connect(&mut self, timeout: Duration) -> Result<AgentClient> {
        let run_dir = self.run_dir.0.clone();
        tokio::select! {
            client = AgentClient::connect_when_ready(&run_dir, timeout) => {
                client.context("connecting to the guest agent")
            }
            status = self.child.wait() => {
                let status = status.context("waiting for husk-vmm")?;
                bail!("husk-vmm ended before the agent answered ({status}){}", self.diagnostics())
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

    /// Asks the guest to power off and waits for the VMM; kills it after `timeout`.
    pub async fn shutdown(mut self, agent: &AgentClient, timeout: Duration) -> Result<()> {
        if let Err(e) = agent.power_off().await {
            eprintln!("husk: power-off request failed ({e}); stopping the VMM");
            let _ = self.child.start_kill();
        }
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => bail!("husk-vmm ended with {status}{}", self.diagnostics()),
            Ok(Err(e)) => Err(e).context("waiting for husk-vmm"),
            Err(_) => {
                let _ = self.child.kill().await;
                bail!("the guest did not power off within {timeout:?}; VMM killed")
            }
        }
    }
}
