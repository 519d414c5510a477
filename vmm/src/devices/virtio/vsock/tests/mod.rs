//! Device-level tests: a scripted guest driver on mock queues, real Unix sockets on the host
//! side, and the real event loop (event-manager) between them.

mod flows;
mod hostile;
mod teardown;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::packet::{op, Header, SHUTDOWN_BOTH, SHUTDOWN_SEND, TYPE_STREAM};
use super::*;
use crate::devices::virtio::{
    device_type, features, ActivatedQueue, IrqTrigger, MmioTransport, SharedVirtioDevice,
    VirtioDevice,
};

const GUEST_CID: u64 = 3;
const MEM_SIZE: usize = 0x100_0000;
const QSIZE: u16 = QUEUE_SIZE;
const QUEUE_ADDRS: [u64; 3] = [0x1_0000, 0x2_0000, 0x3_0000];
/// rx buffers: one 8 KiB area per descriptor head.
const RX_BUF_BASE: u64 = 0x10_0000;
const RX_DATA_LEN: u32 = 4096;
/// tx buffers: bump-allocated, 128 KiB each.
const TX_BUF_BASE: u64 = 0x40_0000;
const TX_BUF_STRIDE: u64 = 0x2_0000;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const HDR: u32 = 44;

/// A queue as the scripted driver sees it.
struct Ring {
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

type Loop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

struct Guest {
    mem: GuestMemoryMmap,
    dev: Arc<Mutex<Vsock>>,
    em: Loop,
    irq: Arc<IrqTrigger>,
    kicks: Vec<EventFd>,
    rx: Ring,
    tx: Ring,
    tx_slot: u64,
    dir: PathBuf,
    uds: PathBuf,
}

impl Guest {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("husk-vsock-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let uds = dir.join("vsock.sock");
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let dev = Arc::new(Mutex::new(Vsock::new(GUEST_CID, uds.clone()).unwrap()));
        let mut em: Loop = EventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        let irq = Arc::new(IrqTrigger::new().unwrap());
        let mut g = Self {
            mem,
            dev,
            em,
            irq,
            kicks: Vec::new(),
            rx: Ring::blank(),
            tx: Ring::blank(),
            tx_slot: 0,
            dir,
            uds,
        };
        g.activate();
        g
    }

    fn activate(&mut self) {
        let mut queues = Vec::new();
        let mut rings = Vec::new();
        self.kicks.clear();
        for (index, &addr) in QUEUE_ADDRS.iter().enumerate() {
            let mock = MockSplitQueue::create(&self.mem, GuestAddress(addr), QSIZE);
            let queue: Queue = mock.create_queue().unwrap();
            rings.push(Ring {
                desc: mock.desc_table_addr().0,
                avail: mock.avail_addr().0,
                used: mock.used_addr().0,
                ..Ring::blank()
            });
            let notify = EventFd::new(EFD_NONBLOCK).unwrap();
            self.kicks.push(notify.try_clone().unwrap());
            queues.push(ActivatedQueue {
                index: index as u16,
                queue,
                notify,
            });
        }
        self.tx = rings.remove(1);
        self.rx = rings.remove(0);
        self.dev
            .lock()
            .unwrap()
            .activate(self.mem.clone(), queues, self.irq.clone())
            .unwrap();
        self.pump();
    }

    /// Runs the event loop until it goes idle.
    fn pump(&mut self) {
        for _ in 0..100 {
            if self.em.run_with_timeout(2).unwrap() == 0 {
                return;
            }
        }
        panic!("event loop never went idle");
    }

    fn counters(&self) -> VsockCountersSnapshot {
        self.dev.lock().unwrap().counters().snapshot()
    }

    fn connections(&self) -> usize {
        self.dev.lock().unwrap().connection_count()
    }

    /// Makes a chain available: `(addr, len, flags)` per descriptor.
    fn push_chain(&mut self, rx: bool, descs: &[(u64, u32, u16)]) -> u16 {
        let mem = &self.mem;
        let ring = if rx { &mut self.rx } else { &mut self.tx };
        let head = ring.next_desc;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = (head + i as u16) % QSIZE;
            let last = i + 1 == descs.len();
            let flags = if last { flags } else { flags | F_NEXT };
            let next = (idx + 1) % QSIZE;
            let at = GuestAddress(ring.desc + 16 * u64::from(idx));
            mem.write_obj(addr.to_le(), at).unwrap();
            mem.write_obj(len.to_le(), at.unchecked_add(8)).unwrap();
            mem.write_obj(flags.to_le(), at.unchecked_add(12)).unwrap();
            mem.write_obj(next.to_le(), at.unchecked_add(14)).unwrap();
        }
        ring.next_desc = (head + descs.len() as u16) % QSIZE;
        let slot = GuestAddress(ring.avail + 4 + 2 * u64::from(ring.avail_idx % QSIZE));
        mem.write_obj(head.to_le(), slot).unwrap();
        ring.avail_idx = ring.avail_idx.wrapping_add(1);
        mem.write_obj(ring.avail_idx.to_le(), GuestAddress(ring.avail + 2))
            .unwrap();
        head
    }

