//! Device-level tests: a scripted guest driver on mock queues, real Unix sockets on the host
//! side, and the real event loop (event-manager) between them.

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

#[test]
fn device_shape_and_config() {
    let g = Guest::new("shape");
    let dev = g.dev.lock().unwrap();
    assert_eq!(dev.device_type(), device_type::VSOCK);
    assert_eq!(dev.queue_max_sizes(), &[256, 256, 256]);
    assert_eq!(dev.avail_features(), 1 << features::VIRTIO_F_VERSION_1);
    assert_eq!(dev.config_space_len(), 8);
    let mut cid = [0u8; 8];
    dev.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), GUEST_CID);
    let mut hi = [0u8; 4];
    dev.read_config(4, &mut hi);
    assert_eq!(hi, [0; 4]);
    assert!(g.uds.exists());
    assert!(matches!(
        Vsock::new(2, g.dir.join("x")),
        Err(VsockError::InvalidCid(2))
    ));
    assert!(matches!(
        Vsock::new(u64::from(u32::MAX), g.dir.join("x")),
        Err(VsockError::InvalidCid(_))
    ));
}

#[test]
fn wires_into_transport_and_removes_socket_on_drop() {
    let dir = std::env::temp_dir().join(format!("husk-vsock-{}-wire", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let uds = dir.join("v.sock");
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let dev = Arc::new(Mutex::new(Vsock::new(5, uds.clone()).unwrap()));
    let shared: SharedVirtioDevice = dev.clone();
    let transport = MmioTransport::new(mem, shared).unwrap();
    let mut em: Loop = EventManager::new().unwrap();
    em.add_subscriber(dev.clone());
    assert!(uds.exists());
    drop(transport);
    drop(em);
    drop(dev);
    assert!(!uds.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn guest_connects_to_host_listener_and_data_flows() {
    let mut g = Guest::new("guest-connect");
    let listener = g.port_listener(1025);
    g.give_rx(8);
    g.send(ghdr(op::REQUEST, 5000, 1025), &[]);
    let (mut host, _) = listener.accept().unwrap();
    host.set_nonblocking(true).unwrap();
    let got = g.recv();
    assert_eq!(got.len(), 1);
    let resp = got[0].0;
    assert_eq!(resp.op, op::RESPONSE);
    assert_eq!((resp.src_cid, resp.dst_cid), (VSOCK_HOST_CID, GUEST_CID));
    assert_eq!((resp.src_port, resp.dst_port), (1025, 5000));
    assert_eq!(resp.buf_alloc, CONN_BUF_ALLOC);
    assert_eq!(resp.fwd_cnt, 0);
    assert_eq!(g.connections(), 1);

    let up = b"hello from the guest";
    g.send(
        Header {
            len: up.len() as u32,
            ..ghdr(op::RW, 5000, 1025)
        },
        up,
    );
    assert_eq!(read_now(&mut host).unwrap(), up);

    let down = b"hello from the host";
    host.write_all(down).unwrap();
    g.pump();
    let got = g.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.op, op::RW);
    assert_eq!(got[0].0.len as usize, down.len());
    assert_eq!(got[0].1, down);
    // The device forwarded the guest's bytes, and says so.
    assert_eq!(got[0].0.fwd_cnt, up.len() as u32);
    assert!(g.irq.status() & 1 != 0, "used-buffer interrupt raised");

    let c = g.counters();
    assert_eq!(c.connections_opened, 1);
    assert_eq!(c.tx_packets, 2);
    assert_eq!(c.rx_packets, 2);
    assert_eq!(c.malformed_packets, 0);
    assert_eq!(g.tx_used(), 2);
}

#[test]
fn no_host_listener_means_rst() {
    let mut g = Guest::new("no-listener");
    g.give_rx(2);
    g.send(ghdr(op::REQUEST, 5000, 4444), &[]);
    let got = g.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.op, op::RST);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (4444, 5000));
    assert_eq!(g.connections(), 0);
    assert_eq!(g.counters().rst_sent, 1);
    // Another CID than the host's: reset, not a connection.
    g.send(
        Header {
            dst_cid: 9,
            ..ghdr(op::REQUEST, 5001, 4444)
        },
        &[],
    );
    let got = g.recv();
    assert_eq!(got[0].0.op, op::RST);
    assert_eq!(got[0].0.src_cid, 9);
}

#[test]
fn host_data_never_exceeds_guest_credit() {
    let mut g = Guest::new("credit");
    let mut host = g.guest_connect(5000, 1025, 10);
    host.write_all(&[b'x'; 25]).unwrap();
    g.give_rx(8);
    let got = g.recv();
    let ops: Vec<u16> = got.iter().map(|p| p.0.op).collect();
    assert_eq!(ops, [op::RW, op::CREDIT_REQUEST]);
    assert_eq!(got[0].1.len(), 10);
    assert_eq!(g.counters().credit_stalls, 1);
    // Nothing more until the guest consumes.
    g.pump();
    assert!(g.recv().is_empty());

    // The guest read 10 bytes and says so.
    g.send(
        Header {
            buf_alloc: 10,
            fwd_cnt: 10,
            ..ghdr(op::CREDIT_UPDATE, 5000, 1025)
        },
        &[],
    );
    let got = g.recv();
    assert_eq!(got[0].0.op, op::RW);
    assert_eq!(got[0].1.len(), 10);
    g.send(
        Header {
            buf_alloc: 10,
            fwd_cnt: 20,
            ..ghdr(op::CREDIT_UPDATE, 5000, 1025)
        },
        &[],
    );
    let got = g.recv();
    let data: usize = got
        .iter()
        .filter(|p| p.0.op == op::RW)
        .map(|p| p.1.len())
        .sum();
    assert_eq!(data, 5);
    assert_eq!(g.counters().credit_stalls, 2);
}

#[test]
fn device_tells_guest_about_freed_buffer() {
    let mut g = Guest::new("credit-update");
    let mut host = g.guest_connect(5000, 1025, 64 * 1024);
    g.give_rx(4);
    // 240 KiB from the guest without any packet back: its view of our buffer drops to 16 KiB.
    let chunk = vec![0x5au8; 48 * 1024];
    let mut sent = 0usize;
    let mut host_got = 0usize;
    for _ in 0..5 {
        g.send(
            Header {
                len: chunk.len() as u32,
                ..ghdr(op::RW, 5000, 1025)
            },
            &chunk,
        );
        sent += chunk.len();
        host_got += read_now(&mut host).unwrap().len();
    }
    g.pump();
    host_got += read_now(&mut host).unwrap().len();
    assert_eq!(host_got, sent);
    let updates: Vec<Header> = g
        .recv()
        .into_iter()
        .map(|p| p.0)
        .filter(|h| h.op == op::CREDIT_UPDATE)
        .collect();
    assert!(!updates.is_empty(), "a CREDIT_UPDATE was sent");
    let last = updates[updates.len() - 1];
    assert!(last.fwd_cnt > 0 && last.fwd_cnt as usize <= sent);
    assert_eq!(last.buf_alloc, CONN_BUF_ALLOC);
    // Asked explicitly, the device answers with its current count.
    g.send(ghdr(op::CREDIT_REQUEST, 5000, 1025), &[]);
    let got = g.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.op, op::CREDIT_UPDATE);
    assert_eq!(got[0].0.fwd_cnt as usize, sent);
}

