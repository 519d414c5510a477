//! The container helper: a short-lived, single-threaded copy of the agent that
//! does the one libcontainer operation that forks.
//!
//! libcontainer clones processes, which is only safe from a process with one
//! thread; the agent has tokio's. So the agent re-executes itself
//! (`/proc/self/exe --container-helper <request as JSON>`, see [`run`]), the
//! helper performs the request with its stdin, stdout and stderr as the new
//! process's stdio, writes one JSON [`Reply`] to fd [`REPLY_FD`], and exits.
//! A container's init and exec'd processes outlive it and are adopted by
//! PID 1 (see [`crate::processes`]). Decision 0004 says why.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use serde::{Deserialize, Serialize};

use crate::processes::{ProcessError, Processes};
use crate::supervisor;

/// The argument that turns the agent binary into the helper.
pub const HELPER_ARG: &str = "--container-helper";

/// The helper's log level (libcontainer's `tracing` records), set by the agent.
const LOG_ENV: &str = "HUSK_HELPER_LOG";

/// The helper's reply channel, a pipe from the agent.
const REPLY_FD: i32 = 3;

/// The longest reply read back.
const MAX_REPLY: usize = 16 << 10;

/// How long one helper run may take (an emulated guest is slow).
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(60);

/// What the agent asks of the helper.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Create the container from `<bundle>/config.json`; its init waits for
    /// Start.
    Create {
        id: String,
        root: PathBuf,
        bundle: PathBuf,
        console_socket: Option<PathBuf>,
    },
    /// Let a created container's init run.
    Start { id: String, root: PathBuf },
    /// Run the OCI process in `process` inside the running container.
    Exec {
        id: String,
        root: PathBuf,
        process: PathBuf,
        console_socket: Option<PathBuf>,
    },
    /// Delete the container's state and cgroup (killing it if `force`).
    Delete {
        id: String,
        root: PathBuf,
        force: bool,
    },
}

/// The helper's answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// Done; the pid of the process created, if any.
    Ok { pid: Option<u32> },
    /// Failed, with libcontainer's message.
    Error { message: String },
}

/// Errors running the helper, as the agent sees them.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error("preparing the helper")]
    Setup(#[source] std::io::Error),
    #[error("starting the helper")]
    Spawn(#[source] ProcessError),
    #[error("the helper took longer than {0:?}")]
    Timeout(Duration),
    #[error("the helper ended {0:?} without a reply")]
    NoReply(crate::processes::ExitStatus),
    #[error("unreadable helper reply {0:?}")]
    BadReply(String),
    #[error("{0}")]
    Failed(String),
}

/// The helper's stdio: what the created process gets as 0, 1 and 2.
pub struct HelperStdio {
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
}

impl HelperStdio {
    /// /dev/null for all three.
    pub fn null() -> HelperStdio {
        HelperStdio {
            stdin: Stdio::null(),
            stdout: Stdio::null(),
            stderr: Stdio::null(),
        }
    }
}

fn pipe_cloexec() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two c_ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Runs the helper for `request` as the tracked process `key` and returns
/// the pid it reports. Called by the agent (inside tokio).
pub async fn run(
    procs: &Arc<Processes>,
    key: &str,
    request: &Request,
    stdio: HelperStdio,
) -> Result<Option<u32>, HelperError> {
    let json = serde_json::to_string(request).map_err(|e| HelperError::Setup(e.into()))?;
    let (reply_rx, reply_tx) = pipe_cloexec().map_err(HelperError::Setup)?;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0("husk-agent")
        .arg(HELPER_ARG)
        .arg(json)
        .env_clear()
        .env("PATH", crate::processes::DEFAULT_PATH)
        .env(
            LOG_ENV,
            if crate::logger::enabled(crate::logger::Level::Debug) {
                "debug"
            } else {
                "warn"
            },
        )
        .current_dir("/")
        .stdin(stdio.stdin)
        .stdout(stdio.stdout)
        .stderr(stdio.stderr);
    let tx_fd = reply_tx.as_raw_fd();
    // SAFETY: the closure makes only async-signal-safe calls (dup2 and those
    // of reset_in_child) and touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(tx_fd, REPLY_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            supervisor::reset_in_child()
        })
    };
    procs
        .spawn_command(key, &mut cmd)
        .map_err(HelperError::Spawn)?;
    drop(cmd);
    drop(reply_tx);
    let exit = match tokio::time::timeout(HELPER_TIMEOUT, procs.wait(key)).await {
        Ok(Ok(exit)) => exit,
        Ok(Err(e)) => return Err(HelperError::Spawn(e)),
        Err(_) => {
            let _ = procs.signal(key, libc::SIGKILL);
            let _ = procs.wait(key).await;
            return Err(HelperError::Timeout(HELPER_TIMEOUT));
        }
    };
    // The helper has exited: its reply is in the pipe (processes it created
    // may still hold the write end, so this reads what is there, not to EOF).
    let mut buf = vec![0u8; MAX_REPLY];
    // SAFETY: buf is valid for MAX_REPLY writable bytes; the fd is our
    // non-blocking read end.
    let n = unsafe { libc::read(reply_rx.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    let n = usize::try_from(n).map_err(|_| HelperError::NoReply(exit.status))?;
    if n == 0 {
        return Err(HelperError::NoReply(exit.status));
    }
    buf.truncate(n);
    let text = String::from_utf8_lossy(&buf).into_owned();
    match serde_json::from_str::<Reply>(text.trim_end()) {
        Ok(Reply::Ok { pid }) => Ok(pid),
        Ok(Reply::Error { message }) => Err(HelperError::Failed(message)),
        Err(_) => Err(HelperError::BadReply(text)),
    }
}

/// The helper's `main`: performs the request in `json`, writes the reply to
/// fd 3, and exits (0 on success, 1 on failure).
pub fn main(json: &str) -> ! {
    log_to_console();
    let reply = match serde_json::from_str::<Request>(json) {
        Ok(request) => match perform(&request) {
            Ok(pid) => Reply::Ok { pid },
            Err(message) => Reply::Error { message },
        },
        Err(e) => Reply::Error {
            message: format!("bad helper request: {e}"),
        },
    };
    let failed = matches!(reply, Reply::Error { .. });
    // SAFETY: fd 3 was set up by `run` as this process's reply pipe and
    // nothing else in the helper owns it.
    let mut out = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(REPLY_FD) });
    let line = serde_json::to_string(&reply).unwrap_or_else(|_| "{}".into());
    let _ = out.write_all(format!("{line}\n").as_bytes());
    std::process::exit(i32::from(failed))
}

