//! The scenarios `husk-cri-check` runs against containerd's CRI, each the same
//! for every runtime handler. A scenario prints `key value` lines that the
//! tests assert on; [`run`] wraps it: it connects, runs it under a time limit,
//! catches a panic, and always tears down every pod it created
//! (StopPodSandbox, RemovePodSandbox, the pod's cgroup, the scratch directory).
//!
//! | scenario | what |
//! |---|---|
//! | `pod` | a web server and a client in one pod over 127.0.0.1; the host and a second (runc) pod reach the pod IP; hostname, DNS, loopback; CRI logs and ReopenContainerLog |
//! | `restart` | a container exits 1; new attempts start in the same sandbox, which keeps its processes |
//! | `exec` | ExecSync (output, exit code, timeout), Exec and Attach over the streaming server, a tty resized |
//! | `volumes` | a read-only hostPath, a directory shared by two containers, a configMap-style `..data` swap, `/dev/shm`; in kubelet's layout: emptyDirs (one `medium: Memory` with a sizeLimit), subPaths, a secret's file, a termination log, `/etc/hosts`; a `shareProcessNamespace` pod and a hostNetwork pod |
//! | `stats` | ContainerStats and ListContainerStats of a busy container |
//! | `cleanup` | after pods are removed: no processes, shims, mounts, netns, veths, taps, new links, cgroups or runtime run directories left |
//! | `bench` | RunPodSandbox+CreateContainer+StartContainer latency over N pods, and host PSS per idle pod |
//! | `workload` | `husk-probe` measurements in a container: CPU, system calls, I/O on the rootfs and an emptyDir, TCP host→pod and pod→pod |
//! | `isolation` | `husk-probe isolation` in a plain and a privileged container: whose kernel, what is visible, which privileged actions reach the host; another pod still answers |

mod bench;
mod cleanup;
mod exec;
mod isolation;
mod pod;
mod restart;
mod stats;
mod volumes;
mod workload;

pub use bench::percentile;
pub use isolation::PROBE;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::FutureExt;

use super::{host, pod_config, v1 as api, CriClient, CriError, PodName, Result};

/// The scenarios, by name.
pub const SCENARIOS: &[&str] = &[
    "pod",
    "restart",
    "exec",
    "volumes",
    "stats",
    "cleanup",
    "bench",
    "isolation",
    "workload",
];

/// How a scenario runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// containerd's gRPC socket.
    pub socket: PathBuf,
    /// containerd's base directory (root, state, sockets): no mount may stay under it.
    pub base: PathBuf,
    /// The runtime handler under test.
    pub handler: String,
    /// The handler of the second pod in `pod` (it reaches the first one's IP).
    pub peer_handler: String,
    /// The busybox image.
    pub image: String,
    /// CRI's sandbox image (checked to be known before the scenario).
    pub pause_image: String,
    /// Scratch space: pod logs, host directories for volumes. Removed at the end.
    pub workdir: PathBuf,
    /// The CNI bridge.
    pub bridge: String,
    /// Pods in `bench`.
    pub pods: usize,
    /// Pods `bench` starts at once (1: one after another).
    pub parallel: usize,
    /// The scenario's time limit (teardown comes after it).
    pub timeout: Duration,
}

/// A pod a scenario started.
#[derive(Debug, Clone)]
pub struct Pod {
    pub id: String,
    pub name: PodName,
    pub config: api::PodSandboxConfig,
    pub handler: String,
    /// The pod IP CNI gave it.
    pub ip: String,
}

impl Pod {
    /// The pod's log directory.
    pub fn log_dir(&self) -> PathBuf {
        PathBuf::from(&self.config.log_directory)
    }
}

/// A scenario's state: the client, the options and the pods to tear down.
pub struct Ctx {
    pub cri: CriClient,
    pub opts: Options,
    pods: Vec<Pod>,
    /// Pods started concurrently, registered as soon as RunPodSandbox answered
    /// (see [`Ctx::registry`]); torn down with the others.
    registry: PodRegistry,
}

