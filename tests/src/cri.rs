//! A CRI v1 client for the tests, driving containerd's CRI plugin the way
//! kubelet does: RunPodSandbox with a runtime handler, CreateContainer and
//! StartContainer, exec and attach through the streaming server, stats, logs,
//! and the teardown (StopPodSandbox, RemovePodSandbox).
//!
//! - [`CriClient`]: the runtime and image services over containerd's gRPC Unix
//!   socket (tonic, the `k8s-cri` crate's generated clients).
//! - [`pod_config`] and [`container_config`]: configurations with kubelet's
//!   defaults (namespaces, masked paths, BestEffort resources, log paths).
//! - [`stream`]: the websocket (`v4.channel.k8s.io`) client for exec and attach.
//! - [`host`]: what the machine shows about pods: processes, PSS, mounts,
//!   network namespaces, veth devices.
//! - [`scenario`]: the runtime-agnostic scenarios `husk-cri-check` runs.
//! - [`job`]: the test-host job around them (containerd with CRI and CNI, the
//!   images, the husk runtime installed, one output section per check).
//!
//! See `docs/containerd-tests.md`, section CRI.

pub mod host;
pub mod job;
pub mod scenario;
pub mod stream;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as api;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use thiserror::Error;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

pub use k8s_cri::v1;

/// The Kubernetes namespace of the tests' pods.
pub const POD_NAMESPACE: &str = "husk-test";
/// The cgroup (cgroupfs driver) under which pods get their cgroups, as
/// kubelet's `/kubepods/...` for BestEffort pods.
pub const CGROUP_ROOT: &str = "/husk-pods";
/// The paths kubelet masks in every unprivileged container.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];
/// The paths kubelet makes read-only in every unprivileged container.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];
/// The deadline of a CRI call (RunPodSandbox under emulation can take seconds).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// What went wrong talking to CRI or checking what it did.
#[derive(Debug, Error)]
pub enum CriError {
    #[error("connecting to {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    /// A CRI call failed.
    #[error("{call}: {status}")]
    Call {
        call: &'static str,
        status: Box<tonic::Status>,
    },
    /// An answer lacked a field it must have, or was malformed.
    #[error("{call}: {what}")]
    Answer { call: &'static str, what: String },
    /// A wait ran out.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    /// A streaming (exec, attach) connection failed.
    #[error("streaming: {0}")]
    Stream(String),
    /// A file or directory operation on the machine failed.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A scenario's step failed in a way that is not a CRI error.
    #[error("{0}")]
    Check(String),
}

impl CriError {
    /// An [`CriError::Io`] with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        CriError::Io {
            what: what.into(),
            source,
        }
    }

    /// The gRPC status of a failed call, if this is one.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            CriError::Call { status, .. } => Some(status),
            _ => None,
        }
    }
}

/// `Result` of this module.
pub type Result<T, E = CriError> = std::result::Result<T, E>;

fn call_err(call: &'static str) -> impl FnOnce(tonic::Status) -> CriError {
    move |status| CriError::Call {
        call,
        status: Box::new(status),
    }
}

fn missing(call: &'static str, what: &str) -> CriError {
    CriError::Answer {
        call,
        what: format!("no {what} in the answer"),
    }
}

/// A request with [`CALL_TIMEOUT`] as its deadline.
fn req<T>(msg: T) -> tonic::Request<T> {
    deadline(msg, CALL_TIMEOUT)
}

fn deadline<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}

/// CRI's runtime and image services on one connection.
#[derive(Debug, Clone)]
pub struct CriClient {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
}

