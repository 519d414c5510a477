//! `restart`: a container restarts inside a live pod, as kubelet restarts it.
//!
//! Attempt 0 exits with code 1. Kubelet then creates attempt 1 in the same
//! sandbox while the dead attempt 0 is still there (it garbage-collects it
//! later), and it runs. Then attempt 1 is stopped, both are removed, and
//! attempt 2 runs. The sandbox's identity (its pid, its shim, the pod's
//! processes) is reported before and after: the sandbox must not restart.

use std::time::Duration;

use super::{describe_pids, log_file, read_log, stdout, wait_exit, Ctx, IDLE};
use crate::cri::{container_config, host, v1 as api, Result};

pub async fn run(ctx: &mut Ctx) -> Result<()> {
    let handler = ctx.handler();
    let image = ctx.opts.image.clone();
    let pod = ctx.run_pod("restart", "restart-host", &handler).await?;
    identity(ctx, &pod.id, "before").await?;

    let crash = container_config("app", 0, &image, &["sh", "-c", "echo attempt-0; exit 1"]);
    let c0 = ctx.start_container(&pod, crash).await?;
    let st0 = wait_exit(ctx, &c0, Duration::from_secs(60)).await?;
    ctx.say("attempt0_exit_code", st0.exit_code);
    ctx.say("attempt0_reason", &st0.reason);
    ctx.say(
        "attempt0_log",
        read_log(&log_file(&pod, &st0)).0.join(" | "),
    );

    // Attempt 1 next to the dead attempt 0.
    let c1 = ctx
        .start_container(&pod, container_config("app", 1, &image, IDLE))
        .await?;
    let running = api::ContainerState::ContainerRunning;
    let st1 = ctx
        .cri
        .wait_container(&c1, running, Duration::from_secs(60))
        .await?;
    ctx.say("attempt1_state", st1.state().as_str_name());
    ctx.say(
        "attempt1_attempt",
        st1.metadata.map(|m| m.attempt).unwrap_or(0),
    );
    let r = ctx
        .cri
        .exec_sync(&c1, &["echo", "attempt-1-alive"], Duration::ZERO)
        .await?;
    ctx.say("attempt1_exec", stdout(&r));
    let in_pod = ctx
        .cri
        .list_containers()
        .await?
        .into_iter()
        .filter(|c| c.pod_sandbox_id == pod.id)
        .count();
    ctx.say("containers_in_pod", in_pod);

    // Kubelet's other order: stop, remove the old ones, then a new attempt.
    ctx.cri.stop_container(&c1, Duration::from_secs(10)).await?;
    let st1 = wait_exit(ctx, &c1, Duration::from_secs(30)).await?;
    ctx.say("attempt1_stop_exit_code", st1.exit_code);
    ctx.cri.remove_container(&c0).await?;
    ctx.cri.remove_container(&c1).await?;
    let c2 = ctx
        .start_container(&pod, container_config("app", 2, &image, IDLE))
        .await?;
    let st2 = ctx
        .cri
        .wait_container(&c2, running, Duration::from_secs(60))
        .await?;
    ctx.say("attempt2_state", st2.state().as_str_name());

    identity(ctx, &pod.id, "after").await?;
    ctx.remove_pod(&pod).await
}

/// `<when>_sandbox_state`, `<when>_sandbox_pid` (containerd's verbose info),
/// `<when>_shim_pid` and `<when>_pod_processes` (`pid:program,...`).
async fn identity(ctx: &mut Ctx, pod_id: &str, when: &str) -> Result<()> {
    let (status, info) = ctx.cri.pod_status(pod_id).await?;
    ctx.say(
        &format!("{when}_sandbox_state"),
        status.state().as_str_name(),
    );
    ctx.say(&format!("{when}_sandbox_created_at"), status.created_at);
    ctx.say(
        &format!("{when}_sandbox_pid"),
        info["pid"].as_u64().unwrap_or(0),
    );
    let procs = host::processes();
    let shim = host::shim_of(&procs, pod_id).map(|p| p.pid).unwrap_or(0);
    ctx.say(&format!("{when}_shim_pid"), shim);
    let pids = host::pod_processes(&ctx.opts.handler, &procs, pod_id);
    ctx.say(
        &format!("{when}_pod_processes"),
        describe_pids(&procs, &pids),
    );
    Ok(())
}