#[test]
fn guest_sending_beyond_credit_is_reset() {
    let mut g = Guest::new("overrun");
    let host = g.guest_connect(5000, 1025, 64 * 1024);
    g.give_rx(4);
    // The host never reads; the guest keeps sending regardless of credit.
    let chunk = vec![1u8; 60 * 1024];
    let mut resets = Vec::new();
    for _ in 0..64 {
        g.send(
            Header {
                len: chunk.len() as u32,
                ..ghdr(op::RW, 5000, 1025)
            },
            &chunk,
        );
        resets = g.recv().into_iter().filter(|p| p.0.op == op::RST).collect();
        if !resets.is_empty() {
            break;
        }
    }
    assert_eq!(resets.len(), 1, "overrun ends in a reset");
    assert_eq!(g.connections(), 0);
    assert_eq!(g.counters().malformed_packets, 1);
    drop(host);
}

#[test]
fn host_client_connects_to_guest() {
    let mut g = Guest::new("host-connect");
    g.give_rx(8);
    let mut client = UnixStream::connect(&g.uds).unwrap();
    client.write_all(b"CONNECT 1234\n").unwrap();
    g.pump();
    let got = g.recv();
    assert_eq!(got.len(), 1);
    let req = got[0].0;
    assert_eq!(req.op, op::REQUEST);
    assert_eq!((req.src_cid, req.dst_cid), (VSOCK_HOST_CID, GUEST_CID));
    assert_eq!(req.dst_port, 1234);
    assert_eq!(req.buf_alloc, CONN_BUF_ALLOC);
    let local = req.src_port;

    g.send(
        Header {
            buf_alloc: 64 * 1024,
            ..ghdr(op::RESPONSE, 1234, local)
        },
        &[],
    );
    client.set_nonblocking(true).unwrap();
    assert_eq!(
        read_now(&mut client).unwrap(),
        format!("OK {local}\n").into_bytes()
    );

    client.write_all(b"ping").unwrap();
    g.pump();
    let got = g.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, b"ping");
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (local, 1234));
    g.send(
        Header {
            len: 4,
            ..ghdr(op::RW, 1234, local)
        },
        b"pong",
    );
    assert_eq!(read_now(&mut client).unwrap(), b"pong");
    assert_eq!(g.connections(), 1);
}

