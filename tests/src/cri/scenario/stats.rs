//! `stats`: ContainerStats and ListContainerStats of a busy container (a shell
//! spinning on half a CPU, holding an 8 MB string) and an idle one.

use std::time::Duration;

use super::{Ctx, IDLE};
use crate::cri::{container_config, poll, v1 as api, Result};

/// Spins, after filling a shell variable with 8 MB.
const BUSY: &str = "trap 'exit 0' TERM; x=$(head -c 8000000 /dev/zero | tr '\\0' a); \
                    while :; do :; done";

pub async fn run(ctx: &mut Ctx) -> Result<()> {
    let handler = ctx.handler();
    let image = ctx.opts.image.clone();
    let pod = ctx.run_pod("stats", "stats-host", &handler).await?;
    let mut busy = container_config("busy", 0, &image, &["sh", "-c", BUSY]);
    if let Some(r) = busy.linux.as_mut().and_then(|l| l.resources.as_mut()) {
        // Half a CPU: busy, without starving the rest of an emulated machine.
        r.cpu_quota = 50_000;
    }
    let busy = ctx.start_container(&pod, busy).await?;
    let idle = ctx
        .start_container(&pod, container_config("idle", 0, &image, IDLE))
        .await?;

    // Wait until the spinning has shown up as CPU time and the string as memory.
    let cri = ctx.cri.clone();
    let first = poll(
        "CPU and memory in ContainerStats",
        Duration::from_secs(60),
        || {
            let mut cri = cri.clone();
            let busy = busy.clone();
            async move {
                let s = cri.container_stats(&busy).await?;
                let ok = cpu_ns(&s) > 0 && working_set(&s) >= 8_000_000;
                Ok(ok.then_some(s))
            }
        },
    )
    .await?;
    ctx.say("busy_cpu_ns", cpu_ns(&first));
    ctx.say("busy_working_set_bytes", working_set(&first));
    ctx.say(
        "busy_usage_bytes",
        first
            .memory
            .as_ref()
            .and_then(|m| m.usage_bytes.as_ref())
            .map_or(0, |v| v.value),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = ctx.cri.container_stats(&busy).await?;
    ctx.say("busy_cpu_ns_later", cpu_ns(&second));
    ctx.say("busy_cpu_grew", cpu_ns(&second) > cpu_ns(&first));
    ctx.say(
        "busy_attributes_id",
        second
            .attributes
            .as_ref()
            .map(|a| a.id == busy)
            .unwrap_or(false),
    );

    let list = ctx.cri.list_container_stats(&pod.id).await?;
    ctx.say("list_count", list.len());
    let find = |id: &str| {
        list.iter()
            .find(|s| s.attributes.as_ref().is_some_and(|a| a.id == id))
    };
    ctx.say("list_busy_cpu_ns", find(&busy).map_or(0, cpu_ns));
    ctx.say(
        "list_busy_working_set_bytes",
        find(&busy).map_or(0, working_set),
    );
    ctx.say(
        "list_idle_working_set_bytes",
        find(&idle).map_or(0, working_set),
    );
    ctx.say(
        "list_names",
        list.iter()
            .filter_map(|s| {
                s.attributes
                    .as_ref()?
                    .metadata
                    .as_ref()
                    .map(|m| m.name.clone())
            })
            .collect::<Vec<_>>()
            .join(","),
    );
    // Stop the spinner before the teardown: it competes with everything else.
    ctx.cri
        .stop_container(&busy, Duration::from_secs(5))
        .await?;
    ctx.remove_pod(&pod).await
}

fn cpu_ns(s: &api::ContainerStats) -> u64 {
    s.cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds.as_ref())
        .map_or(0, |v| v.value)
}

fn working_set(s: &api::ContainerStats) -> u64 {
    s.memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref())
        .map_or(0, |v| v.value)
}