/// Where concurrent starts put their pods at once, so that a scenario that
/// times out mid-start still tears them down.
pub type PodRegistry = std::sync::Arc<std::sync::Mutex<Vec<Pod>>>;

impl Ctx {
    /// Prints one `key value` line (the value's newlines become `\n`).
    pub fn say(&self, key: &str, value: impl std::fmt::Display) {
        let v = value.to_string();
        println!("{key} {}", v.trim_end().replace('\n', "\\n"));
    }

    /// The handler under test.
    pub fn handler(&self) -> String {
        self.opts.handler.clone()
    }

    /// A fresh directory `<workdir>/<name>`.
    pub fn scratch(&self, name: &str) -> Result<PathBuf> {
        let dir = self.opts.workdir.join(name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| CriError::io(format!("creating {}", dir.display()), e))?;
        Ok(dir)
    }

    /// Starts a pod with `handler` (as kubelet: the log directory first), and
    /// reads its IP. The pod is torn down at the end whatever happens.
    pub async fn run_pod(&mut self, name: &str, hostname: &str, handler: &str) -> Result<Pod> {
        self.run_pod_with(name, hostname, handler, |_| {}).await
    }

    /// Like [`Ctx::run_pod`], with `adjust` applied to the pod's configuration first.
    pub async fn run_pod_with(
        &mut self,
        name: &str,
        hostname: &str,
        handler: &str,
        adjust: impl FnOnce(&mut api::PodSandboxConfig),
    ) -> Result<Pod> {
        let (pod_name, mut config) = self.pod_config(name, hostname)?;
        adjust(&mut config);
        let id = self.cri.run_pod(&config, handler).await?;
        let mut pod = Pod {
            id,
            name: pod_name,
            config,
            handler: handler.into(),
            ip: String::new(),
        };
        self.pods.push(pod.clone());
        let (status, _) = self.cri.pod_status(&pod.id).await?;
        pod.ip = status.network.map(|n| n.ip).unwrap_or_default();
        if let Some(p) = self.pods.iter_mut().find(|p| p.id == pod.id) {
            p.ip = pod.ip.clone();
        }
        Ok(pod)
    }

    /// CreateContainer and StartContainer in `pod` (as kubelet: the
    /// container's log directory first); the container id.
    pub async fn start_container(
        &mut self,
        pod: &Pod,
        config: api::ContainerConfig,
    ) -> Result<String> {
        let id = self.create_container(pod, config).await?;
        self.cri.start_container(&id).await?;
        Ok(id)
    }

    /// CreateContainer only.
    pub async fn create_container(
        &mut self,
        pod: &Pod,
        config: api::ContainerConfig,
    ) -> Result<String> {
        create_container(&mut self.cri, pod, &config).await
    }

    /// A pod's name and configuration as kubelet makes them, its log directory
    /// created: for starting pods without [`Ctx::run_pod`] (see [`Ctx::registry`]).
    pub fn pod_config(
        &self,
        name: &str,
        hostname: &str,
    ) -> Result<(PodName, api::PodSandboxConfig)> {
        let pod_name = PodName::new(name);
        let config = pod_config(&pod_name, hostname, &self.opts.workdir.join("pods"));
        let log_dir = PathBuf::from(&config.log_directory);
        std::fs::create_dir_all(&log_dir)
            .map_err(|e| CriError::io(format!("creating {}", log_dir.display()), e))?;
        Ok((pod_name, config))
    }

    /// The list concurrent starts register their pods in, for teardown.
    pub fn registry(&self) -> PodRegistry {
        self.registry.clone()
    }

    fn registered(&self) -> std::sync::MutexGuard<'_, Vec<Pod>> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops and removes `pod` now, and removes its cgroup.
    pub async fn remove_pod(&mut self, pod: &Pod) -> Result<()> {
        self.pods.retain(|p| p.id != pod.id);
        self.registered().retain(|p| p.id != pod.id);
        teardown(&mut self.cri, pod).await
    }

