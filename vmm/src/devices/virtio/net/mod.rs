//! The virtio network device (virtio 1.2 spec, section 5.1), backed by a tap.
//!
//! One receive queue and one transmit queue; the guest's NIC gets the MAC address (and, if
//! given, the MTU) from the configuration space and sees the link up. No offloads are offered:
//! every frame crosses whole, with a 12-byte virtio-net header in front (virtio 1.x layout,
//! `num_buffers` included), and checksums are the sender's business. The tap is opened with
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, a 12-byte vnet header and no offloads, so the kernel
//! hands the device complete, checksummed frames and takes the same back.
//!
//! - **Transmit** (guest to host): each chain's readable descriptors are copied out of guest
//!   memory once (header and frame), the header is replaced by an all-zero one (no offload
//!   was negotiated, so nothing from the guest's header reaches the host kernel), and the
//!   result is written to the tap in one `write`.
//! - **Receive** (host to guest): one frame is read from the tap into a buffer of the device's
//!   own, then copied into the next chain the guest posted. A frame that does not fit that
//!   chain is dropped and counted; the chain stays for the next frame. With no chain posted,
//!   the frame waits and the device stops reading the tap until the guest posts buffers and
//!   notifies the receive queue.
//!
//! Everything the guest puts in the queues is untrusted: chains outside guest memory, in the
//! wrong direction, too short for a header and an Ethernet header, or longer than the largest
//! frame are returned unused and counted, never trusted for a length or an address.
//!
//! Layout: [`device`] (the [`VirtioDevice`](super::VirtioDevice) side), [`event_handler`]
//! (epoll), [`queues`] (receive and transmit processing, no epoll), [`backend`] (the trait the
//! queues read and write frames through), [`tap`] (the tap backend and its ioctls).

mod backend;
mod device;
mod event_handler;
mod queues;
mod tap;

#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

pub use backend::NetBackend;
pub use device::Net;
pub use tap::{validate_tap_name, Tap};

/// The queue size the device offers for each of its two queues.
pub const QUEUE_SIZE: u16 = 256;
/// The virtio-net header in front of every frame: `flags`, `gso_type`, `hdr_len`, `gso_size`,
/// `csum_start`, `csum_offset` and `num_buffers` (virtio 1.x always has `num_buffers`).
pub const VNET_HDR_LEN: usize = 12;
/// The Ethernet header: the shortest frame the device passes on either way.
pub const ETH_HLEN: usize = 14;
/// The smallest MTU accepted (IPv4's minimum).
pub const MIN_MTU: u32 = 68;
/// The largest MTU accepted (the virtio-net `mtu` field is 16 bits).
pub const MAX_MTU: u32 = 65535;
/// The longest frame either way: an Ethernet header, one VLAN tag and `MAX_MTU` bytes.
pub const MAX_FRAME_LEN: usize = ETH_HLEN + 4 + MAX_MTU as usize;

/// Feature bits of the network device (virtio spec 5.1.3). Use as `1 << BIT`.
pub mod net_features {
    /// The device reports its maximum MTU in the configuration space.
    pub const VIRTIO_NET_F_MTU: u32 = 3;
    /// The device has a MAC address in the configuration space.
    pub const VIRTIO_NET_F_MAC: u32 = 5;
    /// The configuration space has a link status field.
    pub const VIRTIO_NET_F_STATUS: u32 = 16;
}

/// The configuration space's `status` bit saying the link is up.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// Errors creating the device or opening its tap.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The tap name cannot be a Linux interface name.
    #[error("invalid tap name {0:?} (1 to 15 characters, no '/', ':' or spaces)")]
    InvalidTapName(String),
    /// `/dev/net/tun` cannot be opened.
    #[error("opening /dev/net/tun")]
    OpenTun(#[source] std::io::Error),
    /// The tap cannot be created or attached.
    #[error("attaching tap {name:?}")]
    Attach {
        /// The interface name.
        name: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The inherited descriptor is not a tap (or not attached to one).
    #[error("file descriptor {fd} is not an attached tap")]
    NotATap {
        /// The descriptor.
        fd: i32,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The inherited descriptor is a tap opened with the wrong flags.
    #[error(
        "tap {name:?} (file descriptor {fd}) must be opened with IFF_TAP | IFF_NO_PI | \
         IFF_VNET_HDR, has flags {flags:#06x}"
    )]
    TapFlags {
        /// The descriptor.
        fd: i32,
        /// The interface name.
        name: String,
        /// The flags TUNGETIFF reported.
        flags: i32,
    },
    /// A tap setting (vnet header size, offloads, non-blocking mode) could not be applied.
    #[error("configuring tap {name:?}: {what}")]
    Configure {
        /// The interface name.
        name: String,
        /// Which setting.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The MTU is out of range.
    #[error("MTU must be between {MIN_MTU} and {MAX_MTU}, got {0}")]
    Mtu(u32),
    /// The MAC address is not a unicast address.
    #[error("the MAC address {0} is not a unicast address")]
    Mac(MacAddr),
    /// An eventfd could not be created.
    #[error("setting up the device")]
    Io(#[from] std::io::Error),
}

/// An Ethernet MAC address, written `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Whether a NIC may have this address: not multicast (nor broadcast), not all zeros.
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// A MAC address that does not have the form `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a MAC address has the form aa:bb:cc:dd:ee:ff")]
pub struct MacSyntaxError;

impl FromStr for MacAddr {
    type Err = MacSyntaxError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().ok_or(MacSyntaxError)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(MacSyntaxError);
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| MacSyntaxError)?;
        }
        if parts.next().is_some() {
            return Err(MacSyntaxError);
        }
        Ok(MacAddr(mac))
    }
}

