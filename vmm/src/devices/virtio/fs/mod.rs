//! The virtio file system device (virtio 1.2 spec, section 5.11), served in the VMM process.
//!
//! One host directory (the sandbox's `shared/`) is exported to the guest under a tag; the guest
//! mounts it with `mount -t virtiofs <tag> <dir>`. Requests are FUSE messages, answered by
//! fuse-backend-rs's [`Server`](fuse_backend_rs::api::server::Server) over its passthrough file
//! system, wrapped in [`guard::GuardedFs`], which keeps the guest inside the directory and holds
//! the number of host descriptors to a budget. No virtiofsd runs: see decision 0005.
//!
//! Host file I/O blocks, so the queues are served on a thread of their own with its own event
//! loop ([`event_handler`]): a slow disk stalls the file system, never the console or vsock.
//!
//! Everything the guest puts in the queues is untrusted: chains that do not describe valid
//! memory, headers whose length does not match the chain, and opcodes the server does not know
//! are answered with an error or dropped, and counted; names are checked before they reach a
//! host system call. See `docs/virtio-fs.md` for the confinement analysis.
//!
//! Layout: [`device`] (the [`VirtioDevice`](super::VirtioDevice) side and the worker thread),
//! [`event_handler`] (the worker's epoll), [`queues`] (descriptor chains to FUSE requests, no
//! epoll), [`guard`] (the confining file system wrapper), [`budget`] (host descriptor
//! accounting and `RLIMIT_NOFILE`), [`backend`] (the passthrough file system's configuration).

mod backend;
mod budget;
mod device;
mod event_handler;
mod guard;
mod queues;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

pub use budget::{apply_fd_limit, VMM_FD_RESERVE};
pub use device::Fs;

/// The longest tag the configuration space holds (virtio spec 5.11.4).
pub const TAG_LEN: usize = 36;
/// The tag `husk-vmm` uses unless told otherwise.
pub const DEFAULT_TAG: &str = "husk";
/// Request queues the device offers (the Linux driver uses one).
pub const NUM_REQUEST_QUEUES: u32 = 1;
/// Size of the high-priority queue (FORGET, INTERRUPT).
pub const HIPRIO_QUEUE_SIZE: u16 = 128;
/// Size of each request queue. A 1 MiB request takes about 260 descriptors unless the driver
/// uses indirect descriptors, which the device offers.
pub const REQUEST_QUEUE_SIZE: u16 = 1024;
/// Default budget of host descriptors for the file system (inodes the guest holds plus open
/// files and directories).
pub const DEFAULT_MAX_FDS: u32 = 65536;
/// The smallest budget accepted.
pub const MIN_MAX_FDS: u32 = 16;
/// The largest budget accepted (the kernel's default `fs.nr_open` is 1048576).
pub const MAX_MAX_FDS: u32 = 1_000_000;

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag is empty, too long, or not printable ASCII without spaces.
    #[error("invalid virtio-fs tag {0:?} (1 to {TAG_LEN} printable ASCII characters, no spaces)")]
    InvalidTag(String),
    /// The shared directory cannot be used.
    #[error("shared directory {path:?}")]
    Share {
        /// The directory as configured.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The open-file limit cannot be set to what the budget needs.
    #[error(
        "cannot set the open-file limit to {wanted} (hard limit {hard}): lower the virtio-fs \
         descriptor budget or raise the limit"
    )]
    FdLimit {
        /// `RLIMIT_NOFILE` wanted.
        wanted: u64,
        /// The hard limit in force.
        hard: u64,
    },
    /// An eventfd, epoll set or thread could not be set up.
    #[error("setting up the device")]
    Io(#[from] std::io::Error),
    /// The worker's event loop could not be created.
    #[error("worker event loop")]
    EventLoop(#[from] event_manager::Error),
}

/// Checks a tag: 1 to [`TAG_LEN`] bytes of printable ASCII, no spaces (the guest names the
/// share by it on a mount command line).
pub fn validate_tag(tag: &str) -> Result<(), FsError> {
    let ok = !tag.is_empty() && tag.len() <= TAG_LEN && tag.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(FsError::InvalidTag(tag.to_string()))
    }
}

/// What the device counts. Guest-driven oddities are counted here rather than logged.
#[derive(Debug, Default)]
pub struct FsCounters {
    /// Descriptor chains taken from the queues (both queues), well-formed or not.
    pub requests: AtomicU64,
    /// Chains that did not describe valid guest memory, or held a message that could not be
    /// decoded (short, length mismatch, bad strings).
    pub malformed: AtomicU64,
    /// Requests answered with an error by the file system (ENOENT included).
    pub error_replies: AtomicU64,
    /// Requests for something the device does not do (unknown opcodes, locks, ioctl, DAX
    /// mappings, device nodes, opening special files), answered with ENOSYS, EPERM or
    /// EOPNOTSUPP.
    pub unsupported: AtomicU64,
    /// Requests refused by the confinement checks (`.`/`..`/`/` in names, forbidden open
    /// flags).
    pub refused: AtomicU64,
    /// Requests refused with EMFILE because the descriptor budget was spent.
    pub fd_budget_hits: AtomicU64,
    /// File bytes returned to the guest by READ.
    pub bytes_read: AtomicU64,
    /// File bytes written for the guest by WRITE.
    pub bytes_written: AtomicU64,
}

/// A copy of [`FsCounters`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FsCountersSnapshot {
    /// See [`FsCounters::requests`].
    pub requests: u64,
    /// See [`FsCounters::malformed`].
    pub malformed: u64,
    /// See [`FsCounters::error_replies`].
    pub error_replies: u64,
    /// See [`FsCounters::unsupported`].
    pub unsupported: u64,
    /// See [`FsCounters::refused`].
    pub refused: u64,
    /// See [`FsCounters::fd_budget_hits`].
    pub fd_budget_hits: u64,
    /// See [`FsCounters::bytes_read`].
    pub bytes_read: u64,
    /// See [`FsCounters::bytes_written`].
    pub bytes_written: u64,
}

impl FsCounters {
    /// Reads every counter.
    pub fn snapshot(&self) -> FsCountersSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        FsCountersSnapshot {
            requests: get(&self.requests),
            malformed: get(&self.malformed),
            error_replies: get(&self.error_replies),
            unsupported: get(&self.unsupported),
            refused: get(&self.refused),
            fd_budget_hits: get(&self.fd_budget_hits),
            bytes_read: get(&self.bytes_read),
            bytes_written: get(&self.bytes_written),
        }
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    add(counter, 1);
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}
