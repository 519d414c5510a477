//! `volumes`: the kinds of mounts kubelet hands CRI, in kubelet's shapes.
//!
//! Pod `volumes`, containers `writer` and `reader`:
//! - a read-only hostPath: readable, writes fail with EROFS, the host untouched;
//! - a plain host directory in both containers: one writes, the other reads,
//!   and back, and the host sees it;
//! - a configMap-like directory in kubelet's atomic-writer layout (`key` ->
//!   `..data/key`, `..data` -> `..<timestamp>`), updated on the host by
//!   swapping `..data` with a rename: the container sees the new value without
//!   a restart;
//! - `/dev/shm`: writable, and shared by the pod's containers;
//! - the emptyDir `cache` (`<workdir>/pods/<uid>/volumes/kubernetes.io~empty-dir/cache`)
//!   in both containers (the reader also has it read-only): each sees the
//!   other's writes; whether the host directory sees them is reported (husk
//!   keeps an emptyDir in the guest, runc shares the host's);
//! - the emptyDir `mem` with `medium: Memory` and an 8 MiB sizeLimit (kubelet's
//!   host tmpfs): its size in the container;
//! - subPaths as kubelet binds them (`volume-subpaths/<volume>/<container>/<n>`):
//!   `sub` of a host volume (only it visible), and `logs` of `cache` (the
//!   writer's files in `cache/logs` appear there, nothing else of `cache`);
//! - a secret's single file, read-only; a termination-log file the container
//!   writes and the host reads; kubelet's `etc-hosts` as `/etc/hosts`;
//! - the reader does not see the writer's processes (a PID namespace each).
//!
//! Then [`namespaces`]: a `shareProcessNamespace` pod, and a hostNetwork pod.

mod kubelet;
mod namespaces;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{stderr, stdout, Ctx, IDLE};
use crate::cri::host::dir_entries;
use crate::cri::{container_config, mount, poll, CriError, Result};
use kubelet::PodDir;

/// The writer's idle loop, with a `sleep` whose argument marks it in `ps`.
const WRITER_IDLE: &[&str] = &[
    "sh",
    "-c",
    "trap 'exit 0' TERM; while :; do sleep 86398 & wait; done",
];

pub async fn run(ctx: &mut Ctx) -> Result<()> {
    let handler = ctx.handler();
    let image = ctx.opts.image.clone();
    let ro = ctx.scratch("volumes/ro")?;
    let shared = ctx.scratch("volumes/shared")?;
    let config = ctx.scratch("volumes/config")?;
    let data = ctx.scratch("volumes/data")?;
    write(&ro.join("file"), "read-only-data\n")?;
    write(&data.join("top"), "not-in-the-subpath\n")?;
    std::fs::create_dir_all(data.join("sub"))
        .map_err(|e| CriError::io("creating the subPath directory", e))?;
    write(&data.join("sub/inner"), "inner-data\n")?;
    atomic_write(&config, "..2024_01_01_00_00_00.1", "key", "v1")?;
    symlink("..data/key", config.join("key"))
        .map_err(|e| CriError::io("linking the configMap key", e))?;

    let pod = ctx.run_pod("volumes", "volumes-host", &handler).await?;
    // kubelet's side, once the Pod is there: its volumes, subPaths and files.
    let mut kdir = PodDir::new(&ctx.opts.workdir, &pod.name.uid)?;
    let cache = kdir.empty_dir("cache")?;
    let mem = kdir.memory_empty_dir("mem", "8m")?;
    // kubelet makes a missing subPath directory in the volume before binding it.
    std::fs::create_dir_all(cache.join("logs"))
        .map_err(|e| CriError::io("creating the emptyDir's subPath", e))?;
    let data_sub = kdir.subpath("data", "writer", 5, &data.join("sub"))?;
    let secret = kdir.secret_file("creds", "password", "s3cret\n")?;
    let secret_sub = kdir.subpath("creds", "writer", 6, &secret)?;
    let term_log = kdir.termination_log("writer")?;
    let hosts = kdir.etc_hosts(&pod.ip, "volumes-host")?;
    let cache_logs = kdir.subpath("cache", "reader", 2, &cache.join("logs"))?;

    let mut writer = container_config("writer", 0, &image, WRITER_IDLE);
    writer.mounts = vec![
        mount(&ro, "/ro", true),
        mount(&shared, "/shared", false),
        mount(&config, "/config", true),
        mount(&cache, "/cache", false),
        mount(&mem, "/mem", false),
        mount(&data_sub, "/data-sub", false),
        mount(&secret_sub, "/etc/creds/password", true),
        mount(&term_log, "/dev/termination-log", false),
        mount(&hosts, "/etc/hosts", false),
    ];
    let w = ctx.start_container(&pod, writer).await?;
    let mut reader = container_config("reader", 0, &image, IDLE);
    reader.mounts = vec![
        mount(&shared, "/shared", false),
        mount(&cache, "/cache", false),
        mount(&cache_logs, "/logs", false),
        mount(&cache, "/cache-ro", true),
    ];
    let r = ctx.start_container(&pod, reader).await?;
    let (_, info) = ctx.cri.container_status(&w).await?;
    ctx.say("writer_spec_mounts", super::spec_mounts(&info));

    host_volumes(ctx, &w, &r, &ro, &shared).await?;
    config_map(ctx, &w, &config).await?;
    shm(ctx, &w, &r).await?;
    empty_dirs(ctx, &w, &r, &cache).await?;
    files(ctx, &w, &term_log).await?;
    let ps = "if ps | grep -q 'sleep 8639[8]'; then echo yes; else echo no; fi";
    let out = sh(ctx, &r, ps).await?;
    ctx.say("pid_isolated_sees_other", stdout(&out));
    ctx.remove_pod(&pod).await?;
    // The Pod is gone: kubelet's mounts can go (the scratch directory with them).
    drop(kdir);

    namespaces::share_process_namespace(ctx).await?;
    namespaces::host_network(ctx).await
}

