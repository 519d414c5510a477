//! The host's client for the agent API.
//!
//! ```no_run
//! # async fn demo() -> Result<(), husk_proto::client::ClientError> {
//! use std::time::Duration;
//! use husk_proto::client::AgentClient;
//! let agent = AgentClient::connect_when_ready("/run/husk/pod1".as_ref(), Duration::from_secs(10)).await?;
//! agent.health().await?;
//! # Ok(())
//! # }
//! ```
//!
//! The client connects through the VMM's hybrid-vsock Unix socket
//! (`<run-dir>/vsock.sock`, see [`crate::handshake`]). Every unary call has a
//! deadline ([`DEFAULT_TIMEOUT`] unless changed); WaitProcess and the streams
//! have none. Every reply is treated as untrusted: messages are limited to
//! [`MAX_MESSAGE_SIZE`], and the fields used are checked.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::UnixStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Request, Response, Status, Streaming};

pub use crate::client_containers::{EventStream, LIFECYCLE_TIMEOUT};
use crate::handshake::{handshake, HandshakeError};
use crate::pb;
use crate::{AGENT_PORT, MAX_CHUNK_SIZE, MAX_ID_LEN, MAX_LOG_MESSAGE, MAX_MESSAGE_SIZE};

/// The hybrid-vsock socket's name in a sandbox's run directory.
pub const VSOCK_SOCKET: &str = "vsock.sock";

/// The deadline of a unary call unless set otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest status message kept from the agent.
const MAX_STATUS_MESSAGE: usize = 1024;

/// The longest short string (kernel release, version, log target) accepted.
const MAX_SHORT_STRING: usize = 256;

/// A call to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("vsock handshake")]
    Handshake(#[from] HandshakeError),
    #[error("setting up the gRPC channel")]
    Channel(#[source] tonic::transport::Error),
    #[error("agent not ready within {timeout:?}")]
    NotReady {
        timeout: Duration,
        #[source]
        last: Box<ClientError>,
    },
    #[error("{method}: no answer within {timeout:?}")]
    Timeout {
        method: &'static str,
        timeout: Duration,
    },
    #[error("{method}: {code:?}: {message}")]
    Status {
        method: &'static str,
        code: Code,
        message: String,
    },
    #[error("{method}: invalid reply: {reason}")]
    InvalidReply {
        method: &'static str,
        reason: String,
    },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl ClientError {
    /// The gRPC code of an error status from the agent, if this is one.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    fn is_retryable(&self) -> bool {
        match self {
            ClientError::Connect { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ),
            ClientError::Handshake(e) => e.is_retryable(),
            _ => false,
        }
    }

    pub(crate) fn status(method: &'static str, status: Status) -> Self {
        ClientError::Status {
            method,
            code: status.code(),
            message: truncate(status.message(), MAX_STATUS_MESSAGE),
        }
    }

    pub(crate) fn invalid(method: &'static str, reason: impl Into<String>) -> Self {
        ClientError::InvalidReply {
            method,
            reason: reason.into(),
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// What the guest reported about itself (checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestDetails {
    pub kernel_release: String,
    pub mem_total_kib: u64,
    pub vcpus: u32,
    pub agent_version: String,
    pub uptime: Duration,
}

/// A process the agent started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    /// How to name it in later calls.
    pub process: pb::ProcessRef,
    /// Its pid in the guest.
    pub pid: u32,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code (0-255).
    Exited(i32),
    /// This signal killed it.
    Signaled(i32),
}

/// Severity of an agent log record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

/// One log record of the agent (checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub level: LogLevel,
    pub target: String,
    pub message: String,
    /// Guest wall-clock time.
    pub time: SystemTime,
    /// Sequence number; a gap means records were dropped.
    pub seq: u64,
}

/// Connects to `socket` and does the hybrid-vsock handshake for `port`.
async fn connect_stream(socket: &Path, port: u32) -> Result<UnixStream, ClientError> {
    let mut stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket.to_path_buf(),
            source,
        })?;
    handshake(&mut stream, port, HANDSHAKE_TIMEOUT).await?;
    Ok(stream)
}

