//! `isolation`: what a container of the handler sees of the host, and what a
//! privileged one reaches. `husk-probe isolation` (in the busybox image as
//! [`PROBE`]) runs by ExecSync in a plain container, and with `--act` in a
//! privileged container of a privileged pod, as kubelet configures them. Its
//! lines come back prefixed `plain_` and `privileged_`; the host's own
//! kernel release, boot id and the sysrq lines in its kernel log (before and
//! after) are printed beside them. Then a noisy pod (a bounded fork bomb and
//! a memory hog over its 128 MiB limit) runs while the plain pod's ExecSync
//! round trip is timed (`noisy_*`), and the plain pod must still answer.
//!
//! Nothing here can hurt the host: `--act` only asks sysrq for its help text,
//! offers the kernel a module that is not one, and remounts `/` read-only and
//! back. Whether that reached the host's kernel shows as `host_sysrq_lines`
//! growing.

use std::time::Duration;

use super::{exec_report, stdout, Ctx, IDLE};
use crate::cri::{container_config, CriError, Result};

/// Where the job's busybox image holds `husk-probe`.
pub const PROBE: &str = "/usr/bin/husk-probe";

pub async fn run(ctx: &mut Ctx) -> Result<()> {
    let handler = ctx.handler();
    let image = ctx.opts.image.clone();
    ctx.say(
        "host_kernel_release",
        host_file("/proc/sys/kernel/osrelease"),
    );
    ctx.say("host_boot_id", host_file("/proc/sys/kernel/random/boot_id"));
    let sysrq_before = host_sysrq_lines()?;
    ctx.say("host_sysrq_lines_before", sysrq_before);

    let plain_pod = ctx.run_pod("iso-plain", "iso-plain", &handler).await?;
    let plain = ctx
        .start_container(&plain_pod, container_config("plain", 0, &image, IDLE))
        .await?;
    probe(ctx, &plain, "plain", &[PROBE, "isolation"]).await?;

    let privileged_pod = ctx
        .run_pod_with("iso-priv", "iso-priv", &handler, |c| {
            if let Some(sc) = c.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
                sc.privileged = true;
            }
        })
        .await?;
    let mut config = container_config("privileged", 0, &image, IDLE);
    if let Some(sc) = config
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
    {
        // As kubelet for `privileged: true`: nothing masked or read-only.
        sc.privileged = true;
        sc.masked_paths.clear();
        sc.readonly_paths.clear();
    }
    let privileged = ctx.start_container(&privileged_pod, config).await?;
    probe(
        ctx,
        &privileged,
        "privileged",
        &[PROBE, "isolation", "--act"],
    )
    .await?;
    ctx.say("host_sysrq_lines_after", host_sysrq_lines()?);

    noisy_neighbour(ctx, &plain).await?;

    // The other pod carries on.
    let r = ctx
        .cri
        .exec_sync(&plain, &["echo", "alive"], Duration::from_secs(30))
        .await?;
    ctx.say("other_pod_answers", stdout(&r));
    Ok(())
}

/// ExecSync round trips to `victim`, median of a few, before and while another
/// pod forks 200 sleepers and hogs 256 MiB under a 128 MiB limit (enough to press the
/// kernel, little enough for an emulated host that wedges under heavier loads).
async fn noisy_neighbour(ctx: &mut Ctx, victim: &str) -> Result<()> {
    let handler = ctx.handler();
    let image = ctx.opts.image.clone();
    let baseline = round_trip_ms(ctx, victim).await?;
    ctx.say("noisy_baseline_ms", baseline);
    let pod = ctx.run_pod("iso-noisy", "iso-noisy", &handler).await?;
    let stress = format!("{PROBE} forkbomb 200 30 & {PROBE} hog 256; wait");
    let mut noisy = container_config("noisy", 0, &image, &["sh", "-c", &stress]);
    if let Some(r) = noisy.linux.as_mut().and_then(|l| l.resources.as_mut()) {
        r.memory_limit_in_bytes = 128 << 20;
    }
    ctx.start_container(&pod, noisy).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = round_trip_ms(ctx, victim).await?;
    ctx.say("noisy_during_ms", during);
    ctx.remove_pod(&pod).await?;
    Ok(())
}

/// The median of five ExecSync `true` round trips, in ms.
async fn round_trip_ms(ctx: &mut Ctx, container: &str) -> Result<u128> {
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = std::time::Instant::now();
        ctx.cri
            .exec_sync(container, &["true"], Duration::from_secs(60))
            .await?;
        times.push(t.elapsed().as_millis());
    }
    times.sort_unstable();
    Ok(times[times.len() / 2])
}

/// Runs `cmd` in `container`; its lines reported under `prefix`.
async fn probe(ctx: &mut Ctx, container: &str, prefix: &str, cmd: &[&str]) -> Result<()> {
    exec_report(ctx, container, prefix, cmd, Duration::from_secs(60)).await
}

fn host_file(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| format!("unreadable ({e})"))
}

/// The lines of the host kernel's log that mention sysrq.
fn host_sysrq_lines() -> Result<usize> {
    let out = std::process::Command::new("dmesg")
        .output()
        .map_err(|e| CriError::io("running dmesg", e))?;
    if !out.status.success() {
        return Err(CriError::Check(format!(
            "dmesg failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains("sysrq"))
        .count())
}
