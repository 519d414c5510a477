//! virtio devices and the virtio-mmio transport they plug into.
//!
//! A device (vsock, fs, net, ...) implements [`VirtioDevice`]: its type, its queues, its
//! feature bits, its configuration space, and what to do once the driver is ready. The
//! transport ([`mmio::MmioTransport`]) owns everything the virtio spec puts in the transport:
//! the register file, the status state machine, feature negotiation, the queue registers and
//! the interrupt status. The device sees none of it until the driver sets DRIVER_OK; then it
//! gets the guest memory, the validated queues with their notification eventfds, and the
//! [`IrqTrigger`] it signals the guest through.
//!
//! Facts come from the virtio 1.2 specification (OASIS), sections 2 (basic facilities),
//! 4.2 (virtio over MMIO) and 6 (reserved feature bits).

pub mod fs;
pub mod irq;
pub mod mmio;
pub mod net;
pub mod vsock;

use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

pub use irq::IrqTrigger;
pub use mmio::{MmioCounters, MmioCountersSnapshot, MmioError, MmioTransport};

/// Device status bits (virtio spec 2.1).
pub mod status {
    /// The guest OS found the device and recognised it as a virtio device.
    pub const ACKNOWLEDGE: u32 = 0x01;
    /// The guest OS knows how to drive the device.
    pub const DRIVER: u32 = 0x02;
    /// The driver is set up and ready to drive the device.
    pub const DRIVER_OK: u32 = 0x04;
    /// The driver acknowledged all the features it understands; negotiation is complete.
    pub const FEATURES_OK: u32 = 0x08;
    /// The device hit an error from which only a reset recovers.
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 0x80;
}

/// Device-independent feature bit numbers (virtio spec 6). Use as `1 << BIT`.
pub mod features {
    /// The driver may use indirect descriptors.
    pub const VIRTIO_F_INDIRECT_DESC: u32 = 28;
    /// used_event / avail_event notification suppression.
    pub const VIRTIO_F_EVENT_IDX: u32 = 29;
    /// Compliance with virtio 1.x; every device offers it and the transport requires it.
    pub const VIRTIO_F_VERSION_1: u32 = 32;
    /// The device is behind an IOMMU or limited by platform-specific means.
    pub const VIRTIO_F_ACCESS_PLATFORM: u32 = 33;
    /// Packed virtqueue layout (not supported by the transport).
    pub const VIRTIO_F_RING_PACKED: u32 = 34;
    /// The device uses buffers in the order they were made available.
    pub const VIRTIO_F_IN_ORDER: u32 = 35;
    /// Extra data in driver notifications (not supported by the transport).
    pub const VIRTIO_F_NOTIFICATION_DATA: u32 = 38;
    /// Per-queue reset (not supported by the transport).
    pub const VIRTIO_F_RING_RESET: u32 = 40;
}

/// Device IDs (virtio spec 5), as returned in the DeviceID register.
pub mod device_type {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// Console.
    pub const CONSOLE: u32 = 3;
    /// Entropy source.
    pub const RNG: u32 = 4;
    /// Traditional memory balloon.
    pub const BALLOON: u32 = 5;
    /// Socket device (vsock).
    pub const VSOCK: u32 = 19;
    /// File system device (virtio-fs).
    pub const FS: u32 = 26;
}

/// The avail ring's flag by which the driver asks for no interrupts (virtio spec 2.7.7).
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Whether the driver wants an interrupt for buffers just put in `queue`'s used ring: it did
/// not set VRING_AVAIL_F_NO_INTERRUPT (no device offers EVENT_IDX). The fence orders the used
/// index written before against the flags read here; the driver orders its flag write against
/// its used index read the same way, so one side always sees the other. Linux's drivers set
/// the flag while they drain a queue, so honouring it saves an interrupt per batch.
pub(crate) fn driver_wants_interrupt(mem: &GuestMemoryMmap, queue: &Queue) -> bool {
    fence(Ordering::SeqCst);
    match mem.load::<u16>(GuestAddress(queue.avail_ring()), Ordering::Acquire) {
        Ok(flags) => u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT == 0,
        // The transport checked the ring against guest memory; interrupt if in doubt.
        Err(_) => true,
    }
}

