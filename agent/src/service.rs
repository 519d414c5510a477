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

use crate::logger::{self, Level};
use crate::processes::{ExitStatus, ProcessError, Processes, Spawn, Stdio3};
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

/// The agent API service.
pub struct AgentService {
    procs: Arc<Processes>,
    guest: Arc<dyn Guest>,
}

impl AgentService {
    pub fn new(procs: Arc<Processes>, guest: Arc<dyn Guest>) -> Self {
        AgentService { procs, guest }
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

/// The exec id of a guest process reference; containers are not supported yet.
fn guest_exec_id(process: Option<&pb::ProcessRef>) -> Result<String, Status> {
    let process = process.ok_or_else(|| Status::invalid_argument("no process"))?;
    if !process.container_id.is_empty() {
        return Err(Status::unimplemented("container processes"));
    }
    if process.exec_id.is_empty() || process.exec_id.len() > MAX_ID_LEN {
        return Err(Status::invalid_argument("exec_id length"));
    }
    Ok(process.exec_id.clone())
}

fn wait_response(status: ExitStatus, at: std::time::SystemTime) -> pb::WaitProcessResponse {
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
        let id = guest_exec_id(Some(request.get_ref()))?;
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
        let id = guest_exec_id(Some(request.get_ref()))?;
        let exit = self.procs.wait(&id).await.map_err(status)?;
        Ok(Response::new(wait_response(exit.status, exit.at)))
    }

    async fn signal_process(
        &self,
        request: Request<pb::SignalProcessRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        let id = guest_exec_id(r.process.as_ref())?;
        self.procs.signal(&id, r.signal).map_err(status)?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn close_stdin(
        &self,
        request: Request<pb::ProcessRef>,
    ) -> Result<Response<pb::Empty>, Status> {
        let id = guest_exec_id(Some(request.get_ref()))?;
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
        let id = guest_exec_id(first.process.as_ref())?;
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
                .is_some_and(|p| p.exec_id != id || !p.container_id.is_empty())
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
