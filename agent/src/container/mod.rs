//! The containers of the guest: their lifecycle, stdio, cgroups and events.
//!
//! Creating, starting, exec'ing into and deleting a container is done by
//! youki's libcontainer, in a single-threaded helper process ([`helper`],
//! decision 0004). Everything that does not fork is done here: stdio pipes
//! and terminals, the cgroup (stats, freezing, updates, OOM kills), and the
//! event stream. A container's processes are tracked in [`Processes`] under
//! the keys [`init_key`] and [`exec_key`], like the guest's own processes.
//!
//! Paths: the OCI bundle (`config.json`, exec process files) is
//! `/run/husk/containers/<id>/`, libcontainer's state is
//! `/run/husk/state/<id>/`, the cgroup is `/sys/fs/cgroup/husk/<id>`. Console
//! sockets are `/run/husk/tty/<n>.sock`: a Unix socket path holds at most 107
//! bytes, and a bundle path with CRI's 64-character ids already takes 85.

pub mod cgroup;
mod console;
pub mod helper;
pub mod spec;

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use husk_proto::pb;
use tokio::net::unix::pipe;
use tokio::sync::{broadcast, Mutex};

use crate::processes::{AdoptedStdio, Exit, ExitEvent, Processes};
use crate::{debug, info, warn};
use cgroup::{Cgroup, CgroupError};
use console::ConsoleSocket;
use helper::{HelperError, HelperStdio, Request};
use spec::SpecError;

/// Where bundles live in the guest.
pub const BUNDLES: &str = "/run/husk/containers";

/// libcontainer's state root in the guest.
pub const STATE_ROOT: &str = "/run/husk/state";

/// At most this many containers at once.
pub const MAX_CONTAINERS: usize = 256;

/// How often the cgroups are checked for new OOM kills.
const OOM_POLL: Duration = Duration::from_millis(200);

/// How long RemoveContainer with force waits for the processes to die.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Events buffered per GetEvents reader before it lags.
const EVENT_QUEUE: usize = 256;

/// The process key of a container's init process.
pub fn init_key(container_id: &str) -> String {
    format!("{container_id}/")
}

/// The process key of a process exec'd into a container.
pub fn exec_key(container_id: &str, exec_id: &str) -> String {
    format!("{container_id}/{exec_id}")
}

/// Splits a process key back into a reference.
fn process_ref(key: &str) -> pb::ProcessRef {
    match key.split_once('/') {
        Some((c, e)) => pb::ProcessRef {
            container_id: c.to_owned(),
            exec_id: e.to_owned(),
        },
        None => pb::ProcessRef::guest(key),
    }
}

/// Errors of container requests, mapped to gRPC codes by the service.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("no container {0:?}")]
    NotFound(String),
    #[error("container {0:?} exists")]
    Exists(String),
    #[error("too many containers (limit {MAX_CONTAINERS})")]
    TooMany,
    #[error("container {id:?} is {state:?}: {wanted}")]
    State {
        id: String,
        state: State,
        wanted: &'static str,
    },
    #[error("exec {0:?} exists in the container")]
    ExecExists(String),
    #[error("preparing the container: {context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Helper(#[from] HelperError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Process(#[from] crate::processes::ProcessError),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ContainerError {
    let context = context.into();
    move |source| ContainerError::Io { context, source }
}

/// A container's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Created,
    Running,
    Paused,
    Stopped,
}

struct Container {
    id: String,
    bundle: PathBuf,
    cgroup: Cgroup,
    state: State,
    init_pid: u32,
    init_exit: Option<Exit>,
    execs: Vec<String>,
    oom_kills: u64,
}

type Shared = Arc<Mutex<Container>>;

/// The guest's containers.
pub struct Containers {
    procs: Arc<Processes>,
    table: StdMutex<HashMap<String, Shared>>,
    events: broadcast::Sender<pb::Event>,
    next_helper: AtomicU64,
    bundles: PathBuf,
    state_root: PathBuf,
    /// Console sockets: `tty/` beside the bundles directory.
    ttys: PathBuf,
    next_console: AtomicU64,
}

/// Pipes or a terminal for one new process: the ends the process gets (for
/// the helper's stdio) and the ends the agent keeps.
struct NewStdio {
    helper: HelperStdio,
    keep: AdoptedStdio,
    console: Option<ConsoleSocket>,
}

