//! The task API: containerd's requests turned into agent calls.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim::api;
use containerd_shim::protos::cgroups_v2::metrics as v2;
use containerd_shim::protos::events::task as ev;
use containerd_shim::protos::protobuf::rt::WireType;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{CodedInputStream, EnumOrUnknown, Message, MessageField};
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::ttrpc::r#async::TtrpcContext;
use containerd_shim::{ExitSignal, TtrpcResult};
use husk_proto::pb;
use husk_shim::config::Config;
use husk_shim::spec;
use tokio::sync::Mutex;

use super::events::{Event, Events};
use super::mounts::Mounts;
use super::process::{Exited, Process, State, Stdio, UNKNOWN_EXIT};
use super::sandbox::Sandbox;
use super::{Container, ServiceError};

type Result<T> = std::result::Result<T, ServiceError>;

/// How long Shutdown waits for queued events to reach containerd.
const EVENTS_FLUSH_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The shim's task service.
pub struct Service {
    config: Config,
    namespace: String,
    exit: Arc<ExitSignal>,
    events: Events,
    sandbox: Mutex<Option<Arc<Sandbox>>>,
    containers: Mutex<HashMap<String, Container>>,
}

fn timestamp(t: SystemTime) -> MessageField<Timestamp> {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    ts.nanos = i32::try_from(d.subsec_nanos()).unwrap_or(0);
    MessageField::some(ts)
}

fn status(state: State) -> EnumOrUnknown<api::Status> {
    EnumOrUnknown::new(match state {
        State::Created => api::Status::CREATED,
        State::Running => api::Status::RUNNING,
        State::Paused => api::Status::PAUSED,
        State::Stopped => api::Status::STOPPED,
    })
}

impl Service {
    pub fn new(
        config: Config,
        namespace: String,
        exit: Arc<ExitSignal>,
        events: Events,
    ) -> Service {
        Service {
            config,
            namespace,
            exit,
            events,
            sandbox: Mutex::new(None),
            containers: Mutex::new(HashMap::new()),
        }
    }

    /// The sandbox VM, booted on first use for `sandbox_id` by the container
    /// whose spec is `spec` (the Pod's sandbox container, or a lone container).
    async fn sandbox_for(
        &self,
        sandbox_id: &str,
        config: &Config,
        spec: &serde_json::Value,
    ) -> Result<Arc<Sandbox>> {
        let mut slot = self.sandbox.lock().await;
        if let Some(s) = slot.as_ref() {
            s.check_alive()?;
            return Ok(s.clone());
        }
        let netns = match husk_shim::net::netns_of(spec) {
            Some(netns) => netns,
            None => {
                return Err(ServiceError::InvalidArgument(
                    "husk runs the Pod in a VM, which cannot share the host's network \
                     namespace: hostNetwork Pods (and ctr --net-host) are not supported"
                        .into(),
                ))
            }
        };
        let s = Arc::new(Sandbox::boot(sandbox_id, config, netns).await?);
        let mut stream = s.agent.events().await?;
        let events = self.events.clone();
        // OOM kills come from the guest's event stream; exits from the waiters.
        tokio::spawn(async move {
            while let Ok(Some(kind)) = stream.next_event().await {
                if let pb::event::Kind::Oom(oom) = kind {
                    events.send(Event::Oom(ev::TaskOOM {
                        container_id: oom.container_id,
                        ..Default::default()
                    }));
                }
            }
        });
        *slot = Some(s.clone());
        Ok(s)
    }

    async fn sandbox(&self) -> Result<Arc<Sandbox>> {
        self.sandbox
            .lock()
            .await
            .clone()
            .ok_or_else(|| ServiceError::FailedPrecondition("no sandbox VM yet".into()))
    }

    /// The process `exec_id` of container `id` ("" for the init).
    async fn process(&self, id: &str, exec_id: &str) -> Result<(Arc<Process>, String)> {
        let containers = self.containers.lock().await;
        let c = containers
            .get(id)
            .ok_or_else(|| ServiceError::NotFound(format!("container {id:?} not found")))?;
        let p = if exec_id.is_empty() {
            c.init.clone()
        } else {
            c.execs.get(exec_id).cloned().ok_or_else(|| {
                ServiceError::NotFound(format!("exec {exec_id:?} of {id:?} not found"))
            })?
        };
        Ok((p, c.bundle.clone()))
    }

