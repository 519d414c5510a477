//! The processes the agent started, and PID 1's reaper.
//!
//! One table maps exec ids to processes. The reaper ([`Processes::reap`], run
//! on every SIGCHLD and once a second) calls `waitpid` with the table locked
//! and routes the status of a tracked pid to its entry; statuses of other
//! children (orphans PID 1 inherited) are discarded. Because spawning also
//! happens with the table locked, a child that exits at once cannot be reaped
//! before it is tracked, and because signals are sent with the table locked
//! and only to processes not yet reaped, a signal never reaches a reused pid.
//!
//! Container processes are not the agent's children: the container helper
//! (see [`crate::container`]) forks them and exits, so PID 1 inherits them.
//! [`Processes::adopt`] tracks such a pid; an orphan that exited before it was
//! adopted is found in a short list of recent untracked exits
//! ([`RECENT_ORPHANS`], kept [`ORPHAN_TTL`]).
//!
//! Every tracked exit is also published on a broadcast channel
//! ([`Processes::subscribe_exits`]) for the event stream.
//!
//! An entry is removed once its exit status has been returned by WaitProcess
//! and its stdout and stderr have reached EOF, or [`ABANDON_AFTER`] after the
//! wait if no reader is busy with them. At most [`MAX_PROCESSES`] entries live
//! at once.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::unix::pipe;
use tokio::sync::{broadcast, watch};

use crate::{debug, supervisor};

/// At most this many processes are tracked at once.
pub const MAX_PROCESSES: usize = 1024;

/// How long an exited, waited-for process keeps output nobody reads.
pub const ABANDON_AFTER: Duration = Duration::from_secs(60);

/// Untracked exits remembered for a later [`Processes::adopt`].
pub const RECENT_ORPHANS: usize = 64;

/// How long an untracked exit is remembered: adoption follows the helper's
/// exit within milliseconds, and a longer memory would risk a reused pid.
pub const ORPHAN_TTL: Duration = Duration::from_secs(10);

/// Exits buffered per event-stream subscriber before it lags.
const EXIT_EVENTS: usize = 256;

/// PATH of a process started without an environment.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

impl ExitStatus {
    /// Decodes a `waitpid` status; `None` for stop/continue reports.
    pub fn from_wait(status: libc::c_int) -> Option<ExitStatus> {
        if libc::WIFEXITED(status) {
            Some(ExitStatus::Exited(libc::WEXITSTATUS(status)))
        } else if libc::WIFSIGNALED(status) {
            Some(ExitStatus::Signaled(libc::WTERMSIG(status)))
        } else {
            None
        }
    }
}

/// An exit, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub status: ExitStatus,
    pub at: SystemTime,
}

/// Which children the reaper waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReapScope {
    /// Every child (`waitpid(-1)`): PID 1, which inherits orphans.
    All,
    /// Only tracked pids: a process that is not PID 1 and shares its children
    /// with other code (the unit tests).
    #[cfg_attr(not(test), allow(dead_code))]
    Tracked,
}

/// One of a process's three stdio pipes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdio3 {
    Stdin,
    Stdout,
    Stderr,
}

/// A stdio pipe's state.
#[derive(Debug)]
pub enum Slot<T> {
    /// Nobody uses it.
    Ready(T),
    /// A stream holds it.
    Busy,
    /// EOF reached (output) or closed (stdin), or never existed.
    Done,
}

impl<T> Slot<T> {
    fn is_done(&self) -> bool {
        matches!(self, Slot::Done)
    }
}

/// What a process spawn asks for.
#[derive(Debug, Clone, Default)]
pub struct Spawn {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub stdin: bool,
}

/// Errors of the process table, mapped to gRPC codes by the service.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("no process {0:?}")]
    NotFound(String),
    #[error("too many processes (limit {MAX_PROCESSES})")]
    TooMany,
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("process {0:?} has exited")]
    Exited(String),
    #[error("{which:?} of {id:?} is busy or closed")]
    Unavailable { id: String, which: Stdio3 },
    #[error("spawning {program:?}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("kill({pid}, {signal})")]
    Kill {
        pid: i32,
        signal: i32,
        #[source]
        source: io::Error,
    },
}