/// What the device counts. Guest-driven oddities are counted here rather than logged.
#[derive(Debug, Default)]
pub struct NetCounters {
    /// Frames put on the receive queue (host to guest).
    pub rx_packets: AtomicU64,
    /// Bytes of those frames (Ethernet header and payload, no virtio-net header).
    pub rx_bytes: AtomicU64,
    /// Frames written to the tap (guest to host).
    pub tx_packets: AtomicU64,
    /// Bytes of those frames.
    pub tx_bytes: AtomicU64,
    /// Frames from the tap dropped: larger than the guest's buffer, shorter than an Ethernet
    /// header, or read while the guest's driver was not running.
    pub rx_dropped: AtomicU64,
    /// Well-formed guest frames the tap did not take (it would block, was down, or is gone).
    pub tx_dropped: AtomicU64,
    /// Guest chains returned unused: outside guest memory, in the wrong direction, too short
    /// or too long for a frame; and used-ring updates that failed.
    pub malformed: AtomicU64,
    /// Times a frame waited because the guest had posted no receive buffer.
    pub rx_no_buffer: AtomicU64,
    /// Interrupts sent to the guest for used buffers.
    pub interrupts: AtomicU64,
}

/// A copy of [`NetCounters`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetCountersSnapshot {
    /// See [`NetCounters::rx_packets`].
    pub rx_packets: u64,
    /// See [`NetCounters::rx_bytes`].
    pub rx_bytes: u64,
    /// See [`NetCounters::tx_packets`].
    pub tx_packets: u64,
    /// See [`NetCounters::tx_bytes`].
    pub tx_bytes: u64,
    /// See [`NetCounters::rx_dropped`].
    pub rx_dropped: u64,
    /// See [`NetCounters::tx_dropped`].
    pub tx_dropped: u64,
    /// See [`NetCounters::malformed`].
    pub malformed: u64,
    /// See [`NetCounters::rx_no_buffer`].
    pub rx_no_buffer: u64,
    /// See [`NetCounters::interrupts`].
    pub interrupts: u64,
}

impl NetCounters {
    /// Reads every counter.
    pub fn snapshot(&self) -> NetCountersSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetCountersSnapshot {
            rx_packets: get(&self.rx_packets),
            rx_bytes: get(&self.rx_bytes),
            tx_packets: get(&self.tx_packets),
            tx_bytes: get(&self.tx_bytes),
            rx_dropped: get(&self.rx_dropped),
            tx_dropped: get(&self.tx_dropped),
            malformed: get(&self.malformed),
            rx_no_buffer: get(&self.rx_no_buffer),
            interrupts: get(&self.interrupts),
        }
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    add(counter, 1);
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

#[cfg(test)]
mod mac_tests {
    use super::*;

    #[test]
    fn mac_parse_and_print() {
        let mac: MacAddr = "02:Ab:cd:00:10:ff".parse().unwrap();
        assert_eq!(mac, MacAddr([0x02, 0xab, 0xcd, 0x00, 0x10, 0xff]));
        assert_eq!(mac.to_string(), "02:ab:cd:00:10:ff");
        assert!(mac.is_unicast());
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "02:00:00:00:00:0",
            "02:00:00:00:00:000",
            "02-00-00-00-00-01",
            "02:00:00:00:00:0g",
            "+2:00:00:00:00:01",
            "02:00:00:00:00:01:",
        ] {
            assert_eq!(bad.parse::<MacAddr>(), Err(MacSyntaxError), "{bad:?}");
        }
    }

    #[test]
    fn unicast_only() {
        let parse = |s: &str| s.parse::<MacAddr>().unwrap();
        assert!(!parse("01:00:5e:00:00:01").is_unicast(), "multicast");
        assert!(!parse("ff:ff:ff:ff:ff:ff").is_unicast(), "broadcast");
        assert!(!parse("00:00:00:00:00:00").is_unicast(), "zero");
        assert!(parse("52:54:00:12:34:56").is_unicast());
    }
}