    /// Gives the device `n` rx buffers (header + 4 KiB data, two descriptors).
    fn give_rx(&mut self, n: usize) {
        for _ in 0..n {
            let head = self.rx.next_desc;
            let base = RX_BUF_BASE + u64::from(head) * 0x2000;
            self.push_chain(
                true,
                &[(base, HDR, F_WRITE), (base + 0x100, RX_DATA_LEN, F_WRITE)],
            );
        }
        self.kicks[0].write(1).unwrap();
        self.pump();
    }

    /// Sends a packet: header and payload in two descriptors.
    fn send(&mut self, hdr: Header, data: &[u8]) {
        let base = TX_BUF_BASE + (self.tx_slot % 16) * TX_BUF_STRIDE;
        self.tx_slot += 1;
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(base))
            .unwrap();
        if data.is_empty() {
            self.send_raw(&[(base, HDR, 0)]);
        } else {
            self.mem
                .write_slice(data, GuestAddress(base + 0x100))
                .unwrap();
            self.send_raw(&[(base, HDR, 0), (base + 0x100, data.len() as u32, 0)]);
        }
    }

    fn send_raw(&mut self, descs: &[(u64, u32, u16)]) {
        self.push_chain(false, descs);
        self.kicks[1].write(1).unwrap();
        self.pump();
    }

    /// Everything the device put on the rx queue since the last call.
    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        let used_idx: u16 = self.mem.read_obj(GuestAddress(self.rx.used + 2)).unwrap();
        while self.rx.used_seen != used_idx {
            let at = GuestAddress(self.rx.used + 4 + 8 * u64::from(self.rx.used_seen % QSIZE));
            let id: u32 = self.mem.read_obj(at).unwrap();
            let len: u32 = self.mem.read_obj(at.unchecked_add(4)).unwrap();
            self.rx.used_seen = self.rx.used_seen.wrapping_add(1);
            if len == 0 {
                // A buffer the device could not use.
                out.push((Header::default(), Vec::new()));
                continue;
            }
            let base = RX_BUF_BASE + u64::from(id) * 0x2000;
            let mut raw = [0u8; 44];
            self.mem.read_slice(&mut raw, GuestAddress(base)).unwrap();
            let hdr = Header::from_bytes(&raw);
            assert_eq!(len, HDR + hdr.len, "used length matches the header");
            let mut data = vec![0u8; hdr.len as usize];
            self.mem
                .read_slice(&mut data, GuestAddress(base + 0x100))
                .unwrap();
            out.push((hdr, data));
        }
        out
    }

    fn tx_used(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.tx.used + 2)).unwrap()
    }

    fn port_listener(&self, port: u32) -> UnixListener {
        let path = format!("{}_{port}", self.uds.display());
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(path).unwrap();
        l.set_nonblocking(true).unwrap();
        l
    }

    /// A guest-initiated connection from guest port `src` to host port `dst`, accepted by a
    /// host listener; returns the host end.
    fn guest_connect(&mut self, src: u32, dst: u32, buf_alloc: u32) -> UnixStream {
        let listener = self.port_listener(dst);
        self.give_rx(4);
        self.send(
            Header {
                buf_alloc,
                ..ghdr(op::REQUEST, src, dst)
            },
            &[],
        );
        let (stream, _) = listener.accept().unwrap();
        stream.set_nonblocking(true).unwrap();
        let got = self.recv();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.op, op::RESPONSE);
        stream
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Ring {
    fn blank() -> Self {
        Self {
            desc: 0,
            avail: 0,
            used: 0,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }
}

/// A guest header from guest port `src` to host port `dst`.
fn ghdr(op: u16, src: u32, dst: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: VSOCK_HOST_CID,
        src_port: src,
        dst_port: dst,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 64 * 1024,
        ..Header::default()
    }
}

/// Reads what is there now from a non-blocking stream; `None` once it is closed (end of file,
/// or a reset when the device closed it with unread bytes).
fn read_now(s: &mut UnixStream) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Some(out),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("read: {e}"),
        }
    }
}
