//! The connection table: routes guest packets to connections, picks what goes on the rx queue
//! next, and follows the host side (listener, handshakes, streams).
//!
//! A connection is keyed by `(local_port, peer_port)`: the host-side port and the guest-side
//! port. Nothing here touches guest memory or epoll: the queue code hands packets in and asks
//! for packets out, and the event handler reads the epoll interest each stream needs.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use vmm_sys_util::epoll::EventSet;

use super::connection::{pending, Connection, Verdict};
use super::packet::{host_header, op, Header, SHUTDOWN_SEND, TYPE_STREAM};
use super::unix::{
    connect_port, Handshake, HostListener, Progress, HANDSHAKE_TIMEOUT, MAX_HANDSHAKES,
};
use super::{bump, VsockCounters, MAX_CONNECTIONS, VSOCK_HOST_CID};

/// `(local_port, peer_port)`: the host-side port and the guest-side port.
pub(super) type ConnKey = (u32, u32);

/// The first local port handed to host-initiated connections; far above the ports host
/// services listen on, so that the two kinds do not meet.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// The most resets waiting for an rx buffer; more are dropped and counted.
const MAX_PENDING_RSTS: usize = 1024;
/// The most host clients accepted per listener event.
const ACCEPT_BATCH: usize = 16;

/// A host stream that is closed, waiting for its epoll registration to be removed.
pub(super) struct Retired {
    pub(super) stream: UnixStream,
    pub(super) registered: bool,
}

pub(super) struct Muxer {
    guest_cid: u64,
    pub(super) listener: HostListener,
    pub(super) conns: HashMap<ConnKey, Connection>,
    by_fd: HashMap<RawFd, ConnKey>,
    pub(super) handshakes: HashMap<RawFd, Handshake>,
    /// Connections with something for the rx queue, in round-robin order.
    rx_order: VecDeque<ConnKey>,
    /// Resets for the guest, ready-made.
    rst_queue: VecDeque<Header>,
    pub(super) retired: Vec<Retired>,
    next_local_port: u32,
    /// Whether a driver runs the device; host clients are refused otherwise.
    pub(super) guest_active: bool,
    counters: Arc<VsockCounters>,
}

impl Muxer {
    pub(super) fn new(
        guest_cid: u64,
        listener: HostListener,
        counters: Arc<VsockCounters>,
    ) -> Self {
        Self {
            guest_cid,
            listener,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            handshakes: HashMap::new(),
            rx_order: VecDeque::new(),
            rst_queue: VecDeque::new(),
            retired: Vec::new(),
            next_local_port: FIRST_LOCAL_PORT,
            guest_active: false,
            counters,
        }
    }

    fn uds_path(&self) -> PathBuf {
        self.listener.path().to_owned()
    }

    // ---- Guest to host ----

    /// Handles one valid packet from the guest; `data` is its payload (empty unless RW).
    pub(super) fn on_guest_packet(&mut self, hdr: &Header, data: &[u8]) {
        let key = (hdr.dst_port, hdr.src_port);
        if hdr.dst_cid != VSOCK_HOST_CID {
            // Guest-to-guest and other CIDs do not exist here.
            if hdr.op != op::RST {
                self.queue_rst_reply(hdr);
            }
            return;
        }
        match hdr.op {
            op::REQUEST => self.guest_request(hdr),
            op::RST => self.remove(key, false),
            _ => {
                let Some(conn) = self.conns.get_mut(&key) else {
                    self.queue_rst_reply(hdr);
                    return;
                };
                conn.update_peer_credit(hdr);
                let verdict = match hdr.op {
                    op::RESPONSE => conn.establish(hdr, key.0),
                    op::SHUTDOWN => conn.guest_shutdown(hdr.flags),
                    op::RW => conn.recv_data(data),
                    op::CREDIT_REQUEST => {
                        conn.pending_rx |= pending::CREDIT_UPDATE;
                        Verdict::Keep
                    }
                    // CREDIT_UPDATE: the credit fields were all it carried.
                    _ => Verdict::Keep,
                };
                self.settle(key, verdict);
            }
        }
    }

    /// A packet that failed validation: reset the connection it names, if there is one. No
    /// reply otherwise, so that garbage is not answered.
    pub(super) fn on_malformed(&mut self, hdr: &Header) {
        let key = (hdr.dst_port, hdr.src_port);
        if self.conns.contains_key(&key) {
            self.remove(key, true);
        }
    }

    fn guest_request(&mut self, hdr: &Header) {
        let key = (hdr.dst_port, hdr.src_port);
        if self.conns.contains_key(&key) {
            // A second REQUEST on a live connection breaks the protocol.
            bump(&self.counters.malformed_packets);
            self.remove(key, true);
            return;
        }
        if self.conns.len() >= MAX_CONNECTIONS {
            self.queue_rst_reply(hdr);
            return;
        }
        match connect_port(&self.uds_path(), hdr.dst_port) {
            Ok(stream) => {
                let conn = Connection::guest_initiated(stream, hdr);
                self.insert(key, conn);
            }
            Err(e) => {
                tracing::debug!(port = hdr.dst_port, "vsock: no host listener: {e}");
                self.queue_rst_reply(hdr);
            }
        }
    }

