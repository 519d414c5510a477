//! How many host descriptors the guest can make the file system hold.
//!
//! The passthrough file system keeps one `O_PATH` descriptor for every inode the guest holds a
//! lookup reference to (until the guest's FORGET) and one descriptor for every open file or
//! directory (until RELEASE). Both are driven by the guest, so both are counted here against a
//! budget: an entry or handle that would exceed it is refused with EMFILE, and the guest sees
//! "Too many open files" instead of the VMM running out of descriptors. `RLIMIT_NOFILE`
//! ([`apply_fd_limit`]) is the backstop for the few short-lived descriptors the passthrough
//! opens per request.

use std::collections::HashMap;

use super::FsError;

/// Descriptors the rest of the VMM may need on top of the file system's budget: KVM, vCPUs,
/// eventfds, the console, epoll sets, and up to 1024 vsock connections with their handshakes.
pub const VMM_FD_RESERVE: u64 = 4096;

/// The FUSE root inode: held by the passthrough for its whole life, never counted.
const ROOT_INODE: u64 = 1;

/// Lookup references and open handles the guest holds, against a budget.
#[derive(Debug)]
pub(super) struct FdBudget {
    max: usize,
    /// Inode -> lookup count, as the guest holds them (the passthrough's own count).
    inodes: HashMap<u64, u64>,
    handles: usize,
}

impl FdBudget {
    pub(super) fn new(max: u32) -> Self {
        Self {
            max: max as usize,
            inodes: HashMap::new(),
            handles: 0,
        }
    }

    /// Descriptors held for the guest now.
    pub(super) fn in_use(&self) -> usize {
        self.inodes.len() + self.handles
    }

    /// Whether `n` more descriptors fit.
    pub(super) fn has_room(&self, n: usize) -> bool {
        self.in_use().saturating_add(n) <= self.max
    }

    /// Whether the guest already holds `inode` (so another reference costs nothing).
    pub(super) fn holds(&self, inode: u64) -> bool {
        inode == ROOT_INODE || self.inodes.contains_key(&inode)
    }

    /// Records one more lookup reference to `inode`.
    pub(super) fn add_entry(&mut self, inode: u64) {
        if inode != ROOT_INODE && inode != 0 {
            let count = self.inodes.entry(inode).or_insert(0);
            *count = count.saturating_add(1);
        }
    }

    /// Drops `count` lookup references to `inode` (a FORGET).
    pub(super) fn forget(&mut self, inode: u64, count: u64) {
        if let Some(held) = self.inodes.get_mut(&inode) {
            *held = held.saturating_sub(count);
            if *held == 0 {
                self.inodes.remove(&inode);
            }
        }
    }

    pub(super) fn add_handle(&mut self) {
        self.handles = self.handles.saturating_add(1);
    }

    pub(super) fn remove_handle(&mut self) {
        self.handles = self.handles.saturating_sub(1);
    }

    /// Forgets everything (the file system was destroyed or the device reset).
    pub(super) fn clear(&mut self) {
        self.inodes.clear();
        self.handles = 0;
    }
}

/// Sets `RLIMIT_NOFILE` (soft and hard) to `max_fds` plus [`VMM_FD_RESERVE`], so that the
/// process as a whole cannot hold more descriptors than the file system's budget and the
/// VMM's own needs. Returns the limit set. Lowering always works; raising needs
/// `CAP_SYS_RESOURCE`, and fails with [`FsError::FdLimit`] without it.
pub fn apply_fd_limit(max_fds: u32) -> Result<u64, FsError> {
    let wanted = u64::from(max_fds) + VMM_FD_RESERVE;
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `current`, which is valid and writable.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut current) } != 0 {
        return Err(FsError::Io(std::io::Error::last_os_error()));
    }
    let limit = libc::rlimit {
        rlim_cur: wanted,
        rlim_max: wanted,
    };
    // SAFETY: setrlimit only reads `limit`, a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(FsError::FdLimit {
            wanted,
            hard: current.rlim_max,
        });
    }
    Ok(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_inodes_once_and_handles_each() {
        let mut b = FdBudget::new(3);
        assert!(b.has_room(3));
        b.add_entry(5);
        b.add_entry(5);
        b.add_entry(ROOT_INODE);
        assert_eq!(b.in_use(), 1);
        assert!(b.holds(5) && b.holds(ROOT_INODE) && !b.holds(6));
        b.add_handle();
        b.add_entry(6);
        assert!(!b.has_room(1));
        b.forget(5, 1);
        assert_eq!(b.in_use(), 3, "one reference to 5 is left");
        b.forget(5, u64::MAX);
        assert_eq!(b.in_use(), 2);
        b.forget(99, 1);
        b.remove_handle();
        b.remove_handle();
        assert_eq!(b.in_use(), 1);
        b.clear();
        assert_eq!(b.in_use(), 0);
    }
}