    /// The pods not yet removed.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// Tears down every pod still there and the scratch directory; the errors.
    async fn cleanup(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        let registered = std::mem::take(&mut *self.registered());
        self.pods.extend(registered);
        for pod in std::mem::take(&mut self.pods) {
            if let Err(e) = teardown(&mut self.cri, &pod).await {
                errors.push(format!("pod {} ({}): {e}", pod.name.name, pod.id));
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.opts.workdir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                errors.push(format!("removing {}: {e}", self.opts.workdir.display()));
            }
        }
        errors
    }
}

/// CreateContainer in `pod` as kubelet does it: the container's log directory first.
pub async fn create_container(
    cri: &mut CriClient,
    pod: &Pod,
    config: &api::ContainerConfig,
) -> Result<String> {
    if let Some(dir) = Path::new(&config.log_path).parent() {
        let dir = pod.log_dir().join(dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| CriError::io(format!("creating {}", dir.display()), e))?;
    }
    cri.create_container(&pod.id, config, &pod.config).await
}

/// StopPodSandbox, RemovePodSandbox (both even if the other failed), then the
/// pod's cgroup, as kubelet does once a pod is gone.
async fn teardown(cri: &mut CriClient, pod: &Pod) -> Result<()> {
    let stop = cri.stop_pod(&pod.id).await;
    let remove = cri.remove_pod(&pod.id).await;
    stop?;
    remove?;
    host::remove_cgroup(&pod.name.cgroup_parent())
        .map_err(|e| CriError::io(format!("removing cgroup {}", pod.name.cgroup_parent()), e))
}

/// Runs `scenario`, then tears everything down; prints `result ok` or
/// `result failed: ...` and `cleanup_errors N`; true if both are clean.
pub async fn run(opts: Options, scenario: &str) -> bool {
    println!("scenario {scenario}");
    println!("handler {}", opts.handler);
    let mut cri = match CriClient::connect(&opts.socket).await {
        Ok(c) => c,
        Err(e) => {
            println!("result failed: {}", chain(&e));
            return false;
        }
    };
    match cri.version().await {
        Ok((name, version)) => println!("runtime {name} {version}"),
        Err(e) => {
            println!("result failed: {}", chain(&e));
            return false;
        }
    }
    let mut ctx = Ctx {
        cri,
        opts,
        pods: Vec::new(),
        registry: PodRegistry::default(),
    };
    let start = Instant::now();
    let limit = ctx.opts.timeout;
    let outcome = {
        let body = std::panic::AssertUnwindSafe(prepare_and_run(&mut ctx, scenario)).catch_unwind();
        match tokio::time::timeout(limit, body).await {
            Err(_) => Err(format!("scenario timed out after {limit:?}")),
            Ok(Err(panic)) => Err(format!("scenario panicked: {}", panic_text(&panic))),
            Ok(Ok(Err(e))) => Err(chain(&e)),
            Ok(Ok(Ok(()))) => Ok(()),
        }
    };
    println!("scenario_ms {}", start.elapsed().as_millis());
    let t = Instant::now();
    let errors = ctx.cleanup().await;
    println!("teardown_ms {}", t.elapsed().as_millis());
    println!("cleanup_errors {}", errors.len());
    for e in &errors {
        println!("cleanup_error {e}");
    }
    match &outcome {
        Ok(()) => println!("result ok"),
        Err(e) => println!("result failed: {}", e.replace('\n', "\\n")),
    }
    outcome.is_ok() && errors.is_empty()
}

async fn prepare_and_run(ctx: &mut Ctx, scenario: &str) -> Result<()> {
    let wait = Duration::from_secs(30);
    let image = ctx.opts.image.clone();
    let pause = ctx.opts.pause_image.clone();
    ctx.cri.wait_image(&image, wait).await?;
    ctx.cri.wait_image(&pause, wait).await?;
    match scenario {
        "pod" => pod::run(ctx).await,
        "restart" => restart::run(ctx).await,
        "exec" => exec::run(ctx).await,
        "volumes" => volumes::run(ctx).await,
        "stats" => stats::run(ctx).await,
        "cleanup" => cleanup::run(ctx).await,
        "bench" => bench::run(ctx).await,
        "isolation" => isolation::run(ctx).await,
        "workload" => workload::run(ctx).await,
        other => Err(CriError::Check(format!(
            "unknown scenario {other:?}; known: {}",
            SCENARIOS.join(", ")
        ))),
    }
}