/// Builds a channel whose first connection is `first` (already through the
/// handshake) and whose reconnections do the handshake again.
async fn channel(socket: PathBuf, port: u32, first: UnixStream) -> Result<Channel, ClientError> {
    let first = Arc::new(Mutex::new(Some(first)));
    let connector = tower::service_fn(move |_: Uri| {
        let socket = socket.clone();
        let first = first.lock().ok().and_then(|mut f| f.take());
        async move {
            let stream = match first {
                Some(stream) => stream,
                None => connect_stream(&socket, port).await?,
            };
            Ok::<_, ClientError>(TokioIo::new(stream))
        }
    });
    // The URI only names the authority in the HTTP/2 requests.
    Endpoint::from_static("http://husk-agent")
        .connect_with_connector(connector)
        .await
        .map_err(ClientError::Channel)
}

/// The agent API client. Cheap to clone; calls may run concurrently.
#[derive(Debug, Clone)]
pub struct AgentClient {
    pub(crate) inner: pb::agent_client::AgentClient<Channel>,
    pub(crate) timeout: Duration,
}

impl AgentClient {
    /// One attempt: connects to `<run_dir>/vsock.sock` and the agent's port.
    pub async fn connect(run_dir: &Path) -> Result<AgentClient, ClientError> {
        Self::connect_socket(&run_dir.join(VSOCK_SOCKET), AGENT_PORT).await
    }

    /// One attempt at a given hybrid-vsock socket and guest port.
    pub async fn connect_socket(socket: &Path, port: u32) -> Result<AgentClient, ClientError> {
        let stream = connect_stream(socket, port).await?;
        Ok(Self::from_channel(
            channel(socket.to_path_buf(), port, stream).await?,
        ))
    }

    /// Connects to `<run_dir>/vsock.sock`, retrying while the VMM or the agent
    /// is not up yet (no socket, connection refused or closed during the
    /// handshake), for at most `timeout`.
    pub async fn connect_when_ready(
        run_dir: &Path,
        timeout: Duration,
    ) -> Result<AgentClient, ClientError> {
        Self::connect_socket_when_ready(&run_dir.join(VSOCK_SOCKET), AGENT_PORT, timeout).await
    }

