//! The virtio socket device (virtio 1.2 spec, section 5.10), served in the VMM process.
//!
//! The host has no `/dev/vhost-vsock`, so the device speaks "hybrid vsock": the host side of
//! every connection is a Unix stream socket.
//!
//! - A host client connects to the device's Unix socket (`uds_path`) and writes
//!   `CONNECT <port>\n`; the device opens a connection to the guest's listener on that port
//!   and, once the guest accepts, answers `OK <host-port>\n`. From then on the stream carries
//!   the connection's bytes both ways. If the guest refuses, the stream is closed.
//! - A guest connection to host port `P` reaches the Unix listener at `<uds_path>_P`; if
//!   nothing listens there the guest gets a reset.
//!
//! Everything the guest puts in the queues is untrusted: malformed packets are dropped and
//! counted (and the connection they name reset), never trusted for a length or an address.
//!
//! Layout: [`device`] (the [`VirtioDevice`](super::VirtioDevice) side), [`event_handler`]
//! (epoll), [`packet`] (the header and its validation), [`queues`] (rx/tx processing, no epoll),
//! [`muxer`] and [`connection`] (connections and credit), [`unix`] (the host side).

mod connection;
mod device;
mod event_handler;
mod muxer;
mod packet;
mod queues;
mod unix;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

pub use device::Vsock;

/// The CID of the host, as the guest addresses it (virtio spec 5.10.4: `VMADDR_CID_HOST`).
pub const VSOCK_HOST_CID: u64 = 2;
/// The lowest CID a guest may have; 0-2 are reserved.
pub const MIN_GUEST_CID: u64 = 3;
/// The queue size the device offers for each of its three queues.
pub const QUEUE_SIZE: u16 = 256;
/// The largest payload the device accepts in, or puts into, one packet.
pub const MAX_PKT_DATA: u32 = 64 * 1024;
/// The receive buffer the host side advertises per connection (`buf_alloc`); also the most
/// guest data the device holds for a connection while its Unix socket would block.
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// The most connections (of both directions) the device keeps at once.
pub const MAX_CONNECTIONS: usize = 1024;

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The guest CID is reserved or does not fit the 32 bits Linux uses.
    #[error("invalid guest CID {0} (must be at least 3 and below 2^32 - 1)")]
    InvalidCid(u64),
    /// Something other than a socket is in the way of the host socket path.
    #[error("{0} exists and is not a socket")]
    PathInUse(PathBuf),
    /// The host socket cannot be created.
    #[error("binding {path}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// An eventfd, timerfd or socket option could not be set up.
    #[error("setting up the device")]
    Io(#[from] std::io::Error),
}

/// What the device counts. Guest-driven oddities are counted here rather than logged.
#[derive(Debug, Default)]
pub struct VsockCounters {
    /// Packets the device put on the rx queue (host to guest).
    pub rx_packets: AtomicU64,
    /// Packets the device took from the tx queue (guest to host), well-formed or not.
    pub tx_packets: AtomicU64,
    /// Guest packets dropped as malformed or in breach of the protocol, and rx buffers that
    /// could not be used.
    pub malformed_packets: AtomicU64,
    /// Resets sent to the guest.
    pub rst_sent: AtomicU64,
    /// Connections established or being established (both directions).
    pub connections_opened: AtomicU64,
    /// Connections removed.
    pub connections_closed: AtomicU64,
    /// Times a connection had host data ready but the guest had no credit for it.
    pub credit_stalls: AtomicU64,
    /// Host clients whose handshake was refused (garbage, too long, timeout, no guest).
    pub handshake_failures: AtomicU64,
    /// Packets for the guest dropped because the pending-reset queue was full.
    pub rx_dropped: AtomicU64,
}

/// A copy of [`VsockCounters`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VsockCountersSnapshot {
    /// See [`VsockCounters::rx_packets`].
    pub rx_packets: u64,
    /// See [`VsockCounters::tx_packets`].
    pub tx_packets: u64,
    /// See [`VsockCounters::malformed_packets`].
    pub malformed_packets: u64,
    /// See [`VsockCounters::rst_sent`].
    pub rst_sent: u64,
    /// See [`VsockCounters::connections_opened`].
    pub connections_opened: u64,
    /// See [`VsockCounters::connections_closed`].
    pub connections_closed: u64,
    /// See [`VsockCounters::credit_stalls`].
    pub credit_stalls: u64,
    /// See [`VsockCounters::handshake_failures`].
    pub handshake_failures: u64,
    /// See [`VsockCounters::rx_dropped`].
    pub rx_dropped: u64,
}

impl VsockCounters {
    /// Reads every counter.
    pub fn snapshot(&self) -> VsockCountersSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        VsockCountersSnapshot {
            rx_packets: get(&self.rx_packets),
            tx_packets: get(&self.tx_packets),
            malformed_packets: get(&self.malformed_packets),
            rst_sent: get(&self.rst_sent),
            connections_opened: get(&self.connections_opened),
            connections_closed: get(&self.connections_closed),
            credit_stalls: get(&self.credit_stalls),
            handshake_failures: get(&self.handshake_failures),
            rx_dropped: get(&self.rx_dropped),
        }
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
