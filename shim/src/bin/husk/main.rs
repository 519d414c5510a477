//! `husk`: husk's command-line tool for humans.
//!
//! `husk run-vm [OPTIONS] -- COMMAND [ARGS...]` boots a VM, runs COMMAND in the guest's own
//! root through the agent (the debugging path), copies stdin/stdout/stderr, forwards
//! SIGINT/SIGTERM to it, powers the VM off, and exits with COMMAND's status (128 + signal
//! when a signal killed it). With `--share DIR` the VM gets a virtio-fs device exporting DIR
//! (`mount -t virtiofs husk /mnt` in the guest).
//!
//! `husk install` puts husk on a node (binaries, guest kernel and initramfs, its
//! configuration, and the `husk` runtime in containerd's configuration); `husk uninstall`
//! takes exactly that off again. See `install` and docs/install.md.

#[cfg(test)]
mod deploy_tests;
mod install;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use husk_proto::client::{AgentClient, ExitStatus, LogLevel, OutputStream};
use husk_proto::pb;
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{signal, SignalKind};

use husk_shim::vm::{RunningVm, Share, VmOptions};

#[derive(Parser)]
#[command(name = "husk", version, about = "husk sandbox runtime tool")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot a VM, run a command in the guest, print its output and exit with its status.
    RunVm(RunVm),
    /// Install husk on this node (or under --prefix) and add its runtime to containerd.
    Install(install::InstallArgs),
    /// Undo what `husk install` did.
    Uninstall(install::UninstallArgs),
}

#[derive(clap::Args)]
struct RunVm {
    /// The VMM binary (default: husk-vmm next to this program).
    #[arg(long)]
    vmm: Option<PathBuf>,
    /// Guest kernel.
    #[arg(long, env = "HUSK_KERNEL", default_value = "/opt/husk/share/vmlinux")]
    kernel: PathBuf,
    /// Guest initramfs with the agent.
    #[arg(
        long,
        env = "HUSK_INITRAMFS",
        default_value = "/opt/husk/share/initramfs"
    )]
    initramfs: PathBuf,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Guest memory in MiB.
    #[arg(long = "memory", default_value_t = 256)]
    memory_mib: u32,
    /// Where per-VM run directories go.
    #[arg(long, default_value = "/run/husk")]
    run_dir: PathBuf,
    /// Seconds to wait for the agent after starting the VMM.
    #[arg(long, default_value_t = 60)]
    boot_timeout: u64,
    /// Print the guest's details (GetGuestDetails) to stderr as `husk: guest {json}`.
    #[arg(long)]
    details: bool,
    /// Print all of the agent's log records to stderr (default: warnings and errors).
    #[arg(long)]
    verbose: bool,
    /// Log level of husk-vmm (its log is shown when something fails).
    #[arg(long, default_value = "warn")]
    vmm_log_level: String,
    /// Export this host directory to the guest over virtio-fs; mount it in the guest with
    /// `mount -t virtiofs TAG DIR`.
    #[arg(long, value_name = "DIR")]
    share: Option<PathBuf>,
    /// The virtio-fs tag of `--share`.
    #[arg(long, value_name = "TAG", default_value = "husk", requires = "share")]
    share_tag: String,
    /// The most host file descriptors virtio-fs may hold for the guest (husk-vmm's
    /// `--fs-max-fds`; default: husk-vmm's).
    #[arg(long, value_name = "N", requires = "share")]
    share_max_fds: Option<u32>,
    /// Environment for the command, KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e')]
    env: Vec<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn default_vmm() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("husk-vmm")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("/opt/husk/bin/husk-vmm"))
}

/// Copies one output stream of the guest process to `out`.
async fn copy_output<W>(stream: OutputStream, mut out: W) -> Result<()>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut stream = stream;
    while let Some(chunk) = stream.next_chunk().await? {
        out.write_all(&chunk).await?;
        out.flush().await?;
    }
    Ok(())
}

/// Writes the agent's log records to stderr (warnings and errors, or all if `verbose`).
async fn forward_logs(agent: AgentClient, verbose: bool) {
    let Ok(mut logs) = agent.stream_logs(true).await else {
        return;
    };
    while let Ok(Some(record)) = logs.next_record().await {
        if verbose || record.level <= LogLevel::Warn {
            eprintln!(
                "husk: agent {:?} {}: {}",
                record.level, record.target, record.message
            );
        }
    }
}