#[test]
fn host_client_refused_by_guest_sees_eof() {
    let mut g = Guest::new("host-refused");
    g.give_rx(8);
    let mut client = UnixStream::connect(&g.uds).unwrap();
    client.write_all(b"CONNECT 99\n").unwrap();
    g.pump();
    let req = g.recv()[0].0;
    assert_eq!(req.op, op::REQUEST);
    g.send(ghdr(op::RST, 99, req.src_port), &[]);
    client.set_nonblocking(true).unwrap();
    assert_eq!(read_now(&mut client), None, "client sees EOF");
    assert_eq!(g.connections(), 0);
    let c = g.counters();
    assert_eq!((c.connections_opened, c.connections_closed), (1, 1));
    assert_eq!(c.rst_sent, 0, "no reset answers a reset");
}

#[test]
fn handshake_garbage_closes_client() {
    let mut g = Guest::new("garbage");
    g.give_rx(8);
    let long = [b'C'; 40];
    let cases: [&[u8]; 5] = [
        b"HELLO\n",
        &long,
        b"CONNECT abc\n",
        b"CONNECT 99999999999\n",
        b"CONNECT\n",
    ];
    for (i, case) in cases.iter().enumerate() {
        let mut client = UnixStream::connect(&g.uds).unwrap();
        client.write_all(case).unwrap();
        g.pump();
        client.set_nonblocking(true).unwrap();
        assert_eq!(read_now(&mut client), None, "case {i} closed");
        assert!(g.recv().is_empty(), "case {i}: nothing for the guest");
    }
    assert_eq!(g.counters().handshake_failures, cases.len() as u64);
    assert_eq!(g.connections(), 0);
    assert!(g.dev.lock().unwrap().muxer.handshakes.is_empty());
}

#[test]
fn host_client_before_driver_is_refused() {
    let mut g = Guest::new("no-driver");
    assert!(g.dev.lock().unwrap().reset());
    g.pump();
    let mut client = UnixStream::connect(&g.uds).unwrap();
    client.write_all(b"CONNECT 5\n").unwrap();
    g.pump();
    client.set_nonblocking(true).unwrap();
    assert_eq!(read_now(&mut client), None);
    assert_eq!(g.counters().handshake_failures, 1);
}

