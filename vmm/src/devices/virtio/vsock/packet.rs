//! The vsock packet header (virtio spec 5.10.6) and the checks a guest packet must pass.
//!
//! Descriptor chains are parsed by the `virtio-vsock` crate, which checks directions, lengths
//! and that every byte lies in guest memory. This module adds what the crate leaves to the
//! device: addressing, type, operation and per-operation rules.

use virtio_queue::DescriptorChain;
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{Bytes, GuestMemory, GuestMemoryMmap};

use super::{MAX_PKT_DATA, VSOCK_HOST_CID};

/// Packet operations (`op`).
pub mod op {
    /// Connection request.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Connection refused or torn down.
    pub const RST: u16 = 3;
    /// The sender will no longer receive and/or send.
    pub const SHUTDOWN: u16 = 4;
    /// Payload.
    pub const RW: u16 = 5;
    /// The sender's credit changed.
    pub const CREDIT_UPDATE: u16 = 6;
    /// The sender asks for a credit update.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// The only socket type offered (VIRTIO_VSOCK_F_SEQPACKET is not).
pub const TYPE_STREAM: u16 = 1;

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;
/// Both SHUTDOWN flags.
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// A packet header as plain values (host byte order).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    /// The header's wire form: packed, little-endian.
    pub fn to_bytes(self) -> [u8; PKT_HEADER_SIZE] {
        let mut b = [0u8; PKT_HEADER_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Parses a wire-form header.
    pub fn from_bytes(b: &[u8; PKT_HEADER_SIZE]) -> Self {
        let u64_at = |i: usize| {
            let mut v = [0u8; 8];
            v.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(v)
        };
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// The header `virtio-vsock` read (once) from guest memory.
    pub fn of_packet<B: BitmapSlice>(pkt: &VsockPacket<'_, B>) -> Self {
        Self {
            src_cid: pkt.src_cid(),
            dst_cid: pkt.dst_cid(),
            src_port: pkt.src_port(),
            dst_port: pkt.dst_port(),
            len: pkt.len(),
            type_: pkt.type_(),
            op: pkt.op(),
            flags: pkt.flags(),
            buf_alloc: pkt.buf_alloc(),
            fwd_cnt: pkt.fwd_cnt(),
        }
    }
}

/// Why a guest packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// `src_cid` is not the guest's CID.
    SrcCid,
    /// `type` is not STREAM.
    Type,
    /// `op` is not one the spec defines.
    Op,
    /// A payload on an operation that carries none.
    Len,
    /// SHUTDOWN with undefined flags.
    Flags,
}

/// Checks a parsed header from the guest against the rules the crate does not know.
///
/// `dst_cid` is deliberately not checked here: a well-formed packet for another CID is
/// answered with a reset, not counted as malformed.
pub fn validate(hdr: &Header, guest_cid: u64) -> Result<(), Malformed> {
    if hdr.src_cid != guest_cid {
        return Err(Malformed::SrcCid);
    }
    if hdr.type_ != TYPE_STREAM {
        return Err(Malformed::Type);
    }
    if !(op::REQUEST..=op::CREDIT_REQUEST).contains(&hdr.op) {
        return Err(Malformed::Op);
    }
    if hdr.op != op::RW && hdr.len != 0 || hdr.len > MAX_PKT_DATA {
        return Err(Malformed::Len);
    }
    if hdr.op == op::SHUTDOWN && hdr.flags & !SHUTDOWN_BOTH != 0 {
        return Err(Malformed::Flags);
    }
    Ok(())
}

/// Reads the header at the head of a tx chain without the crate's checks on the rest of the
/// chain, so that a packet refused for its payload can still name the connection to reset.
pub fn peek_header<M>(mem: &GuestMemoryMmap, chain: DescriptorChain<M>) -> Option<Header>
where
    M: std::ops::Deref,
    M::Target: GuestMemory,
{
    let mut chain = chain;
    let head = chain.next()?;
    if head.is_write_only() || (head.len() as usize) < PKT_HEADER_SIZE {
        return None;
    }
    let mut bytes = [0u8; PKT_HEADER_SIZE];
    mem.read_slice(&mut bytes, head.addr()).ok()?;
    Some(Header::from_bytes(&bytes))
}

/// A header from the host to the guest.
pub fn host_header(guest_cid: u64, local_port: u32, peer_port: u32, op: u16) -> Header {
    Header {
        src_cid: VSOCK_HOST_CID,
        dst_cid: guest_cid,
        src_port: local_port,
        dst_port: peer_port,
        type_: TYPE_STREAM,
        op,
        ..Header::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Header {
        Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 10,
            dst_port: 20,
            type_: TYPE_STREAM,
            op: op::RW,
            len: 5,
            ..Header::default()
        }
    }

    #[test]
    fn header_round_trips() {
        let h = Header {
            flags: 3,
            buf_alloc: 0x1234_5678,
            fwd_cnt: 0x9abc_def0,
            ..good()
        };
        let b = h.to_bytes();
        assert_eq!(b[0], 3);
        assert_eq!(b[30], op::RW as u8);
        assert_eq!(Header::from_bytes(&b), h);
    }

    #[test]
    fn validation_rules() {
        assert_eq!(validate(&good(), 3), Ok(()));
        assert_eq!(validate(&good(), 4), Err(Malformed::SrcCid));
        let t = Header { type_: 2, ..good() };
        assert_eq!(validate(&t, 3), Err(Malformed::Type));
        for bad_op in [0, 8, 0xffff] {
            let o = Header {
                op: bad_op,
                ..good()
            };
            assert_eq!(validate(&o, 3), Err(Malformed::Op));
        }
        let l = Header {
            op: op::REQUEST,
            ..good()
        };
        assert_eq!(validate(&l, 3), Err(Malformed::Len));
        let big = Header {
            len: MAX_PKT_DATA + 1,
            ..good()
        };
        assert_eq!(validate(&big, 3), Err(Malformed::Len));
        let f = Header {
            op: op::SHUTDOWN,
            len: 0,
            flags: 4,
            ..good()
        };
        assert_eq!(validate(&f, 3), Err(Malformed::Flags));
    }
}
