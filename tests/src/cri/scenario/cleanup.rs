//! `cleanup`: after StopPodSandbox and RemovePodSandbox of every pod, nothing
//! of them is left on the machine.
//!
//! Two pods with a running container each are started and their traces noted
//! (processes, network namespace files, cgroups); then they are removed, and
//! the scenario counts what is left: pods and containers in CRI, the pods'
//! processes, any shim of this containerd, the runtime's helper processes,
//! mounts under containerd's base, the network namespaces, veth devices and
//! the pods' cgroups. Run last, it also catches leaks of earlier scenarios.
//!
//! The host's links (`ip -o -d link`) are noted before the pods start: after,
//! no new one may be left (the CNI bridge aside), and no tap device anywhere,
//! on the host or in a network namespace of `/var/run/netns` (a VM runtime's
//! NIC backend; their number while the pods ran is reported too). A runtime
//! with a run directory of its own ([`host::runtime_run_dir`], husk's
//! `/run/husk`) must have no entry left for the removed sandboxes, and no
//! mount under it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Ctx, IDLE};
use crate::cri::{container_config, host, poll, Result};

/// Where CRI's network namespaces live (containerd's default).
pub const NETNS_DIR: &str = "/var/run/netns";

pub async fn run(ctx: &mut Ctx) -> Result<()> {
    let handler = ctx.handler();
    let image = ctx.opts.image.clone();
    let links_before: BTreeSet<String> = host::links(None).into_iter().map(|l| l.name).collect();
    let mut pids = BTreeSet::new();
    let mut netns = Vec::new();
    let mut cgroups = Vec::new();
    let mut pods = Vec::new();
    for name in ["gone-a", "gone-b"] {
        let pod = ctx.run_pod(name, name, &handler).await?;
        let c = ctx
            .start_container(&pod, container_config("idle", 0, &image, IDLE))
            .await?;
        let (_, cinfo) = ctx.cri.container_status(&c).await?;
        let (_, pinfo) = ctx.cri.pod_status(&pod.id).await?;
        let procs = host::processes();
        pids.extend(host::pod_processes(&handler, &procs, &pod.id));
        if host::cri_pids_are_host_pids(&handler) {
            pids.extend(cinfo["pid"].as_u64().map(|p| p as u32));
            pids.extend(pinfo["pid"].as_u64().map(|p| p as u32));
        }
        netns.extend(netns_path(&pinfo));
        cgroups.push(pod.name.cgroup_parent());
        pods.push(pod);
    }
    ctx.say("pods_started", pods.len());
    ctx.say("pod_processes_before", pids.len());
    ctx.say("netns_before", netns.len());
    ctx.say("veths_before", host::veths(&ctx.opts.bridge).len());
    ctx.say("taps_before", host::taps(Path::new(NETNS_DIR)).len());
    let run_dir = host::runtime_run_dir(&handler);
    if let Some(dir) = run_dir {
        let present = pods.iter().filter(|p| dir.join(&p.id).exists()).count();
        ctx.say("run_dir_entries_before", present);
    }

    for pod in &pods {
        ctx.remove_pod(pod).await?;
    }
    // Processes may take a moment to be reaped after RemovePodSandbox returns.
    let left = poll("the pods' processes to go", Duration::from_secs(15), || {
        let left: Vec<u32> = pids.iter().copied().filter(|p| host::alive(*p)).collect();
        async move { Ok(left.is_empty().then_some(())) }
    })
    .await;
    let alive: Vec<u32> = pids.iter().copied().filter(|p| host::alive(*p)).collect();
    ctx.say("pod_processes_left", alive.len());
    if left.is_err() {
        ctx.say("pod_processes_left_pids", format!("{alive:?}"));
    }
    report_leftovers(ctx, &netns, &cgroups).await?;
    let taps = host::taps(Path::new(NETNS_DIR));
    ctx.say("taps_left", taps.len());
    if !taps.is_empty() {
        ctx.say("tap_left", taps.join(","));
    }
    let new_links: Vec<String> = host::links(None)
        .into_iter()
        .map(|l| l.name)
        .filter(|n| !links_before.contains(n) && *n != ctx.opts.bridge)
        .collect();
    ctx.say("links_new_left", new_links.len());
    if !new_links.is_empty() {
        ctx.say("link_left", new_links.join(","));
    }
    if let Some(dir) = run_dir {
        let left: Vec<&str> = pods
            .iter()
            .filter(|p| dir.join(&p.id).exists())
            .map(|p| p.id.as_str())
            .collect();
        ctx.say("run_dir_entries_left", left.len());
        ctx.say("run_dir_all_entries", host::dir_entries(dir).join(","));
        let mounts = host::mounts_under(dir);
        ctx.say("run_dir_mounts_left", mounts.len());
        for m in &mounts {
            ctx.say("run_dir_mount_left", m);
        }
    }
    Ok(())
}

