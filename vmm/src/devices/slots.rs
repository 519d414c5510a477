//! virtio-mmio device slots: a 4 KiB MMIO window and an IRQ line for each device, announced
//! to the guest on the kernel command line.

use crate::arch::x86_64::layout::{
    IOAPIC_PINS, IOAPIC_START, VIRTIO_IRQ_START, VIRTIO_MMIO_SLOT_SIZE, VIRTIO_MMIO_START,
};

/// One device's window and interrupt line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioSlot {
    /// Guest physical base.
    pub base: u64,
    /// Window size.
    pub size: u64,
    /// IOAPIC pin / GSI.
    pub irq: u32,
}

/// Errors allocating slots.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SlotError {
    /// All IRQ lines are taken.
    #[error("no free IRQ line for another virtio-mmio device")]
    OutOfIrqs,
}

/// Hands out consecutive slots.
#[derive(Debug)]
pub struct SlotAllocator {
    next_base: u64,
    next_irq: u32,
}

impl Default for SlotAllocator {
    fn default() -> Self {
        Self {
            next_base: VIRTIO_MMIO_START,
            next_irq: VIRTIO_IRQ_START,
        }
    }
}

impl SlotAllocator {
    /// The next free slot.
    pub fn allocate(&mut self) -> Result<MmioSlot, SlotError> {
        if self.next_irq >= u32::from(IOAPIC_PINS) {
            return Err(SlotError::OutOfIrqs);
        }
        let slot = MmioSlot {
            base: self.next_base,
            size: VIRTIO_MMIO_SLOT_SIZE,
            irq: self.next_irq,
        };
        debug_assert!(slot.base + slot.size <= IOAPIC_START);
        self.next_base += VIRTIO_MMIO_SLOT_SIZE;
        self.next_irq += 1;
        Ok(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_consecutive_until_irqs_run_out() {
        let mut a = SlotAllocator::default();
        let first = a.allocate().unwrap();
        assert_eq!(
            first,
            MmioSlot {
                base: 0xd000_0000,
                size: 0x1000,
                irq: 5
            }
        );
        let second = a.allocate().unwrap();
        assert_eq!((second.base, second.irq), (0xd000_1000, 6));
        let rest = (7..24).map(|_| a.allocate().unwrap()).count();
        assert_eq!(rest, 17);
        assert_eq!(a.allocate(), Err(SlotError::OutOfIrqs));
    }
}