/// Sends libcontainer's log records to the guest console (the VM's console
/// log on the host): its errors carry the detail its error values lose.
fn log_to_console() {
    let level = match std::env::var(LOG_ENV).as_deref() {
        Ok("debug") => tracing::Level::DEBUG,
        _ => tracing::Level::WARN,
    };
    let Ok(console) = std::fs::OpenOptions::new().write(true).open("/dev/console") else {
        return;
    };
    let console = std::sync::Mutex::new(console);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .without_time()
        .with_writer(console)
        .try_init();
}

fn perform(request: &Request) -> Result<Option<u32>, String> {
    let text = |e: libcontainer::error::LibcontainerError| crate::chain(&e);
    match request {
        Request::Create {
            id,
            root,
            bundle,
            console_socket,
        } => {
            let container = ContainerBuilder::new(id.clone(), SyscallType::default())
                .with_root_path(root)
                .map_err(text)?
                .with_console_socket(console_socket.as_deref())
                .validate_id()
                .map_err(text)?
                .as_init(bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()
                .map_err(text)?;
            Ok(container.pid().map(|p| p.as_raw().unsigned_abs()))
        }
        Request::Start { id, root } => {
            let mut container = load(root, id)?;
            container.start().map_err(text)?;
            Ok(container.pid().map(|p| p.as_raw().unsigned_abs()))
        }
        Request::Exec {
            id,
            root,
            process,
            console_socket,
        } => {
            let pid = ContainerBuilder::new(id.clone(), SyscallType::default())
                .with_root_path(root)
                .map_err(text)?
                .with_console_socket(console_socket.as_deref())
                .validate_id()
                .map_err(text)?
                .as_tenant()
                .with_process(Some(process))
                .with_detach(true)
                .build()
                .map_err(text)?;
            Ok(Some(pid.as_raw().unsigned_abs()))
        }
        Request::Delete { id, root, force } => {
            let mut container = load(root, id)?;
            container.delete(*force).map_err(text)?;
            Ok(None)
        }
    }
}

fn load(root: &Path, id: &str) -> Result<Container, String> {
    Container::load(root.join(id)).map_err(|e| crate::chain(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_tagged_json() {
        let r = Request::Exec {
            id: "c1".into(),
            root: "/run/husk/state".into(),
            process: "/run/husk/containers/c1/exec-e1.json".into(),
            console_socket: None,
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""op":"exec""#), "{json}");
        assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), r);
    }

    #[test]
    fn replies_parse() {
        let ok: Reply = serde_json::from_str(r#"{"ok":{"pid":42}}"#).unwrap();
        assert_eq!(ok, Reply::Ok { pid: Some(42) });
        let err: Reply = serde_json::from_str(r#"{"error":{"message":"boom"}}"#).unwrap();
        assert_eq!(
            err,
            Reply::Error {
                message: "boom".into()
            }
        );
    }
}