/// An error and its sources on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// A command that idles until SIGTERM, then exits 0 at once (a shell as a
/// container's PID 1 ignores SIGTERM without a trap; `wait`, unlike a
/// foreground `sleep`, lets the trap run at once). No periodic forks, so an
/// idle pod's memory stays still for `bench`.
pub const IDLE: &[&str] = &[
    "sh",
    "-c",
    "trap 'exit 0' TERM; while :; do sleep 2147483647 & wait; done",
];

/// Prints each `key value` line of a probe's output as `<name>_key value`, then its
/// exit code as `<name>_exit`.
pub fn report(ctx: &Ctx, name: &str, text: &str, code: i32) {
    for line in text.lines() {
        let (k, v) = line.split_once(' ').unwrap_or((line, ""));
        ctx.say(&format!("{name}_{k}"), v);
    }
    ctx.say(&format!("{name}_exit"), code);
}

/// ExecSync `cmd` in `container` (at most `timeout`): its `key value` lines reported
/// under `name` ([`report`]), and its stderr as `<name>_stderr` if it failed.
pub async fn exec_report(
    ctx: &mut Ctx,
    container: &str,
    name: &str,
    cmd: &[&str],
    timeout: Duration,
) -> Result<()> {
    let r = ctx.cri.exec_sync(container, cmd, timeout).await?;
    report(ctx, name, &stdout(&r), r.exit_code);
    if r.exit_code != 0 {
        ctx.say(&format!("{name}_stderr"), stderr(&r));
    }
    Ok(())
}

/// The text of an ExecSync's stdout.
pub fn stdout(r: &api::ExecSyncResponse) -> String {
    String::from_utf8_lossy(&r.stdout).trim_end().to_string()
}

/// The text of an ExecSync's stderr.
pub fn stderr(r: &api::ExecSyncResponse) -> String {
    String::from_utf8_lossy(&r.stderr).trim_end().to_string()
}

/// The text lines of a CRI log file (malformed lines kept as `?<raw>`), and
/// whether every line was well formed.
pub fn read_log(path: &Path) -> (Vec<String>, bool) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines = super::parse_log(&text);
    let ok = lines.iter().all(Option::is_some);
    let raw: Vec<&str> = text.lines().collect();
    let texts = lines
        .into_iter()
        .zip(raw)
        .map(|(l, raw)| match l {
            Some(l) => l.text,
            None => format!("?{raw}"),
        })
        .collect();
    (texts, ok)
}

/// Waits until the container exits; its status.
pub async fn wait_exit(ctx: &mut Ctx, id: &str, timeout: Duration) -> Result<api::ContainerStatus> {
    ctx.cri
        .wait_container(id, api::ContainerState::ContainerExited, timeout)
        .await
}

/// The pod's log path of a container (`<log dir>/<log_path>`).
pub fn log_file(pod: &Pod, status: &api::ContainerStatus) -> PathBuf {
    let p = PathBuf::from(&status.log_path);
    if p.is_absolute() {
        p
    } else {
        pod.log_dir().join(p)
    }
}

/// `pids` as `pid:program` words, for reports.
pub fn describe_pids(procs: &[host::Process], pids: &std::collections::BTreeSet<u32>) -> String {
    pids.iter()
        .map(|pid| {
            let name = procs
                .iter()
                .find(|p| p.pid == *pid)
                .map(|p| p.program().to_string())
                .unwrap_or_else(|| "?".into());
            format!("{pid}:{name}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The mounts of a container's OCI spec in containerd's verbose info, as
/// `destination<-source` words.
pub fn spec_mounts(info: &serde_json::Value) -> String {
    info["runtimeSpec"]["mounts"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| {
                    format!(
                        "{}<-{}",
                        m["destination"].as_str().unwrap_or("?"),
                        m["source"].as_str().unwrap_or("?")
                    )
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_else(|| format!("no runtimeSpec in {info}"))
}
