//! One vsock stream connection: its state, its Unix stream, and credit-based flow control
//! (virtio spec 5.10.6.3).
//!
//! Each side advertises `buf_alloc` (its receive buffer) and `fwd_cnt` (the bytes it has
//! consumed from that buffer so far). A sender may have at most
//! `peer_buf_alloc - (tx_cnt - peer_fwd_cnt)` bytes in flight; counters wrap at 2^32.
//!
//! Host to guest: the device reads the Unix stream only when the guest has credit, and only as
//! much as that credit allows. Guest to host: the device writes guest data straight to the Unix
//! stream; what would block waits in `pending`, which the advertised `buf_alloc` bounds: a guest
//! that sends beyond its credit breaks the protocol and loses the connection.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use vmm_sys_util::epoll::EventSet;

use super::packet::{Header, SHUTDOWN_RCV, SHUTDOWN_SEND};
use super::{CONN_BUF_ALLOC, MAX_PKT_DATA};

/// Control packets a connection owes the guest, as bits.
pub(super) mod pending {
    pub const REQUEST: u8 = 1 << 0;
    pub const RESPONSE: u8 = 1 << 1;
    pub const CREDIT_UPDATE: u8 = 1 << 2;
    pub const CREDIT_REQUEST: u8 = 1 << 3;
    pub const SHUTDOWN: u8 = 1 << 4;
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Host-initiated: the REQUEST is queued or sent; waiting for the guest's RESPONSE.
    Connecting,
    /// Data flows.
    Established,
}

/// What the muxer must do with a connection after an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Carry on.
    Keep,
    /// Send the guest a reset and remove the connection.
    Reset,
    /// The guest broke the protocol: count it, then as [`Verdict::Reset`].
    Breach,
}

/// When the guest's view of our free buffer drops below this, and we have more, we tell it.
const CREDIT_UPDATE_THRESHOLD: u32 = MAX_PKT_DATA;

pub(super) struct Connection {
    pub(super) stream: UnixStream,
    pub(super) state: State,
    /// The epoll interest currently registered for `stream`, if any.
    pub(super) registered: Option<EventSet>,
    /// Whether the connection is in the muxer's rx round-robin.
    pub(super) queued: bool,
    /// Control packets owed to the guest ([`pending`] bits).
    pub(super) pending_rx: u8,

    /// Bytes of the handshake answer (`OK <port>\n`) not yet written to the host.
    preamble: Vec<u8>,
    /// Guest data not yet written to the host; never longer than `CONN_BUF_ALLOC`.
    pending_tx: VecDeque<u8>,
    /// Guest payload bytes received.
    rx_cnt: u32,
    /// Guest payload bytes written to the host (our `fwd_cnt`).
    fwd_cnt: u32,
    /// The `fwd_cnt` the guest last heard from us.
    last_fwd_cnt_sent: u32,

    /// Payload bytes sent to the guest.
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// The host stream may have data (epoll said so, or we have not seen EAGAIN yet).
    pub(super) rx_ready: bool,
    /// The host will send no more (EOF read).
    pub(super) host_eof: bool,
    /// SHUTDOWN flags the guest sent.
    pub(super) guest_shut: u32,
    /// The write side of the host stream was shut down after the guest's SHUTDOWN(SEND).
    host_write_shut: bool,
    /// Host data waits for guest credit; counted once per stall.
    stalled: bool,
    /// Host-initiated: when to give up waiting for the guest's RESPONSE.
    pub(super) connect_deadline: Option<Instant>,
}

impl Connection {
    /// A connection the host asked for; the REQUEST to the guest is pending, and the guest
    /// must answer by `deadline`.
    pub(super) fn host_initiated(stream: UnixStream, deadline: Instant) -> Self {
        let mut c = Self::new(stream, State::Connecting);
        c.pending_rx = pending::REQUEST;
        c.connect_deadline = Some(deadline);
        c
    }

    /// A connection the guest asked for, accepted by a host listener; the RESPONSE is pending.
    pub(super) fn guest_initiated(stream: UnixStream, hdr: &Header) -> Self {
        let mut c = Self::new(stream, State::Established);
        c.update_peer_credit(hdr);
        c.pending_rx = pending::RESPONSE;
        c.rx_ready = true;
        c
    }

    fn new(stream: UnixStream, state: State) -> Self {
        Self {
            stream,
            state,
            registered: None,
            queued: false,
            pending_rx: 0,
            preamble: Vec::new(),
            pending_tx: VecDeque::new(),
            rx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            rx_ready: false,
            host_eof: false,
            guest_shut: 0,
            host_write_shut: false,
            stalled: false,
            connect_deadline: None,
        }
    }

