//! husk-agent: PID 1 inside a husk VM.
//!
//! It mounts the guest's basic file systems, prints the readiness line (see
//! [`guestinfo`]) on the serial console, then either powers the VM off
//! (`--poweroff`) or stays as PID 1: it serves the agent API (gRPC, see
//! `husk-proto`) on AF_VSOCK port 1024 and reaps zombies, until a PowerOff
//! call or SIGTERM powers the VM off. As PID 1 it must never exit or panic:
//! the kernel would panic. Fatal errors print one line and reset the VM (see
//! [`power`]).
//!
//! Its stdin, stdout and stderr are the console the kernel opens from the
//! initramfs's `/dev/console` (c 5 1), which must therefore exist: Rust's
//! runtime aborts at start if those descriptors are closed and `/dev/null`
//! cannot be opened.
//!
//! Arguments (the kernel passes everything after `--` on its command line):
//! `--poweroff`, `--log-level=<error|warn|info|debug>`, and, for debugging on a
//! host, `--print-ready-only`.

mod args;
mod container;
mod guestinfo;
mod logger;
mod mounts;
mod network;
mod power;
mod processes;
mod rootfs;
mod server;
mod service;
mod storage;
mod supervisor;
#[cfg(test)]
mod tests;

use std::io::Write;

use anyhow::Context;

use args::Args;

/// Formats an error with its sources on one line: `a: b: c`.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn main() {
    // The container helper (see container::helper) is this binary re-executed.
    let mut raw = std::env::args_os().skip(1);
    if raw
        .next()
        .is_some_and(|a| a == container::helper::HELPER_ARG)
    {
        let request = raw.next().map(|a| a.to_string_lossy().into_owned());
        container::helper::main(request.as_deref().unwrap_or_default());
    }

    // args_os: std::env::args would panic on an argument that is not UTF-8.
    let args = Args::parse(
        std::env::args_os()
            .skip(1)
            .map(|a| a.to_string_lossy().into_owned()),
    );
    logger::set_level(args.log_level);
    for w in &args.warnings {
        warn!("{w}");
    }

    if args.print_ready_only {
        match print_ready() {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                error!("{e:#}");
                std::process::exit(1);
            }
        }
    }

    if std::process::id() != 1 {
        error!("not PID 1: refusing to set up the system (use --print-ready-only to test)");
        std::process::exit(2);
    }

    // From here on a panic must not end PID 1: report it and reset.
    std::panic::set_hook(Box::new(|info| {
        error!("fatal: {info}");
        power::reset();
    }));

    match run_init(&args) {
        Ok(exit) => match exit {},
        Err(e) => {
            error!("fatal: {e:#}");
            power::reset();
        }
    }
}

/// PID 1's work. Returns only on a fatal error.
fn run_init(args: &Args) -> anyhow::Result<std::convert::Infallible> {
    // First, so that no SIGCHLD or SIGTERM is lost.
    supervisor::block().context("blocking signals")?;
    let sys = mounts::Linux;
    rootfs::leave_initramfs(&sys).context("leaving the initramfs")?;
    mounts::mount_all(&sys, mounts::PLAN)?;
    print_ready()?;
    if args.poweroff {
        power::power_off(&sys, mounts::PLAN);
    }
    // One thread: the agent's work is I/O, and a guest may have one vCPU.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let shutdown = runtime.block_on(server::run_guest())?;
    info!("{shutdown:?}: powering off");
    power::power_off(&sys, mounts::PLAN)
}

/// Gathers and prints the readiness line to stdout in one write.
fn print_ready() -> anyhow::Result<()> {
    let line = guestinfo::collect()
        .context("gathering readiness")?
        .line()
        .context("formatting readiness")?;
    let mut out = std::io::stdout().lock();
    out.write_all(format!("{line}\n").as_bytes())
        .and_then(|()| out.flush())
        .context("printing readiness")
}
