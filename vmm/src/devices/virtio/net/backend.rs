//! What the queues read frames from and write frames to: a tap in the VMM, a socket pair in
//! the unit tests.

use std::io;
use std::os::fd::AsRawFd;

/// A host-side frame channel that keeps frame boundaries: one `recv` returns one frame, one
/// `send` takes one frame. Every frame starts with a [`VNET_HDR_LEN`](super::VNET_HDR_LEN)-byte
/// virtio-net header. The descriptor is non-blocking and polled for readability.
pub trait NetBackend: AsRawFd + Send {
    /// Reads one frame into `buf`. A frame longer than `buf` is cut short (the rest is lost).
    /// `WouldBlock` when none is waiting; `Ok(0)` or an error other than `WouldBlock` and
    /// `Interrupted` when the backend has gone away.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Writes one frame.
    fn send(&mut self, frame: &[u8]) -> io::Result<usize>;
}

/// Whether `e`, from [`NetBackend::send`], means the backend has gone for good (a tap whose
/// interface was deleted answers EBADFD; a socket whose peer left answers EPIPE), rather than
/// that this one frame could not be taken (EAGAIN, ENOBUFS, EIO while the link is down).
pub fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADFD | libc::EBADF | libc::ENODEV | libc::ENXIO | libc::EPIPE)
    )
}