/// One virtqueue handed to a device when the driver sets DRIVER_OK.
#[derive(Debug)]
pub struct ActivatedQueue {
    /// The queue's index on the transport (the value of QueueSel when the driver set it up).
    pub index: u16,
    /// The queue, validated against guest memory, marked ready, with EVENT_IDX as negotiated.
    pub queue: Queue,
    /// Becomes readable when the driver notifies this queue. It is a duplicate of the
    /// transport's descriptor: the same eventfd may later be registered as a KVM ioeventfd.
    pub notify: EventFd,
}

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver did not set up a queue the device needs.
    #[error("virtqueue {0} is required but was not set up")]
    MissingQueue(u16),
    /// Starting the device failed on a system call.
    #[error("device activation I/O")]
    Io(#[from] std::io::Error),
    /// The device's backend refused to start.
    #[error("device backend")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A virtio device, seen from its transport.
///
/// The transport calls these methods from vCPU threads with the device locked; the device's
/// own worker (its epoll handler) locks the same mutex. A device must never call back into its
/// transport: it reaches the guest only through guest memory and the [`IrqTrigger`].
pub trait VirtioDevice: Send {
    /// The virtio device ID, e.g. [`device_type::VSOCK`].
    fn device_type(&self) -> u32;

    /// The maximum size of each of the device's queues; the length is the number of queues.
    /// Every size must be a power of two no larger than 32768.
    fn queue_max_sizes(&self) -> &[u16];

    /// The feature bits the device offers. Must include [`features::VIRTIO_F_VERSION_1`]; must
    /// not change over the device's life.
    fn avail_features(&self) -> u64;

    /// Records the features the driver accepted, when the driver sets FEATURES_OK. Only ever
    /// called with a subset of [`Self::avail_features`] that includes VERSION_1. It replaces
    /// any previous value (a reset followed by a new negotiation calls it again).
    fn ack_features(&mut self, features: u64);

    /// The length in bytes of the device configuration space. The transport only forwards
    /// configuration accesses that lie wholly inside it.
    fn config_space_len(&self) -> u64;

    /// Fills `data` from the configuration space at `offset`; the access lies inside it.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Handles the driver's write of `data` at `offset` of the configuration space; the access
    /// lies inside it. Writes to read-only fields are the device's to ignore.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Starts the device, once, when the driver sets DRIVER_OK.
    ///
    /// `queues` holds the queues the driver marked ready, in index order, each validated
    /// against `mem`. On error the transport sets DEVICE_NEEDS_RESET and tells the driver.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<ActivatedQueue>,
        interrupt: Arc<IrqTrigger>,
    ) -> Result<(), ActivateError>;

    /// Stops an activated device and drops its queues, eventfd duplicates and interrupt
    /// handle, so that the driver can set it up again. Returns false if the device cannot be
    /// reset; the transport then fails the device for good.
    ///
    /// Remove the queue eventfds from any epoll set before dropping them: an epoll
    /// registration belongs to the open file, which the transport's own descriptor keeps
    /// alive, so closing the duplicate alone leaves it registered.
    fn reset(&mut self) -> bool;
}

/// A device as the transport and the device's own event handler share it.
pub type SharedVirtioDevice = Arc<Mutex<dyn VirtioDevice>>;

/// The activated queues in index order, for a device with `N` queues: each of indices
/// `0..N` must be there (else [`ActivateError::MissingQueue`]); others are ignored.
pub fn queues_by_index<const N: usize>(
    queues: Vec<ActivatedQueue>,
) -> Result<[ActivatedQueue; N], ActivateError> {
    let mut slots: [Option<ActivatedQueue>; N] = std::array::from_fn(|_| None);
    for q in queues {
        if let Some(slot) = slots.get_mut(usize::from(q.index)) {
            *slot = Some(q);
        }
    }
    if let Some(missing) = slots.iter().position(Option::is_none) {
        let index = u16::try_from(missing).unwrap_or(u16::MAX);
        return Err(ActivateError::MissingQueue(index));
    }
    Ok(slots.map(|q| q.expect("every slot was checked above")))
}

/// Copies the bytes of a configuration space `config` at `offset` into `data`, for devices that
/// keep their configuration as bytes. Returns false (and zero-fills `data`) if the access does
/// not lie wholly inside `config`.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) -> bool {
    match config_range(config.len(), offset, data.len()) {
        Some(range) => {
            data.copy_from_slice(&config[range]);
            true
        }
        None => {
            data.fill(0);
            false
        }
    }
}

/// Copies `data` into a configuration space `config` at `offset`. Returns false (and changes
/// nothing) if the access does not lie wholly inside `config`.
pub fn write_config_bytes(config: &mut [u8], offset: u64, data: &[u8]) -> bool {
    match config_range(config.len(), offset, data.len()) {
        Some(range) => {
            config[range].copy_from_slice(data);
            true
        }
        None => false,
    }
}

fn config_range(config_len: usize, offset: u64, len: usize) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(len)?;
    (end <= config_len).then_some(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_bytes_in_range() {
        let mut config = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let mut buf = [0u8; 2];
        assert!(read_config_bytes(&config, 6, &mut buf));
        assert_eq!(buf, [7, 8]);
        assert!(write_config_bytes(&mut config, 0, &[9, 9, 9, 9]));
        assert_eq!(config, [9, 9, 9, 9, 5, 6, 7, 8]);
    }

    #[test]
    fn config_bytes_out_of_range() {
        let mut config = [1u8; 8];
        let mut buf = [0xffu8; 4];
        assert!(!read_config_bytes(&config, 6, &mut buf));
        assert_eq!(buf, [0; 4]);
        assert!(!read_config_bytes(&config, u64::MAX, &mut buf));
        assert!(!write_config_bytes(&mut config, 8, &[0]));
        assert!(!write_config_bytes(
            &mut config,
            u64::MAX - 1,
            &[0, 0, 0, 0]
        ));
        assert_eq!(config, [1u8; 8]);
    }
}
