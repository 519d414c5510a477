//! [`GuardedFs`]: the file system the guest talks to, a wrapper around the passthrough file
//! system that checks what it is asked before the host sees it.
//!
//! The passthrough already resolves every name relative to the parent's `O_PATH` descriptor
//! with `O_NOFOLLOW`, opens only regular files and directories (re-opened through
//! `/proc/self/fd`), and does the xattr and time calls through `/proc/self/fd/N`, which for a
//! symlink acts on the link itself. What it leaves open, and this wrapper closes:
//!
//! - LOOKUP allows `.` and `..` (for NFS export, which husk does not offer); `..` from any
//!   directory but the root is resolved by the host. Every name must be one component: not
//!   empty, not `.` or `..`, no `/`.
//! - OPEN and CREATE pass the guest's flags to `openat`: `O_PATH` and `O_TMPFILE` are refused,
//!   `O_CREAT`/`O_EXCL`/`O_NOFOLLOW`/`O_NOCTTY` dropped from OPEN. CREATE always asks the host
//!   for `O_EXCL` and opens an existing file through the ordinary LOOKUP and OPEN path, so a
//!   failed open cannot leave an uncounted inode behind.
//! - MKNOD would create device nodes on the host: only regular files, FIFOs, sockets and the
//!   0/0 character device (an overlayfs whiteout) are allowed; other devices get EPERM.
//! - Sizes the guest picks for host buffers (getxattr, listxattr, readdir) are capped.
//! - Every entry and handle the guest is given is counted against the descriptor budget
//!   ([`super::budget`]); past it the guest gets EMFILE.
//! - Opening a FIFO, socket or device in the share gets EOPNOTSUPP instead of EBADF.

use std::ffi::CStr;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, FsOptions, GetxattrReply, ListxattrReply, OpenOptions,
    SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};

use super::budget::FdBudget;
use super::{add, bump, FsCounters};

/// Longest name the host accepts for one path component.
const NAME_MAX: usize = 255;
/// Largest xattr value and name list the kernel handles (`XATTR_SIZE_MAX`, `XATTR_LIST_MAX`).
const XATTR_MAX: u32 = 65536;
/// Largest directory buffer the host reads for one READDIR.
const READDIR_MAX: u32 = 1 << 20;
/// `O_TMPFILE` without its `O_DIRECTORY` bit.
const O_TMPFILE_BIT: i32 = libc::O_TMPFILE & !libc::O_DIRECTORY;
/// Open flags the guest may never pass.
const FORBIDDEN_OPEN_FLAGS: i32 = libc::O_PATH | O_TMPFILE_BIT;
/// Open flags dropped from OPEN: creation belongs to CREATE, and the host must follow the
/// `/proc/self/fd` link it re-opens through.
const DROPPED_OPEN_FLAGS: i32 = libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_NOFOLLOW;
/// rename flags the host is asked to honour.
const RENAME_FLAGS: u32 = libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE | libc::RENAME_WHITEOUT;

/// Options husk wants from the guest on top of what the passthrough asks for: 1 MiB requests
/// instead of 4 KiB writes, parallel reads and lookups, and data invalidation when the host
/// changes a file.
const EXTRA_OPTIONS: FsOptions = FsOptions::MAX_PAGES
    .union(FsOptions::BIG_WRITES)
    .union(FsOptions::ASYNC_READ)
    .union(FsOptions::PARALLEL_DIROPS)
    .union(FsOptions::AUTO_INVAL_DATA);
/// Options never granted: no DAX window exists, no writeback cache (the host writes to the
/// share too), no NFS export (`..` lookups are refused), and locks stay in the guest.
const DENIED_OPTIONS: FsOptions = FsOptions::PERFILE_DAX
    .union(FsOptions::WRITEBACK_CACHE)
    .union(FsOptions::EXPORT_SUPPORT)
    .union(FsOptions::POSIX_LOCKS)
    .union(FsOptions::FLOCK_LOCKS);

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// A file system that checks the guest's requests and counts the host descriptors they cost
/// before passing them to `F`.
pub struct GuardedFs<F> {
    inner: F,
    budget: Mutex<FdBudget>,
    counters: Arc<FsCounters>,
}

