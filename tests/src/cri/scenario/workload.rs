//! `workload`: what a workload costs in a container of the handler, measured by
//! `husk-probe` (the same static binary for every runtime, in the busybox image
//! as [`PROBE`]). Every line is `<measurement>_<key> <value>`:
//!
//! - `cpu_*`: a compute loop; `syscalls_*`: getpid, open+close, fork+exit;
//! - `io_rootfs_*` and `io_emptydir_*`: sequential and random I/O and small-file
//!   operations on the container's root file system and on an emptyDir, a host
//!   directory at kubelet's path for one (`pods/<uid>/volumes/kubernetes.io~empty-dir/`),
//!   which runc binds from the host and husk keeps in the guest (a tmpfs);
//! - `host_pod_*`: TCP throughput and round trips from the host to a server in
//!   the pod, at the pod IP; `pod_pod_*`: the same from a second pod.
//!
//! The host's client is the probe too: `husk-probe` next to `husk-cri-check`.

use std::path::PathBuf;
use std::time::Duration;

use super::isolation::PROBE;
use super::{exec_report, report, Ctx, IDLE};
use crate::cri::{container_config, mount, CriError, Result};

/// The server's port in the pod.
const PORT: &str = "18080";
/// MiB per TCP throughput run, and per I/O file.
const TCP_MIB: &str = "32";
const IO_MIB: &str = "32";
/// The longest one measurement may take (emulated hosts are slow).
const LIMIT: Duration = Duration::from_secs(300);

pub async fn run(ctx: &mut Ctx) -> Result<()> {
    let handler = ctx.handler();
    let image = ctx.opts.image.clone();
    let host_probe = host_probe()?;
    let empty_dir =
        ctx.scratch("workload-kubelet/pods/workload/volumes/kubernetes.io~empty-dir/data")?;

    let pod = ctx.run_pod("workload", "workload", &handler).await?;
    let mut config = container_config("probe", 0, &image, IDLE);
    config.mounts.push(mount(&empty_dir, "/data", false));
    let probe = ctx.start_container(&pod, config).await?;
    let server = container_config("server", 0, &image, &[PROBE, "serve", PORT]);
    ctx.start_container(&pod, server).await?;

    measure(ctx, &probe, "cpu", &[PROBE, "cpu"]).await?;
    // 20000: an open on a slow root file system can take milliseconds.
    measure(ctx, &probe, "syscalls", &[PROBE, "syscalls", "20000"]).await?;
    measure(ctx, &probe, "io_rootfs", &[PROBE, "io", "/tmp", IO_MIB]).await?;
    measure(ctx, &probe, "io_emptydir", &[PROBE, "io", "/data", IO_MIB]).await?;

    // From the host, then from another pod, to the server at the pod IP.
    let out = tokio::process::Command::new(&host_probe)
        .args(["tcp", &pod.ip, PORT, TCP_MIB])
        .output();
    let out = tokio::time::timeout(LIMIT, out)
        .await
        .map_err(|_| CriError::Check("the host's TCP client timed out".into()))?
        .map_err(|e| CriError::io("running husk-probe tcp on the host", e))?;
    report(
        ctx,
        "host_pod",
        &String::from_utf8_lossy(&out.stdout),
        out.status.code().unwrap_or(-1),
    );
    if !out.status.success() {
        ctx.say("host_pod_stderr", String::from_utf8_lossy(&out.stderr));
    }
    let peer_pod = ctx
        .run_pod("workload-peer", "workload-peer", &handler)
        .await?;
    let peer = ctx
        .start_container(&peer_pod, container_config("client", 0, &image, IDLE))
        .await?;
    let ip = pod.ip.clone();
    measure(ctx, &peer, "pod_pod", &[PROBE, "tcp", &ip, PORT, TCP_MIB]).await?;
    Ok(())
}

/// `husk-probe` beside this program (the job's files).
fn host_probe() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| CriError::io("finding husk-cri-check", e))?;
    let probe = exe.with_file_name("husk-probe");
    if probe.is_file() {
        Ok(probe)
    } else {
        Err(CriError::Check(format!(
            "{} is missing: the job must carry husk-probe beside husk-cri-check",
            probe.display()
        )))
    }
}

/// ExecSync `cmd` in `container`, its lines reported under `name`.
async fn measure(ctx: &mut Ctx, container: &str, name: &str, cmd: &[&str]) -> Result<()> {
    exec_report(ctx, container, name, cmd, LIMIT).await
}