#[test]
fn malformed_packets_are_dropped_counted_and_reset() {
    let mut g = Guest::new("malformed");
    g.give_rx(32);
    let mut expected_malformed = 0;

    // Unparseable chains without a usable header: dropped, counted, nothing else.
    let base = TX_BUF_BASE;
    g.send_raw(&[(base, 20, 0)]); // header too short
    g.send_raw(&[(MEM_SIZE as u64 + 0x1000, HDR, 0)]); // outside guest memory
    g.send_raw(&[(u64::MAX - 10, HDR, 0)]); // wraps around
    g.send_raw(&[(base, HDR, F_WRITE)]); // wrong direction
    expected_malformed += 4;
    assert_eq!(g.counters().malformed_packets, expected_malformed);
    assert_eq!(g.tx_used(), 4, "every chain goes back to the guest");

    // Malformed packets naming a live connection: dropped and the connection reset.
    type Desc = (u64, u32, u16);
    type MakeBad = Box<dyn Fn(u32) -> (Header, Vec<Desc>)>;
    let bad: Vec<(&str, MakeBad)> = vec![
        (
            "len beyond the data descriptor",
            Box::new(|p| {
                let h = Header {
                    len: 100,
                    ..ghdr(op::RW, 6000 + p, 2000 + p)
                };
                (h, vec![(0, HDR, 0), (0x100, 10, 0)])
            }),
        ),
        (
            "data outside memory",
            Box::new(|p| {
                let h = Header {
                    len: 100,
                    ..ghdr(op::RW, 6000 + p, 2000 + p)
                };
                (h, vec![(0, HDR, 0), (MEM_SIZE as u64, 100, 0)])
            }),
        ),
        (
            "unknown op",
            Box::new(|p| {
                (
                    Header {
                        op: 42,
                        ..ghdr(0, 6000 + p, 2000 + p)
                    },
                    vec![(0, HDR, 0)],
                )
            }),
        ),
        (
            "wrong type",
            Box::new(|p| {
                let h = Header {
                    type_: 2,
                    ..ghdr(op::CREDIT_UPDATE, 6000 + p, 2000 + p)
                };
                (h, vec![(0, HDR, 0)])
            }),
        ),
        (
            "wrong src_cid",
            Box::new(|p| {
                let h = Header {
                    src_cid: 77,
                    ..ghdr(op::CREDIT_UPDATE, 6000 + p, 2000 + p)
                };
                (h, vec![(0, HDR, 0)])
            }),
        ),
        (
            "payload on a control op",
            Box::new(|p| {
                let h = Header {
                    len: 4,
                    ..ghdr(op::CREDIT_UPDATE, 6000 + p, 2000 + p)
                };
                (h, vec![(0, HDR, 0), (0x100, 4, 0)])
            }),
        ),
        (
            "payload over 64 KiB",
            Box::new(|p| {
                let h = Header {
                    len: MAX_PKT_DATA + 1,
                    ..ghdr(op::RW, 6000 + p, 2000 + p)
                };
                (h, vec![(0, HDR, 0), (0x100, MAX_PKT_DATA + 1, 0)])
            }),
        ),
    ];
    for (i, (what, make)) in bad.iter().enumerate() {
        let port = i as u32;
        let mut host = g.guest_connect(6000 + port, 2000 + port, 64 * 1024);
        let (hdr, descs) = make(port);
        let slot = TX_BUF_BASE + 0x20_0000;
        g.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(slot))
            .unwrap();
        let descs: Vec<_> = descs
            .into_iter()
            .map(|(a, l, f)| {
                let addr = if a < MEM_SIZE as u64 { slot + a } else { a };
                (addr, l, f)
            })
            .collect();
        g.send_raw(&descs);
        expected_malformed += 1;
        assert_eq!(g.counters().malformed_packets, expected_malformed, "{what}");
        let got = g.recv();
        assert_eq!(got.len(), 1, "{what}");
        assert_eq!(got[0].0.op, op::RST, "{what}");
        assert_eq!(
            (got[0].0.src_port, got[0].0.dst_port),
            (2000 + port, 6000 + port),
            "{what}"
        );
        assert_eq!(g.connections(), 0, "{what}");
        assert_eq!(read_now(&mut host), None, "{what}: host stream closed");
    }
    // Garbage for a connection that does not exist gets no answer.
    g.send(
        Header {
            op: 42,
            ..ghdr(0, 1, 1)
        },
        &[],
    );
    assert!(g.recv().is_empty());
}

#[test]
fn garbage_rx_buffers_are_skipped() {
    let mut g = Guest::new("bad-rx");
    // Read-only rx buffer, then a header that does not fit, then a good one.
    g.push_chain(true, &[(RX_BUF_BASE, HDR + 10, 0)]);
    g.push_chain(
        true,
        &[
            (RX_BUF_BASE, 8, F_WRITE),
            (RX_BUF_BASE + 0x100, 64, F_WRITE),
        ],
    );
    g.send(ghdr(op::REQUEST, 5000, 4444), &[]); // no listener: a RST to deliver
    assert_eq!(g.counters().malformed_packets, 2);
    g.give_rx(1);
    let got = g.recv();
    assert_eq!(got.len(), 3);
    assert_eq!(got[2].0.op, op::RST);
}

