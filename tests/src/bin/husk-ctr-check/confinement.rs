//! What a container shares and what it may write: namespaces (ipc, network), the spec's
//! read-only paths and bind mounts.

use anyhow::{ensure, Context, Result};
use husk_tests::oci;
use serde_json::{json, Value};

use crate::{probe, Ctx, GUEST_SHARE, PROBE_FN};

/// What a process sees of its ipc and network namespaces: the namespace links, a
/// per-network-namespace setting, and the interfaces (/proc/net/dev).
const NS_PROBE: &str = "echo ipc=$(readlink /proc/self/ns/ipc) net=$(readlink /proc/self/ns/net) \
                        somaxconn=$(cat /proc/sys/net/core/somaxconn); cat /proc/net/dev";

/// The guest's value of `net.core.somaxconn` (per network namespace) while the check runs;
/// a new namespace has the kernel's default, 4096.
const GUEST_SOMAXCONN: &str = "4242";

#[derive(Debug, PartialEq, Eq)]
struct NsView {
    ipc: String,
    net: String,
    somaxconn: String,
    interfaces: Vec<String>,
}

fn ns_view(out: &str) -> Result<NsView> {
    let mut lines = out.lines();
    let first = lines.next().context("no output")?;
    let field = |key: &str| {
        first
            .split_whitespace()
            .find_map(|f| f.strip_prefix(key))
            .map(str::to_owned)
            .with_context(|| format!("no {key} in {first:?}"))
    };
    let interfaces = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.trim().to_owned())
        .collect();
    Ok(NsView {
        ipc: field("ipc=")?,
        net: field("net=")?,
        somaxconn: field("somaxconn=")?,
        interfaces,
    })
}

/// Runs the namespace probe in a container `id` made from the default spec changed by `edit`.
async fn container_view(ctx: &Ctx, id: &str, edit: impl FnOnce(&mut Value)) -> Result<NsView> {
    let root = ctx.rootfs(id)?;
    let mut spec = oci::spec(&root, id, &["sh", "-c", NS_PROBE]);
    edit(&mut spec);
    let o = ctx.run(id, &spec, None).await?;
    o.succeeded(id)?;
    ns_view(&o.stdout).with_context(|| format!("{id}: {}", o.stdout))
}

/// The spec's namespaces with `kind` removed.
fn without_namespace(spec: &mut Value, kind: &str) {
    if let Some(list) = spec["linux"]["namespaces"].as_array_mut() {
        list.retain(|n| n["type"] != kind);
    }
}

/// The ipc namespace is the container's own (not the agent's, not another container's)
/// unless the spec shares it: by leaving it out (the VM's) or by a path (another
/// container's, as CRI joins a Pod's). The network namespace is the VM's when the spec has
/// none (the same namespace, interfaces and settings as the guest and as another such
/// container) and a new one with only `lo` when the spec asks for one.
pub async fn namespaces(ctx: &Ctx) -> Result<()> {
    let old = ctx.guest_sh("cat /proc/sys/net/core/somaxconn").await?;
    ctx.guest_sh(&format!(
        "echo {GUEST_SOMAXCONN} > /proc/sys/net/core/somaxconn"
    ))
    .await?;
    let result = namespace_views(ctx).await;
    ctx.guest_sh(&format!(
        "echo {} > /proc/sys/net/core/somaxconn",
        old.trim()
    ))
    .await?;
    result
}

async fn namespace_views(ctx: &Ctx) -> Result<()> {
    let guest = ns_view(&ctx.guest_sh(NS_PROBE).await?)?;
    ensure!(guest.somaxconn == GUEST_SOMAXCONN, "guest: {guest:?}");
    // A running container whose ipc namespace another one joins.
    let a = "ns-a";
    let root = ctx.rootfs(a)?;
    let a_pid = ctx
        .start_detached(a, &oci::spec(&root, a, &["sleep", "1000"]))
        .await?;
    let a_ipc = ctx
        .guest_sh(&format!("readlink /proc/{a_pid}/ns/ipc"))
        .await?
        .trim()
        .to_owned();
    let b = container_view(ctx, "ns-b", |_| {}).await;
    let own_net = container_view(ctx, "ns-own-net", |s| {
        if let Some(list) = s["linux"]["namespaces"].as_array_mut() {
            list.push(json!({"type": "network"}));
        }
    })
    .await;
    let vm_ipc = container_view(ctx, "ns-vm-ipc", |s| without_namespace(s, "ipc")).await;
    let join_path = format!("/proc/{a_pid}/ns/ipc");
    let joined = container_view(ctx, "ns-join-ipc", |s| {
        without_namespace(s, "ipc");
        if let Some(list) = s["linux"]["namespaces"].as_array_mut() {
            list.push(json!({"type": "ipc", "path": join_path}));
        }
    })
    .await;
    ctx.agent.remove_container(a, true).await?;
    let (b, own_net, vm_ipc, joined) = (b?, own_net?, vm_ipc?, joined?);

    // Namespace inode numbers are reused once a namespace is gone, so each container is
    // compared with what lives as long as it does: the guest's and a's.
    for own in [&b.ipc, &own_net.ipc] {
        ensure!(
            a_ipc != guest.ipc && *own != guest.ipc && *own != a_ipc,
            "ipc namespace not the container's own: {own}, guest {}, a {a_ipc}",
            guest.ipc
        );
    }
    ensure!(
        vm_ipc.ipc == guest.ipc,
        "no ipc namespace in the spec: {vm_ipc:?}, guest {guest:?}"
    );
    ensure!(joined.ipc == a_ipc, "ipc by path: {joined:?}, a {a_ipc}");
    for shared in [&b, &vm_ipc, &joined] {
        ensure!(
            shared.net == guest.net
                && shared.interfaces == guest.interfaces
                && shared.somaxconn == GUEST_SOMAXCONN,
            "no network namespace in the spec, yet not the VM's: {shared:?}, guest {guest:?}"
        );
    }
    ensure!(
        own_net.net != guest.net
            && own_net.interfaces == ["lo"]
            && own_net.somaxconn != GUEST_SOMAXCONN,
        "a network namespace of its own: {own_net:?}, guest {guest:?}"
    );
    println!(
        "CHECK namespaces ok ipc-own ipc-vm-when-absent ipc-joined-by-path net-shared-with-vm \
         (interfaces {:?}) net-own=lo",
        guest.interfaces
    );
    Ok(())
}

