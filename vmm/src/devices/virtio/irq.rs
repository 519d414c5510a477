//! How a virtio device interrupts the guest.
//!
//! The virtio-mmio transport has one interrupt line per device and an InterruptStatus register
//! that tells the driver why the line fired. [`IrqTrigger`] holds that register's value and the
//! eventfd that the VMM registers with KVM as an irqfd, so that signalling it injects the
//! interrupt without a trip through the VMM's own threads.
//!
//! The device signals through a shared `Arc<IrqTrigger>` from its own thread; the transport
//! reads and acknowledges the status from the vCPU threads. Both sides only touch atomics and
//! the eventfd, so no lock is needed.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// InterruptStatus bit 0: the device used a buffer in at least one virtqueue.
pub const VIRTIO_MMIO_INT_VRING: u32 = 0x1;
/// InterruptStatus bit 1: the device configuration changed.
pub const VIRTIO_MMIO_INT_CONFIG: u32 = 0x2;
/// The InterruptStatus bits the spec defines; the driver may only acknowledge these.
pub const VIRTIO_MMIO_INT_MASK: u32 = VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG;

/// The interrupt of one virtio-mmio device: its InterruptStatus, its configuration generation,
/// and the eventfd that raises the guest interrupt.
#[derive(Debug)]
pub struct IrqTrigger {
    status: AtomicU32,
    config_generation: AtomicU32,
    evt: EventFd,
}

impl IrqTrigger {
    /// Creates a trigger with a fresh non-blocking eventfd and no pending interrupt.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            status: AtomicU32::new(0),
            config_generation: AtomicU32::new(0),
            evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Tells the driver that the device placed buffers in a used ring.
    pub fn trigger_used(&self) -> io::Result<()> {
        self.trigger(VIRTIO_MMIO_INT_VRING)
    }

    /// Tells the driver that the device configuration changed.
    ///
    /// This also moves ConfigGeneration on. Call it from the device method that changed the
    /// configuration, while the device is still locked: the driver then cannot read a mix of
    /// old and new fields under one generation value.
    pub fn trigger_config(&self) -> io::Result<()> {
        self.config_generation.fetch_add(1, Ordering::AcqRel);
        self.trigger(VIRTIO_MMIO_INT_CONFIG)
    }

    fn trigger(&self, bit: u32) -> io::Result<()> {
        // The status bit must be visible before the guest takes the interrupt and reads it.
        self.status.fetch_or(bit, Ordering::AcqRel);
        self.evt.write(1)
    }

    /// The current InterruptStatus value.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    /// The current ConfigGeneration value.
    pub fn config_generation(&self) -> u32 {
        self.config_generation.load(Ordering::Acquire)
    }

    /// The eventfd to register with KVM as the irqfd of this device's interrupt line.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// Clears the InterruptStatus bits the driver acknowledged (undefined bits are ignored).
    pub(super) fn ack(&self, bits: u32) {
        self.status
            .fetch_and(!(bits & VIRTIO_MMIO_INT_MASK), Ordering::AcqRel);
    }

    /// Clears every pending InterruptStatus bit, as a device reset requires.
    pub(super) fn clear(&self) {
        self.status.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_sets_bit_and_signals() {
        let irq = IrqTrigger::new().unwrap();
        assert_eq!(irq.status(), 0);
        assert!(irq.eventfd().read().is_err(), "nothing pending yet");
        irq.trigger_used().unwrap();
        irq.trigger_used().unwrap();
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_VRING);
        assert_eq!(irq.eventfd().read().unwrap(), 2);
        assert_eq!(irq.config_generation(), 0);
    }

    #[test]
    fn config_sets_bit_and_moves_generation() {
        let irq = IrqTrigger::new().unwrap();
        irq.trigger_config().unwrap();
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(irq.config_generation(), 1);
        assert_eq!(irq.eventfd().read().unwrap(), 1);
    }

    #[test]
    fn ack_clears_only_acknowledged_defined_bits() {
        let irq = IrqTrigger::new().unwrap();
        irq.trigger_used().unwrap();
        irq.trigger_config().unwrap();
        irq.ack(VIRTIO_MMIO_INT_VRING | 0xffff_fff0);
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_CONFIG);
        irq.ack(VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(irq.status(), 0);
        irq.trigger_used().unwrap();
        irq.clear();
        assert_eq!(irq.status(), 0);
    }
}