    fn insert(&mut self, key: ConnKey, conn: Connection) {
        self.by_fd.insert(conn.stream.as_raw_fd(), key);
        self.conns.insert(key, conn);
        bump(&self.counters.connections_opened);
        self.requeue(key);
    }

    /// Applies a verdict, removes finished connections, and queues the connection for the rx
    /// queue if it has something to send.
    fn settle(&mut self, key: ConnKey, verdict: Verdict) {
        if verdict == Verdict::Breach {
            bump(&self.counters.malformed_packets);
        }
        let done = match self.conns.get(&key) {
            Some(conn) => verdict != Verdict::Keep || conn.is_done(),
            None => return,
        };
        if done {
            tracing::debug!(
                ?verdict,
                local = key.0,
                peer = key.1,
                "vsock: connection ends"
            );
            self.remove(key, true);
        } else {
            self.requeue(key);
        }
    }

    fn requeue(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.check_stall() {
            bump(&self.counters.credit_stalls);
        }
        if !conn.queued && conn.wants_rx() {
            conn.queued = true;
            self.rx_order.push_back(key);
        }
    }

    /// Removes a connection and closes its stream; optionally tells the guest with a reset.
    fn remove(&mut self, key: ConnKey, send_rst: bool) {
        let Some(conn) = self.conns.remove(&key) else {
            return;
        };
        self.by_fd.remove(&conn.stream.as_raw_fd());
        self.retired.push(Retired {
            stream: conn.stream,
            registered: conn.registered.is_some(),
        });
        bump(&self.counters.connections_closed);
        if send_rst {
            self.queue_rst(host_header(self.guest_cid, key.0, key.1, op::RST));
        }
    }

    /// A reset in answer to `hdr`, from the address it was sent to.
    fn queue_rst_reply(&mut self, hdr: &Header) {
        self.queue_rst(Header {
            src_cid: hdr.dst_cid,
            dst_cid: self.guest_cid,
            src_port: hdr.dst_port,
            dst_port: hdr.src_port,
            type_: TYPE_STREAM,
            op: op::RST,
            ..Header::default()
        });
    }

    fn queue_rst(&mut self, hdr: Header) {
        if self.rst_queue.len() < MAX_PENDING_RSTS {
            self.rst_queue.push_back(hdr);
        } else {
            bump(&self.counters.rx_dropped);
        }
    }

    // ---- Host to guest ----

    /// Whether anything waits for the rx queue.
    pub(super) fn has_rx(&self) -> bool {
        !self.rst_queue.is_empty() || !self.rx_order.is_empty()
    }

    /// The next packet for the guest. Payload goes into `buf` (as much as fits and the
    /// guest's credit allows); returns the header and the payload length.
    ///
    /// Each queued connection gets one try per call, so that one that cannot use `buf` (an
    /// empty data buffer) does not hold the loop.
    pub(super) fn next_rx_packet(&mut self, buf: &mut [u8]) -> Option<(Header, usize)> {
        let mut tries = self.rx_order.len();
        loop {
            if let Some(hdr) = self.rst_queue.pop_front() {
                bump(&self.counters.rst_sent);
                return Some((hdr, 0));
            }
            if tries == 0 {
                return None;
            }
            tries -= 1;
            let key = self.rx_order.pop_front()?;
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.queued = false;
            if let Some(packet) = self.produce(key, buf) {
                self.requeue(key);
                return Some(packet);
            }
            self.settle(key, Verdict::Keep);
        }
    }

    /// One packet from connection `key`: owed control packets first, then data.
    fn produce(&mut self, key: ConnKey, buf: &mut [u8]) -> Option<(Header, usize)> {
        let guest_cid = self.guest_cid;
        let conn = self.conns.get_mut(&key)?;
        for _ in 0..2 {
            if let Some((bit, op)) = take_pending(conn) {
                conn.pending_rx &= !bit;
                let mut hdr = host_header(guest_cid, key.0, key.1, op);
                if op == op::SHUTDOWN {
                    hdr.flags = SHUTDOWN_SEND;
                }
                conn.stamp(&mut hdr);
                return Some((hdr, 0));
            }
            if !conn.data_ready() {
                return None;
            }
            match conn.read_host(buf) {
                Ok(0) => {
                    if conn.host_eof && conn.is_done() {
                        self.remove(key, true);
                        return None;
                    }
                    // Either nothing to read now, or EOF queued a SHUTDOWN: look again.
                }
                Ok(n) => {
                    let mut hdr = host_header(guest_cid, key.0, key.1, op::RW);
                    hdr.len = n as u32; // n <= buf.len() <= MAX_PKT_DATA
                    conn.stamp(&mut hdr);
                    return Some((hdr, n));
                }
                Err(e) => {
                    tracing::debug!("vsock: host stream read: {e}");
                    self.remove(key, true);
                    return None;
                }
            }
        }
        None
    }