    async fn do_create(&self, req: &api::CreateTaskRequest) -> Result<u32> {
        if !req.checkpoint.is_empty() {
            return Err(ServiceError::Unimplemented(
                "restoring a checkpoint is not supported by husk".into(),
            ));
        }
        if self.containers.lock().await.contains_key(&req.id) {
            return Err(ServiceError::AlreadyExists(format!(
                "container {:?} exists",
                req.id
            )));
        }
        let bundle = Path::new(&req.bundle);
        let json = std::fs::read(bundle.join("config.json")).map_err(|e| {
            ServiceError::InvalidArgument(format!("reading the bundle's config.json: {e}"))
        })?;
        let config = match req
            .options
            .as_ref()
            .map(runtime_options_config_path)
            .transpose()?
        {
            Some(Some(path)) => Config::load(Some(&path))
                .map_err(|e| ServiceError::InvalidArgument(one_line_config(&e)))?,
            _ => self.config.clone(),
        };
        let original: serde_json::Value = serde_json::from_slice(&json)
            .map_err(|e| ServiceError::InvalidArgument(format!("the bundle's config.json: {e}")))?;
        let sandbox_id = spec::sandbox_id(&json, &req.id);
        let sandbox = self.sandbox_for(&sandbox_id, &config, &original).await?;
        // A Pod's app container joins its sandbox container's namespaces.
        let pod_pid = if sandbox_id == req.id {
            None
        } else {
            *sandbox.pause_pid.lock().unwrap_or_else(|e| e.into_inner())
        };
        let guest = spec::for_guest(&json, &req.id, pod_pid)?;
        // emptyDirs are Pod-level guest tmpfs volumes, mounted on first use.
        sandbox.pod_volumes(&guest).await?;
        let mut mounts = Mounts::new(sandbox.shared.join(&req.id))?;
        let bundle_rootfs = bundle.join(original["root"]["path"].as_str().unwrap_or("rootfs"));
        mounts
            .rootfs(
                &req.rootfs,
                &bundle_rootfs,
                &sandbox.shared.join(spec::rootfs_share_path(&req.id)),
            )
            .await?;
        for b in &guest.binds {
            mounts.bind(
                Path::new(&b.source),
                &sandbox.shared.join(&b.share_path),
                b.readonly,
            )?;
        }
        let spec_bytes = serde_json::to_vec(&guest.spec)
            .map_err(|e| ServiceError::Internal(format!("encoding the guest spec: {e}")))?;
        let pid = sandbox
            .agent
            .create_container(pb::CreateContainerRequest {
                container_id: req.id.clone(),
                oci_spec: spec_bytes,
                storages: vec![],
                tty: req.terminal,
                stdin: !req.stdin.is_empty(),
            })
            .await?;
        let init = Arc::new(Process::new(
            pb::ProcessRef {
                container_id: req.id.clone(),
                exec_id: String::new(),
            },
            Stdio {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            },
            None,
        ));
        init.set_pid(pid);
        if sandbox_id == req.id {
            *sandbox.pause_pid.lock().unwrap_or_else(|e| e.into_inner()) = Some(pid);
        }
        if let Err(e) = init.start_copies(&sandbox.agent, &self.namespace).await {
            let _ = sandbox.agent.remove_container(&req.id, true).await;
            return Err(e);
        }
        self.containers.lock().await.insert(
            req.id.clone(),
            Container {
                id: req.id.clone(),
                bundle: req.bundle.clone(),
                init,
                execs: HashMap::new(),
                mounts,
            },
        );
        Ok(pid)
    }

    /// Waits for `process` in the guest, then publishes its exit.
    fn spawn_waiter(&self, sandbox: Arc<Sandbox>, process: Arc<Process>) {
        let events = self.events.clone();
        tokio::spawn(async move {
            let exited = match sandbox.agent.wait_process(&process.agent_ref).await {
                Ok(status) => Exited::from_agent(status),
                Err(e) => {
                    let why = sandbox.gone().unwrap_or_else(|| e.to_string());
                    log::error!("{:?}: lost track of the process: {why}", process.agent_ref);
                    Exited {
                        status: UNKNOWN_EXIT,
                        at: SystemTime::now(),
                    }
                }
            };
            let exited = process.finish(exited).await;
            let r = &process.agent_ref;
            events.send(Event::Exit(ev::TaskExit {
                container_id: r.container_id.clone(),
                id: if r.exec_id.is_empty() {
                    r.container_id.clone()
                } else {
                    r.exec_id.clone()
                },
                pid: process.pid(),
                exit_status: exited.status,
                exited_at: timestamp(exited.at),
                ..Default::default()
            }));
        });
    }