impl CriClient {
    /// Connects to containerd's gRPC socket at `socket`.
    pub async fn connect(socket: &Path) -> Result<Self> {
        let path = socket.to_path_buf();
        let connector = tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        });
        // The URI only names the authority in the HTTP/2 requests.
        let channel = Endpoint::from_static("http://containerd")
            .connect_with_connector(connector)
            .await
            .map_err(|source| CriError::Connect {
                path: socket.to_path_buf(),
                source,
            })?;
        Ok(Self {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    /// The runtime's name and version, e.g. ("containerd", "1.6.20~ds1").
    pub async fn version(&mut self) -> Result<(String, String)> {
        let v = self
            .runtime
            .version(req(api::VersionRequest {
                version: "v1".into(),
            }))
            .await
            .map_err(call_err("Version"))?
            .into_inner();
        Ok((v.runtime_name, v.runtime_version))
    }

    /// Waits until CRI knows `image` (images imported with ctr reach CRI's
    /// cache through an event); its id.
    pub async fn wait_image(&mut self, image: &str, timeout: Duration) -> Result<String> {
        let what = format!("image {image} in CRI");
        let images = self.images.clone();
        poll(&what, timeout, || {
            let mut images = images.clone();
            async move {
                let r = images
                    .image_status(req(api::ImageStatusRequest {
                        image: Some(image_spec(image)),
                        verbose: false,
                    }))
                    .await
                    .map_err(call_err("ImageStatus"))?
                    .into_inner();
                Ok(r.image.map(|i| i.id))
            }
        })
        .await
    }

    /// RunPodSandbox; the sandbox id.
    pub async fn run_pod(
        &mut self,
        config: &api::PodSandboxConfig,
        handler: &str,
    ) -> Result<String> {
        let r = self
            .runtime
            .run_pod_sandbox(req(api::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: handler.into(),
            }))
            .await
            .map_err(call_err("RunPodSandbox"))?
            .into_inner();
        Ok(r.pod_sandbox_id)
    }

    /// PodSandboxStatus with verbose info; the status and the parsed `info` JSON
    /// (containerd puts the sandbox's pid, spec and CNI result there).
    pub async fn pod_status(
        &mut self,
        id: &str,
    ) -> Result<(api::PodSandboxStatus, serde_json::Value)> {
        let r = self
            .runtime
            .pod_sandbox_status(req(api::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: true,
            }))
            .await
            .map_err(call_err("PodSandboxStatus"))?
            .into_inner();
        let status = r
            .status
            .ok_or_else(|| missing("PodSandboxStatus", "status"))?;
        Ok((status, info_json(&r.info)))
    }

    pub async fn stop_pod(&mut self, id: &str) -> Result<()> {
        self.runtime
            .stop_pod_sandbox(req(api::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))
            .await
            .map_err(call_err("StopPodSandbox"))?;
        Ok(())
    }

    pub async fn remove_pod(&mut self, id: &str) -> Result<()> {
        self.runtime
            .remove_pod_sandbox(req(api::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))
            .await
            .map_err(call_err("RemovePodSandbox"))?;
        Ok(())
    }

    /// All sandboxes CRI knows.
    pub async fn list_pods(&mut self) -> Result<Vec<api::PodSandbox>> {
        Ok(self
            .runtime
            .list_pod_sandbox(req(api::ListPodSandboxRequest { filter: None }))
            .await
            .map_err(call_err("ListPodSandbox"))?
            .into_inner()
            .items)
    }

    /// All containers CRI knows.
    pub async fn list_containers(&mut self) -> Result<Vec<api::Container>> {
        Ok(self
            .runtime
            .list_containers(req(api::ListContainersRequest { filter: None }))
            .await
            .map_err(call_err("ListContainers"))?
            .into_inner()
            .containers)
    }

    /// CreateContainer in `pod`; the container id.
    pub async fn create_container(
        &mut self,
        pod: &str,
        config: &api::ContainerConfig,
        sandbox: &api::PodSandboxConfig,
    ) -> Result<String> {
        let r = self
            .runtime
            .create_container(req(api::CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(config.clone()),
                sandbox_config: Some(sandbox.clone()),
            }))
            .await
            .map_err(call_err("CreateContainer"))?
            .into_inner();
        Ok(r.container_id)
    }

    pub async fn start_container(&mut self, id: &str) -> Result<()> {
        self.runtime
            .start_container(req(api::StartContainerRequest {
                container_id: id.into(),
            }))
            .await
            .map_err(call_err("StartContainer"))?;
        Ok(())
    }

    /// StopContainer: SIGTERM, SIGKILL after `grace`.
    pub async fn stop_container(&mut self, id: &str, grace: Duration) -> Result<()> {
        self.runtime
            .stop_container(req(api::StopContainerRequest {
                container_id: id.into(),
                timeout: grace.as_secs() as i64,
            }))
            .await
            .map_err(call_err("StopContainer"))?;
        Ok(())
    }

    pub async fn remove_container(&mut self, id: &str) -> Result<()> {
        self.runtime
            .remove_container(req(api::RemoveContainerRequest {
                container_id: id.into(),
            }))
            .await
            .map_err(call_err("RemoveContainer"))?;
        Ok(())
    }

    /// ContainerStatus with verbose info; the status and the parsed `info` JSON.
    pub async fn container_status(
        &mut self,
        id: &str,
    ) -> Result<(api::ContainerStatus, serde_json::Value)> {
        let r = self
            .runtime
            .container_status(req(api::ContainerStatusRequest {
                container_id: id.into(),
                verbose: true,
            }))
            .await
            .map_err(call_err("ContainerStatus"))?
            .into_inner();
        let status = r
            .status
            .ok_or_else(|| missing("ContainerStatus", "status"))?;
        Ok((status, info_json(&r.info)))
    }

    /// Waits until the container is in `state`; its status.
    pub async fn wait_container(
        &mut self,
        id: &str,
        state: api::ContainerState,
        timeout: Duration,
    ) -> Result<api::ContainerStatus> {
        let what = format!("container {} to be {}", short(id), state.as_str_name());
        let this = self.clone();
        poll(&what, timeout, || {
            let mut c = this.clone();
            async move {
                let (s, _) = c.container_status(id).await?;
                Ok((s.state == state as i32).then_some(s))
            }
        })
        .await
    }

    /// ExecSync with CRI's `timeout` (0: none); the gRPC deadline is a minute
    /// longer.
    pub async fn exec_sync(
        &mut self,
        id: &str,
        cmd: &[&str],
        timeout: Duration,
    ) -> Result<api::ExecSyncResponse> {
        let grpc_deadline = if timeout.is_zero() {
            CALL_TIMEOUT
        } else {
            timeout + Duration::from_secs(60)
        };
        Ok(self
            .runtime
            .exec_sync(deadline(
                api::ExecSyncRequest {
                    container_id: id.into(),
                    cmd: cmd.iter().map(|s| s.to_string()).collect(),
                    timeout: timeout.as_secs() as i64,
                },
                grpc_deadline,
            ))
            .await
            .map_err(call_err("ExecSync"))?
            .into_inner())
    }

    /// Exec; the streaming URL.
    pub async fn exec(&mut self, r: api::ExecRequest) -> Result<String> {
        Ok(self
            .runtime
            .exec(req(r))
            .await
            .map_err(call_err("Exec"))?
            .into_inner()
            .url)
    }

    /// Attach; the streaming URL.
    pub async fn attach(&mut self, r: api::AttachRequest) -> Result<String> {
        Ok(self
            .runtime
            .attach(req(r))
            .await
            .map_err(call_err("Attach"))?
            .into_inner()
            .url)
    }

    pub async fn reopen_log(&mut self, id: &str) -> Result<()> {
        self.runtime
            .reopen_container_log(req(api::ReopenContainerLogRequest {
                container_id: id.into(),
            }))
            .await
            .map_err(call_err("ReopenContainerLog"))?;
        Ok(())
    }

    pub async fn container_stats(&mut self, id: &str) -> Result<api::ContainerStats> {
        self.runtime
            .container_stats(req(api::ContainerStatsRequest {
                container_id: id.into(),
            }))
            .await
            .map_err(call_err("ContainerStats"))?
            .into_inner()
            .stats
            .ok_or_else(|| missing("ContainerStats", "stats"))
    }

    /// ListContainerStats of the containers in `pod`.
    pub async fn list_container_stats(&mut self, pod: &str) -> Result<Vec<api::ContainerStats>> {
        Ok(self
            .runtime
            .list_container_stats(req(api::ListContainerStatsRequest {
                filter: Some(api::ContainerStatsFilter {
                    pod_sandbox_id: pod.into(),
                    ..Default::default()
                }),
            }))
            .await
            .map_err(call_err("ListContainerStats"))?
            .into_inner()
            .stats)
    }
}