const RO_PROBE: &str = "p ro-dir 'touch /data/ro/x'; p rw-dir 'touch /data/rw/x'; \
    p parent 'touch /data/y'; p ro-file 'echo x >> /etc/ro-file'; \
    p rw-file 'echo x >> /etc/rw-file'; p ro-read 'cat /etc/ro-file'; \
    p bind-read 'cat /mnt/rw/hello.txt'; p bind-write 'echo from-container > /mnt/rw/new.txt'; \
    p bind-ro-read 'cat /mnt/ro/x.txt'; p bind-ro-write 'touch /mnt/ro/y'; \
    p file-bind-read 'cat /etc/host-file'; p file-bind-write 'echo x >> /etc/host-file'";

/// Read-only paths (a directory and a file) reject writes with EROFS while their neighbours
/// and parent take them; bind mounts from the share (a directory read-write, a directory
/// read-only, a file read-only) show the host's files, and a read-write one carries writes
/// back to the host.
pub async fn readonly_paths_and_binds(ctx: &Ctx) -> Result<()> {
    let id = "ro-paths";
    let root = ctx.rootfs(id)?;
    let rootfs = ctx.share.join(id).join("rootfs");
    for dir in ["data/ro", "data/rw"] {
        std::fs::create_dir_all(rootfs.join(dir))?;
    }
    std::fs::write(rootfs.join("etc/ro-file"), "ro\n")?;
    std::fs::write(rootfs.join("etc/rw-file"), "rw\n")?;
    let binds = ctx.share.join(format!("{id}-binds"));
    for dir in ["dir", "rodir"] {
        std::fs::create_dir_all(binds.join(dir))?;
    }
    std::fs::write(binds.join("dir/hello.txt"), "hello from the host\n")?;
    std::fs::write(binds.join("rodir/x.txt"), "read-only for the container\n")?;
    std::fs::write(binds.join("file.txt"), "host file\n")?;

    let script = format!("{PROBE_FN}{RO_PROBE}");
    let mut spec = oci::spec(&root, id, &["sh", "-c", &script]);
    let ro_paths = spec["linux"]["readonlyPaths"]
        .as_array_mut()
        .context("readonlyPaths")?;
    ro_paths.push(json!("/data/ro"));
    ro_paths.push(json!("/etc/ro-file"));
    let source = |name: &str| format!("{GUEST_SHARE}/{id}-binds/{name}");
    let mounts = spec["mounts"].as_array_mut().context("mounts")?;
    for (destination, name, options) in [
        ("/mnt/rw", "dir", json!(["rbind", "rw"])),
        ("/mnt/ro", "rodir", json!(["rbind", "ro"])),
        ("/etc/host-file", "file.txt", json!(["bind", "ro"])),
    ] {
        mounts.push(json!({"destination": destination, "type": "bind",
                           "source": source(name), "options": options}));
    }
    let o = ctx.run(id, &spec, None).await?;
    o.succeeded(id)?;
    let out = &o.stdout;
    let erofs = |name: &str| -> Result<()> {
        let (rc, text) = probe(out, name)?;
        ensure!(
            rc != 0 && text.contains("Read-only file system"),
            "{name} is writable: {out}"
        );
        Ok(())
    };
    for name in ["ro-dir", "ro-file", "bind-ro-write", "file-bind-write"] {
        erofs(name)?;
    }
    for (name, want) in [
        ("rw-dir", ""),
        ("parent", ""),
        ("rw-file", ""),
        ("ro-read", "ro"),
        ("bind-read", "hello from the host"),
        ("bind-write", ""),
        ("bind-ro-read", "read-only for the container"),
        ("file-bind-read", "host file"),
    ] {
        ensure!(probe(out, name)? == (0, want), "{name}: {out}");
    }
    // What the host sees.
    ensure!(
        std::fs::read_to_string(binds.join("dir/new.txt"))? == "from-container\n",
        "a write through the bind mount did not reach the host"
    );
    ensure!(!binds.join("rodir/y").exists() && !rootfs.join("data/ro/x").exists());
    ensure!(rootfs.join("data/rw/x").exists() && rootfs.join("data/y").exists());
    ensure!(std::fs::read_to_string(binds.join("file.txt"))? == "host file\n");
    ensure!(std::fs::read_to_string(rootfs.join("etc/ro-file"))? == "ro\n");
    ensure!(std::fs::read_to_string(rootfs.join("etc/rw-file"))? == "rw\nx\n");
    println!(
        "CHECK ro-paths ok readonly-dir readonly-file neighbours-writable bind-rw bind-ro \
         bind-file-ro"
    );
    Ok(())
}
