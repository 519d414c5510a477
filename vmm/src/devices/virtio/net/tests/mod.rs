//! Device-level tests: a scripted guest driver on mock queues, a `SOCK_SEQPACKET` socket pair
//! standing in for the tap (it keeps frame boundaries, cuts long frames short, and reports its
//! peer's departure as a tap reports its interface's), and the real event loop between them.

mod flows;
mod hostile;

use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::devices::virtio::irq::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use crate::devices::virtio::{ActivatedQueue, IrqTrigger, VirtioDevice};

const MEM_SIZE: usize = 0x200_0000;
const QSIZE: u16 = QUEUE_SIZE;
const QUEUE_ADDRS: [u64; 2] = [0x1_0000, 0x2_0000];
/// Receive buffers: one 64 KiB area per descriptor head.
const RX_BUF_BASE: u64 = 0x10_0000;
const RX_STRIDE: u64 = 0x1_0000;
/// Transmit buffers: 16 slots of 128 KiB, used in turn.
const TX_BUF_BASE: u64 = 0x120_0000;
const TX_STRIDE: u64 = 0x2_0000;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const HDR: usize = VNET_HDR_LEN;
/// A receive buffer as Linux posts it without offloads: header and a 1514-byte frame.
const SMALL_BUF: u32 = (HDR + 1514) as u32;
const MAC: MacAddr = MacAddr([0x02, 0x48, 0x55, 0x53, 0x4b, 0x01]);

/// The device's end of the socket pair.
struct FakeTap(File);

impl AsRawFd for FakeTap {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl NetBackend for FakeTap {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.0.write(frame)
    }
}

/// A non-blocking `SOCK_SEQPACKET` pair: (device end, host end).
fn seqpacket_pair() -> (File, File) {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: socketpair(2) writes two descriptors into the live two-element array.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "socketpair: {}", io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned by nothing else.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    (File::from(a), File::from(b))
}

/// A queue as the scripted driver sees it.
#[derive(Default)]
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
    dev: Arc<Mutex<Net>>,
    em: Loop,
    irq: Arc<IrqTrigger>,
    kicks: Vec<EventFd>,
    rx: Ring,
    tx: Ring,
    tx_slot: u64,
    /// The host's end of the "tap"; `None` once the test closed it.
    host: Option<File>,
}

impl Guest {
    fn new() -> Self {
        Self::with_mtu(Some(1500))
    }

    fn with_mtu(mtu: Option<u32>) -> Self {
        let (dev_end, host) = seqpacket_pair();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let dev = Net::new(Box::new(FakeTap(dev_end)), "fake", MAC, mtu).unwrap();
        let dev = Arc::new(Mutex::new(dev));
        let mut em: Loop = EventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        let mut g = Self {
            mem,
            dev,
            em,
            irq: Arc::new(IrqTrigger::new().unwrap()),
            kicks: Vec::new(),
            rx: Ring::default(),
            tx: Ring::default(),
            tx_slot: 0,
            host: Some(host),
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
                ..Ring::default()
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
        for _ in 0..1000 {
            if self.em.run_with_timeout(5).unwrap() == 0 {
                return;
            }
        }
        panic!("event loop never went idle");
    }

    fn counters(&self) -> NetCountersSnapshot {
        self.dev.lock().unwrap().counters().snapshot()
    }

    /// Makes a chain available: `(addr, len, flags)` per descriptor, linked in order.
    fn push_chain(&mut self, rx: bool, descs: &[(u64, u32, u16)]) -> u16 {
        let ring = if rx { &mut self.rx } else { &mut self.tx };
        push(&self.mem, ring, descs)
    }

    /// Puts descriptor `head` (already written) in the avail ring.
    fn publish(&mut self, rx: bool, head: u16) {
        let ring = if rx { &mut self.rx } else { &mut self.tx };
        publish(&self.mem, ring, head);
    }

    fn kick(&mut self, rx: bool) {
        self.kicks[if rx { 0 } else { 1 }].write(1).unwrap();
        self.pump();
    }

    /// Posts `n` receive buffers of `len` bytes (one descriptor each) and notifies.
    fn give_rx(&mut self, n: usize, len: u32) {
        for _ in 0..n {
            let base = RX_BUF_BASE + u64::from(self.rx.next_desc) * RX_STRIDE;
            self.push_chain(true, &[(base, len, F_WRITE)]);
        }
        self.kick(true);
    }

    /// Sends a frame: header (garbage, which the device must not pass on) and frame in two
    /// descriptors.
    fn send(&mut self, frame: &[u8]) {
        let base = TX_BUF_BASE + (self.tx_slot % 16) * TX_STRIDE;
        self.tx_slot += 1;
        self.mem
            .write_slice(&[0xa5; HDR], GuestAddress(base))
            .unwrap();
        self.mem
            .write_slice(frame, GuestAddress(base + 0x100))
            .unwrap();
        self.send_raw(&[(base, HDR as u32, 0), (base + 0x100, frame.len() as u32, 0)]);
    }

    fn send_raw(&mut self, descs: &[(u64, u32, u16)]) {
        self.push_chain(false, descs);
        self.kick(false);
    }

    /// Everything the device put on the receive queue since the last call: (id, used length).
    fn used(&mut self, rx: bool) -> Vec<(u32, u32)> {
        let ring = if rx { &mut self.rx } else { &mut self.tx };
        let used_idx: u16 = self.mem.read_obj(GuestAddress(ring.used + 2)).unwrap();
        let mut out = Vec::new();
        while ring.used_seen != used_idx {
            let at = GuestAddress(ring.used + 4 + 8 * u64::from(ring.used_seen % QSIZE));
            let id: u32 = self.mem.read_obj(at).unwrap();
            let len: u32 = self.mem.read_obj(at.unchecked_add(4)).unwrap();
            ring.used_seen = ring.used_seen.wrapping_add(1);
            out.push((id, len));
        }
        out
    }

    /// The frames received since the last call (header checked, then stripped); buffers the
    /// device returned empty are `None`.
    fn recv(&mut self) -> Vec<Option<Vec<u8>>> {
        self.used(true)
            .into_iter()
            .map(|(id, len)| {
                if len == 0 {
                    return None;
                }
                let mut data = vec![0u8; len as usize];
                let at = RX_BUF_BASE + u64::from(id) * RX_STRIDE;
                self.mem.read_slice(&mut data, GuestAddress(at)).unwrap();
                let (hdr, frame) = data.split_at(HDR);
                assert_eq!(hdr, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0], "rx header");
                Some(frame.to_vec())
            })
            .collect()
    }

