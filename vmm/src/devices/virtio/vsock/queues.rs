//! The rx and tx queues: descriptor chains in, packets to and from the muxer. Nothing here
//! depends on epoll, so tests drive it with virtio-queue's mock queues.

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::muxer::Muxer;
use super::packet::{peek_header, validate, Header};
use super::{bump, VsockCounters, MAX_PKT_DATA};

/// Takes every packet the guest made available on the tx queue. Each chain is returned to the
/// guest whatever its fate. Returns whether any was.
pub(super) fn process_tx(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    muxer: &mut Muxer,
    counters: &VsockCounters,
    guest_cid: u64,
    scratch: &mut [u8],
) -> bool {
    let mut used = false;
    while let Some(mut chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let unparsed = chain.clone();
        bump(&counters.tx_packets);
        match VsockPacket::from_tx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
            Ok(pkt) => {
                let hdr = Header::of_packet(&pkt);
                match validate(&hdr, guest_cid) {
                    Ok(()) => match read_payload(&pkt, &hdr, scratch) {
                        Some(data) => muxer.on_guest_packet(&hdr, data),
                        None => {
                            bump(&counters.malformed_packets);
                            muxer.on_malformed(&hdr);
                        }
                    },
                    Err(why) => {
                        tracing::trace!(?why, "vsock: malformed tx packet");
                        bump(&counters.malformed_packets);
                        muxer.on_malformed(&hdr);
                    }
                }
            }
            Err(e) => {
                tracing::trace!("vsock: invalid tx chain: {e}");
                bump(&counters.malformed_packets);
                if let Some(hdr) = peek_header(mem, unparsed) {
                    muxer.on_malformed(&hdr);
                }
            }
        }
        // The device writes nothing into tx buffers.
        if queue.add_used(mem, head, 0).is_err() {
            bump(&counters.malformed_packets);
        }
        used = true;
    }
    used
}

/// Copies the payload out of guest memory, once, so the guest cannot change it under us.
fn read_payload<'s>(
    pkt: &VsockPacket<'_, ()>,
    hdr: &Header,
    scratch: &'s mut [u8],
) -> Option<&'s [u8]> {
    let len = usize::try_from(hdr.len).ok()?;
    let data = scratch.get_mut(..len)?;
    if len == 0 {
        return Some(data);
    }
    let slice = pkt.data_slice()?;
    slice.read_slice(data, 0).ok()?;
    Some(data)
}

/// Fills rx buffers with what the muxer has for the guest. Returns whether any buffer was used.
pub(super) fn process_rx(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    muxer: &mut Muxer,
    counters: &VsockCounters,
    scratch: &mut [u8],
) -> bool {
    let mut used = false;
    while muxer.has_rx() {
        let Some(mut chain) = queue.pop_descriptor_chain(mem) else {
            break;
        };
        let head = chain.head_index();
        let mut pkt = match VsockPacket::from_rx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
            Ok(pkt) => pkt,
            Err(e) => {
                tracing::trace!("vsock: invalid rx chain: {e}");
                bump(&counters.malformed_packets);
                if queue.add_used(mem, head, 0).is_err() {
                    bump(&counters.malformed_packets);
                }
                used = true;
                continue;
            }
        };
        let cap = pkt
            .data_slice()
            .map_or(0, |s| s.len())
            .min(MAX_PKT_DATA as usize)
            .min(scratch.len());
        let buf = scratch.get_mut(..cap).unwrap_or_default();
        let Some((hdr, n)) = muxer.next_rx_packet(buf) else {
            // Nothing fits this buffer now; leave it for later.
            queue.go_to_previous_position();
            break;
        };
        let written = write_packet(&mut pkt, &hdr, buf.get(..n).unwrap_or_default());
        let len = if written {
            bump(&counters.rx_packets);
            // n <= MAX_PKT_DATA
            (PKT_HEADER_SIZE + n) as u32
        } else {
            bump(&counters.malformed_packets);
            0
        };
        if queue.add_used(mem, head, len).is_err() {
            bump(&counters.malformed_packets);
        }
        used = true;
    }
    used
}

fn write_packet(pkt: &mut VsockPacket<'_, ()>, hdr: &Header, data: &[u8]) -> bool {
    if !data.is_empty() {
        let Some(slice) = pkt.data_slice() else {
            return false;
        };
        if slice.write_slice(data, 0).is_err() {
            return false;
        }
    }
    pkt.set_header_from_raw(&hdr.to_bytes()).is_ok()
}
