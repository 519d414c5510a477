//! The receive and transmit queues: descriptor chains in, frames to and from the backend.
//! Nothing here depends on epoll, so tests drive it with hand-built rings.
//!
//! A chain is read once into a list of checked segments (direction, bounds, total length)
//! before a byte moves; the data is then copied between guest memory and the device's own
//! buffers, so the guest cannot change a frame while the device looks at it.

use std::io::ErrorKind;
use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

use super::backend::{is_gone, NetBackend};
use super::{add, bump, NetCounters, ETH_HLEN, MAX_FRAME_LEN, VNET_HDR_LEN};

/// The longest chain content the device accepts or fills: a header and the longest frame.
pub(super) const MAX_CHAIN_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;
/// The device's receive buffer: one byte more than the longest frame, so that a frame the
/// backend cut short can be told from one that fits exactly.
pub(super) const RX_BUF_LEN: usize = MAX_CHAIN_LEN + 1;
/// The header the device puts in front of every received frame: no flags, no GSO, and
/// `num_buffers` = 1 (virtio spec 5.1.6.4: without VIRTIO_NET_F_MRG_RXBUF it must be 1).
const RX_HEADER: [u8; VNET_HDR_LEN] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];

/// One piece of a chain: where, and how many bytes.
type Segment = (GuestAddress, usize);

/// Why a chain cannot carry a frame.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum BadChain {
    /// A descriptor goes the wrong way (readable on receive, writable on transmit).
    Direction,
    /// A descriptor lies (partly) outside guest memory.
    OutOfMemory,
    /// More than [`MAX_CHAIN_LEN`] bytes.
    TooLong,
    /// Not even room for the header and an Ethernet header.
    TooShort,
}

/// Reads `chain` into `segments`: every descriptor must be `writable` (or readable), inside
/// guest memory, and the total at most [`MAX_CHAIN_LEN`] and at least a header and an
/// Ethernet header. Zero-length descriptors are skipped. Returns the total.
fn segments(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    writable: bool,
    segments: &mut Vec<Segment>,
) -> Result<usize, BadChain> {
    segments.clear();
    let mut total = 0usize;
    // The chain iterator stops after as many descriptors as the table holds, so a loop in
    // the `next` links ends too.
    for desc in chain {
        if desc.is_write_only() != writable {
            return Err(BadChain::Direction);
        }
        let len = desc.len() as usize;
        if len == 0 {
            continue;
        }
        total = total
            .checked_add(len)
            .filter(|&t| t <= MAX_CHAIN_LEN)
            .ok_or(BadChain::TooLong)?;
        if !mem.check_range(desc.addr(), len) {
            return Err(BadChain::OutOfMemory);
        }
        segments.push((desc.addr(), len));
    }
    if total < VNET_HDR_LEN + ETH_HLEN {
        return Err(BadChain::TooShort);
    }
    Ok(total)
}

/// Returns a chain to the guest, counting a failed used-ring write as malformed.
fn give_back(mem: &GuestMemoryMmap, queue: &mut Queue, head: u16, len: u32, c: &NetCounters) {
    if queue.add_used(mem, head, len).is_err() {
        bump(&c.malformed);
    }
}

/// What [`process_tx`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct TxOutcome {
    /// Chains returned to the guest.
    pub(super) used: usize,
    /// The budget ran out with chains possibly left.
    pub(super) more: bool,
    /// The backend answered that it is gone.
    pub(super) gone: bool,
}

/// Sends up to `budget` frames the guest made available on the transmit queue. Each chain is
/// returned to the guest whatever its fate.
pub(super) fn process_tx(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    backend: &mut dyn NetBackend,
    scratch: &mut [u8],
    segs: &mut Vec<Segment>,
    counters: &NetCounters,
    budget: usize,
) -> TxOutcome {
    let mut out = TxOutcome::default();
    while out.used < budget {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            return out;
        };
        let head = chain.head_index();
        match read_frame(mem, chain, scratch, segs) {
            Ok(len) => {
                // No offload was negotiated: the host gets a header of the device's own.
                scratch[..VNET_HDR_LEN].fill(0);
                match send(backend, &scratch[..len]) {
                    Ok(()) => {
                        bump(&counters.tx_packets);
                        add(&counters.tx_bytes, (len - VNET_HDR_LEN) as u64);
                    }
                    Err(gone) => {
                        bump(&counters.tx_dropped);
                        out.gone |= gone;
                    }
                }
            }
            Err(why) => {
                tracing::trace!(?why, "virtio-net: malformed tx chain");
                bump(&counters.malformed);
            }
        }
        // The device writes nothing into transmit buffers.
        give_back(mem, queue, head, 0, counters);
        out.used += 1;
    }
    out.more = true;
    out
}

/// Copies a transmit chain's header and frame into `scratch`; returns the length.
fn read_frame(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    scratch: &mut [u8],
    segs: &mut Vec<Segment>,
) -> Result<usize, BadChain> {
    let total = segments(mem, chain, false, segs)?;
    let mut off = 0;
    for &(addr, len) in segs.iter() {
        let dst = scratch.get_mut(off..off + len).ok_or(BadChain::TooLong)?;
        mem.read_slice(dst, addr)
            .map_err(|_| BadChain::OutOfMemory)?;
        off += len;
    }
    Ok(total)
}