    async fn do_start(&self, req: &api::StartRequest) -> Result<u32> {
        let sandbox = self.sandbox().await?;
        sandbox.check_alive()?;
        let (p, _) = self.process(&req.id, &req.exec_id).await?;
        if p.state() != State::Created {
            return Err(ServiceError::FailedPrecondition(format!(
                "{:?} is not in the created state",
                req.id
            )));
        }
        let started = if req.exec_id.is_empty() {
            self.start_init(&sandbox, &p, &req.id).await
        } else {
            self.start_exec(&sandbox, &p, req).await
        };
        let pid = match started {
            Ok(pid) => pid,
            Err(e) => {
                // Nothing runs: Wait must not block for ever, and Delete must
                // not wait for an exit (containerd kills, waits, then deletes).
                p.start_failed();
                return Err(e);
            }
        };
        self.spawn_waiter(sandbox, p);
        Ok(pid)
    }

    async fn start_init(&self, sandbox: &Sandbox, p: &Process, id: &str) -> Result<u32> {
        let pid = sandbox.agent.start_container(id).await?;
        p.set_state(State::Running);
        self.events.send(Event::Start(ev::TaskStart {
            container_id: id.to_owned(),
            pid,
            ..Default::default()
        }));
        Ok(pid)
    }

    async fn start_exec(
        &self,
        sandbox: &Sandbox,
        p: &Process,
        req: &api::StartRequest,
    ) -> Result<u32> {
        let exec = sandbox
            .agent
            .exec_process(pb::ExecProcessRequest {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                oci_process: p.exec_spec.clone().unwrap_or_default(),
                stdin: !p.stdio.stdin.is_empty(),
            })
            .await?;
        p.set_pid(exec.pid);
        if let Err(e) = p.start_copies(&sandbox.agent, &self.namespace).await {
            // The exec runs in the guest but its stdio has nowhere to go:
            // end it, and collect its status there.
            let agent = sandbox.agent.clone();
            let process = p.agent_ref.clone();
            tokio::spawn(async move {
                let _ = agent.signal_process(&process, libc::SIGKILL).await;
                let _ = agent.wait_process(&process).await;
            });
            return Err(e);
        }
        let pending = p
            .pending_resize
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((w, h)) = pending {
            let _ = sandbox.agent.resize_tty(&p.agent_ref, w, h).await;
        }
        p.set_state(State::Running);
        self.events.send(Event::ExecStarted(ev::TaskExecStarted {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            pid: exec.pid,
            ..Default::default()
        }));
        Ok(exec.pid)
    }

    async fn do_delete(&self, req: &api::DeleteRequest) -> Result<api::DeleteResponse> {
        let (p, _) = self.process(&req.id, &req.exec_id).await?;
        let exited = match (p.state(), p.exited()) {
            (_, Some(e)) => e,
            (State::Created, None) => Exited {
                status: 0,
                at: SystemTime::now(),
            },
            _ => {
                return Err(ServiceError::FailedPrecondition(format!(
                    "{:?} is still running: kill it first",
                    p.agent_ref
                )))
            }
        };
        if req.exec_id.is_empty() {
            let sandbox = self.sandbox().await?;
            if sandbox.gone().is_none() {
                sandbox.agent.remove_container(&req.id, true).await?;
            }
            let mut c = self
                .containers
                .lock()
                .await
                .remove(&req.id)
                .ok_or_else(|| {
                    ServiceError::NotFound(format!("container {:?} not found", req.id))
                })?;
            let stuck = c.mounts.undo();
            if !stuck.is_empty() {
                log::warn!("container {}: still mounted: {stuck:?}", c.id);
            }
            self.events.send(Event::Delete(ev::TaskDelete {
                container_id: req.id.clone(),
                pid: p.pid(),
                exit_status: exited.status,
                exited_at: timestamp(exited.at),
                id: req.id.clone(),
                ..Default::default()
            }));
        } else if let Some(c) = self.containers.lock().await.get_mut(&req.id) {
            c.execs.remove(&req.exec_id);
        }
        Ok(api::DeleteResponse {
            pid: p.pid(),
            exit_status: exited.status,
            exited_at: timestamp(exited.at),
            ..Default::default()
        })
    }

