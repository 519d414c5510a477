//! One process of a container as the shim tracks it (the init or an exec):
//! its stdio, its state and its exit.
//!
//! Output is copied from the agent's streams to containerd's FIFOs (or a
//! `file://` log) by tasks that start before the process does, so nothing
//! written early is lost; the exit is published only after those copies have
//! reached end of file, so nothing written last is lost either.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use husk_proto::client::{AgentClient, ExitStatus, OutputStream};
use husk_proto::pb;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long output may stay open without data after its process exited.
const OUTPUT_IDLE_LIMIT: Duration = Duration::from_secs(5);
/// The exit status of a process whose Start failed.
pub const START_FAILED_STATUS: u32 = 255;

/// containerd's exit status for a process whose end the shim could not learn
/// (the VM died).
pub const UNKNOWN_EXIT: u32 = 255;

/// How a process ended, in containerd's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exited {
    /// The exit code, or 128+N for signal N (as runc reports it).
    pub status: u32,
    pub at: SystemTime,
}

impl Exited {
    pub fn from_agent(status: ExitStatus) -> Exited {
        let status = match status {
            ExitStatus::Exited(c) => c.unsigned_abs(),
            ExitStatus::Signaled(s) => 128 + s.unsigned_abs(),
        };
        Exited {
            status,
            at: SystemTime::now(),
        }
    }
}

/// A process's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Created,
    Running,
    Paused,
    Stopped,
}

/// Where containerd wants a process's stdio.
#[derive(Debug, Clone, Default)]
pub struct Stdio {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// Errors opening containerd's side of the stdio.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error(
        "unsupported log URI {0:?} (FIFOs, file:// and binary:///absolute/path are supported)"
    )]
    Unsupported(String),
    #[error("opening {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// One tracked process.
pub struct Process {
    /// The agent's name for it.
    pub agent_ref: pb::ProcessRef,
    pub stdio: Stdio,
    pid: Mutex<u32>,
    state: Mutex<State>,
    exit: watch::Sender<Option<Exited>>,
    /// The exec's OCI process (JSON), until it starts.
    pub exec_spec: Option<Vec<u8>>,
    copies: Mutex<Vec<JoinHandle<()>>>,
    /// Bytes copied to containerd's side so far (progress while finishing).
    copied: Arc<AtomicU64>,
    stdin_copy: Mutex<Option<JoinHandle<()>>>,
    /// A terminal size asked for before the process existed in the guest.
    pub pending_resize: Mutex<Option<(u32, u32)>>,
}

impl Process {
    pub fn new(agent_ref: pb::ProcessRef, stdio: Stdio, exec_spec: Option<Vec<u8>>) -> Process {
        Process {
            agent_ref,
            stdio,
            pid: Mutex::new(0),
            state: Mutex::new(State::Created),
            exit: watch::channel(None).0,
            exec_spec,
            copies: Mutex::new(Vec::new()),
            copied: Arc::new(AtomicU64::new(0)),
            stdin_copy: Mutex::new(None),
            pending_resize: Mutex::new(None),
        }
    }

