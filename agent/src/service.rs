//! The agent API's server side: the tonic service over [`Processes`], the
//! guest's facts and the log ring.
//!
//! The service is transport-agnostic: [`crate::server`] serves it on vsock in
//! the guest, the unit tests on a Unix socket.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use husk_proto::pb::{self, agent_server::Agent};
use husk_proto::{MAX_CHUNK_SIZE, MAX_ID_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use crate::container::{self, ContainerError, Containers};
use crate::logger::{self, Level};
use crate::mounts::Syscalls;
use crate::network;
use crate::processes::{ExitStatus, ProcessError, Processes, Spawn, Stdio3};
use crate::storage::{StorageError, Storages};
use crate::{debug, info, warn};

/// Chunks buffered between a pipe and its gRPC stream: the pipe is read only
/// when there is room, so a slow reader slows the process, not the agent.
const OUTPUT_QUEUE: usize = 8;

/// Log records buffered per StreamLogs reader before it lags.
const LOG_QUEUE: usize = 16;

/// What the service needs from the machine it runs on: the seam between the
/// API and the guest's system calls.
pub trait Guest: Send + Sync + 'static {
    /// GetGuestDetails.
    fn details(&self) -> Result<pb::GuestDetails, String>;
    /// Sets CLOCK_REALTIME.
    fn set_time(&self, seconds: i64, nanos: u32) -> std::io::Result<()>;
    /// Asks for a clean power-off soon; returns at once.
    fn request_power_off(&self);
}

/// Events buffered per GetEvents reader.
const EVENT_STREAM_QUEUE: usize = 64;

/// The agent API service.
pub struct AgentService {
    procs: Arc<Processes>,
    guest: Arc<dyn Guest>,
    containers: Arc<Containers>,
    storages: Arc<Storages>,
    sys: Arc<dyn Syscalls + Send + Sync>,
}

impl AgentService {
    pub fn new(
        procs: Arc<Processes>,
        guest: Arc<dyn Guest>,
        containers: Arc<Containers>,
        sys: Arc<dyn Syscalls + Send + Sync>,
    ) -> Self {
        AgentService {
            procs,
            guest,
            containers,
            storages: Arc::new(Storages::default()),
            sys,
        }
    }
}

fn network_status(e: network::NetError) -> Status {
    let message = crate::chain(&e);
    match e {
        network::NetError::Invalid(_) => Status::invalid_argument(message),
        network::NetError::NoSuchNic(_) => Status::not_found(message),
        _ => Status::internal(message),
    }
}

fn container_status(e: ContainerError) -> Status {
    let message = crate::chain(&e);
    match e {
        ContainerError::Spec(_) => Status::invalid_argument(message),
        ContainerError::NotFound(_) => Status::not_found(message),
        ContainerError::Exists(_) | ContainerError::ExecExists(_) => {
            Status::already_exists(message)
        }
        ContainerError::TooMany => Status::resource_exhausted(message),
        ContainerError::State { .. } => Status::failed_precondition(message),
        ContainerError::Process(p) => status(p),
        ContainerError::Io { .. } | ContainerError::Helper(_) | ContainerError::Cgroup(_) => {
            Status::internal(message)
        }
    }
}

fn storage_status(e: StorageError) -> Status {
    let message = crate::chain(&e);
    match e {
        StorageError::Invalid(_) => Status::invalid_argument(message),
        StorageError::Exists(_) => Status::already_exists(message),
        StorageError::NotFound(_) => Status::not_found(message),
        StorageError::TooMany => Status::resource_exhausted(message),
        StorageError::Mount { .. } | StorageError::Unmount { .. } => Status::internal(message),
    }
}

fn status(e: ProcessError) -> Status {
    let message = crate::chain(&e);
    match e {
        ProcessError::NotFound(_) => Status::not_found(message),
        ProcessError::TooMany => Status::resource_exhausted(message),
        ProcessError::Invalid(_) => Status::invalid_argument(message),
        ProcessError::Exited(_) | ProcessError::Unavailable { .. } => {
            Status::failed_precondition(message)
        }
        ProcessError::Spawn { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            Status::not_found(message)
        }
        ProcessError::Spawn { .. } | ProcessError::Kill { .. } => Status::internal(message),
    }
}