    /// Records the credit fields every guest packet carries.
    pub(super) fn update_peer_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
        if self.peer_free_credit() > 0 {
            self.stalled = false;
        }
    }

    /// The bytes the guest can take now. A guest whose counters make no sense (fwd_cnt ahead
    /// of what we sent) gets nothing rather than an overflowed credit.
    pub(super) fn peer_free_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// The guest accepted the connection the host asked for.
    pub(super) fn establish(&mut self, hdr: &Header, local_port: u32) -> Verdict {
        if self.state != State::Connecting || self.pending_rx & pending::REQUEST != 0 {
            return Verdict::Breach;
        }
        self.state = State::Established;
        self.connect_deadline = None;
        self.update_peer_credit(hdr);
        self.preamble = format!("OK {local_port}\n").into_bytes();
        self.rx_ready = true;
        self.flush()
    }

    /// Whether the host side may still produce data for the guest.
    fn host_may_send(&self) -> bool {
        self.state == State::Established && !self.host_eof && self.guest_shut & SHUTDOWN_RCV == 0
    }

    /// Whether the connection can put a data packet on the rx queue now.
    pub(super) fn data_ready(&self) -> bool {
        self.rx_ready && self.host_may_send() && self.peer_free_credit() > 0
    }

    /// Notes that host data waits for guest credit, and asks the guest for credit, once per
    /// stall. Returns whether a stall began.
    pub(super) fn check_stall(&mut self) -> bool {
        if self.stalled || !self.rx_ready || !self.host_may_send() || self.peer_free_credit() > 0 {
            return false;
        }
        self.stalled = true;
        self.pending_rx |= pending::CREDIT_REQUEST;
        true
    }

    /// Whether the connection has anything for the rx queue.
    pub(super) fn wants_rx(&self) -> bool {
        self.pending_rx != 0 || self.data_ready()
    }

    /// Reads host data for one packet into `buf`, at most the guest's credit.
    /// Returns `Ok(0)` with `rx_ready` cleared when nothing can be read now; sets `host_eof`
    /// and queues a SHUTDOWN on end of file.
    pub(super) fn read_host(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let credit = usize::try_from(self.peer_free_credit()).unwrap_or(usize::MAX);
        let want = buf.len().min(credit);
        if want == 0 {
            return Ok(0);
        }
        let Some(buf) = buf.get_mut(..want) else {
            return Ok(0);
        };
        match self.stream.read(buf) {
            Ok(0) => {
                self.host_eof = true;
                self.rx_ready = false;
                self.pending_rx |= pending::SHUTDOWN;
                Ok(0)
            }
            Ok(n) => {
                // `n <= want <= credit`, which is a u32.
                self.tx_cnt = self.tx_cnt.wrapping_add(n as u32);
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.rx_ready = false;
                Ok(0)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Fills the credit fields of a header we send, and notes what the guest now knows.
    pub(super) fn stamp(&mut self, hdr: &mut Header) {
        hdr.buf_alloc = CONN_BUF_ALLOC;
        hdr.fwd_cnt = self.fwd_cnt;
        self.last_fwd_cnt_sent = self.fwd_cnt;
    }

    /// Takes guest payload for the host. Data beyond the advertised buffer, or after the
    /// guest said it would send no more, breaks the protocol.
    pub(super) fn recv_data(&mut self, data: &[u8]) -> Verdict {
        if self.state != State::Established || self.guest_shut & SHUTDOWN_SEND != 0 {
            return Verdict::Breach;
        }
        let held = self.pending_tx.len();
        if held.saturating_add(data.len()) > CONN_BUF_ALLOC as usize {
            return Verdict::Breach;
        }
        // `data.len() <= CONN_BUF_ALLOC`, checked above.
        self.rx_cnt = self.rx_cnt.wrapping_add(data.len() as u32);
        self.pending_tx.extend(data);
        self.flush()
    }

    /// Writes what is held for the host until it would block. Shuts the host stream's write
    /// side once the guest has shut its sending side and everything is written.
    pub(super) fn flush(&mut self) -> Verdict {
        while !self.preamble.is_empty() {
            match self.stream.write(&self.preamble) {
                Ok(0) => return Verdict::Reset,
                Ok(n) => {
                    self.preamble.drain(..n.min(self.preamble.len()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Verdict::Keep,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Verdict::Reset,
            }
        }
        while !self.pending_tx.is_empty() {
            let (front, _) = self.pending_tx.as_slices();
            match self.stream.write(front) {
                Ok(0) => return Verdict::Reset,
                Ok(n) => {
                    let n = n.min(front.len());
                    self.pending_tx.drain(..n);
                    // `n <= CONN_BUF_ALLOC`.
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Verdict::Reset,
            }
        }
        if self.pending_tx.is_empty()
            && self.guest_shut & SHUTDOWN_SEND != 0
            && !self.host_write_shut
        {
            self.host_write_shut = true;
            // The host may already have closed its end; nothing more to tell it then.
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        if self.needs_credit_update() {
            self.pending_rx |= pending::CREDIT_UPDATE;
        }
        Verdict::Keep
    }

    /// Whether the guest's idea of our free buffer is low while the real one is larger.
    fn needs_credit_update(&self) -> bool {
        let free = |fwd: u32| CONN_BUF_ALLOC.saturating_sub(self.rx_cnt.wrapping_sub(fwd));
        let guest_view = free(self.last_fwd_cnt_sent);
        guest_view < CREDIT_UPDATE_THRESHOLD && free(self.fwd_cnt) > guest_view
    }

    /// The guest's SHUTDOWN.
    pub(super) fn guest_shutdown(&mut self, flags: u32) -> Verdict {
        self.guest_shut |= flags;
        if self.guest_shut & SHUTDOWN_RCV != 0 {
            // Host data the guest will not read is dropped with the stream's buffer.
            self.rx_ready = false;
        }
        self.flush()
    }

    /// Whether both directions are finished, so that the connection can go.
    pub(super) fn is_done(&self) -> bool {
        let guest_to_host_done = self.guest_shut & SHUTDOWN_SEND != 0
            && self.pending_tx.is_empty()
            && self.preamble.is_empty();
        let host_to_guest_done = self.host_eof || self.guest_shut & SHUTDOWN_RCV != 0;
        guest_to_host_done && host_to_guest_done
    }

    /// The epoll interest the stream needs now; empty means it should not be registered.
    pub(super) fn interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        if self.host_may_send() && !self.rx_ready && self.peer_free_credit() > 0 {
            set |= EventSet::IN;
        }
        if !self.preamble.is_empty() || !self.pending_tx.is_empty() {
            set |= EventSet::OUT;
        }
        set
    }

    /// Guest bytes held for the host.
    #[cfg(test)]
    pub(super) fn pending_tx_len(&self) -> usize {
        self.pending_tx.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(buf_alloc: u32, fwd_cnt: u32) -> Header {
        Header {
            buf_alloc,
            fwd_cnt,
            ..Header::default()
        }
    }

    #[test]
    fn peer_credit_wraps_and_never_overflows() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut c = Connection::guest_initiated(a, &hdr(100, 0));
        assert_eq!(c.peer_free_credit(), 100);
        c.tx_cnt = 60;
        assert_eq!(c.peer_free_credit(), 40);
        c.update_peer_credit(&hdr(100, 60));
        assert_eq!(c.peer_free_credit(), 100);
        // Counters wrap.
        c.tx_cnt = 10;
        c.update_peer_credit(&hdr(100, u32::MAX - 9));
        assert_eq!(c.peer_free_credit(), 80);
        // A guest claiming to have consumed more than was sent gets no credit.
        c.update_peer_credit(&hdr(100, 11));
        assert_eq!(c.peer_free_credit(), 0);
    }

    #[test]
    fn guest_data_is_bounded_by_advertised_buffer() {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut c = Connection::guest_initiated(a, &hdr(0, 0));
        // Fill the host socket so everything else waits in `pending_tx`.
        let chunk = vec![7u8; 64 * 1024];
        let mut guard = 0;
        while c.pending_tx_len() == 0 && guard < 1000 {
            assert_eq!(c.recv_data(&chunk[..4096]), Verdict::Keep);
            guard += 1;
        }
        let mut total = c.pending_tx_len();
        while total + chunk.len() <= CONN_BUF_ALLOC as usize {
            assert_eq!(c.recv_data(&chunk), Verdict::Keep);
            total = c.pending_tx_len();
        }
        assert_eq!(c.recv_data(&chunk), Verdict::Breach);
        assert!(c.pending_tx_len() <= CONN_BUF_ALLOC as usize);
        assert!(c.interest().contains(EventSet::OUT));
        drop(b);
    }
}