/// A tracked process's exit, as published to subscribers.
#[derive(Debug, Clone)]
pub struct ExitEvent {
    pub id: String,
    pub pid: u32,
    pub exit: Exit,
}

/// The stdio of an adopted process, as the agent holds it.
#[derive(Debug, Default)]
pub struct AdoptedStdio {
    pub stdin: Option<pipe::Sender>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
    /// The terminal's master side, kept for ResizeTty.
    pub tty: Option<OwnedFd>,
}

struct Entry {
    pid: i32,
    exit: watch::Sender<Option<Exit>>,
    /// When WaitProcess first returned the status.
    waited_at: Option<Instant>,
    stdin: Slot<pipe::Sender>,
    stdout: Slot<pipe::Receiver>,
    stderr: Slot<pipe::Receiver>,
    tty: Option<OwnedFd>,
}

impl Entry {
    fn new(pid: i32) -> Entry {
        Entry {
            pid,
            exit: watch::channel(None).0,
            waited_at: None,
            stdin: Slot::Done,
            stdout: Slot::Done,
            stderr: Slot::Done,
            tty: None,
        }
    }
}

struct Table {
    by_id: HashMap<String, Entry>,
    /// Tracked pids not yet reaped.
    running: HashMap<i32, String>,
    /// Recent exits of untracked children, newest last.
    orphans: VecDeque<(i32, Exit, Instant)>,
    exits: broadcast::Sender<ExitEvent>,
}

impl Table {
    fn route(&mut self, pid: i32, status: libc::c_int) {
        let Some(exit) = ExitStatus::from_wait(status) else {
            return;
        };
        let exit = Exit {
            status: exit,
            at: SystemTime::now(),
        };
        match self.running.remove(&pid) {
            Some(id) => self.record(id, pid, exit),
            None => {
                debug!("reaped untracked pid {pid}: {exit:?}");
                if self.orphans.len() >= RECENT_ORPHANS {
                    self.orphans.pop_front();
                }
                self.orphans.push_back((pid, exit, Instant::now()));
            }
        }
    }

    /// Stores the exit of the tracked process `id` and publishes it.
    fn record(&mut self, id: String, pid: i32, exit: Exit) {
        debug!("process {id} (pid {pid}) ended: {:?}", exit.status);
        if let Some(entry) = self.by_id.get(&id) {
            entry.exit.send_replace(Some(exit));
        }
        // No subscriber is not an error.
        let _ = self.exits.send(ExitEvent {
            id,
            pid: pid.unsigned_abs(),
            exit,
        });
    }

    /// Takes the remembered exit of the untracked pid `pid`, if recent.
    fn take_orphan(&mut self, pid: i32) -> Option<Exit> {
        self.orphans.retain(|(_, _, at)| at.elapsed() < ORPHAN_TTL);
        let i = self.orphans.iter().position(|(p, _, _)| *p == pid)?;
        self.orphans.remove(i).map(|(_, exit, _)| exit)
    }

    /// Removes `id` if it is finished: waited for and both outputs at EOF.
    fn remove_if_finished(&mut self, id: &str) {
        let finished = self
            .by_id
            .get(id)
            .is_some_and(|e| e.waited_at.is_some() && e.stdout.is_done() && e.stderr.is_done());
        if finished {
            debug!("forgetting process {id}");
            self.by_id.remove(id);
        }
    }
}

/// The process table.
pub struct Processes {
    table: Mutex<Table>,
    scope: ReapScope,
    next_id: AtomicU64,
}

fn check_strings(spawn: &Spawn) -> Result<(), ProcessError> {
    let invalid = |m: &str| Err(ProcessError::Invalid(m.to_owned()));
    if spawn.argv.is_empty() || spawn.argv[0].is_empty() {
        return invalid("empty argv");
    }
    let strings = spawn.argv.iter().chain(&spawn.env);
    let count = spawn.argv.len() + spawn.env.len();
    let bytes: usize = strings.clone().map(String::len).sum::<usize>() + spawn.cwd.len();
    if count > husk_proto::MAX_EXEC_STRINGS || bytes > husk_proto::MAX_EXEC_BYTES {
        return invalid("argv and env too large");
    }
    if strings.chain([&spawn.cwd]).any(|s| s.contains('\0')) {
        return invalid("NUL byte in argv, env or cwd");
    }
    if spawn
        .env
        .iter()
        .any(|e| !e.contains('=') || e.starts_with('='))
    {
        return invalid("env entries must be KEY=VALUE");
    }
    if !spawn.cwd.is_empty() && !spawn.cwd.starts_with('/') {
        return invalid("cwd must be absolute");
    }
    Ok(())
}

