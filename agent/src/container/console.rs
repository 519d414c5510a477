//! Terminals: the console socket libcontainer sends a pty's master side to.
//!
//! For a process with a terminal, the agent listens on a Unix socket (a short
//! path of its own, see the module above) and passes its path to the helper. The
//! process creates the pty inside the container (on the container's devpts)
//! and sends the master with SCM_RIGHTS before the helper returns. The agent
//! then uses the master for stdin and stdout (a terminal has no separate
//! stderr) and for ResizeTty.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

/// How long the process may take to send the master after connecting.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A console socket waiting for one pty master.
pub struct ConsoleSocket {
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    /// Listens at `path` (replacing a stale socket, creating its directory).
    pub fn bind(path: &Path) -> io::Result<ConsoleSocket> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        Ok(ConsoleSocket {
            path: path.to_owned(),
            listener,
        })
    }

    /// The socket's path, for the helper.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the master the process sent. Called after the helper returned,
    /// so the connection is already queued; blocks at most
    /// [`RECEIVE_TIMEOUT`] for the message. The master is made non-blocking.
    pub fn receive(&self) -> io::Result<OwnedFd> {
        let (stream, _) = self.listener.accept().map_err(|e| {
            if e.kind() == io::ErrorKind::WouldBlock {
                io::Error::new(
                    io::ErrorKind::NotConnected,
                    "nothing connected to the console socket",
                )
            } else {
                e
            }
        })?;
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(RECEIVE_TIMEOUT))?;
        let mut name = [0u8; 64];
        let mut iov = [IoSliceMut::new(&mut name)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let mut master = None;
        for cmsg in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                for fd in fds {
                    // SAFETY: the kernel just installed `fd` in this process
                    // for this message; nothing else owns it.
                    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                    if master.is_none() {
                        master = Some(owned);
                    }
                    // Extra fds are dropped (closed) here.
                }
            }
        }
        let master = master.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "no fd on the console socket")
        })?;
        set_nonblocking(&master)?;
        Ok(master)
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Sets O_NONBLOCK on `fd`.
pub fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{sendmsg, ControlMessage, UnixAddr};
    use std::io::IoSlice;
    use std::os::unix::net::UnixStream;

    #[test]
    fn receives_the_fd_sent_with_scm_rights() {
        let dir = std::env::temp_dir().join(format!("husk-console-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("console.sock");
        let socket = ConsoleSocket::bind(&path).unwrap();
        let client = UnixStream::connect(&path).unwrap();
        let (r, _w) = std::io::pipe().unwrap();
        let fds = [r.as_raw_fd()];
        sendmsg::<UnixAddr>(
            client.as_raw_fd(),
            &[IoSlice::new(b"/dev/ptmx")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let got = socket.receive().unwrap();
        // SAFETY: fcntl on an fd the test owns.
        let flags = unsafe { libc::fcntl(got.as_raw_fd(), libc::F_GETFL) };
        assert!(flags & libc::O_NONBLOCK != 0);
        drop(socket);
        assert!(!path.exists(), "the socket file is removed on drop");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nothing_connected_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("husk-console-none-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = ConsoleSocket::bind(&dir.join("c.sock")).unwrap();
        let e = socket.receive().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotConnected);
        drop(socket);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
