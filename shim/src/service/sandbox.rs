//! The sandbox VM: `husk-vmm` in `<run_dir>/<sandbox-id>/`, its agent, and
//! the `shared/` directory exported to the guest over virtio-fs.
//!
//! A monitor task owns the VMM process. If the VMM dies, the monitor records
//! why; the agent's connections break, every waiter learns its process is
//! gone, and the shim reports the exits instead of hanging.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use husk_proto::client::AgentClient;
use husk_proto::pb;
use husk_shim::config::Config;
use husk_shim::net::{self, PodNetwork};
use husk_shim::spec::volumes::guest_volume_dir;
use husk_shim::spec::{GuestSpec, GUEST_POD_SHM, GUEST_POD_SHM_SIZE, GUEST_SHARE};
use husk_shim::vm::{NetDevice, RunningVm, Share, VmEndedEarly, VmOptions};
use tokio::sync::oneshot;

use super::ServiceError;

/// How many times a guest whose agent never answers is booted.
const BOOT_ATTEMPTS: u32 = 2;

/// Why a boot failed, and whether booting again may help.
struct BootFailure {
    error: ServiceError,
    /// The guest never answered: its VMM exited first, or it stayed silent for
    /// the whole boot timeout. Nothing was created in it yet.
    no_agent: bool,
}

impl From<ServiceError> for BootFailure {
    fn from(error: ServiceError) -> Self {
        BootFailure {
            error,
            no_agent: false,
        }
    }
}

impl From<husk_proto::client::ClientError> for BootFailure {
    fn from(e: husk_proto::client::ClientError) -> Self {
        ServiceError::from(e).into()
    }
}

/// The virtio-fs tag of the sandbox's share.
const SHARE_TAG: &str = "husk";

/// A running sandbox VM.
pub struct Sandbox {
    pub agent: AgentClient,
    /// The host's `shared/` directory.
    pub shared: PathBuf,
    /// The guest pid of the Pod's sandbox (pause) container, whose IPC, UTS
    /// and PID namespaces the Pod's other containers join.
    pub pause_pid: Mutex<Option<u32>>,
    /// The Pod-level guest volumes mounted so far, by guest directory: each
    /// emptyDir's tmpfs and each subPath bind of one, made on first use.
    volumes: tokio::sync::Mutex<HashSet<String>>,
    /// Why the VMM ended, once it has.
    gone: Arc<Mutex<Option<String>>>,
    stop: Mutex<Option<oneshot::Sender<oneshot::Sender<()>>>>,
}

impl Sandbox {
    /// Boots the VM and waits for its agent; mounts the share in the guest,
    /// and gives the guest the Pod's network if `netns` names one.
    ///
    /// A guest whose agent never answers (the VMM exited, or the guest stayed
    /// silent for the whole boot timeout and is killed) is booted once more:
    /// no container exists yet, so nothing is lost, and a Pod start does not
    /// fail on one crashed or wedged boot (kubelet would retry the whole Pod).
    /// The failed attempt is logged with the VMM's log and the console.
    pub async fn boot(
        id: &str,
        config: &Config,
        netns: Option<PathBuf>,
    ) -> Result<Sandbox, ServiceError> {
        let mut attempt = 1;
        loop {
            let pod_net = match &netns {
                Some(path) => {
                    let path = path.clone();
                    Some(
                        tokio::task::spawn_blocking(move || net::attach(&path))
                            .await
                            .map_err(|e| ServiceError::Internal(format!("netns thread: {e}")))?
                            .map_err(|e| {
                                ServiceError::Internal(format!("wiring the Pod's network: {e:#}"))
                            })?,
                    )
                }
                None => None,
            };
            let wiring = pod_net.as_ref().map(|n| (n.netns.clone(), n.veth_index));
            let booted = Self::boot_wired(id, config, pod_net, wiring.clone()).await;
            let Err(failure) = booted else {
                return booted.map_err(|f| f.error);
            };
            if let Some((netns, veth)) = wiring {
                unwire(netns, veth).await;
            }
            if !failure.no_agent || attempt == BOOT_ATTEMPTS {
                return Err(failure.error);
            }
            log::warn!(
                "sandbox {id}: boot attempt {attempt} failed, booting again: {}",
                failure.error
            );
            attempt += 1;
        }
    }