    /// Writes a frame (with a vnet header) to the device from the host side.
    fn host_send(&mut self, frame: &[u8]) {
        let mut buf = vec![0u8; HDR];
        buf.extend_from_slice(frame);
        let n = self.host.as_mut().unwrap().write(&buf).unwrap();
        assert_eq!(n, buf.len());
        self.pump();
    }

    /// The frames the device wrote to the host side (headers included).
    fn host_recv(&mut self) -> Vec<Vec<u8>> {
        let host = self.host.as_mut().unwrap();
        let mut out = Vec::new();
        let mut buf = vec![0u8; 70_000];
        loop {
            match host.read(&mut buf) {
                Ok(0) => return out,
                Ok(n) => out.push(buf[..n].to_vec()),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return out,
                Err(e) => panic!("host read: {e}"),
            }
        }
    }

    fn backend_watched(&self) -> bool {
        self.dev.lock().unwrap().backend_registered
    }

    /// Takes the pending interrupt status and drains the interrupt eventfd.
    fn take_irq(&self) -> u32 {
        let status = self.irq.status();
        self.irq.ack(status);
        let _ = self.irq.eventfd().read();
        status
    }
}

/// A queue of its own at `addr`, for driving the queue functions without the device.
fn standalone_queue(mem: &GuestMemoryMmap, addr: u64) -> (Queue, Ring) {
    let mock = MockSplitQueue::create(mem, GuestAddress(addr), QSIZE);
    let ring = Ring {
        desc: mock.desc_table_addr().0,
        avail: mock.avail_addr().0,
        used: mock.used_addr().0,
        ..Ring::default()
    };
    (mock.create_queue().unwrap(), ring)
}

/// Writes a chain into `ring`'s descriptor table and makes it available; returns its head.
fn push(mem: &GuestMemoryMmap, ring: &mut Ring, descs: &[(u64, u32, u16)]) -> u16 {
    let head = ring.next_desc;
    for (i, &(addr, len, flags)) in descs.iter().enumerate() {
        let idx = (head + i as u16) % QSIZE;
        let last = i + 1 == descs.len();
        let flags = if last { flags } else { flags | F_NEXT };
        write_desc(mem, ring.desc, idx, addr, len, flags, (idx + 1) % QSIZE);
    }
    ring.next_desc = (head + descs.len() as u16) % QSIZE;
    publish(mem, ring, head);
    head
}

/// Puts descriptor `head` (already written) in `ring`'s avail ring.
fn publish(mem: &GuestMemoryMmap, ring: &mut Ring, head: u16) {
    let slot = GuestAddress(ring.avail + 4 + 2 * u64::from(ring.avail_idx % QSIZE));
    mem.write_obj(head.to_le(), slot).unwrap();
    ring.avail_idx = ring.avail_idx.wrapping_add(1);
    mem.write_obj(ring.avail_idx.to_le(), GuestAddress(ring.avail + 2))
        .unwrap();
}

fn write_desc(
    mem: &GuestMemoryMmap,
    table: u64,
    idx: u16,
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
) {
    let at = GuestAddress(table + 16 * u64::from(idx));
    mem.write_obj(addr.to_le(), at).unwrap();
    mem.write_obj(len.to_le(), at.unchecked_add(8)).unwrap();
    mem.write_obj(flags.to_le(), at.unchecked_add(12)).unwrap();
    mem.write_obj(next.to_le(), at.unchecked_add(14)).unwrap();
}

/// An Ethernet frame of `len` bytes: broadcast destination, the guest's source, then a
/// pattern that depends on `seed`.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&MAC.0);
    f.extend((12..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    f.truncate(len);
    f
}
