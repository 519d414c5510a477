//! The Pod namespaces kubelet may ask for beyond the defaults:
//! `shareProcessNamespace` (PID namespace `POD`: a container sees the
//! others' processes) and `hostNetwork` (network namespace `NODE`, which a VM
//! runtime cannot give and must refuse clearly).

use std::time::Duration;

use super::super::{stdout, Ctx, IDLE};
use crate::cri::{container_config, poll, v1 as api, Result};

/// Container `a`'s idle loop, with a `sleep` whose argument marks it in `ps`.
const A_IDLE: &[&str] = &[
    "sh",
    "-c",
    "trap 'exit 0' TERM; while :; do sleep 86397 & wait; done",
];

/// The namespaces of a pod's sandbox.
fn sandbox_ns(c: &mut api::PodSandboxConfig) -> Option<&mut api::NamespaceOption> {
    c.linux
        .as_mut()?
        .security_context
        .as_mut()?
        .namespace_options
        .as_mut()
}

/// The namespaces of a container.
fn container_ns(c: &mut api::ContainerConfig) -> Option<&mut api::NamespaceOption> {
    c.linux
        .as_mut()?
        .security_context
        .as_mut()?
        .namespace_options
        .as_mut()
}

/// `config` with the Pod's PID namespace.
fn in_pod_pid_ns(mut config: api::ContainerConfig) -> api::ContainerConfig {
    if let Some(ns) = container_ns(&mut config) {
        ns.pid = api::NamespaceMode::Pod as i32;
    }
    config
}

/// Pod `sharepid` with PID namespace `POD`: container `b` sees container `a`'s `sleep`.
pub async fn share_process_namespace(ctx: &mut Ctx) -> Result<()> {
    let handler = ctx.handler();
    let image = ctx.opts.image.clone();
    let pod = ctx
        .run_pod_with("sharepid", "sharepid-host", &handler, |c| {
            if let Some(ns) = sandbox_ns(c) {
                ns.pid = api::NamespaceMode::Pod as i32;
            }
        })
        .await?;
    let a = in_pod_pid_ns(container_config("a", 0, &image, A_IDLE));
    ctx.start_container(&pod, a).await?;
    let b = in_pod_pid_ns(container_config("b", 0, &image, IDLE));
    let b = ctx.start_container(&pod, b).await?;
    let cri = ctx.cri.clone();
    let ps = "if ps | grep -q 'sleep 8639[7]'; then echo yes; else echo no; fi";
    let seen = poll("a's process in b's ps", Duration::from_secs(20), || {
        let mut cri = cri.clone();
        let b = b.clone();
        async move {
            let out = cri.exec_sync(&b, &["sh", "-c", ps], Duration::ZERO).await?;
            Ok((stdout(&out) == "yes").then_some(()))
        }
    })
    .await;
    ctx.say(
        "sharepid_sees_other",
        if seen.is_ok() { "yes" } else { "no" },
    );
    ctx.remove_pod(&pod).await
}

/// RunPodSandbox with network namespace `NODE`: `hostnet_result ok`, or
/// `hostnet_result error: <the error>`.
pub async fn host_network(ctx: &mut Ctx) -> Result<()> {
    let handler = ctx.handler();
    let started = ctx
        .run_pod_with("hostnet", "hostnet-host", &handler, |c| {
            // kubelet gives a hostNetwork Pod no hostname: it has the node's
            // UTS namespace (runc refuses a hostname without a UTS namespace).
            c.hostname.clear();
            if let Some(ns) = sandbox_ns(c) {
                ns.network = api::NamespaceMode::Node as i32;
            }
        })
        .await;
    match started {
        Ok(pod) => {
            ctx.say("hostnet_result", "ok");
            ctx.remove_pod(&pod).await
        }
        Err(e) => {
            ctx.say("hostnet_result", format!("error: {e}"));
            Ok(())
        }
    }
}