    async fn boot_wired(
        id: &str,
        config: &Config,
        pod_net: Option<PodNetwork>,
        wiring: Option<(PathBuf, u32)>,
    ) -> Result<Sandbox, BootFailure> {
        let (net, nic) = match pod_net {
            Some(p) => (
                Some(NetDevice {
                    tap: p.tap,
                    mac: p.interface.mac.clone(),
                    mtu: p.interface.mtu,
                }),
                Some((p.interface, p.routes)),
            ),
            None => (None, None),
        };
        let opts = VmOptions {
            vmm: config.vmm.clone(),
            kernel: config.kernel.clone(),
            initramfs: config.initramfs.clone(),
            vcpus: u8::try_from(config.vcpus).unwrap_or(1),
            memory_mib: config.memory_mib,
            run_base: config.run_dir.clone(),
            vmm_log_level: config.log_level.clone(),
            share: Some(Share {
                dir: "shared".into(),
                tag: SHARE_TAG.into(),
                max_fds: None,
            }),
            name: Some(id.to_owned()),
            net,
        };
        let started = RunningVm::start(&opts);
        // Our copy of the tap: from now on the VMM's keeps it alive.
        drop(opts);
        let mut vm = started.map_err(|e| ServiceError::Internal(format!("{e:#}")))?;
        if let Some(pid) = vm.pid() {
            // For `shim delete` after a crash of this shim.
            let _ = std::fs::write(vm.run_dir().join("vmm.pid"), pid.to_string());
        }
        let agent = match vm.connect(config.boot_timeout()).await {
            Ok(agent) => agent.with_timeout(config.agent_timeout()),
            Err(e) => {
                // VmEndedEarly carries the diagnostics; a silent guest gets them here.
                let diagnostics = if e.downcast_ref::<VmEndedEarly>().is_some() {
                    String::new()
                } else {
                    vm.diagnostics()
                };
                // Dropping `vm` kills the VMM and removes its run directory.
                return Err(BootFailure {
                    no_agent: true,
                    error: ServiceError::Internal(format!("{e:#}{diagnostics}")),
                });
            }
        };
        let run_dir = vm.run_dir().to_owned();
        let shared = run_dir.join("shared");
        agent
            .add_storage(pb::Storage {
                id: "shared".into(),
                source: SHARE_TAG.into(),
                fstype: "virtiofs".into(),
                options: vec![],
                mount_point: GUEST_SHARE.into(),
            })
            .await?;
        let shm_options = ["nosuid", "nodev", "noexec", "mode=1777", GUEST_POD_SHM_SIZE];
        agent
            .add_storage(pod_tmpfs(
                "shm",
                GUEST_POD_SHM,
                &shm_options.map(String::from),
            ))
            .await?;
        if let Some((interface, routes)) = nic {
            let name = interface.name.clone();
            agent.update_interface(interface).await.map_err(|e| {
                ServiceError::Internal(format!("configuring the guest's {name}: {e}"))
            })?;
            agent.update_routes(routes).await.map_err(|e| {
                ServiceError::Internal(format!("installing the guest's routes: {e}"))
            })?;
        }
        tokio::spawn(forward_agent_logs(agent.clone(), run_dir.join("agent.log")));
        // At debug level (husk's log_level, or containerd's -debug), follow
        // the guest console into the shim's log too.
        if log::log_enabled!(log::Level::Debug) {
            tokio::spawn(forward_console(run_dir.join("console.log")));
        }
        let gone = Arc::new(Mutex::new(None));
        let (stop_tx, stop_rx) = oneshot::channel();
        tokio::spawn(monitor(vm, agent.clone(), gone.clone(), stop_rx, wiring));
        log::info!("sandbox {id}: VM up, run dir {}", run_dir.display());
        Ok(Sandbox {
            agent,
            shared,
            pause_pid: Mutex::new(None),
            volumes: tokio::sync::Mutex::new(HashSet::new()),
            gone,
            stop: Mutex::new(Some(stop_tx)),
        })
    }

    /// Mounts in the guest the Pod-level volumes `guest`'s mounts name and
    /// the Pod does not have yet: a tmpfs per emptyDir (sized like kubelet's
    /// host tmpfs of a `medium: Memory` volume, else the guest tmpfs default
    /// of half the guest's RAM), then a bind per subPath of one. They live as
    /// long as the VM. The agent's errors name the guest directory.
    pub async fn pod_volumes(&self, guest: &GuestSpec) -> Result<(), ServiceError> {
        let mut made = self.volumes.lock().await;
        for e in &guest.empty_dirs {
            let dir = guest_volume_dir(&e.name);
            if made.contains(&dir) {
                continue;
            }
            let mut options = vec!["mode=0777".to_owned()];
            let host_dir = Path::new(&e.host_dir);
            match super::mounts::tmpfs_size(host_dir) {
                Some(bytes) => options.push(format!("size={bytes}")),
                None => log::debug!("emptyDir {}: no size limit known", e.name),
            }
            let id = format!("emptydir-{}", e.name);
            self.agent
                .add_storage(pod_tmpfs(&id, &dir, &options))
                .await?;
            log::info!("emptyDir {}: guest tmpfs {dir} ({options:?})", e.name);
            made.insert(dir);
        }
        for s in &guest.subpaths {
            if made.contains(&s.guest_dir) {
                continue;
            }
            let id = format!("subpath-{}", made.len());
            self.agent
                .add_storage(pb::Storage {
                    id,
                    source: format!("{}/{}", guest_volume_dir(&s.volume), s.path),
                    fstype: "bind".into(),
                    options: vec!["rbind".into()],
                    mount_point: s.guest_dir.clone(),
                })
                .await?;
            made.insert(s.guest_dir.clone());
        }
        Ok(())
    }

