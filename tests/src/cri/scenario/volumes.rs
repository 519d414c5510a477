//! `volumes`: the kinds of mounts kubelet hands CRI.
//!
//! - a read-only hostPath: readable, writes fail with EROFS, the host untouched;
//! - an emptyDir-like host directory in two containers: one writes, the other
//!   reads, and back;
//! - a configMap-like directory in kubelet's atomic-writer layout (`key` ->
//!   `..data/key`, `..data` -> `..<timestamp>`), updated on the host by
//!   swapping `..data` with a rename: the container sees the new value without
//!   a restart;
//! - `/dev/shm`: writable, and shared by the pod's containers.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{stderr, stdout, Ctx, IDLE};
use crate::cri::{container_config, mount, poll, CriError, Result};

pub async fn run(ctx: &mut Ctx) -> Result<()> {
    let handler = ctx.handler();
    let image = ctx.opts.image.clone();
    let ro = ctx.scratch("volumes/ro")?;
    let shared = ctx.scratch("volumes/shared")?;
    let config = ctx.scratch("volumes/config")?;
    write(&ro.join("file"), "read-only-data\n")?;
    atomic_write(&config, "..2024_01_01_00_00_00.1", "key", "v1")?;
    symlink("..data/key", config.join("key"))
        .map_err(|e| CriError::io("linking the configMap key", e))?;

    let pod = ctx.run_pod("volumes", "volumes-host", &handler).await?;
    let mut writer = container_config("writer", 0, &image, IDLE);
    writer.mounts = vec![
        mount(&ro, "/ro", true),
        mount(&shared, "/shared", false),
        mount(&config, "/config", true),
    ];
    let w = ctx.start_container(&pod, writer).await?;
    let mut reader = container_config("reader", 0, &image, IDLE);
    reader.mounts = vec![mount(&shared, "/shared", false)];
    let r = ctx.start_container(&pod, reader).await?;
    let none = Duration::ZERO;
    let (_, info) = ctx.cri.container_status(&w).await?;
    ctx.say("writer_spec_mounts", super::spec_mounts(&info));

    // Read-only hostPath.
    let out = ctx.cri.exec_sync(&w, &["cat", "/ro/file"], none).await?;
    ctx.say("ro_read", stdout(&out));
    let out = ctx
        .cri
        .exec_sync(&w, &["sh", "-c", "echo x > /ro/new"], none)
        .await?;
    ctx.say("ro_write_exit_code", out.exit_code);
    ctx.say("ro_write_error", stderr(&out));
    ctx.say("ro_host_untouched", !ro.join("new").exists());

    // A directory shared by two containers, and seen by the host.
    let out = ctx
        .cri
        .exec_sync(&w, &["sh", "-c", "echo shared-data > /shared/f"], none)
        .await?;
    ctx.say("shared_write_exit_code", out.exit_code);
    let out = ctx.cri.exec_sync(&r, &["cat", "/shared/f"], none).await?;
    ctx.say("shared_read", stdout(&out));
    let out = ctx
        .cri
        .exec_sync(&r, &["sh", "-c", "echo from-reader > /shared/g"], none)
        .await?;
    ctx.say("shared_back_exit_code", out.exit_code);
    let out = ctx.cri.exec_sync(&w, &["cat", "/shared/g"], none).await?;
    ctx.say("shared_read_back", stdout(&out));
    let host = std::fs::read_to_string(shared.join("g")).unwrap_or_default();
    ctx.say("shared_host_sees", host.trim_end());

    // configMap update by the ..data swap.
    let out = ctx.cri.exec_sync(&w, &["cat", "/config/key"], none).await?;
    ctx.say("config_before", stdout(&out));
    let t = Instant::now();
    atomic_write(&config, "..2024_01_01_00_01_00.2", "key", "v2")?;
    std::fs::remove_dir_all(config.join("..2024_01_01_00_00_00.1"))
        .map_err(|e| CriError::io("removing the old configMap data", e))?;
    let cri = ctx.cri.clone();
    let seen = poll("the updated configMap", Duration::from_secs(30), || {
        let mut cri = cri.clone();
        let w = w.clone();
        async move {
            let out = cri.exec_sync(&w, &["cat", "/config/key"], none).await?;
            let v = stdout(&out);
            Ok((v == "v2").then_some(v))
        }
    })
    .await;
    ctx.say(
        "config_after",
        seen.unwrap_or_else(|e| format!("NOT SEEN: {e}")),
    );
    ctx.say("config_update_ms", t.elapsed().as_millis());
    let out = ctx
        .cri
        .exec_sync(&w, &["sh", "-c", "echo x > /config/key"], none)
        .await?;
    ctx.say("config_write_exit_code", out.exit_code);

    // /dev/shm.
    let out = ctx
        .cri
        .exec_sync(
            &w,
            &["sh", "-c", "echo shm-data > /dev/shm/t && cat /dev/shm/t"],
            none,
        )
        .await?;
    ctx.say("shm_write", stdout(&out));
    let out = ctx.cri.exec_sync(&r, &["cat", "/dev/shm/t"], none).await?;
    ctx.say("shm_shared", stdout(&out));
    let out = ctx
        .cri
        .exec_sync(&w, &["sh", "-c", "grep ' /dev/shm ' /proc/mounts"], none)
        .await?;
    ctx.say(
        "shm_fstype",
        stdout(&out).split(' ').nth(2).unwrap_or("none"),
    );
    ctx.remove_pod(&pod).await
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| CriError::io(format!("writing {}", path.display()), e))
}

/// kubelet's atomic writer: the data in `dir/<ts>/`, then `..data_tmp` ->
/// `<ts>` renamed over `..data`, so that a reader sees either the old or the
/// new data, never a mix.
fn atomic_write(dir: &Path, ts: &str, key: &str, value: &str) -> Result<()> {
    let data = dir.join(ts);
    std::fs::create_dir_all(&data)
        .map_err(|e| CriError::io(format!("creating {}", data.display()), e))?;
    write(&data.join(key), value)?;
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(ts, &tmp).map_err(|e| CriError::io("linking ..data_tmp", e))?;
    std::fs::rename(&tmp, dir.join("..data"))
        .map_err(|e| CriError::io("renaming ..data_tmp to ..data", e))
}
