//! cgroup v2 limits beyond memory and pids: cpu (quota, period, shares) and io.

use anyhow::{ensure, Context, Result};
use husk_proto::client::ExitStatus;
use husk_tests::oci;
use serde_json::json;
use std::time::Duration;

use crate::{init, Ctx};

/// cpu.max shows the spec's quota and period; cpu.weight its shares, converted as runc
/// converts them (opencontainers/cgroups#20: 2048 shares are weight 174, 512 are 59); the
/// container sees the same files through its cgroup namespace; UpdateContainer changes both;
/// and a busy loop under the quota is throttled.
pub async fn cpu(ctx: &Ctx) -> Result<()> {
    let id = "cpu";
    let root = ctx.rootfs(id)?;
    let mut spec = oci::spec(&root, id, &["sh", "-c", "while :; do :; done"]);
    spec["linux"]["resources"] = json!({"cpu": {"quota": 50000, "period": 100000, "shares": 2048}});
    ctx.start_detached(id, &spec).await?;
    let cg = format!("/sys/fs/cgroup/husk/{id}");
    let files = format!("cat {cg}/cpu.max {cg}/cpu.weight");
    let created = ctx.guest_sh(&files).await?;
    let inside = ctx
        .exec(
            id,
            "e1",
            &["cat", "/sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/cpu.weight"],
        )
        .await?;
    ctx.agent
        .update_container(
            id,
            br#"{"cpu":{"quota":20000,"period":100000,"shares":512}}"#.to_vec(),
        )
        .await?;
    let updated = ctx.guest_sh(&files).await?;
    // The loop runs a second under the new quota (20 ms of every 100 ms).
    let throttled_before = throttled(&ctx.guest_sh(&format!("cat {cg}/cpu.stat")).await?)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let throttled_after = throttled(&ctx.guest_sh(&format!("cat {cg}/cpu.stat")).await?)?;
    ctx.agent.remove_container(id, true).await?;
    ensure!(
        created == "50000 100000\n174\n",
        "cpu.max, cpu.weight: {created:?}"
    );
    ensure!(
        inside.status == ExitStatus::Exited(0) && inside.stdout == created,
        "the container's own view {:?} {:?} {}",
        inside.status,
        inside.stdout,
        inside.stderr
    );
    ensure!(updated == "20000 100000\n59\n", "after update: {updated:?}");
    ensure!(
        throttled_after > throttled_before,
        "the busy loop was never throttled: nr_throttled {throttled_before} -> {throttled_after}"
    );
    println!(
        "CHECK cpu ok cpu.max=50000/100000 weight=174 (shares 2048) updated=20000/100000 \
         weight=59 (shares 512) throttled-periods={}",
        throttled_after - throttled_before
    );
    Ok(())
}

/// cpu.stat's `nr_throttled`.
fn throttled(cpu_stat: &str) -> Result<u64> {
    cpu_stat
        .lines()
        .find_map(|l| l.strip_prefix("nr_throttled "))
        .context("no nr_throttled in cpu.stat")?
        .trim()
        .parse()
        .context("nr_throttled")
}

/// The guest has no block device (the rootfs and volumes come through virtio-fs, scratch
/// space is tmpfs), so nothing a container does counts as block io: StatsContainer's io
/// fields read as zero, without error, after the container wrote through the share. An io
/// limit (`linux.resources.blockIO`) names host devices that do not exist in the guest:
/// creating such a container, or updating one with it, fails with InvalidArgument and a
/// message that says so.
pub async fn io(ctx: &Ctx) -> Result<()> {
    let id = "io-stats";
    let root = ctx.rootfs(id)?;
    let script = "dd if=/dev/zero of=/data/f bs=1M count=4 2>/dev/null && \
                  dd if=/data/f of=/dev/null bs=1M 2>/dev/null && sync";
    let spec = oci::spec(&root, id, &["sh", "-c", script]);
    ctx.create(id, &spec, false).await?;
    let o = ctx
        .collect(&init(id), None, || ctx.agent.start_container(id))
        .await?;
    // Stopped but not removed: the cgroup is still there to read.
    let stats = ctx.agent.stats_container(id).await?;
    let devices = ctx
        .guest_sh("ls /sys/block | wc -l; cat /sys/fs/cgroup/husk/io-stats/io.stat 2>&1 || true")
        .await?;
    ctx.agent.remove_container(id, false).await?;
    o.succeeded("the writer")?;
    ensure!(
        stats.io_read_bytes == 0 && stats.io_write_bytes == 0,
        "io counters without a block device: {stats:?}"
    );
    ensure!(
        stats.cpu_usage_ns > 0,
        "the stats are not read at all: {stats:?}"
    );
    ensure!(
        devices.lines().next() == Some("0") && devices.lines().nth(1).is_none(),
        "block devices or io.stat lines in the guest: {devices:?}"
    );
    let host_file = ctx.share.join(id).join("rootfs/data/f");
    ensure!(
        std::fs::metadata(&host_file)?.len() == 4 << 20,
        "the 4 MiB did not reach the share"
    );

    // io limits: refused, with the reason.
    let limited = "io-limit";
    let root = ctx.rootfs(limited)?;
    let mut spec = oci::spec(&root, limited, &["true"]);
    spec["linux"]["resources"] = json!({"blockIO": {
        "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}]
    }});
    let refused = ctx.create(limited, &spec, false).await;
    let create_error = refusal(refused)?;
    let mut weighted = oci::spec(&root, limited, &["true"]);
    weighted["linux"]["resources"] = json!({"blockIO": {"weight": 500}});
    let weight_error = refusal(ctx.create(limited, &weighted, false).await)?;
    // UpdateContainer of a running container with an io limit.
    ctx.start_detached(limited, &oci::spec(&root, limited, &["sleep", "1000"]))
        .await?;
    let update = ctx
        .agent
        .update_container(
            limited,
            br#"{"blockIO":{"throttleWriteIOPSDevice":[{"major":253,"minor":0,"rate":10}]}}"#
                .to_vec(),
        )
        .await;
    ctx.agent.remove_container(limited, true).await?;
    let update_error = match update {
        Ok(()) => anyhow::bail!("an io limit was accepted by UpdateContainer"),
        Err(e) => {
            ensure!(
                e.code() == Some(tonic::Code::InvalidArgument),
                "UpdateContainer with an io limit: {e:#}"
            );
            format!("{e:#}")
        }
    };
    for message in [&create_error, &weight_error, &update_error] {
        ensure!(
            message.contains("blockIO") && message.contains("no block device"),
            "unclear io limit error: {message}"
        );
    }
    println!(
        "CHECK io ok io-bytes=0 block-devices=0 limits-refused: {create_error} | {update_error}"
    );
    Ok(())
}

/// The message of a creation that had to fail with InvalidArgument.
fn refusal(created: Result<()>) -> Result<String> {
    let Err(e) = created else {
        anyhow::bail!("a container with an io limit was created");
    };
    let code = e
        .chain()
        .find_map(|c| c.downcast_ref::<husk_proto::client::ClientError>())
        .and_then(|c| c.code());
    ensure!(
        code == Some(tonic::Code::InvalidArgument),
        "io limit: {code:?}: {e:#}"
    );
    Ok(format!("{e:#}"))
}
