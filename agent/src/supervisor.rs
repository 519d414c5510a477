//! PID 1's main loop: reap zombies, power off on SIGTERM.
//!
//! The signals PID 1 handles are blocked in every thread (see [`block`], to be
//! called first thing, so that none is lost) and taken synchronously with
//! sigwaitinfo(2). Children started later must unblock them in the child.

use std::io;

use crate::{debug, error};

/// The signals PID 1 waits for.
const SIGNALS: [libc::c_int; 2] = [libc::SIGCHLD, libc::SIGTERM];

/// Why the loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// SIGTERM: power off.
    Terminate,
}

fn signal_set() -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain old data; sigemptyset initialises it below.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid, writable sigset_t.
    if unsafe { libc::sigemptyset(&mut set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    for sig in SIGNALS {
        // SAFETY: set is an initialised sigset_t and sig a valid signal.
        if unsafe { libc::sigaddset(&mut set, sig) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(set)
}

/// Blocks the signals PID 1 handles, so they queue until [`run`] takes them.
pub fn block() -> io::Result<()> {
    let set = signal_set()?;
    // SAFETY: set is an initialised sigset_t; the old mask is not wanted (null).
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Reaps every child that has exited.
fn reap() {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: status is a valid, writable c_int that outlives the call.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        match pid {
            0 => return,
            -1 => {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::ECHILD) => return,
                    _ => {
                        error!("waitpid: {e}");
                        return;
                    }
                }
            }
            pid => debug!("reaped {pid} (status {status:#x})"),
        }
    }
}

/// Waits for signals until one asks PID 1 to stop. Blocks forever otherwise.
pub fn run() -> io::Result<Exit> {
    let set = signal_set()?;
    loop {
        // SAFETY: set is an initialised sigset_t; the siginfo is not wanted
        // (null is allowed).
        let sig = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
        match sig {
            libc::SIGCHLD => reap(),
            libc::SIGTERM => {
                reap();
                return Ok(Exit::Terminate);
            }
            -1 => {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINTR) {
                    return Err(e);
                }
            }
            other => debug!("ignoring signal {other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn sigterm_ends_the_loop_and_zombies_are_reaped() {
        // The mask is per thread and this test has its own thread; SIGTERM is
        // sent to this thread only, so the rest of the test binary never sees it.
        block().expect("block signals");
        let child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
        // Wait until the child is a zombie (exited, not yet reaped).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut info: libc::siginfo_t =
                // SAFETY: siginfo_t is plain old data; zero is a valid value.
                unsafe { std::mem::zeroed() };
            // SAFETY: info is valid and writable; WNOWAIT leaves the child
            // waitable.
            let rc = unsafe {
                libc::waitid(
                    libc::P_PID,
                    pid as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
                )
            };
            assert_eq!(rc, 0, "waitid: {}", io::Error::last_os_error());
            // SAFETY: waitid filled info (or left it zeroed: pid 0).
            if unsafe { info.si_pid() } == pid {
                break;
            }
            assert!(Instant::now() < deadline, "child never exited");
            std::thread::sleep(Duration::from_millis(10));
        }
        // SAFETY: pthread_self is this live thread; SIGTERM is blocked in it.
        let rc = unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGTERM) };
        assert_eq!(rc, 0);
        assert_eq!(run().expect("signal loop"), Exit::Terminate);
        // SAFETY: a null status pointer is allowed.
        let rc = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        assert_eq!(rc, -1, "child was not reaped");
        assert_eq!(
            io::Error::last_os_error().raw_os_error(),
            Some(libc::ECHILD)
        );
        drop(child);
    }
}