    async fn do_stats(&self, id: &str) -> Result<Any> {
        let sandbox = self.sandbox().await?;
        let s = sandbox.agent.stats_container(id).await?;
        let mut m = v2::Metrics::new();
        let mut cpu = v2::CPUStat::new();
        cpu.usage_usec = s.cpu_usage_ns / 1000;
        cpu.user_usec = s.cpu_user_ns / 1000;
        cpu.system_usec = s.cpu_system_ns / 1000;
        m.cpu = MessageField::some(cpu);
        let mut mem = v2::MemoryStat::new();
        mem.usage = s.memory_usage_bytes;
        mem.usage_limit = if s.memory_limit_bytes == 0 {
            u64::MAX
        } else {
            s.memory_limit_bytes
        };
        mem.inactive_file = s
            .memory_usage_bytes
            .saturating_sub(s.memory_working_set_bytes);
        m.memory = MessageField::some(mem);
        let mut pids = v2::PidsStat::new();
        pids.current = s.pids;
        pids.limit = s.pids_limit;
        m.pids = MessageField::some(pids);
        let mut events = v2::MemoryEvents::new();
        events.oom_kill = s.oom_kills;
        m.memory_events = MessageField::some(events);
        let mut any = Any::new();
        any.type_url = "io.containerd.cgroups.v2.Metrics".into();
        any.value = m
            .write_to_bytes()
            .map_err(|e| ServiceError::Internal(format!("encoding metrics: {e}")))?;
        Ok(any)
    }
}

/// The `ConfigPath` of containerd's `runtimeoptions.v1.Options` (what
/// containerd 1.6 and 1.7 send a non-runc runtime from the CRI config's
/// `options`), if `options` is one. Field 2 of that message is the path.
fn runtime_options_config_path(options: &Any) -> Result<Option<PathBuf>> {
    if !options.type_url.ends_with("runtimeoptions.v1.Options") {
        return Ok(None);
    }
    let bad = |e: containerd_shim::protos::protobuf::Error| {
        ServiceError::InvalidArgument(format!("runtime options: {e}"))
    };
    let mut input = CodedInputStream::from_bytes(&options.value);
    let mut path = None;
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(bad)? {
        if tag == (2 << 3) | 2 {
            path = Some(input.read_string().map_err(bad)?);
        } else {
            input
                .skip_field(WireType::new(tag & 7).ok_or_else(|| {
                    ServiceError::InvalidArgument(format!(
                        "runtime options: wire type in tag {tag}"
                    ))
                })?)
                .map_err(bad)?;
        }
    }
    Ok(path.filter(|p| !p.is_empty()).map(PathBuf::from))
}

/// The requested exec's OCI process (containerd sends it as JSON in an Any).
fn exec_spec(req: &api::ExecProcessRequest) -> Result<Vec<u8>> {
    let spec = req
        .spec
        .as_ref()
        .ok_or_else(|| ServiceError::InvalidArgument("exec without a process spec".into()))?;
    serde_json::from_slice::<serde_json::Value>(&spec.value)
        .map_err(|e| ServiceError::InvalidArgument(format!("exec process spec: {e}")))?;
    Ok(spec.value.clone())
}

fn one_line_config(e: &husk_shim::config::ConfigError) -> String {
    match std::error::Error::source(e) {
        Some(s) => format!("{e}: {s}"),
        None => e.to_string(),
    }
}