async fn run_vm(args: RunVm) -> Result<i32> {
    let opts = VmOptions {
        vmm: args.vmm.clone().unwrap_or_else(default_vmm),
        kernel: args.kernel.clone(),
        initramfs: args.initramfs.clone(),
        vcpus: args.vcpus,
        memory_mib: args.memory_mib,
        run_base: args.run_dir.clone(),
        vmm_log_level: args.vmm_log_level.clone(),
        share: args.share.clone().map(|dir| Share {
            dir,
            tag: args.share_tag.clone(),
            max_fds: args.share_max_fds,
        }),
        name: None,
        net: None,
    };
    // Installed first: from here on SIGINT/SIGTERM are forwarded, not fatal.
    let mut signals = Signals {
        int: signal(SignalKind::interrupt())?,
        term: signal(SignalKind::terminate())?,
    };
    let mut vm = RunningVm::start(&opts)?;
    match run_command(&mut vm, args, &mut signals).await {
        Ok((agent, status)) => {
            vm.shutdown(&agent, Duration::from_secs(30)).await?;
            Ok(match status {
                ExitStatus::Exited(code) => code,
                ExitStatus::Signaled(signo) => {
                    eprintln!("husk: guest process killed by signal {signo}");
                    128 + signo
                }
            })
        }
        // Dropping `vm` kills the VMM and removes its run directory.
        Err(e) => Err(e.context(format!("the VM failed{}", vm.diagnostics()))),
    }
}

struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

/// Connects to the agent, runs the command with its stdio copied, forwarding signals, and
/// returns how it ended.
async fn run_command(
    vm: &mut RunningVm,
    args: RunVm,
    signals: &mut Signals,
) -> Result<(AgentClient, ExitStatus)> {
    let agent = vm
        .connect(Duration::from_secs(args.boot_timeout))
        .await
        .with_context(|| format!("VM in {}", vm.run_dir().display()))?;
    tokio::spawn(forward_logs(agent.clone(), args.verbose));
    if let Err(e) = agent.set_time(SystemTime::now()).await {
        eprintln!("husk: could not set the guest clock: {e}");
    }
    if args.details {
        let d = agent.guest_details().await?;
        eprintln!(
            "husk: guest {{\"kernel_release\":\"{}\",\"mem_total_kib\":{},\"vcpus\":{},\"agent_version\":\"{}\",\"uptime_ms\":{}}}",
            d.kernel_release,
            d.mem_total_kib,
            d.vcpus,
            d.agent_version,
            d.uptime.as_millis()
        );
    }

    let exec = agent
        .exec_in_guest(pb::ExecInGuestRequest {
            argv: args.command,
            env: args.env,
            stdin: true,
            ..Default::default()
        })
        .await?;
    let stdout = agent.read_stdout(&exec.process).await?;
    let stderr = agent.read_stderr(&exec.process).await?;
    let out_task = tokio::spawn(copy_output(stdout, tokio::io::stdout()));
    let err_task = tokio::spawn(copy_output(stderr, tokio::io::stderr()));
    let stdin_task = {
        let (agent, process) = (agent.clone(), exec.process.clone());
        tokio::spawn(async move { agent.write_stdin(&process, tokio::io::stdin()).await })
    };

    let waiter = agent.clone();
    let wait = waiter.wait_process(&exec.process);
    tokio::pin!(wait);
    let status = loop {
        let signo = tokio::select! {
            status = &mut wait => break status?,
            _ = signals.int.recv() => libc::SIGINT,
            _ = signals.term.recv() => libc::SIGTERM,
        };
        if let Err(e) = agent.signal_process(&exec.process, signo).await {
            eprintln!("husk: forwarding signal {signo}: {e}");
        }
    };
    stdin_task.abort();
    for task in [out_task, err_task] {
        match tokio::time::timeout(Duration::from_secs(10), task).await {
            Ok(Ok(Err(e))) => eprintln!("husk: copying output: {e}"),
            Ok(_) => {}
            Err(_) => eprintln!("husk: output still open 10 s after the process ended; dropped"),
        }
    }
    Ok((agent, status))
}

fn main() {
    let cli = Cli::parse();
    let args = match cli.command {
        Cmd::RunVm(args) => args,
        Cmd::Install(args) => exit_with(install::install(args)),
        Cmd::Uninstall(args) => exit_with(install::uninstall(args)),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("husk: error: starting the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(run_vm(args));
    let code = code.unwrap_or_else(|e| {
        eprintln!("husk: error: {e:#}");
        125
    });
    let _ = std::io::stdout().flush();
    // A blocking read of our stdin may still be pending in the runtime: don't wait for it.
    std::process::exit(code);
}

/// Ends a command that needs no async runtime: status 0, or 1 with the error.
fn exit_with(result: Result<()>) -> ! {
    let code = match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("husk: error: {e:#}");
            1
        }
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}