/// ExecSync `sh -c script` in `container`.
async fn sh(
    ctx: &mut Ctx,
    container: &str,
    script: &str,
) -> Result<crate::cri::v1::ExecSyncResponse> {
    ctx.cri
        .exec_sync(container, &["sh", "-c", script], Duration::ZERO)
        .await
}

/// The read-only hostPath and the plain shared host directory.
async fn host_volumes(ctx: &mut Ctx, w: &str, r: &str, ro: &Path, shared: &Path) -> Result<()> {
    let out = sh(ctx, w, "cat /ro/file").await?;
    ctx.say("ro_read", stdout(&out));
    let out = sh(ctx, w, "echo x > /ro/new").await?;
    ctx.say("ro_write_exit_code", out.exit_code);
    ctx.say("ro_write_error", stderr(&out));
    ctx.say("ro_host_untouched", !ro.join("new").exists());

    let out = sh(ctx, w, "echo shared-data > /shared/f").await?;
    ctx.say("shared_write_exit_code", out.exit_code);
    let out = sh(ctx, r, "cat /shared/f").await?;
    ctx.say("shared_read", stdout(&out));
    let out = sh(ctx, r, "echo from-reader > /shared/g").await?;
    ctx.say("shared_back_exit_code", out.exit_code);
    let out = sh(ctx, w, "cat /shared/g").await?;
    ctx.say("shared_read_back", stdout(&out));
    let host = std::fs::read_to_string(shared.join("g")).unwrap_or_default();
    ctx.say("shared_host_sees", host.trim_end());
    Ok(())
}