fn pipe_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two c_ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded: both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn new_stdio(stdin: bool, console_path: Option<PathBuf>) -> std::io::Result<NewStdio> {
    if let Some(path) = console_path {
        return Ok(NewStdio {
            helper: HelperStdio::null(),
            keep: AdoptedStdio::default(),
            console: Some(ConsoleSocket::bind(&path)?),
        });
    }
    let mut keep = AdoptedStdio::default();
    let stdin = if stdin {
        let (r, w) = pipe_pair()?;
        keep.stdin = Some(pipe::Sender::from_owned_fd(w)?);
        Stdio::from(r)
    } else {
        Stdio::null()
    };
    let (out_r, out_w) = pipe_pair()?;
    let (err_r, err_w) = pipe_pair()?;
    keep.stdout = Some(pipe::Receiver::from_owned_fd(out_r)?);
    keep.stderr = Some(pipe::Receiver::from_owned_fd(err_r)?);
    Ok(NewStdio {
        helper: HelperStdio {
            stdin,
            stdout: Stdio::from(out_w),
            stderr: Stdio::from(err_w),
        },
        keep,
        console: None,
    })
}

/// The agent's ends of a terminal: the master for stdin, stdout and resizing.
fn terminal_stdio(master: OwnedFd, stdin: bool) -> std::io::Result<AdoptedStdio> {
    let out = master.try_clone()?;
    let input = if stdin {
        Some(pipe::Sender::from_owned_fd_unchecked(master.try_clone()?)?)
    } else {
        None
    };
    Ok(AdoptedStdio {
        stdin: input,
        stdout: Some(pipe::Receiver::from_owned_fd_unchecked(out)?),
        stderr: None,
        tty: Some(master),
    })
}

impl Containers {
    /// An empty table with the guest's paths.
    pub fn new(procs: Arc<Processes>) -> Arc<Containers> {
        Containers::with_paths(procs, BUNDLES.into(), STATE_ROOT.into())
    }

    /// An empty table with its own bundle and state directories.
    pub fn with_paths(
        procs: Arc<Processes>,
        bundles: PathBuf,
        state_root: PathBuf,
    ) -> Arc<Containers> {
        let ttys = bundles.parent().unwrap_or(&bundles).join("tty");
        Arc::new(Containers {
            procs,
            table: StdMutex::new(HashMap::new()),
            events: broadcast::channel(EVENT_QUEUE).0,
            next_helper: AtomicU64::new(1),
            bundles,
            state_root,
            ttys,
            next_console: AtomicU64::new(1),
        })
    }