/// containerd's verbose `info["info"]`, parsed (Null when absent or malformed).
fn info_json(info: &HashMap<String, String>) -> serde_json::Value {
    info.get("info")
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// The first 12 characters of an id, as crictl shows them.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// An image spec naming `image`.
pub fn image_spec(image: &str) -> api::ImageSpec {
    api::ImageSpec {
        image: image.into(),
        ..Default::default()
    }
}

/// Calls `f` every 100 ms until it gives `Some`, an error, or `timeout` passes.
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if start.elapsed() >= timeout {
            return Err(CriError::Timeout {
                what: what.to_string(),
                after: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The namespaces kubelet gives a pod's sandbox and containers: the pod's
/// network and IPC namespaces, a PID namespace per container.
pub fn pod_namespaces() -> api::NamespaceOption {
    api::NamespaceOption {
        network: api::NamespaceMode::Pod as i32,
        pid: api::NamespaceMode::Container as i32,
        ipc: api::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

fn unconfined() -> api::SecurityProfile {
    api::SecurityProfile {
        profile_type: api::security_profile::ProfileType::Unconfined as i32,
        localhost_ref: String::new(),
    }
}

/// A pod's identity.
#[derive(Debug, Clone)]
pub struct PodName {
    pub name: String,
    pub uid: String,
}

impl PodName {
    /// `name` with a uid made of it and a per-process counter (unique in a run).
    pub fn new(name: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let uid = format!(
            "{:08x}-{n:04x}-4000-8000-{:012x}",
            std::process::id(),
            u64::from(n) + 1
        );
        Self {
            name: name.into(),
            uid,
        }
    }

    /// The pod's cgroup parent, as kubelet's `/kubepods/besteffort/pod<uid>`.
    pub fn cgroup_parent(&self) -> String {
        format!("{CGROUP_ROOT}/pod{}", self.uid)
    }
}

/// A pod's sandbox configuration with kubelet's defaults: the pod's metadata
/// and labels, `hostname`, the log directory `<log_root>/<ns>_<name>_<uid>`,
/// a DNS configuration, the cgroup parent, namespaces, seccomp unconfined.
pub fn pod_config(pod: &PodName, hostname: &str, log_root: &Path) -> api::PodSandboxConfig {
    let labels: HashMap<String, String> = [
        ("io.kubernetes.pod.name", pod.name.as_str()),
        ("io.kubernetes.pod.namespace", POD_NAMESPACE),
        ("io.kubernetes.pod.uid", pod.uid.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let log_dir = log_root.join(format!("{POD_NAMESPACE}_{}_{}", pod.name, pod.uid));
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: pod.name.clone(),
            uid: pod.uid.clone(),
            namespace: POD_NAMESPACE.into(),
            attempt: 0,
        }),
        hostname: hostname.into(),
        log_directory: log_dir.to_string_lossy().into_owned(),
        dns_config: Some(api::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec![format!("{POD_NAMESPACE}.svc.cluster.local")],
            options: vec!["ndots:5".into()],
        }),
        labels,
        annotations: [("kubernetes.io/config.source".to_string(), "api".to_string())].into(),
        linux: Some(api::LinuxPodSandboxConfig {
            cgroup_parent: pod.cgroup_parent(),
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(pod_namespaces()),
                seccomp: Some(unconfined()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container's configuration with kubelet's defaults for a BestEffort pod:
/// `command` from `image`, log path `<name>/<attempt>.log`, the container's
/// labels, CPU shares 2, OOM score 1000, the default masked and read-only paths.
pub fn container_config(
    name: &str,
    attempt: u32,
    image: &str,
    command: &[&str],
) -> api::ContainerConfig {
    let labels: HashMap<String, String> =
        [("io.kubernetes.container.name".to_string(), name.to_string())].into();
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: name.into(),
            attempt,
        }),
        image: Some(image_spec(image)),
        command: command.iter().map(|s| s.to_string()).collect(),
        envs: vec![api::KeyValue {
            key: "HUSK_CONTAINER".into(),
            value: name.into(),
        }],
        labels,
        log_path: format!("{name}/{attempt}.log"),
        linux: Some(api::LinuxContainerConfig {
            resources: Some(api::LinuxContainerResources {
                cpu_period: 100_000,
                cpu_shares: 2,
                oom_score_adj: 1000,
                ..Default::default()
            }),
            security_context: Some(api::LinuxContainerSecurityContext {
                namespace_options: Some(pod_namespaces()),
                masked_paths: MASKED_PATHS.iter().map(|s| s.to_string()).collect(),
                readonly_paths: READONLY_PATHS.iter().map(|s| s.to_string()).collect(),
                seccomp: Some(unconfined()),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

/// A host directory mounted into a container.
pub fn mount(host: &Path, container: &str, readonly: bool) -> api::Mount {
    api::Mount {
        container_path: container.into(),
        host_path: host.to_string_lossy().into_owned(),
        readonly,
        ..Default::default()
    }
}

/// One line of a CRI container log: `<RFC 3339 time> <stream> <P|F> <text>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub time: String,
    pub stream: String,
    /// `F` for a full line, `P` for a partial one.
    pub tag: String,
    pub text: String,
}

/// Parses a CRI log file's text; `None` for a malformed line.
pub fn parse_log(text: &str) -> Vec<Option<LogLine>> {
    text.lines()
        .map(|l| {
            let mut it = l.splitn(4, ' ');
            let (time, stream, tag) = (it.next()?, it.next()?, it.next()?);
            let ok = time.len() >= 20
                && time.as_bytes()[4] == b'-'
                && time.contains('T')
                && matches!(stream, "stdout" | "stderr")
                && matches!(tag, "F" | "P");
            ok.then(|| LogLine {
                time: time.into(),
                stream: stream.into(),
                tag: tag.into(),
                text: it.next().unwrap_or("").into(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_config_has_kubelets_shape() {
        let pod = PodName::new("web");
        let c = pod_config(&pod, "web-host", Path::new("/tmp/logs"));
        let m = c.metadata.as_ref().unwrap();
        assert_eq!(
            (m.name.as_str(), m.namespace.as_str()),
            ("web", POD_NAMESPACE)
        );
        assert_eq!(
            c.log_directory,
            format!("/tmp/logs/{POD_NAMESPACE}_web_{}", pod.uid)
        );
        let linux = c.linux.as_ref().unwrap();
        assert_eq!(linux.cgroup_parent, format!("/husk-pods/pod{}", pod.uid));
        let ns = linux
            .security_context
            .as_ref()
            .unwrap()
            .namespace_options
            .as_ref()
            .unwrap();
        assert_eq!(ns.network, api::NamespaceMode::Pod as i32);
        assert_eq!(ns.pid, api::NamespaceMode::Container as i32);
        assert_eq!(c.labels["io.kubernetes.pod.uid"], pod.uid);
        assert_ne!(PodName::new("web").uid, pod.uid, "uids are unique");
    }

    #[test]
    fn container_config_logs_per_attempt() {
        let c = container_config("srv", 2, "img:1", &["sh", "-c", "true"]);
        assert_eq!(c.log_path, "srv/2.log");
        assert_eq!(c.metadata.as_ref().unwrap().attempt, 2);
        assert_eq!(c.command, ["sh", "-c", "true"]);
        let sc = c.linux.unwrap().security_context.unwrap();
        assert!(sc.masked_paths.iter().any(|p| p == "/proc/kcore"));
        assert!(sc.readonly_paths.iter().any(|p| p == "/proc/sys"));
    }

    #[test]
    fn cri_log_lines_parse() {
        let lines = parse_log(
            "2024-01-01T00:00:00.123456789Z stdout F hello world\n\
             2024-01-01T00:00:00.2Z stderr P part\n\
             garbage\n\
             2024-01-01T00:00:01Z stdout F \n",
        );
        assert_eq!(lines.len(), 4);
        let first = lines[0].as_ref().unwrap();
        assert_eq!(
            (first.stream.as_str(), first.text.as_str()),
            ("stdout", "hello world")
        );
        assert_eq!(lines[1].as_ref().unwrap().tag, "P");
        assert!(lines[2].is_none());
        assert_eq!(lines[3].as_ref().unwrap().text, "");
    }
}