/// The process table's key for a process reference: the exec id of a guest
/// process, or the container's init or exec key.
fn process_key(process: Option<&pb::ProcessRef>) -> Result<String, Status> {
    let process = process.ok_or_else(|| Status::invalid_argument("no process"))?;
    if process.container_id.is_empty() {
        if process.exec_id.is_empty() || process.exec_id.len() > MAX_ID_LEN {
            return Err(Status::invalid_argument("exec_id length"));
        }
        if process.exec_id.contains('/') {
            return Err(Status::invalid_argument("exec_id has a '/'"));
        }
        return Ok(process.exec_id.clone());
    }
    let invalid = |e: container::spec::SpecError| Status::invalid_argument(e.to_string());
    container::spec::check_id(&process.container_id).map_err(invalid)?;
    if process.exec_id.is_empty() {
        return Ok(container::init_key(&process.container_id));
    }
    container::spec::check_id(&process.exec_id).map_err(invalid)?;
    Ok(container::exec_key(&process.container_id, &process.exec_id))
}

/// A container id from a request.
fn container_id(id: &str) -> Result<&str, Status> {
    container::spec::check_id(id).map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(id)
}

pub(crate) fn wait_response(
    status: ExitStatus,
    at: std::time::SystemTime,
) -> pb::WaitProcessResponse {
    use pb::wait_process_response::Status as S;
    pb::WaitProcessResponse {
        status: Some(match status {
            ExitStatus::Exited(code) => S::ExitCode(code),
            ExitStatus::Signaled(sig) => S::Signal(sig),
        }),
        exited_at_unix_nanos: at
            .duration_since(UNIX_EPOCH)
            .ok()
            .and_then(|d| i64::try_from(d.as_nanos()).ok())
            .unwrap_or(0),
    }
}

/// Copies one output pipe into a bounded channel until EOF, the reader's
/// departure (the pipe goes back to the table) or a read error.
async fn pump_output(
    procs: Arc<Processes>,
    id: String,
    which: Stdio3,
    mut pipe: pipe::Receiver,
    tx: mpsc::Sender<Result<pb::OutputChunk, Status>>,
) {
    loop {
        // Room in the channel first: only then is the pipe read.
        let permit = match tx.reserve().await {
            Ok(p) => p,
            Err(_) => return procs.return_output(&id, which, pipe),
        };
        let mut data = Vec::with_capacity(MAX_CHUNK_SIZE);
        let read = tokio::select! {
            _ = tx.closed() => {
                drop(permit);
                return procs.return_output(&id, which, pipe);
            }
            read = pipe.read_buf(&mut data) => read,
        };
        match read {
            Ok(0) => {
                // Marked before the stream ends, so that a client seeing the
                // end sees the entry gone too.
                procs.finish(&id, which);
                return;
            }
            Ok(_) => permit.send(Ok(pb::OutputChunk { data })),
            // A terminal's master reads EIO once the last slave is closed:
            // that is its end of file.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                drop(permit);
                procs.finish(&id, which);
                return;
            }
            Err(e) => {
                warn!("reading {which:?} of {id}: {e}");
                procs.finish(&id, which);
                permit.send(Err(Status::internal(format!("reading {which:?}: {e}"))));
                return;
            }
        }
    }
}

/// Gives stdin back to the table if a WriteStdin ends without a clean end of
/// stream (the client went away, or its future was dropped).
struct StdinLease {
    procs: Arc<Processes>,
    id: String,
    pipe: Option<pipe::Sender>,
}

impl Drop for StdinLease {
    fn drop(&mut self) {
        if let Some(pipe) = self.pipe.take() {
            self.procs.return_stdin(&self.id, pipe);
        }
    }
}

