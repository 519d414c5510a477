//! Host signals that end the VM: SIGTERM, SIGINT and SIGHUP are blocked in every thread and
//! read from a signalfd by the event loop, so that the VMM shuts down through the same path as
//! a guest power-off (and removes its sockets) instead of dying mid-write.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The signals husk-vmm turns into an orderly stop.
pub const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// A non-blocking signalfd for [`STOP_SIGNALS`].
pub struct StopSignals {
    fd: OwnedFd,
}

fn stop_set() -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed sigset_t.
    if unsafe { libc::sigemptyset(&mut set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    for signo in STOP_SIGNALS {
        // SAFETY: as above; `signo` is a valid signal number.
        if unsafe { libc::sigaddset(&mut set, signo) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(set)
}

impl StopSignals {
    /// Blocks the stop signals in the calling thread (threads spawned later inherit the mask)
    /// and opens a signalfd for them. Call before spawning any thread.
    pub fn block() -> io::Result<Self> {
        let set = stop_set()?;
        // SAFETY: `set` is initialised; a null old-set pointer is allowed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // SAFETY: -1 asks for a new fd; `set` is initialised; the flags are valid.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: signalfd returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// The next pending stop signal, if any.
    pub fn read(&self) -> io::Result<Option<libc::c_int>> {
        // SAFETY: signalfd_siginfo is plain data; zeroes are a valid value.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most `size` bytes into `info`, which is that large.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock => Ok(None),
                _ => Err(err),
            };
        }
        if n as usize != size {
            return Ok(None);
        }
        Ok(Some(info.ssi_signo as libc::c_int))
    }
}

impl AsRawFd for StopSignals {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_signal_is_read_from_the_fd() {
        // Runs in its own thread so the mask change stays there.
        std::thread::spawn(|| {
            let signals = StopSignals::block().unwrap();
            assert_eq!(signals.read().unwrap(), None);
            // SAFETY: raising a signal that this thread blocks only queues it.
            unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGHUP) };
            assert_eq!(signals.read().unwrap(), Some(libc::SIGHUP));
        })
        .join()
        .unwrap();
    }
}