fn command(spawn: &Spawn) -> Command {
    let mut cmd = Command::new(&spawn.argv[0]);
    cmd.args(&spawn.argv[1..]).env_clear();
    if spawn.env.is_empty() {
        cmd.env("PATH", DEFAULT_PATH);
    }
    for e in &spawn.env {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.current_dir(if spawn.cwd.is_empty() {
        "/"
    } else {
        &spawn.cwd
    })
    .stdin(if spawn.stdin {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // SAFETY: reset_in_child makes only async-signal-safe calls (sigprocmask,
    // signal, setsid) and touches no memory shared with the parent.
    unsafe { cmd.pre_exec(supervisor::reset_in_child) };
    cmd
}

impl Processes {
    /// An empty table.
    pub fn new(scope: ReapScope) -> Arc<Processes> {
        Arc::new(Processes {
            table: Mutex::new(Table {
                by_id: HashMap::new(),
                running: HashMap::new(),
                orphans: VecDeque::new(),
                exits: broadcast::channel(EXIT_EVENTS).0,
            }),
            scope,
            next_id: AtomicU64::new(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // The table stays consistent across a panic (each change is one
        // insert or remove), so a poisoned lock is still usable.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of tracked entries.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    /// Starts a process in the guest's root. Returns its exec id and pid.
    /// Must run inside the tokio runtime (the pipes register with it).
    pub fn spawn(&self, spawn: &Spawn) -> Result<(String, u32), ProcessError> {
        check_strings(spawn)?;
        let mut cmd = command(spawn);
        let mut table = self.lock();
        if table.by_id.len() >= MAX_PROCESSES {
            return Err(ProcessError::TooMany);
        }
        let spawn_err = |source| ProcessError::Spawn {
            program: spawn.argv[0].clone(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        let pid = child.id();
        let pid_i32 = i32::try_from(pid).map_err(|_| ProcessError::Invalid("pid".into()))?;
        let id = format!("guest-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        // Tracked from here on, so that its status is kept even if setting
        // up the pipes fails below.
        table.running.insert(pid_i32, id.clone());
        let pipes = (|| -> io::Result<_> {
            let stdin = match child.stdin.take() {
                Some(p) => Slot::Ready(pipe::Sender::from_owned_fd(OwnedFd::from(p))?),
                None => Slot::Done,
            };
            let stdout = match child.stdout.take() {
                Some(p) => Slot::Ready(pipe::Receiver::from_owned_fd(OwnedFd::from(p))?),
                None => Slot::Done,
            };
            let stderr = match child.stderr.take() {
                Some(p) => Slot::Ready(pipe::Receiver::from_owned_fd(OwnedFd::from(p))?),
                None => Slot::Done,
            };
            Ok((stdin, stdout, stderr))
        })();
        // The Child handle is dropped without waiting: the reaper owns the pid.
        drop(child);
        let (stdin, stdout, stderr) = match pipes {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: kill(2) takes no pointers; the pid is our unreaped
                // child (the reaper waits for this lock).
                unsafe { libc::kill(pid_i32, libc::SIGKILL) };
                table.running.remove(&pid_i32);
                return Err(spawn_err(e));
            }
        };
        table.by_id.insert(
            id.clone(),
            Entry {
                stdin,
                stdout,
                stderr,
                ..Entry::new(pid_i32)
            },
        );
        debug!("started {id} (pid {pid}): {:?}", spawn.argv);
        Ok((id, pid))
    }

    /// Starts `cmd` (its stdio already set by the caller) as the tracked
    /// process `id`, without pipes. Returns its pid.
    pub fn spawn_command(&self, id: &str, cmd: &mut Command) -> Result<u32, ProcessError> {
        let mut table = self.lock();
        if table.by_id.len() >= MAX_PROCESSES {
            return Err(ProcessError::TooMany);
        }
        if table.by_id.contains_key(id) {
            return Err(ProcessError::Invalid(format!("{id:?} exists")));
        }
        let child = cmd.spawn().map_err(|source| ProcessError::Spawn {
            program: cmd.get_program().to_string_lossy().into_owned(),
            source,
        })?;
        let pid = child.id();
        let pid_i32 = i32::try_from(pid).map_err(|_| ProcessError::Invalid("pid".into()))?;
        // The reaper owns the pid from here on.
        drop(child);
        table.running.insert(pid_i32, id.to_owned());
        table.by_id.insert(id.to_owned(), Entry::new(pid_i32));
        Ok(pid)
    }

    /// Tracks `pid`, a process PID 1 inherited, as `id` with its stdio. If it
    /// has already been reaped, its recent exit is recorded at once.
    pub fn adopt(&self, id: &str, pid: u32, stdio: AdoptedStdio) -> Result<(), ProcessError> {
        let pid_i32 = i32::try_from(pid)
            .ok()
            .filter(|p| *p > 1)
            .ok_or_else(|| ProcessError::Invalid(format!("pid {pid}")))?;
        let mut table = self.lock();
        if table.by_id.len() >= MAX_PROCESSES {
            return Err(ProcessError::TooMany);
        }
        if table.by_id.contains_key(id) {
            return Err(ProcessError::Invalid(format!("{id:?} exists")));
        }
        table.by_id.insert(
            id.to_owned(),
            Entry {
                stdin: stdio.stdin.map_or(Slot::Done, Slot::Ready),
                stdout: stdio.stdout.map_or(Slot::Done, Slot::Ready),
                stderr: stdio.stderr.map_or(Slot::Done, Slot::Ready),
                tty: stdio.tty,
                ..Entry::new(pid_i32)
            },
        );
        match table.take_orphan(pid_i32) {
            Some(exit) => table.record(id.to_owned(), pid_i32, exit),
            None => {
                table.running.insert(pid_i32, id.to_owned());
            }
        }
        debug!("adopted {id} (pid {pid})");
        Ok(())
    }

    /// The exits of tracked processes from now on.
    pub fn subscribe_exits(&self) -> broadcast::Receiver<ExitEvent> {
        self.lock().exits.subscribe()
    }

    /// Forgets every entry whose id starts with `prefix` (a removed
    /// container's processes), dropping their pipes. Running ones stay
    /// reaped but untracked.
    pub fn forget_prefix(&self, prefix: &str) {
        let mut table = self.lock();
        table.by_id.retain(|id, _| !id.starts_with(prefix));
        table.running.retain(|_, id| !id.starts_with(prefix));
    }

    /// Sets the terminal size of `id`'s tty.
    pub fn resize_tty(&self, id: &str, width: u16, height: u16) -> Result<(), ProcessError> {
        let table = self.lock();
        let entry = table
            .by_id
            .get(id)
            .ok_or_else(|| ProcessError::NotFound(id.to_owned()))?;
        let tty = entry
            .tty
            .as_ref()
            .ok_or_else(|| ProcessError::Invalid(format!("{id:?} has no terminal")))?;
        let size = libc::winsize {
            ws_row: height,
            ws_col: width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: the fd is a pty master the entry owns; `size` is a valid
        // winsize that the kernel only reads during the call.
        if unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSWINSZ, &size) } != 0 {
            return Err(ProcessError::Invalid(format!(
                "resizing the terminal of {id:?}: {}",
                io::Error::last_os_error()
            )));
        }
        Ok(())
    }

    /// Collects every exited child (see the module's doc).
    pub fn reap(&self) {
        let mut table = self.lock();
        match self.scope {
            ReapScope::All => loop {
                let mut status: libc::c_int = 0;
                // SAFETY: status is a valid, writable c_int for the call.
                let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
                if pid <= 0 {
                    // 0: children left but none exited; -1: ECHILD (none) or
                    // EINTR (the next SIGCHLD or tick comes back here).
                    return;
                }
                table.route(pid, status);
            },
            ReapScope::Tracked => {
                let pids: Vec<i32> = table.running.keys().copied().collect();
                for pid in pids {
                    let mut status: libc::c_int = 0;
                    // SAFETY: status is a valid, writable c_int for the call.
                    let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
                    if rc == pid {
                        table.route(pid, status);
                    }
                }
            }
        }
    }

    /// Drops entries whose status was returned more than [`ABANDON_AFTER`]
    /// ago and whose outputs nobody is reading.
    pub fn forget_abandoned(&self) {
        let mut table = self.lock();
        table.by_id.retain(|id, e| {
            let abandoned = e.waited_at.is_some_and(|t| t.elapsed() >= ABANDON_AFTER)
                && !matches!(e.stdout, Slot::Busy)
                && !matches!(e.stderr, Slot::Busy);
            if abandoned {
                debug!("forgetting abandoned process {id}");
            }
            !abandoned
        });
    }

    /// Waits until the process `id` has exited and returns how.
    pub async fn wait(&self, id: &str) -> Result<Exit, ProcessError> {
        let mut rx = {
            let table = self.lock();
            let entry = table
                .by_id
                .get(id)
                .ok_or_else(|| ProcessError::NotFound(id.to_owned()))?;
            entry.exit.subscribe()
        };
        let exit = {
            let seen = rx
                .wait_for(Option::is_some)
                .await
                // The sender lives in the entry; it is gone only if the entry
                // was removed meanwhile (after another waiter).
                .map_err(|_| ProcessError::NotFound(id.to_owned()))?;
            (*seen).ok_or_else(|| ProcessError::NotFound(id.to_owned()))?
        };
        let mut table = self.lock();
        if let Some(entry) = table.by_id.get_mut(id) {
            entry.waited_at.get_or_insert_with(Instant::now);
        }
        table.remove_if_finished(id);
        Ok(exit)
    }

    /// Sends `signal` to the process `id` if it has not exited.
    pub fn signal(&self, id: &str, signal: i32) -> Result<(), ProcessError> {
        let table = self.lock();
        let entry = table
            .by_id
            .get(id)
            .ok_or_else(|| ProcessError::NotFound(id.to_owned()))?;
        if !table.running.contains_key(&entry.pid) {
            return Err(ProcessError::Exited(id.to_owned()));
        }
        if !(1..=libc::SIGRTMAX()).contains(&signal) {
            return Err(ProcessError::Invalid(format!("signal {signal}")));
        }
        // SAFETY: kill(2) takes no pointers. The pid is a child that has not
        // been reaped (the reaper holds this lock), so it is still ours.
        if unsafe { libc::kill(entry.pid, signal) } != 0 {
            return Err(ProcessError::Kill {
                pid: entry.pid,
                signal,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Takes the stdin pipe for a writer.
    pub fn take_stdin(&self, id: &str) -> Result<pipe::Sender, ProcessError> {
        let mut table = self.lock();
        let entry = table
            .by_id
            .get_mut(id)
            .ok_or_else(|| ProcessError::NotFound(id.to_owned()))?;
        match std::mem::replace(&mut entry.stdin, Slot::Busy) {
            Slot::Ready(p) => Ok(p),
            other => {
                entry.stdin = other;
                Err(ProcessError::Unavailable {
                    id: id.to_owned(),
                    which: Stdio3::Stdin,
                })
            }
        }
    }

    /// Takes stdout or stderr for a reader.
    pub fn take_output(&self, id: &str, which: Stdio3) -> Result<pipe::Receiver, ProcessError> {
        let mut table = self.lock();
        let entry = table
            .by_id
            .get_mut(id)
            .ok_or_else(|| ProcessError::NotFound(id.to_owned()))?;
        let slot = match which {
            Stdio3::Stdout => &mut entry.stdout,
            Stdio3::Stderr => &mut entry.stderr,
            Stdio3::Stdin => return Err(ProcessError::Invalid("stdin is not an output".into())),
        };
        match std::mem::replace(slot, Slot::Busy) {
            Slot::Ready(p) => Ok(p),
            other => {
                *slot = other;
                Err(ProcessError::Unavailable {
                    id: id.to_owned(),
                    which,
                })
            }
        }
    }

    /// Gives stdin back (the writer went away; a later one may continue).
    pub fn return_stdin(&self, id: &str, pipe: pipe::Sender) {
        if let Some(entry) = self.lock().by_id.get_mut(id) {
            entry.stdin = Slot::Ready(pipe);
        }
    }

    /// Gives an output back (the reader went away before EOF).
    pub fn return_output(&self, id: &str, which: Stdio3, pipe: pipe::Receiver) {
        if let Some(entry) = self.lock().by_id.get_mut(id) {
            match which {
                Stdio3::Stdout => entry.stdout = Slot::Ready(pipe),
                Stdio3::Stderr => entry.stderr = Slot::Ready(pipe),
                Stdio3::Stdin => {}
            }
        }
    }

    /// Marks a pipe finished: output at EOF, or stdin closed. Removes the
    /// entry if that was the last thing it waited for.
    pub fn finish(&self, id: &str, which: Stdio3) {
        let mut table = self.lock();
        if let Some(entry) = table.by_id.get_mut(id) {
            match which {
                Stdio3::Stdin => entry.stdin = Slot::Done,
                Stdio3::Stdout => entry.stdout = Slot::Done,
                Stdio3::Stderr => entry.stderr = Slot::Done,
            }
        }
        table.remove_if_finished(id);
    }

    /// Closes stdin if nobody writes to it.
    pub fn close_stdin(&self, id: &str) -> Result<(), ProcessError> {
        let pipe = self.take_stdin(id)?;
        drop(pipe);
        self.finish(id, Stdio3::Stdin);
        Ok(())
    }

    /// Signals every tracked process that still runs (at power-off).
    pub fn kill_all(&self, signal: i32) {
        let table = self.lock();
        for pid in table.running.keys() {
            // SAFETY: kill(2) takes no pointers; the pid is an unreaped child.
            unsafe { libc::kill(*pid, signal) };
        }
    }
}

/// Reaps on every SIGCHLD, and once a second in case one was coalesced or
/// missed; forgets abandoned entries on the way. Runs forever.
pub async fn run_reaper(procs: Arc<Processes>, mut sigchld: tokio::signal::unix::Signal) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = sigchld.recv() => {}
            _ = tick.tick() => procs.forget_abandoned(),
        }
        procs.reap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wait status for "exited with `code`".
    fn exited(code: i32) -> libc::c_int {
        code << 8
    }

    #[tokio::test]
    async fn an_orphan_reaped_before_adoption_keeps_its_exit() {
        let procs = Processes::new(ReapScope::Tracked);
        let mut exits = procs.subscribe_exits();
        // PID 1 reaps pid 4242 before anyone tracks it ...
        procs.lock().route(4242, exited(3));
        // ... then the helper reports it and it is adopted.
        procs.adopt("c1/e1", 4242, AdoptedStdio::default()).unwrap();
        let exit = procs.wait("c1/e1").await.unwrap();
        assert_eq!(exit.status, ExitStatus::Exited(3));
        let event = exits.try_recv().unwrap();
        assert_eq!((event.id.as_str(), event.pid), ("c1/e1", 4242));
        // Used once: a later process with the same pid is not given that exit.
        procs.adopt("c1/e2", 4242, AdoptedStdio::default()).unwrap();
        assert!(procs.lock().running.contains_key(&4242));
        procs.forget_prefix("c1/");
        assert_eq!(procs.len(), 0);
        assert!(procs.lock().running.is_empty());
    }

    #[test]
    fn the_orphan_list_is_bounded() {
        let procs = Processes::new(ReapScope::Tracked);
        let mut table = procs.lock();
        for pid in 0..(RECENT_ORPHANS as i32 + 10) {
            table.route(10_000 + pid, exited(0));
        }
        assert_eq!(table.orphans.len(), RECENT_ORPHANS);
        assert!(
            table.take_orphan(10_000).is_none(),
            "the oldest were dropped"
        );
        assert!(table
            .take_orphan(10_000 + RECENT_ORPHANS as i32 + 9)
            .is_some());
    }

    #[test]
    fn adopting_refuses_bad_pids_and_duplicates() {
        let procs = Processes::new(ReapScope::Tracked);
        for pid in [0, 1, u32::MAX] {
            assert!(matches!(
                procs.adopt("x/", pid, AdoptedStdio::default()),
                Err(ProcessError::Invalid(_))
            ));
        }
        procs.adopt("x/", 5000, AdoptedStdio::default()).unwrap();
        assert!(procs.adopt("x/", 5001, AdoptedStdio::default()).is_err());
        assert!(procs.resize_tty("x/", 80, 24).is_err(), "no terminal");
    }
}