impl<F: FileSystem<Inode = u64, Handle = u64>> GuardedFs<F> {
    /// Wraps `inner` with a budget of `max_fds` host descriptors.
    pub fn new(inner: F, max_fds: u32, counters: Arc<FsCounters>) -> Self {
        Self {
            inner,
            budget: Mutex::new(FdBudget::new(max_fds)),
            counters,
        }
    }

    /// Descriptors held for the guest now (lookup references and open handles).
    pub fn fds_in_use(&self) -> usize {
        self.budget().in_use()
    }

    fn budget(&self) -> MutexGuard<'_, FdBudget> {
        self.budget.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts an error answer.
    fn count<T>(&self, result: io::Result<T>) -> io::Result<T> {
        if result.is_err() {
            bump(&self.counters.error_replies);
        }
        result
    }

    fn refuse(&self, code: i32) -> io::Error {
        bump(&self.counters.refused);
        bump(&self.counters.error_replies);
        errno(code)
    }

    fn unsupported(&self, code: i32) -> io::Error {
        bump(&self.counters.unsupported);
        bump(&self.counters.error_replies);
        errno(code)
    }

    /// Fails with EMFILE unless `n` more descriptors fit the budget.
    fn reserve(&self, n: usize) -> io::Result<()> {
        if self.budget().has_room(n) {
            Ok(())
        } else {
            bump(&self.counters.fd_budget_hits);
            bump(&self.counters.error_replies);
            Err(errno(libc::EMFILE))
        }
    }

    /// A name the host resolves relative to a directory: one component, nothing special.
    fn check_name(&self, name: &CStr) -> io::Result<()> {
        let bytes = name.to_bytes();
        if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
            return Err(self.refuse(libc::EINVAL));
        }
        if bytes.len() > NAME_MAX {
            return Err(self.refuse(libc::ENAMETOOLONG));
        }
        Ok(())
    }

    /// The flags OPEN and OPENDIR pass to the host.
    fn open_flags(&self, flags: u32) -> io::Result<u32> {
        let flags = flags as i32;
        if flags & FORBIDDEN_OPEN_FLAGS != 0 {
            return Err(self.refuse(libc::EINVAL));
        }
        Ok((flags & !DROPPED_OPEN_FLAGS) as u32)
    }

    /// The flags CREATE passes to the host (which adds `O_CREAT | O_EXCL` itself).
    fn create_flags(&self, flags: u32) -> io::Result<u32> {
        let flags = flags as i32;
        if flags & (FORBIDDEN_OPEN_FLAGS | libc::O_DIRECTORY) != 0 {
            return Err(self.refuse(libc::EINVAL));
        }
        Ok((flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY)) as u32)
    }

    /// Hands an entry to the guest, counting its inode; an inode the guest does not hold yet is
    /// refused (and dropped again) when the budget is spent.
    fn admit(&self, ctx: &Context, entry: Entry) -> io::Result<Entry> {
        let mut budget = self.budget();
        if budget.holds(entry.inode) || budget.has_room(1) {
            budget.add_entry(entry.inode);
            return Ok(entry);
        }
        drop(budget);
        self.inner.forget(ctx, entry.inode, 1);
        bump(&self.counters.fd_budget_hits);
        bump(&self.counters.error_replies);
        Err(errno(libc::EMFILE))
    }

    fn admit_handle(&self, handle: Option<u64>) {
        if handle.is_some() {
            self.budget().add_handle();
        }
    }

    /// OPEN with the special-file answer: the passthrough refuses to open anything but regular
    /// files and directories with EBADF, which would read as a bug in the guest.
    fn open_checked(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        match self.inner.open(ctx, inode, flags, fuse_flags) {
            Ok(opened) => {
                self.admit_handle(opened.0);
                Ok(opened)
            }
            Err(e) if e.raw_os_error() == Some(libc::EBADF) && self.is_special(ctx, inode) => {
                Err(self.unsupported(libc::EOPNOTSUPP))
            }
            Err(e) => self.count(Err(e)),
        }
    }

    fn is_special(&self, ctx: &Context, inode: u64) -> bool {
        self.inner.getattr(ctx, inode, None).is_ok_and(|(st, _)| {
            !matches!(st.st_mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFDIR)
        })
    }

    /// MKNOD may create regular files, FIFOs, sockets and whiteouts, not devices.
    fn check_node(&self, mode: u32, rdev: u32) -> io::Result<()> {
        match mode & libc::S_IFMT {
            libc::S_IFREG | libc::S_IFIFO | libc::S_IFSOCK => Ok(()),
            libc::S_IFCHR if rdev == 0 => Ok(()),
            libc::S_IFCHR | libc::S_IFBLK => Err(self.unsupported(libc::EPERM)),
            _ => Err(self.refuse(libc::EINVAL)),
        }
    }

    /// CREATE of a name that exists, without O_EXCL: open the existing file.
    fn open_existing(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        let entry = self.count(self.inner.lookup(ctx, parent, name))?;
        let entry = self.admit(ctx, entry)?;
        match self.open_checked(ctx, entry.inode, flags, fuse_flags) {
            Ok((handle, opts, passthrough)) => Ok((entry, handle, opts, passthrough)),
            Err(e) => {
                self.budget().forget(entry.inode, 1);
                self.inner.forget(ctx, entry.inode, 1);
                Err(e)
            }
        }
    }
}