#[async_trait]
impl Task for Service {
    async fn create(
        &self,
        _: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let pid = self.do_create(&req).await?;
        self.events.send(Event::Create(ev::TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(ev::TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            }),
            pid,
            ..Default::default()
        }));
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let pid = self.do_start(&req).await?;
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn delete(
        &self,
        _: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        Ok(self.do_delete(&req).await?)
    }

    async fn exec(
        &self,
        _: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        let spec = exec_spec(&req)?;
        let mut containers = self.containers.lock().await;
        let c = containers
            .get_mut(&req.id)
            .ok_or_else(|| ServiceError::NotFound(format!("container {:?} not found", req.id)))?;
        if c.execs.contains_key(&req.exec_id) {
            return Err(
                ServiceError::AlreadyExists(format!("exec {:?} exists", req.exec_id)).into(),
            );
        }
        let p = Process::new(
            pb::ProcessRef {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
            },
            Stdio {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            },
            Some(spec),
        );
        c.execs.insert(req.exec_id.clone(), Arc::new(p));
        self.events.send(Event::ExecAdded(ev::TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        }));
        Ok(api::Empty::new())
    }

    async fn state(
        &self,
        _: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let (p, bundle) = self.process(&req.id, &req.exec_id).await?;
        let exited = p.exited();
        Ok(api::StateResponse {
            id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            bundle,
            pid: p.pid(),
            status: status(p.state()),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: exited.map_or(0, |e| e.status),
            exited_at: exited.map_or_else(MessageField::none, |e| timestamp(e.at)),
            ..Default::default()
        })
    }

    async fn pids(
        &self,
        _: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let sandbox = self.sandbox().await?;
        let pids = sandbox
            .agent
            .list_processes(&req.id)
            .await
            .map_err(ServiceError::from)?;
        let processes = pids
            .into_iter()
            .map(|pid| containerd_shim::protos::types::task::ProcessInfo {
                pid,
                ..Default::default()
            })
            .collect();
        Ok(api::PidsResponse {
            processes,
            ..Default::default()
        })
    }

    async fn kill(&self, _: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let sandbox = self.sandbox().await?;
        let (p, _) = self.process(&req.id, &req.exec_id).await?;
        let signal = i32::try_from(req.signal)
            .map_err(|_| ServiceError::InvalidArgument(format!("signal {}", req.signal)))?;
        if p.exited().is_some() {
            return Err(
                ServiceError::NotFound(format!("{:?} has already exited", p.agent_ref)).into(),
            );
        }
        sandbox.check_alive()?;
        let result = if req.all && req.exec_id.is_empty() {
            sandbox.agent.signal_container(&req.id, signal).await
        } else {
            sandbox.agent.signal_process(&p.agent_ref, signal).await
        };
        result.map_err(ServiceError::from)?;
        Ok(api::Empty::new())
    }

    async fn wait(
        &self,
        _: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let (p, _) = self.process(&req.id, &req.exec_id).await?;
        let exited = p.wait().await;
        Ok(api::WaitResponse {
            exit_status: exited.status,
            exited_at: timestamp(exited.at),
            ..Default::default()
        })
    }

    async fn resize_pty(
        &self,
        _: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let sandbox = self.sandbox().await?;
        let (p, _) = self.process(&req.id, &req.exec_id).await?;
        if !req.exec_id.is_empty() && p.state() == State::Created {
            // The exec does not exist in the guest before Start: apply then.
            *p.pending_resize.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((req.width, req.height));
            return Ok(api::Empty::new());
        }
        sandbox
            .agent
            .resize_tty(&p.agent_ref, req.width, req.height)
            .await
            .map_err(ServiceError::from)?;
        Ok(api::Empty::new())
    }

    async fn close_io(
        &self,
        _: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        let sandbox = self.sandbox().await?;
        let (p, _) = self.process(&req.id, &req.exec_id).await?;
        if req.stdin {
            p.close_stdin(&sandbox.agent).await;
        }
        Ok(api::Empty::new())
    }

    async fn pause(&self, _: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        let sandbox = self.sandbox().await?;
        let (p, _) = self.process(&req.id, "").await?;
        sandbox
            .agent
            .set_paused(&req.id, true)
            .await
            .map_err(ServiceError::from)?;
        p.set_state(State::Paused);
        self.events.send(Event::Paused(ev::TaskPaused {
            container_id: req.id.clone(),
            ..Default::default()
        }));
        Ok(api::Empty::new())
    }

    async fn resume(&self, _: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        let sandbox = self.sandbox().await?;
        let (p, _) = self.process(&req.id, "").await?;
        sandbox
            .agent
            .set_paused(&req.id, false)
            .await
            .map_err(ServiceError::from)?;
        p.set_state(State::Running);
        self.events.send(Event::Resumed(ev::TaskResumed {
            container_id: req.id.clone(),
            ..Default::default()
        }));
        Ok(api::Empty::new())
    }

    async fn update(
        &self,
        _: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        let sandbox = self.sandbox().await?;
        let resources = req
            .resources
            .as_ref()
            .ok_or_else(|| ServiceError::InvalidArgument("update without resources".into()))?;
        sandbox
            .agent
            .update_container(&req.id, resources.value.clone())
            .await
            .map_err(ServiceError::from)?;
        Ok(api::Empty::new())
    }

    async fn stats(
        &self,
        _: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let stats = self.do_stats(&req.id).await?;
        Ok(api::StatsResponse {
            stats: MessageField::some(stats),
            ..Default::default()
        })
    }

    async fn checkpoint(
        &self,
        _: &TtrpcContext,
        _: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(ServiceError::Unimplemented("checkpoint is not supported by husk".into()).into())
    }

    async fn connect(
        &self,
        _: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = match self.process(&req.id, "").await {
            Ok((p, _)) => p.pid(),
            Err(_) => 0,
        };
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _: &TtrpcContext, _: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        if !self.containers.lock().await.is_empty() {
            return Ok(api::Empty::new());
        }
        if let Some(sandbox) = self.sandbox.lock().await.take() {
            sandbox.shutdown().await;
        }
        // The process ends after this answer: publish what is queued first.
        if !self.events.flush(EVENTS_FLUSH_LIMIT).await {
            log::warn!("exiting with events not yet published to containerd");
        }
        self.exit.signal();
        Ok(api::Empty::new())
    }
}