    pub fn pid(&self) -> u32 {
        *self.pid.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_pid(&self, pid: u32) {
        *self.pid.lock().unwrap_or_else(|e| e.into_inner()) = pid;
    }

    pub fn state(&self) -> State {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_state(&self, state: State) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }

    pub fn exited(&self) -> Option<Exited> {
        *self.exit.borrow()
    }

    /// Records that Start failed: the process never ran, so it counts as
    /// exited with 255 (as runc's shim reports it). Waiters are released and
    /// Delete needs no Kill; copies already started are stopped.
    pub fn start_failed(&self) -> Exited {
        let handles: Vec<_> =
            std::mem::take(&mut *self.copies.lock().unwrap_or_else(|e| e.into_inner()));
        let stdin = self
            .stdin_copy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        for h in handles.into_iter().chain(stdin) {
            h.abort();
        }
        let exited = Exited {
            status: START_FAILED_STATUS,
            at: SystemTime::now(),
        };
        self.set_state(State::Stopped);
        self.exit.send_replace(Some(exited));
        exited
    }

    /// Waits for the exit.
    pub async fn wait(&self) -> Exited {
        let mut rx = self.exit.subscribe();
        loop {
            if let Some(e) = *rx.borrow_and_update() {
                return e;
            }
            if rx.changed().await.is_err() {
                // The sender lives in self: unreachable while we are borrowed.
                return Exited {
                    status: UNKNOWN_EXIT,
                    at: SystemTime::now(),
                };
            }
        }
    }

    /// Starts copying the agent's stdout and stderr to containerd's side,
    /// and containerd's stdin to the agent. Call before the process starts.
    /// `namespace` is containerd's, for a `binary://` logger.
    pub async fn start_copies(
        &self,
        agent: &AgentClient,
        namespace: &str,
    ) -> Result<(), super::ServiceError> {
        let outputs: Vec<(Output, bool)> = if self.stdio.stdout.starts_with("binary://") {
            let (out, err) =
                spawn_log_binary(&self.stdio.stdout, &self.agent_ref.container_id, namespace)
                    .await?;
            vec![(Box::new(out) as Output, false), (Box::new(err), true)]
        } else {
            let mut v = Vec::new();
            for (path, stderr) in [(&self.stdio.stdout, false), (&self.stdio.stderr, true)] {
                if !path.is_empty() {
                    v.push((open_output(path).await?, stderr));
                }
            }
            v
        };
        let mut handles = Vec::new();
        for (out, stderr) in outputs {
            if stderr && self.stdio.terminal {
                continue; // a terminal has no separate stderr
            }
            let stream = if stderr {
                agent.read_stderr(&self.agent_ref).await?
            } else {
                agent.read_stdout(&self.agent_ref).await?
            };
            handles.push(tokio::spawn(copy_output(stream, out, self.copied.clone())));
        }
        *self.copies.lock().unwrap_or_else(|e| e.into_inner()) = handles;
        if !self.stdio.stdin.is_empty() {
            // Opened non-blocking, so the open itself never waits for a writer
            // (a blocked open would keep the shim alive after Shutdown). The
            // reader sees data once containerd's writer connects, and EOF when
            // it closes: then the guest's stdin is closed too.
            let fifo = tokio::net::unix::pipe::OpenOptions::new()
                .open_receiver(&self.stdio.stdin)
                .map_err(|source| StdioError::Open {
                    path: self.stdio.stdin.clone(),
                    source,
                })?;
            let agent = agent.clone();
            let process = self.agent_ref.clone();
            let handle = tokio::spawn(async move {
                let _ = agent.write_stdin(&process, fifo).await;
            });
            *self.stdin_copy.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        }
        Ok(())
    }

    /// CloseIO: stops feeding stdin and closes it in the guest.
    pub async fn close_stdin(&self, agent: &AgentClient) {
        let copy = self
            .stdin_copy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(copy) = copy {
            copy.abort();
            let _ = copy.await;
        }
        let _ = agent.close_stdin(&self.agent_ref).await;
    }

    /// Waits (bounded) for the output copies to reach EOF, then records the
    /// exit. Returns it.
    pub async fn finish(&self, exited: Exited) -> Exited {
        let copies = std::mem::take(&mut *self.copies.lock().unwrap_or_else(|e| e.into_inner()));
        for mut copy in copies {
            // Everything the process wrote must arrive before the exit is
            // published, however long that takes while data flows; but a
            // guest that keeps the pipe open and silent (a daemonised
            // grandchild) must not hold the exit back forever.
            loop {
                let before = self.copied.load(Ordering::Relaxed);
                match tokio::time::timeout(OUTPUT_IDLE_LIMIT, &mut copy).await {
                    Ok(_) => break,
                    Err(_) if self.copied.load(Ordering::Relaxed) != before => continue,
                    Err(_) => {
                        log::warn!(
                            "output of {:?} open and idle for {OUTPUT_IDLE_LIMIT:?} after its exit",
                            self.agent_ref
                        );
                        copy.abort();
                        break;
                    }
                }
            }
        }
        if let Some(stdin) = self
            .stdin_copy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            stdin.abort();
        }
        self.set_state(State::Stopped);
        self.exit.send_replace(Some(exited));
        exited
    }
}

/// How long a `binary://` logger may take to say it is ready.
const LOGGER_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The program and arguments of a `binary:///path?k=v&flag` URI, as
/// containerd builds them: each query key, then its value if not empty.
fn parse_binary_uri(uri: &str) -> Result<(String, Vec<String>), StdioError> {
    let rest = uri
        .strip_prefix("binary://")
        .ok_or_else(|| StdioError::Unsupported(uri.to_owned()))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if !path.starts_with('/') {
        return Err(StdioError::Unsupported(uri.to_owned()));
    }
    let mut args = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        args.push(k.to_owned());
        if !v.is_empty() {
            args.push(v.to_owned());
        }
    }
    Ok((path.to_owned(), args))
}

fn cloexec_pipe() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two c_ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded: both fds are open and owned by nobody else.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

/// Starts a `binary://` logger as containerd's shims do: its fd 3 reads
/// stdout, fd 4 stderr, and it closes fd 5 when ready. Returns the writers.
async fn spawn_log_binary(
    uri: &str,
    container_id: &str,
    namespace: &str,
) -> Result<(tokio::fs::File, tokio::fs::File), StdioError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let (program, args) = parse_binary_uri(uri)?;
    let open_err = |source| StdioError::Open {
        path: uri.to_owned(),
        source,
    };
    let (out_r, out_w) = cloexec_pipe().map_err(open_err)?;
    let (err_r, err_w) = cloexec_pipe().map_err(open_err)?;
    let (ready_r, ready_w) = cloexec_pipe().map_err(open_err)?;
    let fds = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
    let mut cmd = std::process::Command::new(&program);
    cmd.args(&args)
        .env("CONTAINER_ID", container_id)
        .env("CONTAINER_NAMESPACE", namespace)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: the closure only calls dup2(2), which is async-signal-safe, on
    // fds that stay open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in fds.iter().enumerate() {
                let target = 3 + i as i32;
                if libc::dup2(*fd, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(open_err)?;
    drop((out_r, err_r, ready_w));
    // The logger runs on its own; containerd's shims do not wait for it either.
    drop(child);
    let mut ready = tokio::fs::File::from_std(std::fs::File::from(ready_r));
    let wait = async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 64];
        while ready.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    };
    if tokio::time::timeout(LOGGER_READY_TIMEOUT, wait)
        .await
        .is_err()
    {
        return Err(StdioError::Open {
            path: uri.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, "logger not ready"),
        });
    }
    Ok((
        tokio::fs::File::from_std(std::fs::File::from(out_w)),
        tokio::fs::File::from_std(std::fs::File::from(err_w)),
    ))
}