    /// A fresh, short path for one console socket (its directory is created
    /// when the socket is bound).
    fn console_path(&self) -> PathBuf {
        let n = self.next_console.fetch_add(1, Ordering::Relaxed);
        self.ttys.join(format!("{n}.sock"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Shared>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, id: &str) -> Result<Shared, ContainerError> {
        self.lock()
            .get(id)
            .cloned()
            .ok_or_else(|| ContainerError::NotFound(id.to_owned()))
    }

    fn helper_key(&self) -> String {
        format!(
            "helper-{}",
            self.next_helper.fetch_add(1, Ordering::Relaxed)
        )
    }

    async fn helper(
        &self,
        request: &Request,
        stdio: HelperStdio,
    ) -> Result<Option<u32>, HelperError> {
        helper::run(&self.procs, &self.helper_key(), request, stdio).await
    }

    /// Events (exits, OOM kills) from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<pb::Event> {
        self.events.subscribe()
    }

    /// CreateContainer: the container exists, its init waits for Start.
    /// Returns the init's pid.
    pub async fn create(&self, r: &pb::CreateContainerRequest) -> Result<u32, ContainerError> {
        spec::check_id(&r.container_id)?;
        let spec = spec::prepare_spec(&r.oci_spec, &r.container_id, r.tty)?;
        let id = r.container_id.clone();
        let bundle = self.bundles.join(&id);
        let shared = Arc::new(Mutex::new(Container {
            id: id.clone(),
            bundle: bundle.clone(),
            cgroup: Cgroup::of(&id),
            state: State::Created,
            init_pid: 0,
            init_exit: None,
            execs: Vec::new(),
            oom_kills: 0,
        }));
        // Reserve the id; the entry is locked until creation is over.
        let mut c = shared.clone().lock_owned().await;
        {
            let mut table = self.lock();
            if table.contains_key(&id) {
                return Err(ContainerError::Exists(id));
            }
            if table.len() >= MAX_CONTAINERS {
                return Err(ContainerError::TooMany);
            }
            table.insert(id.clone(), shared);
        }
        let result = self.create_locked(&mut c, &spec, r).await;
        if result.is_err() {
            self.lock().remove(&id);
            self.clean_failed(&c).await;
        }
        result.map(|()| c.init_pid)
    }

    /// Sends `signal` to every process of the container (`kill --all`).
    pub async fn signal_all(&self, id: &str, signal: i32) -> Result<(), ContainerError> {
        let cgroup = self.get(id)?.lock().await.cgroup.clone();
        if !(1..=libc::SIGRTMAX()).contains(&signal) {
            return Err(SpecError::Invalid(format!("signal {signal}")).into());
        }
        for pid in cgroup.pids()? {
            let Ok(pid) = i32::try_from(pid) else {
                continue;
            };
            // SAFETY: kill(2) takes no pointers. The pids come from the
            // container's cgroup; one that exited meanwhile gives ESRCH.
            unsafe { libc::kill(pid, signal) };
        }
        Ok(())
    }

    /// Removes what a failed creation may have left: processes in the
    /// cgroup, the cgroup, libcontainer's state and the bundle.
    async fn clean_failed(&self, c: &Container) {
        if c.cgroup.path().exists() {
            let _ = c.cgroup.kill_all();
            self.wait_cgroup_empty(&c.cgroup).await;
            if let Err(e) = c.cgroup.remove() {
                warn!("removing the cgroup of failed container {}: {e}", c.id);
            }
        }
        let _ = std::fs::remove_dir_all(self.state_root.join(&c.id));
        let _ = std::fs::remove_dir_all(&c.bundle);
        self.procs.forget_prefix(&init_key(&c.id));
    }

    /// Waits up to [`KILL_WAIT`] for a killed cgroup to empty.
    async fn wait_cgroup_empty(&self, cgroup: &Cgroup) {
        let deadline = tokio::time::Instant::now() + KILL_WAIT;
        while !cgroup.pids().unwrap_or_default().is_empty() {
            if tokio::time::Instant::now() > deadline {
                warn!(
                    "processes of {} survived SIGKILL for {KILL_WAIT:?}",
                    cgroup.path().display()
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn create_locked(
        &self,
        c: &mut Container,
        spec: &oci_spec::runtime::Spec,
        r: &pb::CreateContainerRequest,
    ) -> Result<(), ContainerError> {
        std::fs::create_dir_all(&c.bundle).map_err(io_err("creating the bundle"))?;
        std::fs::create_dir_all(&self.state_root).map_err(io_err("creating the state root"))?;
        let config =
            serde_json::to_vec(spec).map_err(|e| io_err("writing config.json")(e.into()))?;
        std::fs::write(c.bundle.join("config.json"), config)
            .map_err(io_err("writing config.json"))?;
        let console = r.tty.then(|| self.console_path());
        let (id, root, bundle) = (c.id.clone(), self.state_root.clone(), c.bundle.clone());
        let request = |console_socket| Request::Create {
            id,
            root,
            bundle,
            console_socket,
        };
        let pid = match self
            .spawn_adopted(&init_key(&c.id), r.stdin, console, request)
            .await
        {
            Ok(pid) => pid,
            Err((e, created)) => {
                if created.is_some() {
                    // The init exists but cannot be used: undo it.
                    let _ = self.delete_state(&c.id, true).await;
                }
                return Err(e);
            }
        };
        c.init_pid = pid;
        info!("created container {} (init pid {pid})", c.id);
        Ok(())
    }

    /// Runs the helper for the request `request` builds (from the console
    /// socket's path, if the process gets a terminal) with fresh stdio, and
    /// adopts the process it creates as `key`. A failure after the process
    /// exists comes with its pid, for the caller to undo it.
    async fn spawn_adopted(
        &self,
        key: &str,
        stdin: bool,
        console: Option<PathBuf>,
        request: impl FnOnce(Option<PathBuf>) -> Request,
    ) -> Result<u32, (ContainerError, Option<u32>)> {
        let stdio = new_stdio(stdin, console).map_err(|e| (io_err("creating stdio")(e), None))?;
        let request = request(stdio.console.as_ref().map(|s| s.path().to_owned()));
        let pid = match self.helper(&request, stdio.helper).await {
            Ok(Some(pid)) => pid,
            Ok(None) => return Err((HelperError::BadReply("no pid".into()).into(), None)),
            Err(e) => return Err((e.into(), None)),
        };
        let keep = match &stdio.console {
            Some(socket) => socket
                .receive()
                .and_then(|master| terminal_stdio(master, stdin)),
            None => Ok(stdio.keep),
        };
        let keep = keep.map_err(|e| (io_err("receiving the terminal")(e), Some(pid)))?;
        self.procs
            .adopt(key, pid, keep)
            .map_err(|e| (e.into(), Some(pid)))?;
        Ok(pid)
    }

    async fn delete_state(&self, id: &str, force: bool) -> Result<(), HelperError> {
        let request = Request::Delete {
            id: id.to_owned(),
            root: self.state_root.clone(),
            force,
        };
        self.helper(&request, HelperStdio::null()).await.map(|_| ())
    }

    /// StartContainer: lets the init run. Returns its pid.
    pub async fn start(&self, id: &str) -> Result<u32, ContainerError> {
        let shared = self.get(id)?;
        let mut c = shared.lock().await;
        if c.state != State::Created {
            return Err(ContainerError::State {
                id: id.to_owned(),
                state: c.state,
                wanted: "only a created container can start",
            });
        }
        let request = Request::Start {
            id: id.to_owned(),
            root: self.state_root.clone(),
        };
        self.helper(&request, HelperStdio::null()).await?;
        if c.init_exit.is_none() {
            c.state = State::Running;
        }
        Ok(c.init_pid)
    }

    /// ExecProcess: runs an OCI process in a running container. Returns its pid.
    pub async fn exec(&self, r: &pb::ExecProcessRequest) -> Result<u32, ContainerError> {
        spec::check_id(&r.exec_id)?;
        let (process, tty) = spec::prepare_process(&r.oci_process)?;
        let shared = self.get(&r.container_id)?;
        let mut c = shared.lock().await;
        if c.state != State::Running {
            return Err(ContainerError::State {
                id: r.container_id.clone(),
                state: c.state,
                wanted: "exec needs a running container",
            });
        }
        let key = exec_key(&c.id, &r.exec_id);
        if c.execs.contains(&r.exec_id) {
            return Err(ContainerError::ExecExists(r.exec_id.clone()));
        }
        let file = c.bundle.join(format!("exec-{}.json", r.exec_id));
        let json =
            serde_json::to_vec(&process).map_err(|e| io_err("writing the process")(e.into()))?;
        std::fs::write(&file, json).map_err(io_err("writing the process"))?;
        let console = tty.then(|| self.console_path());
        let (id, root, process) = (c.id.clone(), self.state_root.clone(), file.clone());
        let request = |console_socket| Request::Exec {
            id,
            root,
            process,
            console_socket,
        };
        let result = match self.spawn_adopted(&key, r.stdin, console, request).await {
            Ok(pid) => Ok(pid),
            Err((e, created)) => {
                if let Some(pid) = created.and_then(|p| i32::try_from(p).ok()) {
                    // SAFETY: kill(2) takes no pointers; the pid was just
                    // created and, not yet reaped, cannot have been reused.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                Err(e)
            }
        };
        let _ = std::fs::remove_file(&file);
        let pid = result?;
        c.execs.push(r.exec_id.clone());
        debug!("exec {key} (pid {pid})");
        Ok(pid)
    }

    /// RemoveContainer: kills (with `force`) and deletes the container.
    pub async fn remove(&self, id: &str, force: bool) -> Result<(), ContainerError> {
        let shared = self.get(id)?;
        let mut c = shared.lock().await;
        let running = c.init_exit.is_none() && c.state != State::Created;
        if running && !force {
            return Err(ContainerError::State {
                id: id.to_owned(),
                state: c.state,
                wanted: "stop it first or remove with force",
            });
        }
        if c.state == State::Paused {
            // Frozen processes cannot die: thaw first.
            c.cgroup.set_frozen(false).await?;
        }
        if c.cgroup.path().exists() {
            c.cgroup.kill_all()?;
            self.wait_cgroup_empty(&c.cgroup).await;
        }
        if let Err(e) = self.delete_state(id, true).await {
            // The state may never have been complete; the cgroup is ours to clean.
            warn!("deleting the state of {id}: {e}");
            let _ = std::fs::remove_dir_all(self.state_root.join(id));
        }
        c.cgroup.remove()?;
        std::fs::remove_dir_all(&c.bundle).or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(io_err("removing the bundle")(e))
            }
        })?;
        self.procs.forget_prefix(&init_key(id));
        c.state = State::Stopped;
        self.lock().remove(id);
        info!("removed container {id}");
        Ok(())
    }

    /// PauseContainer / ResumeContainer.
    pub async fn set_paused(&self, id: &str, paused: bool) -> Result<(), ContainerError> {
        let shared = self.get(id)?;
        let mut c = shared.lock().await;
        let (from, to) = if paused {
            (State::Running, State::Paused)
        } else {
            (State::Paused, State::Running)
        };
        if c.state != from {
            return Err(ContainerError::State {
                id: id.to_owned(),
                state: c.state,
                wanted: if paused {
                    "only a running container can pause"
                } else {
                    "only a paused container can resume"
                },
            });
        }
        c.cgroup.set_frozen(paused).await?;
        c.state = to;
        Ok(())
    }

    /// StatsContainer.
    pub async fn stats(&self, id: &str) -> Result<pb::ContainerStats, ContainerError> {
        let cgroup = self.get(id)?.lock().await.cgroup.clone();
        Ok(cgroup.stats()?)
    }

    /// ListProcesses.
    pub async fn pids(&self, id: &str) -> Result<Vec<u32>, ContainerError> {
        let cgroup = self.get(id)?.lock().await.cgroup.clone();
        Ok(cgroup.pids()?)
    }

    /// UpdateContainer.
    pub async fn update(&self, id: &str, resources: &[u8]) -> Result<(), ContainerError> {
        let resources = spec::parse_resources(resources)?;
        let cgroup = self.get(id)?.lock().await.cgroup.clone();
        Ok(cgroup.apply(&resources)?)
    }

    /// The init's recorded exit, for WaitProcess after the process table
    /// forgot it.
    pub async fn init_exit(&self, id: &str) -> Option<Exit> {
        let shared = self.get(id).ok()?;
        let c = shared.lock().await;
        c.init_exit
    }

    /// Publishes OOM kills a container's cgroup counted since the last look.
    fn check_oom(&self, c: &mut Container) {
        let Ok(now) = c.cgroup.oom_kills() else {
            return;
        };
        if now > c.oom_kills {
            c.oom_kills = now;
            info!("container {}: OOM kill #{now}", c.id);
            let _ = self.events.send(pb::Event {
                kind: Some(pb::event::Kind::Oom(pb::OomKilled {
                    container_id: c.id.clone(),
                })),
            });
        }
    }

    async fn on_exit(&self, e: ExitEvent) {
        let process = process_ref(&e.id);
        if !process.container_id.is_empty() {
            if let Ok(shared) = self.get(&process.container_id) {
                let mut c = shared.lock().await;
                // The OOM event first: whoever sees the exit can then know why.
                self.check_oom(&mut c);
                if process.exec_id.is_empty() {
                    c.init_exit = Some(e.exit);
                    c.state = State::Stopped;
                }
            }
        }
        let _ = self.events.send(pb::Event {
            kind: Some(pb::event::Kind::Exited(pb::ProcessExited {
                process: Some(process),
                pid: e.pid,
                status: Some(crate::service::wait_response(e.exit.status, e.exit.at)),
            })),
        });
    }

    /// Turns process exits into events, updates container states, and polls
    /// the cgroups for OOM kills. Runs forever.
    pub async fn run_events(self: Arc<Self>) {
        let mut exits = self.procs.subscribe_exits();
        let mut tick = tokio::time::interval(OOM_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                e = exits.recv() => match e {
                    Ok(e) => self.on_exit(e).await,
                    Err(broadcast::error::RecvError::Lagged(n)) => warn!("{n} exit events lost"),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick() => {
                    let all: Vec<Shared> = self.lock().values().cloned().collect();
                    for shared in all {
                        // A container busy with a request is looked at next time.
                        if let Ok(mut c) = shared.try_lock() {
                            self.check_oom(&mut c);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_keys_round_trip() {
        assert_eq!(init_key("c1"), "c1/");
        let r = process_ref(&init_key("c1"));
        assert_eq!((r.container_id.as_str(), r.exec_id.as_str()), ("c1", ""));
        let r = process_ref(&exec_key("c1", "e1"));
        assert_eq!((r.container_id.as_str(), r.exec_id.as_str()), ("c1", "e1"));
        let r = process_ref("guest-3");
        assert_eq!(
            (r.container_id.as_str(), r.exec_id.as_str()),
            ("", "guest-3")
        );
    }
}
