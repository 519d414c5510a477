//! Tests that speak FUSE to the device the way a guest driver does: requests are written into
//! guest memory, chained on a split virtqueue and served by [`process_queue`] over a real
//! passthrough file system on a temporary directory; replies are read back from guest memory.
//! `device.rs` also runs the worker thread.

mod confinement;
mod device;
mod hostile;
mod ops;
mod race;

use std::ffi::CString;
use std::mem::size_of;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::{
    Attr, CreateIn, EntryOut, GetxattrIn, InHeader, InitIn, InitOut, MkdirIn, MknodIn, OpenIn,
    OpenOut, OutHeader, ReadIn, SetattrIn, SetxattrIn, WriteIn, WriteOut,
};
use fuse_backend_rs::api::filesystem::FsOptions;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::backend::{self, FsServer, SharedFs};
use super::queues::process_queue;
use super::{FsCounters, FsCountersSnapshot};

/// FUSE opcodes the tests send.
pub(super) mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const RELEASE: u32 = 18;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const CREATE: u32 = 35;
    pub const READDIRPLUS: u32 = 44;
}

pub(super) const ROOT: u64 = 1;
const MEM_SIZE: usize = 0x100_0000;
const QSIZE: u16 = 256;
const QUEUE_ADDR: u64 = 0x1_0000;
/// Request bytes go here, the reply buffer after them.
const REQ_ADDR: u64 = 0x10_0000;
const REPLY_ADDR: u64 = 0x80_0000;
pub(super) const F_NEXT: u16 = 1;
pub(super) const F_WRITE: u16 = 2;
pub(super) const F_INDIRECT: u16 = 4;
const HEADER: usize = size_of::<InHeader>();
const OUT_HEADER: usize = size_of::<OutHeader>();

/// A scratch directory with `share/` (exported) and `outside/` (what must stay unreachable).
pub(super) struct Dirs {
    pub(super) base: PathBuf,
    pub(super) share: PathBuf,
    pub(super) outside: PathBuf,
}

