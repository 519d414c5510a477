//! PID 1's signal mask, and what a child must undo of it.
//!
//! SIGCHLD and SIGTERM are blocked first thing ([`block`]), so that none is
//! lost while PID 1 mounts and starts its runtime. Once the runtime's signal
//! handlers are installed, [`unblock`] lets the pending ones through (they are
//! then taken by tokio's handlers: SIGCHLD drives the reaper, SIGTERM the
//! power-off). A child starts with [`reset_in_child`]: an empty mask and the
//! default action for every signal.

use std::io;

/// The signals PID 1 handles.
const SIGNALS: [libc::c_int; 2] = [libc::SIGCHLD, libc::SIGTERM];

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

fn change_mask(how: libc::c_int) -> io::Result<()> {
    let set = signal_set()?;
    // SAFETY: set is an initialised sigset_t; the old mask is not wanted (null).
    let rc = unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Blocks the signals PID 1 handles in this thread (and the threads it
/// starts later), so they stay pending until [`unblock`].
pub fn block() -> io::Result<()> {
    change_mask(libc::SIG_BLOCK)
}

/// Unblocks them again in this thread, once their handlers are installed.
pub fn unblock() -> io::Result<()> {
    change_mask(libc::SIG_UNBLOCK)
}

/// Run in a forked child before exec: empties the signal mask, restores the
/// default action of every signal, and starts a new session (no controlling
/// terminal, its own process group). Only async-signal-safe calls.
pub fn reset_in_child() -> io::Result<()> {
    // SAFETY: sigset_t is plain old data; sigemptyset initialises it below.
    let mut empty: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: empty is a valid, writable sigset_t.
    unsafe { libc::sigemptyset(&mut empty) };
    // SAFETY: empty is initialised; the old mask is not wanted (null).
    if unsafe { libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    for sig in 1..=libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: signal(2) with SIG_DFL installs no handler code; signals
        // that cannot be changed fail with EINVAL, which is fine.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    // SAFETY: setsid(2) takes no arguments; a child is never a group leader,
    // so it succeeds.
    if unsafe { libc::setsid() } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(sig: libc::c_int) -> bool {
        // SAFETY: sigset_t is plain old data.
        let mut current: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: a null new set only reads the mask into current.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut current) };
        assert_eq!(rc, 0);
        // SAFETY: current was filled in by pthread_sigmask.
        unsafe { libc::sigismember(&current, sig) == 1 }
    }

    #[test]
    fn block_and_unblock_this_thread() {
        // The mask is per thread and each test has its own thread.
        block().expect("block");
        assert!(blocked(libc::SIGCHLD) && blocked(libc::SIGTERM));
        unblock().expect("unblock");
        assert!(!blocked(libc::SIGCHLD) && !blocked(libc::SIGTERM));
    }
}