    /// [`connect_when_ready`](Self::connect_when_ready) at a given socket and
    /// port.
    pub async fn connect_socket_when_ready(
        socket: &Path,
        port: u32,
        timeout: Duration,
    ) -> Result<AgentClient, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut delay = Duration::from_millis(20);
        loop {
            let err = match connect_stream(socket, port).await {
                Ok(stream) => {
                    return Ok(Self::from_channel(
                        channel(socket.to_path_buf(), port, stream).await?,
                    ))
                }
                Err(e) => e,
            };
            let now = tokio::time::Instant::now();
            if !err.is_retryable() {
                return Err(err);
            }
            if now >= deadline {
                return Err(ClientError::NotReady {
                    timeout,
                    last: Box::new(err),
                });
            }
            tokio::time::sleep(delay.min(deadline - now)).await;
            delay = (delay * 2).min(Duration::from_millis(250));
        }
    }

    /// Wraps an existing channel (any transport).
    pub fn from_channel(channel: Channel) -> AgentClient {
        AgentClient {
            inner: pb::agent_client::AgentClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same client with another deadline for unary calls.
    pub fn with_timeout(mut self, timeout: Duration) -> AgentClient {
        self.timeout = timeout;
        self
    }

    /// The generated client, for the RPCs this wrapper does not cover. Its
    /// replies are unchecked.
    pub fn raw(&self) -> pb::agent_client::AgentClient<Channel> {
        self.inner.clone()
    }

    pub(crate) fn request<T>(&self, message: T, timeout: Option<Duration>) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(t) = timeout {
            request.set_timeout(t);
        }
        request
    }

    pub(crate) async fn call<T, F>(
        method: &'static str,
        timeout: Option<Duration>,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: Future<Output = Result<Response<T>, Status>>,
    {
        let result = match timeout {
            Some(timeout) => tokio::time::timeout(timeout, call)
                .await
                .map_err(|_| ClientError::Timeout { method, timeout })?,
            None => call.await,
        };
        result.map(Response::into_inner).map_err(|s| match timeout {
            // The agent enforces the grpc-timeout header too (tonic's server
            // answers CANCELLED when it expires first).
            Some(timeout) if matches!(s.code(), Code::DeadlineExceeded | Code::Cancelled) => {
                ClientError::Timeout { method, timeout }
            }
            _ => ClientError::status(method, s),
        })
    }

    /// Health: Ok when the agent answers SERVING.
    pub async fn health(&self) -> Result<(), ClientError> {
        let mut c = self.inner.clone();
        let t = Some(self.timeout);
        let reply = Self::call("Health", t, c.health(self.request(pb::Empty {}, t))).await?;
        if reply.status() != pb::health_response::Status::Serving {
            return Err(ClientError::invalid(
                "Health",
                format!("status {}", reply.status),
            ));
        }
        Ok(())
    }

    /// GetGuestDetails.
    pub async fn guest_details(&self) -> Result<GuestDetails, ClientError> {
        const M: &str = "GetGuestDetails";
        let mut c = self.inner.clone();
        let t = Some(self.timeout);
        let r = Self::call(M, t, c.get_guest_details(self.request(pb::Empty {}, t))).await?;
        if r.kernel_release.is_empty() || r.kernel_release.len() > MAX_SHORT_STRING {
            return Err(ClientError::invalid(M, "kernel_release length"));
        }
        if r.agent_version.is_empty() || r.agent_version.len() > MAX_SHORT_STRING {
            return Err(ClientError::invalid(M, "agent_version length"));
        }
        if r.vcpus == 0 {
            return Err(ClientError::invalid(M, "0 vCPUs"));
        }
        Ok(GuestDetails {
            kernel_release: r.kernel_release,
            mem_total_kib: r.mem_total_kib,
            vcpus: r.vcpus,
            agent_version: r.agent_version,
            uptime: Duration::from_millis(r.uptime_ms),
        })
    }

    /// SetTime: sets the guest's wall clock to `time`.
    pub async fn set_time(&self, time: SystemTime) -> Result<(), ClientError> {
        let since = time
            .duration_since(UNIX_EPOCH)
            .map_err(|_| ClientError::InvalidRequest("time before 1970".into()))?;
        let seconds = i64::try_from(since.as_secs())
            .map_err(|_| ClientError::InvalidRequest("time too far away".into()))?;
        let request = pb::SetTimeRequest {
            seconds,
            nanos: since.subsec_nanos(),
        };
        let mut c = self.inner.clone();
        let t = Some(self.timeout);
        Self::call("SetTime", t, c.set_time(self.request(request, t))).await?;
        Ok(())
    }

    /// PowerOff: the agent acknowledges, then powers the VM off.
    pub async fn power_off(&self) -> Result<(), ClientError> {
        let mut c = self.inner.clone();
        let t = Some(self.timeout);
        Self::call("PowerOff", t, c.power_off(self.request(pb::Empty {}, t))).await?;
        Ok(())
    }

    /// ExecInGuest: starts a process in the guest's root. `tty` must be false.
    pub async fn exec_in_guest(
        &self,
        request: pb::ExecInGuestRequest,
    ) -> Result<Exec, ClientError> {
        const M: &str = "ExecInGuest";
        if request.argv.is_empty() {
            return Err(ClientError::InvalidRequest("empty argv".into()));
        }
        let strings = request.argv.len() + request.env.len();
        let bytes: usize = request
            .argv
            .iter()
            .chain(&request.env)
            .map(String::len)
            .sum();
        if strings > crate::MAX_EXEC_STRINGS || bytes > crate::MAX_EXEC_BYTES {
            return Err(ClientError::InvalidRequest("argv and env too large".into()));
        }
        let mut c = self.inner.clone();
        let t = Some(self.timeout);
        let r = Self::call(M, t, c.exec_in_guest(self.request(request, t))).await?;
        check_id(M, &r.exec_id)?;
        if r.pid == 0 {
            return Err(ClientError::invalid(M, "pid 0"));
        }
        Ok(Exec {
            process: pb::ProcessRef::guest(r.exec_id),
            pid: r.pid,
        })
    }

    /// WaitProcess: blocks until the process has exited. No deadline.
    pub async fn wait_process(&self, process: &pb::ProcessRef) -> Result<ExitStatus, ClientError> {
        const M: &str = "WaitProcess";
        let mut c = self.inner.clone();
        let r = Self::call(M, None, c.wait_process(self.request(process.clone(), None))).await?;
        match r.status {
            Some(pb::wait_process_response::Status::ExitCode(code))
                if (0..=255).contains(&code) =>
            {
                Ok(ExitStatus::Exited(code))
            }
            Some(pb::wait_process_response::Status::Signal(sig)) if (1..=64).contains(&sig) => {
                Ok(ExitStatus::Signaled(sig))
            }
            other => Err(ClientError::invalid(M, format!("status {other:?}"))),
        }
    }

    /// SignalProcess: sends `signal` to the process.
    pub async fn signal_process(
        &self,
        process: &pb::ProcessRef,
        signal: i32,
    ) -> Result<(), ClientError> {
        let request = pb::SignalProcessRequest {
            process: Some(process.clone()),
            signal,
            all: false,
        };
        let mut c = self.inner.clone();
        let t = Some(self.timeout);
        Self::call(
            "SignalProcess",
            t,
            c.signal_process(self.request(request, t)),
        )
        .await?;
        Ok(())
    }

    /// WriteStdin: copies `reader` to the process's stdin in chunks of at most
    /// 64 KiB, then closes stdin. Returns the bytes the agent wrote. No
    /// deadline. The stream ends cleanly, and so stdin closes, also when
    /// `reader` fails or this future is dropped; only a broken connection
    /// leaves stdin open for a later WriteStdin.
    pub async fn write_stdin<R>(
        &self,
        process: &pb::ProcessRef,
        reader: R,
    ) -> Result<u64, ClientError>
    where
        R: AsyncRead + Send + Unpin + 'static,
    {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let first = pb::StdinChunk {
            process: Some(process.clone()),
            data: Vec::new(),
        };
        // Dropped with this call's future: the copy stops then too.
        let (_call_alive, mut call_dropped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut reader = reader;
            if tx.send(first).await.is_err() {
                return;
            }
            loop {
                // Wait for room before reading: back-pressure reaches `reader`.
                let Ok(permit) = tx.reserve().await else {
                    return;
                };
                let mut data = vec![0u8; MAX_CHUNK_SIZE];
                let read = tokio::select! {
                    _ = &mut call_dropped => return,
                    read = reader.read(&mut data) => read,
                };
                match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        data.truncate(n);
                        permit.send(pb::StdinChunk {
                            process: None,
                            data,
                        });
                    }
                }
            }
        });
        let mut c = self.inner.clone();
        let r = Self::call("WriteStdin", None, c.write_stdin(ReceiverStream::new(rx))).await?;
        Ok(r.bytes_written)
    }

    /// ReadStdout: the process's stdout until EOF.
    pub async fn read_stdout(&self, process: &pb::ProcessRef) -> Result<OutputStream, ClientError> {
        let mut c = self.inner.clone();
        let t = Some(self.timeout);
        let inner = Self::call(
            "ReadStdout",
            t,
            c.read_stdout(self.request(process.clone(), None)),
        )
        .await?;
        Ok(OutputStream {
            method: "ReadStdout",
            inner,
        })
    }

    /// ReadStderr: the process's stderr until EOF.
    pub async fn read_stderr(&self, process: &pb::ProcessRef) -> Result<OutputStream, ClientError> {
        let mut c = self.inner.clone();
        let t = Some(self.timeout);
        let inner = Self::call(
            "ReadStderr",
            t,
            c.read_stderr(self.request(process.clone(), None)),
        )
        .await?;
        Ok(OutputStream {
            method: "ReadStderr",
            inner,
        })
    }

    /// StreamLogs: the agent's log records, the backlog first if asked.
    pub async fn stream_logs(&self, backlog: bool) -> Result<LogStream, ClientError> {
        let mut c = self.inner.clone();
        let t = Some(self.timeout);
        let request = self.request(pb::StreamLogsRequest { backlog }, None);
        let inner = Self::call("StreamLogs", t, c.stream_logs(request)).await?;
        Ok(LogStream { inner })
    }
}