/// Where a process's output goes.
type Output = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

/// The writer for a stdout/stderr destination: a FIFO path or a `file://` URI.
async fn open_output(uri: &str) -> Result<Output, StdioError> {
    let open_err = |source| StdioError::Open {
        path: uri.to_owned(),
        source,
    };
    if let Some(path) = uri.strip_prefix("file://") {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map_err(open_err)?;
        return Ok(Box::new(file));
    }
    if uri.contains("://") {
        return Err(StdioError::Unsupported(uri.to_owned()));
    }
    // Non-blocking, so that no thread hangs in open(2). containerd opens its
    // reading end from a goroutine (a blocking open that waits for us), which
    // may not have started yet, CRI's exec opens it just before Start: while
    // there is no reader the open fails with ENXIO, so try again for a while.
    let deadline = tokio::time::Instant::now() + FIFO_READER_WAIT;
    loop {
        match tokio::net::unix::pipe::OpenOptions::new().open_sender(uri) {
            Ok(fifo) => return Ok(Box::new(fifo)),
            Err(e)
                if e.raw_os_error() == Some(libc::ENXIO)
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => return Err(open_err(e)),
        }
    }
}

/// How long an output FIFO may have no reader before the open fails.
const FIFO_READER_WAIT: Duration = Duration::from_secs(10);

async fn copy_output(mut stream: OutputStream, mut out: Output, copied: Arc<AtomicU64>) {
    while let Ok(Some(chunk)) = stream.next_chunk().await {
        copied.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        if out.write_all(&chunk).await.is_err() {
            // The reader went away; keep draining so the guest is not blocked.
            while let Ok(Some(_)) = stream.next_chunk().await {}
            return;
        }
    }
    let _ = out.flush().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_are_runcs() {
        assert_eq!(Exited::from_agent(ExitStatus::Exited(3)).status, 3);
        assert_eq!(Exited::from_agent(ExitStatus::Signaled(9)).status, 137);
        assert_eq!(Exited::from_agent(ExitStatus::Signaled(15)).status, 143);
    }

    #[tokio::test]
    async fn waiters_see_the_exit_once_finished() {
        let p = Process::new(pb::ProcessRef::guest("x"), Stdio::default(), None);
        assert!(p.exited().is_none());
        let e = Exited {
            status: 7,
            at: SystemTime::UNIX_EPOCH,
        };
        let (got, _) = tokio::join!(p.wait(), async {
            tokio::task::yield_now().await;
            p.finish(e).await
        });
        assert_eq!(got, e);
        assert_eq!(p.state(), State::Stopped);
    }

    #[test]
    fn binary_uris_become_program_and_arguments() {
        let (p, a) = parse_binary_uri("binary:///usr/bin/logger?--tag=web&--debug").unwrap();
        assert_eq!(p, "/usr/bin/logger");
        assert_eq!(a, ["--tag", "web", "--debug"]);
        assert!(parse_binary_uri("binary://relative").is_err());
    }

    #[tokio::test]
    async fn a_binary_logger_gets_stdout_on_fd_3() {
        let dir = std::env::temp_dir().join(format!("husk-shim-logger-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("out");
        let script = dir.join("logger.sh");
        let body = format!("#!/bin/sh\nexec 5>&-\ncat <&3 > {}\n", log.display());
        std::fs::write(&script, body).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o755);
        std::fs::set_permissions(&script, mode).unwrap();
        let uri = format!("binary://{}", script.display());
        let (mut out, err) = spawn_log_binary(&uri, "c1", "ns").await.unwrap();
        out.write_all(b"to the logger").await.unwrap();
        drop((out, err));
        for _ in 0..100 {
            if std::fs::read(&log).is_ok_and(|b| b == b"to the logger") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(std::fs::read(&log).unwrap(), b"to the logger");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn only_fifos_and_files_are_outputs() {
        let Err(e) = open_output("binary:///usr/bin/logger?x=1").await else {
            panic!("binary:// is not an output of its own");
        };
        assert!(matches!(e, StdioError::Unsupported(_)), "{e}");
        // A FIFO nobody reads: an error at once, not a hang.
        let dir = std::env::temp_dir().join(format!("husk-shim-out-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: c is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(open_output(fifo.to_str().unwrap()).await.is_err());
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("log");
        let mut f = open_output(&format!("file://{}", file.display()))
            .await
            .unwrap();
        f.write_all(b"hi").await.unwrap();
        f.flush().await.unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"hi");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