    /// Why the VM ended, if it has.
    pub fn gone(&self) -> Option<String> {
        self.gone.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Fails with [`ServiceError::VmGone`] if the VM has ended.
    pub fn check_alive(&self) -> Result<(), ServiceError> {
        match self.gone() {
            Some(why) => Err(ServiceError::VmGone(why)),
            None => Ok(()),
        }
    }

    /// Powers the VM off (or kills it) and waits until the VMM and its run
    /// directory are gone.
    pub async fn shutdown(&self) {
        let stop = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(stop) = stop {
            let (done_tx, done_rx) = oneshot::channel();
            if stop.send(done_tx).is_ok() {
                let _ = done_rx.await;
            }
        }
    }
}

/// A Pod-wide guest tmpfs (`/dev/shm`, an emptyDir) on `mount_point`.
fn pod_tmpfs(id: &str, mount_point: &str, options: &[String]) -> pb::Storage {
    pb::Storage {
        id: id.into(),
        source: "tmpfs".into(),
        fstype: "tmpfs".into(),
        options: options.to_vec(),
        mount_point: mount_point.into(),
    }
}

/// Appends the agent's log records to `<run-dir>/agent.log` (next to the
/// guest's `console.log`), and passes them to the shim's log at debug level.
async fn forward_agent_logs(agent: AgentClient, path: PathBuf) {
    use tokio::io::AsyncWriteExt;
    let Ok(mut stream) = agent.stream_logs(true).await else {
        return;
    };
    let Ok(mut file) = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .await
    else {
        return;
    };
    while let Ok(Some(r)) = stream.next_record().await {
        let line = format!("{:?} {}: {}\n", r.level, r.target, r.message);
        log::debug!("guest agent: {}", line.trim_end());
        if file.write_all(line.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// At debug level, copies new lines of the guest console (`console.log`,
/// which the VMM writes) into the shim's log, until the file goes away.
async fn forward_console(path: PathBuf) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let Ok(file) = tokio::fs::File::open(&path).await else {
        return;
    };
    let mut lines = BufReader::new(file).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => log::debug!("guest console: {line}"),
            // At the end of what the VMM wrote so far: look again shortly.
            Ok(None) if path.exists() => {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await
            }
            _ => return,
        }
    }
}

/// The last 20 lines of the file at `path` ("" if unreadable).
fn log_tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Owns the VMM: reports its death, or shuts it down when asked.
async fn monitor(
    mut vm: RunningVm,
    agent: AgentClient,
    gone: Arc<Mutex<Option<String>>>,
    stop: oneshot::Receiver<oneshot::Sender<()>>,
    wiring: Option<(PathBuf, u32)>,
) {
    let mut done_tx = None;
    tokio::select! {
        status = vm.wait() => {
            let why = match status {
                Ok(s) => format!("husk-vmm exited ({s})"),
                // containerd-shim's reaper collected it first: it has exited.
                Err(e) if e.raw_os_error() == Some(libc::ECHILD) => "husk-vmm exited".to_owned(),
                Err(e) => format!("waiting for husk-vmm: {e}"),
            };
            // The run directory, and the logs in it, go with the VM: their
            // tails stay in the shim's log (containerd's).
            let agent_log = log_tail(&vm.run_dir().join("agent.log"));
            log::error!(
                "sandbox {}: {why}{}\n--- guest agent log (tail) ---\n{agent_log}",
                vm.run_dir().display(),
                vm.diagnostics()
            );
            *gone.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
            // Dropping the VM removes its run directory.
        }
        done = stop => {
            *gone.lock().unwrap_or_else(|e| e.into_inner()) = Some("the sandbox was shut down".into());
            if let Err(e) = vm.shutdown(&agent, std::time::Duration::from_secs(10)).await {
                log::warn!("shutting the VM down: {e:#}");
            }
            done_tx = done.ok();
        }
    }
    // The VMM has closed the tap (which removed it); take the tc wiring off
    // the veth before saying the sandbox is down.
    if let Some((netns, veth)) = wiring {
        unwire(netns, veth).await;
    }
    if let Some(done) = done_tx {
        let _ = done.send(());
    }
}

/// [`net::detach`] off the runtime's threads; failures are only logged.
async fn unwire(netns: PathBuf, veth: u32) {
    let shown = netns.display().to_string();
    match tokio::task::spawn_blocking(move || net::detach(&netns, veth)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::warn!("removing the tc wiring in {shown}: {e:#}"),
        Err(e) => log::warn!("removing the tc wiring in {shown}: {e}"),
    }
}