impl Dirs {
    pub(super) fn new(name: &str) -> Self {
        let base = std::env::temp_dir().join(format!("husk-fs-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let share = base.join("share");
        let outside = base.join("outside");
        std::fs::create_dir_all(&share).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), "host secret\n").unwrap();
        Self {
            base,
            share,
            outside,
        }
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// What came back for one request.
#[derive(Debug)]
pub(super) struct Reply {
    /// The length the device put in the used ring.
    pub(super) used_len: u32,
    /// The reply header's error (a negative errno, or 0); `None` if nothing was written.
    pub(super) error: Option<i32>,
    pub(super) unique: u64,
    pub(super) body: Vec<u8>,
}

impl Reply {
    /// The body as `T`, if the request succeeded.
    pub(super) fn ok<T: ByteValued + Default>(&self) -> Result<T, i32> {
        match self.error {
            Some(0) => Ok(read_obj(&self.body)),
            Some(e) => Err(-e),
            None => Err(0),
        }
    }

    /// The errno of a failed request (0 if it succeeded, -1 if there was no reply).
    pub(super) fn errno(&self) -> i32 {
        self.error.map_or(-1, |e| -e)
    }
}

pub(super) fn read_obj<T: ByteValued + Default>(bytes: &[u8]) -> T {
    let mut value = T::default();
    let n = size_of::<T>().min(bytes.len());
    value.as_mut_slice()[..n].copy_from_slice(&bytes[..n]);
    value
}

/// What a Linux 6.1 virtio-fs driver offers in FUSE_INIT (the first 32 bits).
pub(super) fn guest_capabilities() -> FsOptions {
    FsOptions::ASYNC_READ
        | FsOptions::POSIX_LOCKS
        | FsOptions::ATOMIC_O_TRUNC
        | FsOptions::EXPORT_SUPPORT
        | FsOptions::BIG_WRITES
        | FsOptions::DONT_MASK
        | FsOptions::FLOCK_LOCKS
        | FsOptions::AUTO_INVAL_DATA
        | FsOptions::DO_READDIRPLUS
        | FsOptions::READDIRPLUS_AUTO
        | FsOptions::ASYNC_DIO
        | FsOptions::WRITEBACK_CACHE
        | FsOptions::ZERO_MESSAGE_OPEN
        | FsOptions::PARALLEL_DIROPS
        | FsOptions::HANDLE_KILLPRIV
        | FsOptions::POSIX_ACL
        | FsOptions::MAX_PAGES
        | FsOptions::CACHE_SYMLINKS
        | FsOptions::ZERO_MESSAGE_OPENDIR
        | FsOptions::HANDLE_KILLPRIV_V2
}

/// Concatenates request parts.
pub(super) fn body(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

pub(super) fn cstr(name: &str) -> Vec<u8> {
    CString::new(name).unwrap().into_bytes_with_nul()
}

/// A guest driver on one request queue, with the device's server behind it.
pub(super) struct Guest {
    pub(super) mem: GuestMemoryMmap,
    pub(super) server: FsServer,
    pub(super) fs: SharedFs,
    pub(super) counters: Arc<FsCounters>,
    queue: Queue,
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
    unique: u64,
    pub(super) dirs: Dirs,
}

impl Guest {
    /// A guest with the share of `name` mounted (FUSE_INIT done), budget 1024.
    pub(super) fn new(name: &str) -> Self {
        Self::with_budget(name, 1024)
    }

    pub(super) fn with_budget(name: &str, max_fds: u32) -> Self {
        let dirs = Dirs::new(name);
        let counters = Arc::new(FsCounters::default());
        let (server, fs, _) = backend::build(&dirs.share, max_fds, Arc::clone(&counters)).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let mock = MockSplitQueue::create(&mem, GuestAddress(QUEUE_ADDR), QSIZE);
        let queue: Queue = mock.create_queue().unwrap();
        let (desc, avail, used) = (
            mock.desc_table_addr().0,
            mock.avail_addr().0,
            mock.used_addr().0,
        );
        let mut g = Self {
            mem,
            server,
            fs,
            counters,
            queue,
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
            unique: 0,
            dirs,
        };
        g.init();
        g
    }

    pub(super) fn counters(&self) -> FsCountersSnapshot {
        self.counters.snapshot()
    }

    pub(super) fn share(&self) -> &Path {
        &self.dirs.share
    }

    /// Writes descriptors `(addr, len, flags)` as one chain and makes it available.
    pub(super) fn push_chain(&mut self, descs: &[(u64, u32, u16)]) {
        let head = self.next_desc;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = (head + i as u16) % QSIZE;
            let last = i + 1 == descs.len();
            let flags = if last { flags } else { flags | F_NEXT };
            self.write_desc(self.desc, idx, (addr, len, flags, (idx + 1) % QSIZE));
        }
        self.next_desc = (head + descs.len() as u16) % QSIZE;
        self.make_available(head);
    }

    /// Writes one descriptor `(addr, len, flags, next)` at `index` of the table at `table`.
    pub(super) fn write_desc(&self, table: u64, index: u16, d: (u64, u32, u16, u16)) {
        let at = GuestAddress(table + 16 * u64::from(index));
        self.mem.write_obj(d.0.to_le(), at).unwrap();
        self.mem
            .write_obj(d.1.to_le(), at.unchecked_add(8))
            .unwrap();
        self.mem
            .write_obj(d.2.to_le(), at.unchecked_add(12))
            .unwrap();
        self.mem
            .write_obj(d.3.to_le(), at.unchecked_add(14))
            .unwrap();
    }

    /// A chain of one indirect descriptor pointing at `table` with `count` entries.
    pub(super) fn push_indirect(&mut self, table: u64, count: u16) {
        let head = self.next_desc;
        self.write_desc(
            self.desc,
            head,
            (table, 16 * u32::from(count), F_INDIRECT, 0),
        );
        self.next_desc = (head + 1) % QSIZE;
        self.make_available(head);
    }

    /// The driver's descriptor table.
    pub(super) fn desc_table(&self) -> u64 {
        self.desc
    }

    /// The head of the chain made available last.
    pub(super) fn last_head(&self) -> u16 {
        let slot =
            GuestAddress(self.avail + 4 + 2 * u64::from(self.avail_idx.wrapping_sub(1) % QSIZE));
        self.mem.read_obj(slot).unwrap()
    }

    /// Makes the chain starting at descriptor `head` (written by hand) available.
    pub(super) fn push_head(&mut self, head: u16) {
        self.make_available(head);
    }

    fn make_available(&mut self, head: u16) {
        let slot = GuestAddress(self.avail + 4 + 2 * u64::from(self.avail_idx % QSIZE));
        self.mem.write_obj(head.to_le(), slot).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx.to_le(), GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// Serves what is queued; returns the used ring entries `(id, len)` that appeared.
    pub(super) fn run(&mut self) -> Vec<(u32, u32)> {
        process_queue(&self.mem, &mut self.queue, &self.server, &self.counters, 64);
        let mut out = Vec::new();
        let used_idx: u16 = self.mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        while self.used_seen != used_idx {
            let at = GuestAddress(self.used + 4 + 8 * u64::from(self.used_seen % QSIZE));
            let id: u32 = self.mem.read_obj(at).unwrap();
            let len: u32 = self.mem.read_obj(at.unchecked_add(4)).unwrap();
            self.used_seen = self.used_seen.wrapping_add(1);
            out.push((id, len));
        }
        out
    }

    /// The reply in the reply buffer, as the used length says.
    fn reply(&self, used_len: u32) -> Reply {
        if (used_len as usize) < OUT_HEADER {
            return Reply {
                used_len,
                error: None,
                unique: 0,
                body: Vec::new(),
            };
        }
        let mut raw = vec![0u8; used_len as usize];
        self.mem
            .read_slice(&mut raw, GuestAddress(REPLY_ADDR))
            .unwrap();
        let out: OutHeader = read_obj(&raw);
        assert_eq!(out.len, used_len, "reply length matches the used length");
        Reply {
            used_len,
            error: Some(out.error),
            unique: out.unique,
            body: raw[OUT_HEADER..].to_vec(),
        }
    }

    /// Writes a request (header + `payload`) and returns the chain's descriptors: the request
    /// readable, then `reply_cap` writable bytes if not 0.
    pub(super) fn stage(
        &mut self,
        opcode: u32,
        nodeid: u64,
        payload: &[u8],
        reply_cap: u32,
    ) -> Vec<(u64, u32, u16)> {
        self.unique += 1;
        let header = InHeader {
            len: (HEADER + payload.len()) as u32,
            opcode,
            unique: self.unique,
            nodeid,
            uid: 0,
            gid: 0,
            pid: 1,
            padding: 0,
        };
        let request = [header.as_slice(), payload].concat();
        self.mem
            .write_slice(&request, GuestAddress(REQ_ADDR))
            .unwrap();
        let mut descs = vec![(REQ_ADDR, request.len() as u32, 0)];
        if reply_cap > 0 {
            descs.push((REPLY_ADDR, reply_cap, F_WRITE));
        }
        descs
    }

    /// Sends one request with a reply buffer of `reply_cap` bytes and returns the reply.
    pub(super) fn call_with(
        &mut self,
        opcode: u32,
        nodeid: u64,
        payload: &[u8],
        reply_cap: u32,
    ) -> Reply {
        let descs = self.stage(opcode, nodeid, payload, reply_cap);
        self.push_chain(&descs);
        let used = self.run();
        assert_eq!(used.len(), 1, "one chain returned: {used:?}");
        let reply = self.reply(used[0].1);
        if reply.error.is_some() {
            assert_eq!(reply.unique, self.unique, "reply to this request");
        }
        reply
    }

    pub(super) fn call(&mut self, opcode: u32, nodeid: u64, payload: &[u8]) -> Reply {
        self.call_with(opcode, nodeid, payload, (1 << 20) + 4096)
    }

    pub(super) fn init(&mut self) -> InitOut {
        let init = InitIn {
            major: 7,
            minor: 36,
            max_readahead: 128 * 1024,
            flags: guest_capabilities().bits() as u32,
        };
        self.call(op::INIT, 0, init.as_slice()).ok().unwrap()
    }

    pub(super) fn lookup(&mut self, parent: u64, name: &str) -> Result<EntryOut, i32> {
        self.call(op::LOOKUP, parent, &cstr(name)).ok()
    }

    pub(super) fn forget(&mut self, nodeid: u64, count: u64) {
        let reply = self.call(op::FORGET, nodeid, &count.to_le_bytes());
        assert_eq!(reply.used_len, 0, "FORGET has no reply");
    }

    pub(super) fn getattr(&mut self, nodeid: u64) -> Result<Attr, i32> {
        let out: fuse_backend_rs::abi::fuse_abi::AttrOut =
            self.call(op::GETATTR, nodeid, &[0u8; 16]).ok()?;
        Ok(out.attr)
    }

    /// CREATE; returns the entry and the file handle.
    pub(super) fn create(
        &mut self,
        parent: u64,
        name: &str,
        flags: i32,
    ) -> Result<(EntryOut, u64), i32> {
        let args = CreateIn {
            flags: flags as u32,
            mode: libc::S_IFREG | 0o644,
            umask: 0o022,
            fuse_flags: 0,
        };
        let reply = self.call(op::CREATE, parent, &body(&[args.as_slice(), &cstr(name)]));
        let entry: EntryOut = reply.ok()?;
        let open: OpenOut = read_obj(&reply.body[size_of::<EntryOut>()..]);
        Ok((entry, open.fh))
    }

    pub(super) fn open(&mut self, nodeid: u64, flags: i32) -> Result<u64, i32> {
        let args = OpenIn {
            flags: flags as u32,
            fuse_flags: 0,
        };
        let out: OpenOut = self.call(op::OPEN, nodeid, args.as_slice()).ok()?;
        Ok(out.fh)
    }

    pub(super) fn release(&mut self, nodeid: u64, fh: u64) {
        let mut args = [0u8; 24];
        args[..8].copy_from_slice(&fh.to_le_bytes());
        assert_eq!(self.call(op::RELEASE, nodeid, &args).errno(), 0);
    }

    pub(super) fn write(
        &mut self,
        nodeid: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<u32, i32> {
        let args = WriteIn {
            fh,
            offset,
            size: data.len() as u32,
            ..Default::default()
        };
        let out: WriteOut = self
            .call(op::WRITE, nodeid, &body(&[args.as_slice(), data]))
            .ok()?;
        Ok(out.size)
    }

    pub(super) fn read(
        &mut self,
        nodeid: u64,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, i32> {
        let args = ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        let reply = self.call(op::READ, nodeid, args.as_slice());
        match reply.errno() {
            0 => Ok(reply.body),
            e => Err(e),
        }
    }

    pub(super) fn mkdir(&mut self, parent: u64, name: &str) -> Result<EntryOut, i32> {
        let args = MkdirIn {
            mode: 0o755,
            umask: 0o022,
        };
        self.call(op::MKDIR, parent, &body(&[args.as_slice(), &cstr(name)]))
            .ok()
    }

    pub(super) fn mknod(
        &mut self,
        parent: u64,
        name: &str,
        mode: u32,
        rdev: u32,
    ) -> Result<EntryOut, i32> {
        let args = MknodIn {
            mode,
            rdev,
            umask: 0,
            padding: 0,
        };
        self.call(op::MKNOD, parent, &body(&[args.as_slice(), &cstr(name)]))
            .ok()
    }

    pub(super) fn symlink(
        &mut self,
        parent: u64,
        name: &str,
        target: &str,
    ) -> Result<EntryOut, i32> {
        self.call(op::SYMLINK, parent, &body(&[&cstr(name), &cstr(target)]))
            .ok()
    }

    pub(super) fn chmod(&mut self, nodeid: u64, mode: u32) -> Result<Attr, i32> {
        let args = SetattrIn {
            valid: 1, // FATTR_MODE
            mode,
            ..Default::default()
        };
        let out: fuse_backend_rs::abi::fuse_abi::AttrOut =
            self.call(op::SETATTR, nodeid, args.as_slice()).ok()?;
        Ok(out.attr)
    }

    pub(super) fn setxattr(&mut self, nodeid: u64, name: &str, value: &[u8]) -> i32 {
        let args = SetxattrIn {
            size: value.len() as u32,
            flags: 0,
        };
        self.call(
            op::SETXATTR,
            nodeid,
            &body(&[args.as_slice(), &cstr(name), value]),
        )
        .errno()
    }

    pub(super) fn getxattr(&mut self, nodeid: u64, name: &str, size: u32) -> Result<Vec<u8>, i32> {
        let args = GetxattrIn { size, padding: 0 };
        let reply = self.call(op::GETXATTR, nodeid, &body(&[args.as_slice(), &cstr(name)]));
        match reply.errno() {
            0 => Ok(reply.body),
            e => Err(e),
        }
    }
}