    // ---- Host side ----

    /// Accepts waiting host clients into the handshake stage.
    pub(super) fn accept(&mut self, now: Instant) {
        for _ in 0..ACCEPT_BATCH {
            match self.listener.listener.accept() {
                Ok((stream, _)) => {
                    if self.handshakes.len() >= MAX_HANDSHAKES {
                        bump(&self.counters.handshake_failures);
                        continue; // dropping the stream closes it
                    }
                    match Handshake::new(stream, now) {
                        Ok(hs) => {
                            self.handshakes.insert(hs.stream.as_raw_fd(), hs);
                        }
                        Err(_) => bump(&self.counters.handshake_failures),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and the like: try again on the next event.
                    tracing::debug!("vsock: accept: {e}");
                    return;
                }
            }
        }
    }

    /// Epoll reported `events` on a host stream.
    pub(super) fn on_stream_event(&mut self, fd: RawFd, events: EventSet, now: Instant) {
        if self.handshakes.contains_key(&fd) {
            self.on_handshake_readable(fd, now);
            return;
        }
        let Some(&key) = self.by_fd.get(&fd) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let trouble = events.intersects(EventSet::HANG_UP | EventSet::ERROR);
        let mut verdict = Verdict::Keep;
        if events.contains(EventSet::IN) || trouble {
            conn.rx_ready = true;
        }
        if events.contains(EventSet::OUT) || trouble {
            verdict = conn.flush();
        }
        self.settle(key, verdict);
    }

    fn on_handshake_readable(&mut self, fd: RawFd, now: Instant) {
        let Some(hs) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let port = match hs.read() {
            Progress::Pending => return,
            Progress::Connect(port) => Some(port),
            Progress::Failed => None,
        };
        let Some(hs) = self.handshakes.remove(&fd) else {
            return;
        };
        let local = port.and_then(|port| self.allocate_local_port(port).map(|l| (l, port)));
        match local {
            Some(key) if self.guest_active && self.conns.len() < MAX_CONNECTIONS => {
                let mut conn = Connection::host_initiated(hs.stream, now + HANDSHAKE_TIMEOUT);
                // The same descriptor stays registered; the next epoll sync adjusts it.
                conn.registered = hs.registered;
                self.insert(key, conn);
            }
            _ => {
                bump(&self.counters.handshake_failures);
                self.retired.push(Retired {
                    stream: hs.stream,
                    registered: hs.registered.is_some(),
                });
            }
        }
    }

    /// Whether anything waits on a deadline (handshakes, connections the guest has not
    /// answered yet).
    pub(super) fn has_deadlines(&self) -> bool {
        !self.handshakes.is_empty() || self.conns.values().any(|c| c.connect_deadline.is_some())
    }

    /// Closes host clients that did not finish their handshake in time, and connections the
    /// guest did not answer in time (with a reset, in case the guest is still half-way).
    pub(super) fn expire(&mut self, now: Instant) {
        let unanswered: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| c.connect_deadline.is_some_and(|d| now >= d))
            .map(|(&key, _)| key)
            .collect();
        for key in unanswered {
            bump(&self.counters.handshake_failures);
            self.remove(key, true);
        }
        self.expire_handshakes(now);
    }

    fn expire_handshakes(&mut self, now: Instant) {
        let expired: Vec<RawFd> = self
            .handshakes
            .iter()
            .filter(|(_, hs)| hs.expired(now))
            .map(|(&fd, _)| fd)
            .collect();
        for fd in expired {
            if let Some(hs) = self.handshakes.remove(&fd) {
                bump(&self.counters.handshake_failures);
                self.retired.push(Retired {
                    stream: hs.stream,
                    registered: hs.registered.is_some(),
                });
            }
        }
    }

    fn allocate_local_port(&mut self, peer_port: u32) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_local_port;
            self.next_local_port = port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(port, peer_port)) {
                return Some(port);
            }
        }
        None
    }

    /// Drops every connection, as a device reset requires. Host clients see their streams
    /// close; the guest is gone, so no resets are sent.
    pub(super) fn reset(&mut self) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove(key, false);
        }
        self.rx_order.clear();
        self.rst_queue.clear();
        self.guest_active = false;
    }
}

/// The most urgent control packet a connection owes, as (bit, op).
fn take_pending(conn: &Connection) -> Option<(u8, u16)> {
    const ORDER: [(u8, u16); 5] = [
        (pending::REQUEST, op::REQUEST),
        (pending::RESPONSE, op::RESPONSE),
        (pending::CREDIT_UPDATE, op::CREDIT_UPDATE),
        (pending::CREDIT_REQUEST, op::CREDIT_REQUEST),
        (pending::SHUTDOWN, op::SHUTDOWN),
    ];
    ORDER
        .into_iter()
        .find(|&(bit, _)| conn.pending_rx & bit != 0)
}