impl<F: FileSystem<Inode = u64, Handle = u64>> FileSystem for GuardedFs<F> {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let wanted = self.inner.init(capable)?;
        Ok((wanted | EXTRA_OPTIONS) - DENIED_OPTIONS)
    }

    fn destroy(&self) {
        self.inner.destroy();
        self.budget().clear();
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        self.check_name(name)?;
        let entry = self.count(self.inner.lookup(ctx, parent, name))?;
        self.admit(ctx, entry)
    }

    fn forget(&self, ctx: &Context, inode: u64, count: u64) {
        self.budget().forget(inode, count);
        self.inner.forget(ctx, inode, count);
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(u64, u64)>) {
        {
            let mut budget = self.budget();
            for &(inode, count) in &requests {
                budget.forget(inode, count);
            }
        }
        self.inner.batch_forget(ctx, requests);
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        self.count(self.inner.getattr(ctx, inode, handle))
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.count(self.inner.setattr(ctx, inode, attr, handle, valid))
    }

    fn readlink(&self, ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        self.count(self.inner.readlink(ctx, inode))
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.check_name(name)?;
        if linkname.to_bytes().is_empty() {
            return Err(self.refuse(libc::ENOENT));
        }
        self.reserve(1)?;
        let entry = self.count(self.inner.symlink(ctx, linkname, parent, name))?;
        self.budget().add_entry(entry.inode);
        Ok(entry)
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.check_name(name)?;
        self.check_node(mode, rdev)?;
        self.reserve(1)?;
        let entry = self.count(self.inner.mknod(ctx, parent, name, mode, rdev, umask))?;
        self.budget().add_entry(entry.inode);
        Ok(entry)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.check_name(name)?;
        self.reserve(1)?;
        let entry = self.count(self.inner.mkdir(ctx, parent, name, mode, umask))?;
        self.budget().add_entry(entry.inode);
        Ok(entry)
    }

    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.check_name(name)?;
        self.count(self.inner.unlink(ctx, parent, name))
    }

    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.check_name(name)?;
        self.count(self.inner.rmdir(ctx, parent, name))
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.check_name(oldname)?;
        self.check_name(newname)?;
        if flags & !RENAME_FLAGS != 0 {
            return Err(self.refuse(libc::EINVAL));
        }
        self.count(
            self.inner
                .rename(ctx, olddir, oldname, newdir, newname, flags),
        )
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        self.check_name(newname)?;
        // The entry is `inode` again, which the guest holds already.
        let entry = self.count(self.inner.link(ctx, inode, newparent, newname))?;
        self.budget().add_entry(entry.inode);
        Ok(entry)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let flags = self.open_flags(flags)?;
        self.reserve(1)?;
        self.open_checked(ctx, inode, flags, fuse_flags)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        self.check_name(name)?;
        let flags = self.create_flags(args.flags)?;
        self.reserve(2)?;
        let exclusive = CreateIn {
            flags: flags | libc::O_EXCL as u32,
            ..args
        };
        match self.inner.create(ctx, parent, name, exclusive) {
            Ok(created) => {
                self.budget().add_entry(created.0.inode);
                self.admit_handle(created.1);
                Ok(created)
            }
            Err(e)
                if e.raw_os_error() == Some(libc::EEXIST)
                    && args.flags & libc::O_EXCL as u32 == 0 =>
            {
                let open = self.open_flags(flags)?;
                self.open_existing(ctx, parent, name, open, args.fuse_flags)
            }
            Err(e) => self.count(Err(e)),
        }
    }

    fn read(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        let n = self.count(
            self.inner
                .read(ctx, inode, handle, w, size, offset, lock_owner, flags),
        )?;
        add(&self.counters.bytes_read, n as u64);
        Ok(n)
    }

    fn write(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        let result = self.inner.write(
            ctx,
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        );
        let n = self.count(result)?;
        add(&self.counters.bytes_written, n as u64);
        Ok(n)
    }

    fn flush(&self, ctx: &Context, inode: u64, handle: u64, lock_owner: u64) -> io::Result<()> {
        self.count(self.inner.flush(ctx, inode, handle, lock_owner))
    }

    fn fsync(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.count(self.inner.fsync(ctx, inode, datasync, handle))
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.count(
            self.inner
                .fallocate(ctx, inode, handle, mode, offset, length),
        )
    }

    fn release(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        handle: u64,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        let result =
            self.inner
                .release(ctx, inode, flags, handle, flush, flock_release, lock_owner);
        if result.is_ok() {
            self.budget().remove_handle();
        }
        self.count(result)
    }

    fn statfs(&self, ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        self.count(self.inner.statfs(ctx, inode))
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        if name.to_bytes().is_empty() || name.to_bytes().len() > NAME_MAX {
            return Err(self.refuse(libc::ERANGE));
        }
        if value.len() > XATTR_MAX as usize {
            return Err(self.refuse(libc::E2BIG));
        }
        self.count(self.inner.setxattr(ctx, inode, name, value, flags))
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        // The host never returns more than XATTR_MAX; a bigger size only asks for a bigger
        // allocation.
        self.count(self.inner.getxattr(ctx, inode, name, size.min(XATTR_MAX)))
    }

    fn listxattr(&self, ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        self.count(self.inner.listxattr(ctx, inode, size.min(XATTR_MAX)))
    }

    fn removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        self.count(self.inner.removexattr(ctx, inode, name))
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        let flags = self.open_flags(flags)?;
        self.reserve(1)?;
        let (handle, opts) = self.count(self.inner.opendir(ctx, inode, flags))?;
        self.admit_handle(handle);
        Ok((handle, opts))
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.count(
            self.inner
                .readdir(ctx, inode, handle, size.min(READDIR_MAX), offset, add_entry),
        )
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let mut counted = |dirent: DirEntry, entry: Entry| -> io::Result<usize> {
            let ino = entry.inode;
            let entry = self.admit(ctx, entry)?;
            let result = add_entry(dirent, entry);
            match result {
                // Ok(0): no room; the passthrough drops its reference again.
                Ok(0) => self.budget().forget(ino, 1),
                Ok(_) => {}
                // The entry never reached the guest, and the passthrough keeps the reference
                // it took: drop both.
                Err(_) => {
                    self.budget().forget(ino, 1);
                    self.inner.forget(ctx, ino, 1);
                }
            }
            result
        };
        let size = size.min(READDIR_MAX);
        self.count(
            self.inner
                .readdirplus(ctx, inode, handle, size, offset, &mut counted),
        )
    }

    fn fsyncdir(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.count(self.inner.fsyncdir(ctx, inode, datasync, handle))
    }

    fn releasedir(&self, ctx: &Context, inode: u64, flags: u32, handle: u64) -> io::Result<()> {
        let result = self.inner.releasedir(ctx, inode, flags, handle);
        if result.is_ok() {
            self.budget().remove_handle();
        }
        self.count(result)
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        self.count(self.inner.access(ctx, inode, mask))
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.count(self.inner.lseek(ctx, inode, handle, offset, whence))
    }

    // Not overridden, so the trait's defaults answer: getlk/setlk/setlkw, bmap, poll (ENOSYS),
    // ioctl (ENOTTY), setupmapping/removemapping (ENOSYS: no DAX window). The queue code counts
    // them as unsupported by opcode.
}