impl AgentService {
    fn read_output(
        &self,
        request: Request<pb::ProcessRef>,
        which: Stdio3,
    ) -> Result<Response<BoxStream<pb::OutputChunk>>, Status> {
        let id = process_key(Some(request.get_ref()))?;
        let pipe = self.procs.take_output(&id, which).map_err(status)?;
        let (tx, rx) = mpsc::channel(OUTPUT_QUEUE);
        tokio::spawn(pump_output(self.procs.clone(), id, which, pipe, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn level(level: Level) -> pb::log_record::Level {
    match level {
        Level::Error => pb::log_record::Level::Error,
        Level::Warn => pb::log_record::Level::Warn,
        Level::Info => pb::log_record::Level::Info,
        Level::Debug => pb::log_record::Level::Debug,
    }
}

fn log_record(r: logger::Record) -> pb::LogRecord {
    pb::LogRecord {
        level: level(r.level) as i32,
        target: r.target.to_owned(),
        message: r.message,
        unix_nanos: r.unix_nanos,
        seq: r.seq,
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn health(&self, _: Request<pb::Empty>) -> Result<Response<pb::HealthResponse>, Status> {
        Ok(Response::new(pb::HealthResponse {
            status: pb::health_response::Status::Serving as i32,
        }))
    }

    async fn get_guest_details(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::GuestDetails>, Status> {
        self.guest
            .details()
            .map(Response::new)
            .map_err(Status::internal)
    }

    async fn set_time(
        &self,
        request: Request<pb::SetTimeRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        if r.seconds < 0 || r.nanos >= 1_000_000_000 {
            return Err(Status::invalid_argument("time out of range"));
        }
        self.guest
            .set_time(r.seconds, r.nanos)
            .map_err(|e| Status::internal(format!("clock_settime: {e}")))?;
        info!("clock set to {}.{:09}", r.seconds, r.nanos);
        Ok(Response::new(pb::Empty {}))
    }

    async fn power_off(&self, _: Request<pb::Empty>) -> Result<Response<pb::Empty>, Status> {
        info!("power-off requested");
        self.guest.request_power_off();
        Ok(Response::new(pb::Empty {}))
    }

    async fn exec_in_guest(
        &self,
        request: Request<pb::ExecInGuestRequest>,
    ) -> Result<Response<pb::ExecResponse>, Status> {
        let r = request.into_inner();
        if r.tty {
            return Err(Status::unimplemented("tty"));
        }
        let spawn = Spawn {
            argv: r.argv,
            env: r.env,
            cwd: r.cwd,
            stdin: r.stdin,
        };
        let (exec_id, pid) = self.procs.spawn(&spawn).map_err(status)?;
        Ok(Response::new(pb::ExecResponse { exec_id, pid }))
    }

    async fn wait_process(
        &self,
        request: Request<pb::ProcessRef>,
    ) -> Result<Response<pb::WaitProcessResponse>, Status> {
        let process = request.into_inner();
        let id = process_key(Some(&process))?;
        let exit = match self.procs.wait(&id).await {
            Ok(exit) => exit,
            // A container's init is remembered by its container until removal.
            Err(ProcessError::NotFound(_))
                if !process.container_id.is_empty() && process.exec_id.is_empty() =>
            {
                self.containers
                    .init_exit(&process.container_id)
                    .await
                    .ok_or_else(|| status(ProcessError::NotFound(id.clone())))?
            }
            Err(e) => return Err(status(e)),
        };
        Ok(Response::new(wait_response(exit.status, exit.at)))
    }

    async fn resize_tty(
        &self,
        request: Request<pb::ResizeTtyRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        let id = process_key(r.process.as_ref())?;
        let size =
            |v: u32| u16::try_from(v).map_err(|_| Status::invalid_argument("size over 65535"));
        self.procs
            .resize_tty(&id, size(r.width)?, size(r.height)?)
            .map_err(status)?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn create_container(
        &self,
        request: Request<pb::CreateContainerRequest>,
    ) -> Result<Response<pb::CreateContainerResponse>, Status> {
        let r = request.into_inner();
        container_id(&r.container_id)?;
        if !r.storages.is_empty() {
            return Err(Status::unimplemented(
                "per-container storages: use AddStorage before CreateContainer",
            ));
        }
        let pid = self.containers.create(&r).await.map_err(container_status)?;
        Ok(Response::new(pb::CreateContainerResponse { pid }))
    }

    async fn start_container(
        &self,
        request: Request<pb::ContainerRef>,
    ) -> Result<Response<pb::StartContainerResponse>, Status> {
        let id = container_id(&request.get_ref().container_id)?;
        let pid = self.containers.start(id).await.map_err(container_status)?;
        Ok(Response::new(pb::StartContainerResponse { pid }))
    }

    async fn exec_process(
        &self,
        request: Request<pb::ExecProcessRequest>,
    ) -> Result<Response<pb::ExecResponse>, Status> {
        let r = request.into_inner();
        container_id(&r.container_id)?;
        let pid = self.containers.exec(&r).await.map_err(container_status)?;
        Ok(Response::new(pb::ExecResponse {
            exec_id: r.exec_id,
            pid,
        }))
    }

    async fn remove_container(
        &self,
        request: Request<pb::RemoveContainerRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        let id = container_id(&r.container_id)?;
        self.containers
            .remove(id, r.force)
            .await
            .map_err(container_status)?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn stats_container(
        &self,
        request: Request<pb::ContainerRef>,
    ) -> Result<Response<pb::ContainerStats>, Status> {
        let id = container_id(&request.get_ref().container_id)?;
        let stats = self.containers.stats(id).await.map_err(container_status)?;
        Ok(Response::new(stats))
    }

    async fn update_container(
        &self,
        request: Request<pb::UpdateContainerRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        let id = container_id(&r.container_id)?;
        self.containers
            .update(id, &r.resources)
            .await
            .map_err(container_status)?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn pause_container(
        &self,
        request: Request<pb::ContainerRef>,
    ) -> Result<Response<pb::Empty>, Status> {
        let id = container_id(&request.get_ref().container_id)?;
        self.containers
            .set_paused(id, true)
            .await
            .map_err(container_status)?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn resume_container(
        &self,
        request: Request<pb::ContainerRef>,
    ) -> Result<Response<pb::Empty>, Status> {
        let id = container_id(&request.get_ref().container_id)?;
        self.containers
            .set_paused(id, false)
            .await
            .map_err(container_status)?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn list_processes(
        &self,
        request: Request<pb::ContainerRef>,
    ) -> Result<Response<pb::ListProcessesResponse>, Status> {
        let id = container_id(&request.get_ref().container_id)?;
        let pids = self.containers.pids(id).await.map_err(container_status)?;
        Ok(Response::new(pb::ListProcessesResponse { pids }))
    }

    async fn add_storage(
        &self,
        request: Request<pb::AddStorageRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let storage = request
            .into_inner()
            .storage
            .ok_or_else(|| Status::invalid_argument("no storage"))?;
        self.storages
            .add(self.sys.as_ref(), &storage)
            .map_err(storage_status)?;
        info!(
            "mounted {} {:?} on {}",
            storage.fstype, storage.source, storage.mount_point
        );
        Ok(Response::new(pb::Empty {}))
    }

    async fn update_interface(
        &self,
        request: Request<pb::UpdateInterfaceRequest>,
    ) -> Result<Response<pb::Interface>, Status> {
        let wanted = request
            .into_inner()
            .interface
            .ok_or_else(|| Status::invalid_argument("no interface"))?;
        let done = network::update_interface(&wanted)
            .await
            .map_err(network_status)?;
        info!(
            "network: {} {} {:?} mtu {}",
            done.name, done.mac, done.addresses, done.mtu
        );
        Ok(Response::new(done))
    }

    async fn update_routes(
        &self,
        request: Request<pb::UpdateRoutesRequest>,
    ) -> Result<Response<pb::UpdateRoutesResponse>, Status> {
        let routes = network::update_routes(&request.get_ref().routes)
            .await
            .map_err(network_status)?;
        info!("network: {} routes", routes.len());
        Ok(Response::new(pb::UpdateRoutesResponse { routes }))
    }

    async fn remove_storage(
        &self,
        request: Request<pb::RemoveStorageRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        self.storages
            .remove(self.sys.as_ref(), &request.get_ref().id)
            .map_err(storage_status)?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn get_events(
        &self,
        _: Request<pb::GetEventsRequest>,
    ) -> Result<Response<BoxStream<pb::Event>>, Status> {
        let mut events = self.containers.subscribe();
        let (tx, rx) = mpsc::channel(EVENT_STREAM_QUEUE);
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = tx.closed() => return,
                    e = events.recv() => e,
                };
                match event {
                    Ok(e) => {
                        if tx.send(Ok(e)).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        // A reader that cannot keep up is told, not silently served gaps.
                        let _ = tx
                            .send(Err(Status::data_loss(format!("{n} events lost"))))
                            .await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn signal_process(
        &self,
        request: Request<pb::SignalProcessRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        let id = process_key(r.process.as_ref())?;
        match r.process.as_ref() {
            Some(p) if r.all && !p.container_id.is_empty() && p.exec_id.is_empty() => self
                .containers
                .signal_all(&p.container_id, r.signal)
                .await
                .map_err(container_status)?,
            _ => self.procs.signal(&id, r.signal).map_err(status)?,
        }
        Ok(Response::new(pb::Empty {}))
    }

    async fn close_stdin(
        &self,
        request: Request<pb::ProcessRef>,
    ) -> Result<Response<pb::Empty>, Status> {
        let id = process_key(Some(request.get_ref()))?;
        self.procs.close_stdin(&id).map_err(status)?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn write_stdin(
        &self,
        request: Request<Streaming<pb::StdinChunk>>,
    ) -> Result<Response<pb::WriteStdinResponse>, Status> {
        let mut stream = request.into_inner();
        let Some(first) = stream.message().await? else {
            return Err(Status::invalid_argument("empty stream"));
        };
        let id = process_key(first.process.as_ref())?;
        let pipe = self.procs.take_stdin(&id).map_err(status)?;
        let mut lease = StdinLease {
            procs: self.procs.clone(),
            id: id.clone(),
            pipe: Some(pipe),
        };
        let mut written: u64 = 0;
        let mut chunk = first;
        loop {
            if chunk.data.len() > MAX_CHUNK_SIZE {
                return Err(Status::invalid_argument("stdin chunk over 64 KiB"));
            }
            if chunk
                .process
                .as_ref()
                .is_some_and(|p| process_key(Some(p)).ok().as_deref() != Some(id.as_str()))
            {
                return Err(Status::invalid_argument("chunk names another process"));
            }
            if !chunk.data.is_empty() {
                let Some(pipe) = lease.pipe.as_mut() else {
                    return Err(Status::internal("stdin lost"));
                };
                if let Err(e) = pipe.write_all(&chunk.data).await {
                    // EPIPE: the process closed stdin or exited; stdin is over.
                    lease.pipe = None;
                    self.procs.finish(&id, Stdio3::Stdin);
                    return Err(Status::failed_precondition(format!("writing stdin: {e}")));
                }
                written += chunk.data.len() as u64;
            }
            // An error here (the client went away) keeps stdin open: the
            // lease gives the pipe back.
            match stream.message().await? {
                Some(next) => chunk = next,
                None => break,
            }
        }
        // Clean end of stream: close stdin.
        lease.pipe = None;
        self.procs.finish(&id, Stdio3::Stdin);
        debug!("stdin of {id} closed after {written} bytes");
        Ok(Response::new(pb::WriteStdinResponse {
            bytes_written: written,
        }))
    }

    async fn read_stdout(
        &self,
        request: Request<pb::ProcessRef>,
    ) -> Result<Response<BoxStream<pb::OutputChunk>>, Status> {
        self.read_output(request, Stdio3::Stdout)
    }

    async fn read_stderr(
        &self,
        request: Request<pb::ProcessRef>,
    ) -> Result<Response<BoxStream<pb::OutputChunk>>, Status> {
        self.read_output(request, Stdio3::Stderr)
    }

    async fn stream_logs(
        &self,
        request: Request<pb::StreamLogsRequest>,
    ) -> Result<Response<BoxStream<pb::LogRecord>>, Status> {
        let (past, mut live) = logger::subscribe(request.get_ref().backlog);
        let (tx, rx) = mpsc::channel(LOG_QUEUE);
        tokio::spawn(async move {
            for r in past {
                if tx.send(Ok(log_record(r))).await.is_err() {
                    return;
                }
            }
            loop {
                let record = tokio::select! {
                    _ = tx.closed() => return,
                    r = live.recv() => r,
                };
                match record {
                    Ok(r) => {
                        if tx.send(Ok(log_record(r))).await.is_err() {
                            return;
                        }
                    }
                    // Dropped records show as a gap in seq.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The real guest: facts from the kernel, the clock, and a power-off request
/// channel that PID 1's main loop listens on.
pub struct LinuxGuest {
    pub power_off: mpsc::Sender<()>,
}

impl Guest for LinuxGuest {
    fn details(&self) -> Result<pb::GuestDetails, String> {
        let r = crate::guestinfo::collect().map_err(|e| crate::chain(&e))?;
        Ok(pb::GuestDetails {
            kernel_release: r.kernel_release,
            mem_total_kib: r.mem_total_kib,
            vcpus: r.vcpus.unwrap_or(0),
            agent_version: r.agent_version.to_owned(),
            uptime_ms: r.uptime_ms,
        })
    }

    fn set_time(&self, seconds: i64, nanos: u32) -> std::io::Result<()> {
        let ts = libc::timespec {
            tv_sec: seconds,
            tv_nsec: libc::c_long::from(nanos),
        };
        // SAFETY: ts is a valid timespec that outlives the call; the kernel
        // only reads it.
        if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn request_power_off(&self) {
        // Full means a power-off is already pending.
        let _ = self.power_off.try_send(());
    }
}

/// How long PowerOff's reply gets to reach the host before the VM stops.
pub const POWER_OFF_DELAY: Duration = Duration::from_millis(200);
