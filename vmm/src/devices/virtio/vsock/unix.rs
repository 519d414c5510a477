//! The host side: the device's Unix listener and the `CONNECT <port>\n` handshake of host
//! clients (the hybrid vsock convention Firecracker documents).

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EventSet;

use super::VsockError;

/// The longest handshake line accepted, newline included. `CONNECT 4294967295\n` is 19 bytes.
pub(super) const MAX_HANDSHAKE_LINE: usize = 32;
/// How long a host client has to send its handshake line.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The most host clients that may be in the middle of their handshake at once.
pub(super) const MAX_HANDSHAKES: usize = 64;

/// The device's listening socket; removes its file when dropped.
pub(super) struct HostListener {
    pub(super) listener: UnixListener,
    path: PathBuf,
}

impl HostListener {
    /// Binds `path`, replacing a stale socket file but nothing else.
    pub(super) fn bind(path: &Path) -> Result<Self, VsockError> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                std::fs::remove_file(path).map_err(|source| VsockError::Bind {
                    path: path.to_owned(),
                    source,
                })?;
            }
            Ok(_) => return Err(VsockError::PathInUse(path.to_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(VsockError::Bind {
                    path: path.to_owned(),
                    source,
                })
            }
        }
        let listener = UnixListener::bind(path).map_err(|source| VsockError::Bind {
            path: path.to_owned(),
            source,
        })?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener,
            path: path.to_owned(),
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for HostListener {
    fn drop(&mut self) {
        // Best effort: the run directory may already be gone.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The path of the host listener for guest connections to `port`: `<uds_path>_<port>`.
pub(super) fn port_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut p = OsString::from(uds_path.as_os_str());
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

/// Connects to the host listener for `port`, for a guest's connection request.
pub(super) fn connect_port(uds_path: &Path, port: u32) -> io::Result<UnixStream> {
    let stream = UnixStream::connect(port_path(uds_path, port))?;
    stream.set_nonblocking(true)?;
    Ok(stream)
}

/// Where a handshake stands after reading what the client sent.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Progress {
    /// No full line yet.
    Pending,
    /// The client asked for this guest port.
    Connect(u32),
    /// Garbage, an over-long line, end of file or an error: close the client.
    Failed,
}

/// A host client that has connected but not yet sent its whole `CONNECT` line.
pub(super) struct Handshake {
    pub(super) stream: UnixStream,
    pub(super) registered: Option<EventSet>,
    line: Vec<u8>,
    deadline: Instant,
}

impl Handshake {
    pub(super) fn new(stream: UnixStream, now: Instant) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(Self {
            stream,
            registered: None,
            line: Vec::with_capacity(MAX_HANDSHAKE_LINE),
            deadline: now + HANDSHAKE_TIMEOUT,
        })
    }

    pub(super) fn expired(&self, now: Instant) -> bool {
        now >= self.deadline
    }

    /// Reads the line one byte at a time, so that anything the client sends after the newline
    /// stays in the socket for the guest.
    pub(super) fn read(&mut self) -> Progress {
        let mut byte = [0u8; 1];
        loop {
            match self.stream.read(&mut byte) {
                Ok(0) => return Progress::Failed,
                Ok(_) if byte[0] == b'\n' => return parse_connect(&self.line),
                Ok(_) => {
                    self.line.push(byte[0]);
                    // Leave room for the newline.
                    if self.line.len() >= MAX_HANDSHAKE_LINE {
                        return Progress::Failed;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Pending,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Progress::Failed,
            }
        }
    }
}

/// Parses `CONNECT <port>` (without the newline): one space, decimal digits only.
fn parse_connect(line: &[u8]) -> Progress {
    let Some(digits) = line.strip_prefix(b"CONNECT ") else {
        return Progress::Failed;
    };
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return Progress::Failed;
    }
    let port = digits.iter().try_fold(0u32, |acc, d| {
        acc.checked_mul(10)?.checked_add(u32::from(d - b'0'))
    });
    match port {
        Some(port) => Progress::Connect(port),
        None => Progress::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 1234"), Progress::Connect(1234));
        assert_eq!(
            parse_connect(b"CONNECT 4294967295"),
            Progress::Connect(u32::MAX)
        );
        for bad in [
            &b"CONNECT 4294967296"[..],
            b"CONNECT ",
            b"CONNECT -1",
            b"CONNECT 12a",
            b"CONNECT  12",
            b"connect 12",
            b"HELLO",
            b"CONNECT 1 ",
        ] {
            assert_eq!(parse_connect(bad), Progress::Failed, "{bad:?}");
        }
    }

    #[test]
    fn handshake_reads_only_its_line() {
        let (mut client, server) = UnixStream::pair().unwrap();
        let mut hs = Handshake::new(server, Instant::now()).unwrap();
        client.write_all(b"CONN").unwrap();
        assert_eq!(hs.read(), Progress::Pending);
        client.write_all(b"ECT 7\nrest").unwrap();
        assert_eq!(hs.read(), Progress::Connect(7));
        let mut rest = [0u8; 4];
        hs.stream.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"rest");
    }

    #[test]
    fn handshake_bounds_the_line() {
        let (mut client, server) = UnixStream::pair().unwrap();
        let mut hs = Handshake::new(server, Instant::now()).unwrap();
        client.write_all(&[b'9'; 100]).unwrap();
        assert_eq!(hs.read(), Progress::Failed);
        let (client, server) = UnixStream::pair().unwrap();
        let mut hs = Handshake::new(server, Instant::now()).unwrap();
        drop(client);
        assert_eq!(hs.read(), Progress::Failed);
        assert!(hs.expired(Instant::now() + HANDSHAKE_TIMEOUT));
    }

    #[test]
    fn stale_socket_is_replaced_other_files_are_not() {
        let dir = std::env::temp_dir().join(format!("husk-vsock-unix-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.sock");
        let first = UnixListener::bind(&path).unwrap();
        drop(first); // leaves the file behind
        let l = HostListener::bind(&path).unwrap();
        assert!(path.exists());
        drop(l);
        assert!(!path.exists());
        std::fs::write(&path, b"x").unwrap();
        assert!(matches!(
            HostListener::bind(&path),
            Err(VsockError::PathInUse(_))
        ));
        assert_eq!(port_path(&path, 52), dir.join("v.sock_52"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