/// Everything the machine still holds that a pod had made.
async fn report_leftovers(ctx: &mut Ctx, netns: &[String], cgroups: &[String]) -> Result<()> {
    let pods = ctx.cri.list_pods().await?.len();
    ctx.say("pods_left", pods);
    let containers = ctx.cri.list_containers().await?.len();
    ctx.say("containers_left", containers);
    let procs = host::processes();
    let address = ctx.opts.socket.to_string_lossy().into_owned();
    let shims: Vec<String> = procs
        .iter()
        .filter(|p| host::is_shim(p) && p.cmdline.contains(&address))
        .map(|p| format!("{}:{}", p.pid, p.command()))
        .collect();
    ctx.say("shims_left", shims.len());
    for s in &shims {
        ctx.say("shim_left", s);
    }
    let helpers = host::runtime_programs(&ctx.opts.handler);
    let runtime: Vec<String> = procs
        .iter()
        .filter(|p| helpers.contains(&p.program()))
        .map(|p| format!("{}:{}", p.pid, p.command()))
        .collect();
    ctx.say("runtime_processes_left", runtime.len());
    for r in &runtime {
        ctx.say("runtime_process_left", r);
    }
    let mounts = host::mounts_under(&ctx.opts.base);
    ctx.say("mounts_left", mounts.len());
    for m in &mounts {
        ctx.say("mount_left", m);
    }
    let ns_left: Vec<&String> = netns.iter().filter(|p| Path::new(p).exists()).collect();
    ctx.say("netns_left", ns_left.len());
    ctx.say(
        "netns_dir_entries",
        host::dir_entries(Path::new(NETNS_DIR)).len(),
    );
    let veths = host::veths(&ctx.opts.bridge);
    ctx.say("veths_left", veths.len());
    if !veths.is_empty() {
        ctx.say("veth_left", veths.join(","));
    }
    let cg_left: Vec<&String> = cgroups.iter().filter(|c| cgroup_dir(c).exists()).collect();
    ctx.say("cgroups_left", cg_left.len());
    Ok(())
}

fn cgroup_dir(path: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'))
}

/// The network namespace path in containerd's verbose sandbox info
/// (`runtimeSpec.linux.namespaces[type=network].path`).
pub fn netns_path(info: &serde_json::Value) -> Option<String> {
    info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()?
        .iter()
        .find(|n| n["type"] == "network")?["path"]
        .as_str()
        .filter(|p| !p.is_empty())
        .map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_netns_path_comes_from_the_sandbox_spec() {
        let info = json!({"runtimeSpec": {"linux": {"namespaces": [
            {"type": "pid"},
            {"type": "network", "path": "/var/run/netns/cni-1234"}
        ]}}});
        assert_eq!(
            netns_path(&info).as_deref(),
            Some("/var/run/netns/cni-1234")
        );
        assert_eq!(netns_path(&json!({})), None);
    }
}