/// configMap update by the `..data` swap.
async fn config_map(ctx: &mut Ctx, w: &str, config: &Path) -> Result<()> {
    let none = Duration::ZERO;
    let out = sh(ctx, w, "cat /config/key").await?;
    ctx.say("config_before", stdout(&out));
    let t = Instant::now();
    atomic_write(config, "..2024_01_01_00_01_00.2", "key", "v2")?;
    std::fs::remove_dir_all(config.join("..2024_01_01_00_00_00.1"))
        .map_err(|e| CriError::io("removing the old configMap data", e))?;
    let cri = ctx.cri.clone();
    let seen = poll("the updated configMap", Duration::from_secs(30), || {
        let mut cri = cri.clone();
        let w = w.to_owned();
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
    let out = sh(ctx, w, "echo x > /config/key").await?;
    ctx.say("config_write_exit_code", out.exit_code);
    Ok(())
}

/// `/dev/shm`, shared by the Pod's containers.
async fn shm(ctx: &mut Ctx, w: &str, r: &str) -> Result<()> {
    let out = sh(ctx, w, "echo shm-data > /dev/shm/t && cat /dev/shm/t").await?;
    ctx.say("shm_write", stdout(&out));
    let out = sh(ctx, r, "cat /dev/shm/t").await?;
    ctx.say("shm_shared", stdout(&out));
    let out = sh(ctx, w, "grep ' /dev/shm ' /proc/mounts").await?;
    ctx.say("shm_fstype", fstype(&stdout(&out)));
    Ok(())
}

/// The third field of a `/proc/mounts` line.
fn fstype(line: &str) -> String {
    line.split(' ').nth(2).unwrap_or("none").to_string()
}

/// The emptyDirs `cache` (two containers, read-only in one, a subPath of it)
/// and `mem` (medium Memory with a sizeLimit).
async fn empty_dirs(ctx: &mut Ctx, w: &str, r: &str, cache: &Path) -> Result<()> {
    // cache/logs is there already: kubelet made it for the reader's subPath.
    let out = sh(
        ctx,
        w,
        "echo from-writer > /cache/w && echo log-line > /cache/logs/w.log",
    )
    .await?;
    ctx.say("emptydir_write_exit_code", out.exit_code);
    let out = sh(ctx, r, "cat /cache/w").await?;
    ctx.say("emptydir_read", stdout(&out));
    let out = sh(ctx, r, "echo from-reader > /cache/r").await?;
    ctx.say("emptydir_back_exit_code", out.exit_code);
    let out = sh(ctx, w, "cat /cache/r").await?;
    ctx.say("emptydir_read_back", stdout(&out));
    // The same emptyDir read-only in the reader.
    let out = sh(ctx, r, "cat /cache-ro/w").await?;
    ctx.say("emptydir_ro_read", stdout(&out));
    let out = sh(ctx, r, "echo x > /cache-ro/x").await?;
    ctx.say("emptydir_ro_write_exit_code", out.exit_code);
    ctx.say("emptydir_ro_write_error", stderr(&out));
    // The subPath `logs` of it: only that directory.
    let out = sh(ctx, r, "ls /logs && cat /logs/w.log").await?;
    ctx.say("emptydir_subpath", stdout(&out));
    let out = sh(ctx, w, "grep ' /cache ' /proc/mounts").await?;
    ctx.say("emptydir_fstype", fstype(&stdout(&out)));
    // husk keeps the emptyDir in the guest; runc writes the host directory.
    let host = dir_entries(cache);
    ctx.say("emptydir_host_entries", host.join(","));
    ctx.say(
        "emptydir_host_sees_writes",
        cache.join("w").exists() || cache.join("r").exists(),
    );
    ctx.say(
        "emptydir_host_subpath_entries",
        dir_entries(&cache.join("logs")).len(),
    );
    // medium: Memory, sizeLimit 8Mi: the volume's size in the container.
    let out = sh(ctx, w, "df -k /mem | tail -n 1").await?;
    let kib = stdout(&out)
        .split_whitespace()
        .nth(1)
        .unwrap_or("?")
        .to_string();
    ctx.say("emptydir_mem_size_kib", kib);
    let out = sh(ctx, w, "echo m > /mem/f && cat /mem/f").await?;
    ctx.say("emptydir_mem_write", stdout(&out));
    Ok(())
}

/// A subPath of a host volume, a secret's file, the termination log and `/etc/hosts`.
async fn files(ctx: &mut Ctx, w: &str, term_log: &Path) -> Result<()> {
    let out = sh(ctx, w, "ls /data-sub && cat /data-sub/inner").await?;
    ctx.say("subpath_view", stdout(&out));
    let out = sh(ctx, w, "cat /etc/creds/password").await?;
    ctx.say("secret_read", stdout(&out));
    let out = sh(ctx, w, "echo x > /etc/creds/password").await?;
    ctx.say("secret_write_exit_code", out.exit_code);
    ctx.say("secret_write_error", stderr(&out));
    let out = sh(ctx, w, "echo bye-from-writer > /dev/termination-log").await?;
    ctx.say("termination_log_write_exit_code", out.exit_code);
    let host = std::fs::read_to_string(term_log).unwrap_or_default();
    ctx.say("termination_log_host", host.trim_end());
    let out = sh(ctx, w, "grep volumes-host /etc/hosts").await?;
    ctx.say("etc_hosts_line", stdout(&out).replace('\t', " "));
    Ok(())
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