pub(crate) fn check_id(method: &'static str, id: &str) -> Result<(), ClientError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(ClientError::invalid(method, "id length"));
    }
    Ok(())
}

/// A process's stdout or stderr, as the agent streams it.
#[derive(Debug)]
pub struct OutputStream {
    method: &'static str,
    inner: Streaming<pb::OutputChunk>,
}

impl OutputStream {
    /// The next chunk (1 to 64 KiB), or `None` at EOF.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        match self.inner.message().await {
            Ok(Some(chunk)) => {
                if chunk.data.is_empty() || chunk.data.len() > MAX_CHUNK_SIZE {
                    return Err(ClientError::invalid(
                        self.method,
                        format!("chunk of {} bytes", chunk.data.len()),
                    ));
                }
                Ok(Some(chunk.data))
            }
            Ok(None) => Ok(None),
            Err(status) => Err(ClientError::status(self.method, status)),
        }
    }

    /// Everything until EOF, at most `limit` bytes (more is an error).
    pub async fn read_to_end(mut self, limit: usize) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        while let Some(chunk) = self.next_chunk().await? {
            if out.len() + chunk.len() > limit {
                return Err(ClientError::invalid(
                    self.method,
                    format!("more than {limit} bytes"),
                ));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}

/// The agent's log records.
#[derive(Debug)]
pub struct LogStream {
    inner: Streaming<pb::LogRecord>,
}

impl LogStream {
    /// The next record, or `None` when the agent ended the stream.
    pub async fn next_record(&mut self) -> Result<Option<LogRecord>, ClientError> {
        const M: &str = "StreamLogs";
        let r = match self.inner.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(None),
            Err(status) => return Err(ClientError::status(M, status)),
        };
        let level = match r.level() {
            pb::log_record::Level::Error => LogLevel::Error,
            pb::log_record::Level::Warn => LogLevel::Warn,
            pb::log_record::Level::Info => LogLevel::Info,
            pb::log_record::Level::Debug => LogLevel::Debug,
            pb::log_record::Level::Unspecified => {
                return Err(ClientError::invalid(M, format!("level {}", r.level)))
            }
        };
        // Oversized text is cut, not refused: a log line is informational.
        let time = u64::try_from(r.unix_nanos)
            .ok()
            .map(Duration::from_nanos)
            .and_then(|d| UNIX_EPOCH.checked_add(d))
            .unwrap_or(UNIX_EPOCH);
        Ok(Some(LogRecord {
            level,
            target: truncate(&r.target, MAX_SHORT_STRING),
            message: truncate(&r.message, MAX_LOG_MESSAGE),
            time,
            seq: r.seq,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcd", 3), "abc…");
        assert_eq!(truncate("aéb", 2), "a…");
    }

    #[test]
    fn retryable_errors() {
        let connect = |kind| ClientError::Connect {
            path: "x".into(),
            source: io::Error::from(kind),
        };
        assert!(connect(io::ErrorKind::NotFound).is_retryable());
        assert!(connect(io::ErrorKind::ConnectionRefused).is_retryable());
        assert!(!connect(io::ErrorKind::PermissionDenied).is_retryable());
        assert!(ClientError::Handshake(HandshakeError::Closed).is_retryable());
        assert!(!ClientError::Handshake(HandshakeError::TooLong).is_retryable());
    }

    #[tokio::test(start_paused = true)]
    async fn connect_when_ready_gives_up_after_the_timeout() {
        let dir = std::env::temp_dir().join(format!("husk-proto-nosock-{}", std::process::id()));
        let err = AgentClient::connect_when_ready(&dir, Duration::from_millis(300))
            .await
            .expect_err("no socket");
        assert!(matches!(err, ClientError::NotReady { .. }), "{err:?}");
    }
}