/// Undoes what a crashed shim left for `id` (the `delete` action): the
/// container's mounts and, for the sandbox's own container, the VMM and the
/// run directory.
///
/// containerd also runs the `delete` action when it merely closes its
/// connection for a container of a live Pod (containerd 1.6 after a normal
/// task delete), so a Pod's app container never touches the VM, which
/// belongs to the sandbox container.
pub fn cleanup_after_crash(config: &Config, sandbox_id: &str, id: &str) {
    let run_dir: PathBuf = config.run_dir.join(sandbox_id);
    if sandbox_id == id {
        if let Some(pid) = vmm_of(&run_dir) {
            // SAFETY: kill(2) takes no pointers.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let dir = run_dir.join("shared").join(id);
    husk_shim::vm::unmount_under(&dir);
    if sandbox_id == id && husk_shim::vm::unmount_under(&run_dir) {
        let _ = std::fs::remove_dir_all(&run_dir);
    } else if husk_shim::vm::mounts_under(&dir).is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The pid in `<run_dir>/vmm.pid`, if that process is still the husk-vmm of
/// this run directory (never a recycled pid).
fn vmm_of(run_dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(run_dir.join("vmm.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let needle = run_dir.as_os_str().as_encoded_bytes();
    cmdline
        .windows(needle.len())
        .any(|w| w == needle)
        .then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_run_directorys_own_vmm_is_named() {
        let dir = std::env::temp_dir().join(format!("husk-vmm-of-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // This test process does not name `dir` on its command line.
        std::fs::write(dir.join("vmm.pid"), std::process::id().to_string()).unwrap();
        assert_eq!(vmm_of(&dir), None);
        std::fs::write(dir.join("vmm.pid"), "garbage").unwrap();
        assert_eq!(vmm_of(&dir), None);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(vmm_of(&dir), None);
    }

    fn options(type_url: &str, value: Vec<u8>) -> Any {
        let mut any = Any::new();
        any.type_url = type_url.into();
        any.value = value;
        any
    }

    #[test]
    fn runtime_options_give_the_config_path() {
        // type_url = "x" (field 1), config_path = "/etc/husk/a.toml" (field 2).
        let mut value = vec![0x0a, 1, b'x', 0x12, 16];
        value.extend_from_slice(b"/etc/husk/a.toml");
        let any = options("runtimeoptions.v1.Options", value);
        assert_eq!(
            runtime_options_config_path(&any).unwrap(),
            Some(PathBuf::from("/etc/husk/a.toml"))
        );
        let other = options("containerd.runc.v1.Options", vec![0x12, 1, b'y']);
        assert_eq!(runtime_options_config_path(&other).unwrap(), None);
        let broken = options("runtimeoptions.v1.Options", vec![0x12, 50, b'y']);
        assert!(runtime_options_config_path(&broken).is_err());
    }
}