/// Writes one frame to the backend. `Err(true)` if the backend is gone, `Err(false)` if only
/// this frame was refused.
fn send(backend: &mut dyn NetBackend, frame: &[u8]) -> Result<(), bool> {
    loop {
        match backend.send(frame) {
            Ok(n) if n == frame.len() => return Ok(()),
            // A tap takes a frame whole or not at all; a short write is a refusal.
            Ok(_) => return Err(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::trace!("virtio-net: tap write: {e}");
                return Err(is_gone(&e));
            }
        }
    }
}

/// The device's receive side: its buffer and the frame waiting in it, if any.
pub(super) struct RxBuffer {
    buf: Vec<u8>,
    /// The length of the frame (header included) waiting in `buf` for a guest buffer.
    pending: Option<usize>,
}

impl RxBuffer {
    pub(super) fn new() -> Self {
        Self {
            buf: vec![0; RX_BUF_LEN],
            pending: None,
        }
    }

    /// Forgets the waiting frame (the driver went away).
    pub(super) fn drop_pending(&mut self, counters: &NetCounters) {
        if self.pending.take().is_some() {
            bump(&counters.rx_dropped);
        }
    }
}

/// Why [`process_rx`] stopped.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum RxStop {
    /// The backend has nothing more now.
    Empty,
    /// A frame waits and the guest has posted no buffer.
    NoBuffer,
    /// The budget ran out.
    Budget,
    /// The backend is gone.
    Gone,
}

/// Moves up to `budget` frames from the backend into the guest's receive buffers. Returns the
/// number of chains returned to the guest and why it stopped.
pub(super) fn process_rx(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    backend: &mut dyn NetBackend,
    rx: &mut RxBuffer,
    segs: &mut Vec<Segment>,
    counters: &NetCounters,
    budget: usize,
) -> (usize, RxStop) {
    let mut used = 0;
    // Chains and frames handled, for the budget.
    let mut steps = 0;
    loop {
        if steps == budget {
            return (used, RxStop::Budget);
        }
        let len = match rx.pending {
            Some(len) => len,
            None => match receive(backend, &mut rx.buf, counters) {
                Ok(Some(len)) => len,
                Ok(None) => return (used, RxStop::Empty),
                Err(()) => return (used, RxStop::Gone),
            },
        };
        rx.pending = Some(len);
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            bump(&counters.rx_no_buffer);
            return (used, RxStop::NoBuffer);
        };
        let head = chain.head_index();
        match segments(mem, chain, true, segs) {
            Ok(room) if room < len => {
                // Too big for this buffer: the frame goes, the buffer stays for the next one.
                bump(&counters.rx_dropped);
                rx.pending = None;
                queue.go_to_previous_position();
                steps += 1;
            }
            Ok(_) => {
                rx.buf[..VNET_HDR_LEN].copy_from_slice(&RX_HEADER);
                if write_frame(mem, &rx.buf[..len], segs) {
                    bump(&counters.rx_packets);
                    add(&counters.rx_bytes, (len - VNET_HDR_LEN) as u64);
                    // len <= RX_BUF_LEN, far below u32::MAX.
                    give_back(mem, queue, head, len as u32, counters);
                } else {
                    bump(&counters.malformed);
                    give_back(mem, queue, head, 0, counters);
                }
                rx.pending = None;
                used += 1;
                steps += 1;
            }
            Err(why) => {
                // The frame keeps waiting for a usable buffer.
                tracing::trace!(?why, "virtio-net: malformed rx chain");
                bump(&counters.malformed);
                give_back(mem, queue, head, 0, counters);
                used += 1;
                steps += 1;
            }
        }
    }
}

/// Reads one frame from the backend into `buf`, dropping (and counting) frames that are too
/// short or were cut short. `Ok(None)` when there is none now, `Err(())` when the backend is
/// gone.
fn receive(
    backend: &mut dyn NetBackend,
    buf: &mut [u8],
    counters: &NetCounters,
) -> Result<Option<usize>, ()> {
    loop {
        match backend.recv(buf) {
            Ok(0) => return Err(()),
            Ok(n) if n < VNET_HDR_LEN + ETH_HLEN || n >= buf.len() => {
                bump(&counters.rx_dropped);
            }
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!("virtio-net: tap read: {e}");
                return Err(());
            }
        }
    }
}

/// Spreads `frame` over the checked `segs`, which hold at least `frame.len()` bytes.
fn write_frame(mem: &GuestMemoryMmap, frame: &[u8], segs: &[Segment]) -> bool {
    let mut rest = frame;
    for &(addr, len) in segs {
        if rest.is_empty() {
            break;
        }
        let (now, later) = rest.split_at(len.min(rest.len()));
        if mem.write_slice(now, addr).is_err() {
            return false;
        }
        rest = later;
    }
    rest.is_empty()
}

/// Turns the driver's notifications for `queue` back on and tells whether chains came in
/// meanwhile, so that the caller goes round again rather than wait for a notification the
/// driver will not send. An avail index that runs more than a ring ahead (which no chain can
/// be taken from) counts as nothing new, so that a broken ring cannot keep the device spinning.
pub(super) fn rearm(mem: &GuestMemoryMmap, queue: &mut Queue) -> bool {
    if !queue.enable_notification(mem).unwrap_or(false) {
        return false;
    }
    match queue.avail_idx(mem, Ordering::Acquire) {
        Ok(avail) => avail.0.wrapping_sub(queue.next_avail()) <= queue.size(),
        Err(_) => false,
    }
}