#[test]
fn guest_rst_removes_connection_and_closes_stream() {
    let mut g = Guest::new("guest-rst");
    let mut host = g.guest_connect(5000, 1025, 4096);
    g.send(ghdr(op::RST, 5000, 1025), &[]);
    assert_eq!(g.connections(), 0);
    assert_eq!(read_now(&mut host), None);
    assert!(g.recv().is_empty(), "no reset answers a reset");
    let c = g.counters();
    assert_eq!((c.connections_opened, c.connections_closed), (1, 1));
}

#[test]
fn host_eof_sends_shutdown_then_guest_close_ends_connection() {
    let mut g = Guest::new("shutdown");
    let mut host = g.guest_connect(5000, 1025, 4096);
    g.give_rx(4);
    host.write_all(b"last words").unwrap();
    host.shutdown(Shutdown::Write).unwrap();
    g.pump();
    let got = g.recv();
    let ops: Vec<u16> = got.iter().map(|p| p.0.op).collect();
    assert_eq!(ops, [op::RW, op::SHUTDOWN]);
    assert_eq!(got[0].1, b"last words");
    assert_eq!(got[1].0.flags, SHUTDOWN_SEND);
    assert_eq!(g.connections(), 1, "the guest may still send");

    // Half-closed: the guest's data still reaches the host.
    g.send(
        Header {
            len: 3,
            ..ghdr(op::RW, 5000, 1025)
        },
        b"bye",
    );
    assert_eq!(read_now(&mut host).unwrap(), b"bye");

    // The guest closes: both directions are done, the device resets and forgets it.
    g.send(
        Header {
            flags: SHUTDOWN_BOTH,
            ..ghdr(op::SHUTDOWN, 5000, 1025)
        },
        &[],
    );
    let got = g.recv();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.op, op::RST);
    assert_eq!(g.connections(), 0);
    assert_eq!(read_now(&mut host), None);
}

#[test]
fn guest_shutdown_send_half_closes_host_stream() {
    let mut g = Guest::new("half-close");
    let mut host = g.guest_connect(5000, 1025, 4096);
    g.send(
        Header {
            flags: SHUTDOWN_SEND,
            ..ghdr(op::SHUTDOWN, 5000, 1025)
        },
        &[],
    );
    assert_eq!(read_now(&mut host), None, "host sees EOF");
    // The host can still answer.
    g.give_rx(2);
    host.write_all(b"reply").unwrap();
    g.pump();
    let got = g.recv();
    assert_eq!(got[0].1, b"reply");
    // Data after SHUTDOWN(SEND) breaks the protocol.
    g.send(
        Header {
            len: 1,
            ..ghdr(op::RW, 5000, 1025)
        },
        b"x",
    );
    assert_eq!(g.recv()[0].0.op, op::RST);
    assert_eq!(g.connections(), 0);
}

#[test]
fn many_connections_and_reset() {
    let mut g = Guest::new("many");
    let listener = g.port_listener(1025);
    g.give_rx(40);
    for p in 0..32 {
        g.send(ghdr(op::REQUEST, 7000 + p, 1025), &[]);
    }
    let mut hosts: Vec<UnixStream> = (0..32).map(|_| listener.accept().unwrap().0).collect();
    assert_eq!(g.connections(), 32);
    let responses: HashMap<u32, u16> = g.recv().iter().map(|p| (p.0.dst_port, p.0.op)).collect();
    assert_eq!(responses.len(), 32);
    assert!(responses.values().all(|&o| o == op::RESPONSE));

    assert!(g.dev.lock().unwrap().reset());
    g.pump();
    assert_eq!(g.connections(), 0);
    for h in &mut hosts {
        h.set_nonblocking(true).unwrap();
        assert_eq!(read_now(h), None);
    }
    // The driver sets the device up again and it works.
    g.activate();
    let mut host = g.guest_connect(5000, 1025, 4096);
    g.send(
        Header {
            len: 2,
            ..ghdr(op::RW, 5000, 1025)
        },
        b"hi",
    );
    assert_eq!(read_now(&mut host).unwrap(), b"hi");
}
