//! The per-queue register state of the transport, and its validation at DRIVER_OK.

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::devices::virtio::ActivatedQueue;

/// The driver's setup of one queue, as written to the registers. Values are kept raw and
/// only validated, by virtio-queue, when the driver sets DRIVER_OK: `Queue`'s setters would
/// silently keep the old value on a bad write, which would hide the driver's mistake.
pub(super) struct QueueSlot {
    pub(super) index: u16,
    pub(super) max_size: u16,
    pub(super) size: u32,
    pub(super) ready: bool,
    pub(super) desc: u64,
    pub(super) driver: u64,
    pub(super) device: u64,
    /// Signalled on QueueNotify; duplicated into the device on activation.
    pub(super) notify: EventFd,
}

/// Why a ready queue cannot be used.
#[derive(Debug, thiserror::Error)]
pub(super) enum QueueSetupError {
    #[error(transparent)]
    Layout(#[from] virtio_queue::Error),
    #[error("rings lie outside guest memory")]
    OutsideMemory,
    #[error("cannot duplicate the notification eventfd")]
    EventFd(#[from] std::io::Error),
}

impl QueueSlot {
    pub(super) fn new(index: u16, max_size: u16) -> std::io::Result<Self> {
        Ok(Self {
            index,
            max_size,
            size: u32::from(max_size),
            ready: false,
            desc: 0,
            driver: 0,
            device: 0,
            notify: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    pub(super) fn reset(&mut self) {
        self.size = u32::from(self.max_size);
        self.ready = false;
        self.desc = 0;
        self.driver = 0;
        self.device = 0;
        // Drop notifications left over from before the reset; an empty eventfd reports
        // EAGAIN, which is the expected outcome here.
        let _ = self.notify.read();
    }

    /// Builds the queue the driver described and checks it against guest memory.
    pub(super) fn activate(
        &self,
        mem: &GuestMemoryMmap,
        event_idx: bool,
    ) -> Result<ActivatedQueue, QueueSetupError> {
        let size = u16::try_from(self.size).map_err(|_| virtio_queue::Error::InvalidSize)?;
        let mut queue = Queue::new(self.max_size)?;
        queue.try_set_size(size)?;
        queue.try_set_desc_table_address(GuestAddress(self.desc))?;
        queue.try_set_avail_ring_address(GuestAddress(self.driver))?;
        queue.try_set_used_ring_address(GuestAddress(self.device))?;
        queue.set_event_idx(event_idx);
        queue.set_ready(true);
        // `is_valid` checks where each ring ends; also check that every byte of each ring is
        // backed by guest memory, holes included.
        let n = u64::from(size);
        let rings = [
            (self.desc, 16 * n),
            (self.driver, 6 + 2 * n),
            (self.device, 6 + 8 * n),
        ];
        let backed = rings.iter().all(|&(addr, len)| {
            usize::try_from(len).is_ok_and(|len| mem.check_range(GuestAddress(addr), len))
        });
        if !backed || !queue.is_valid(mem) {
            return Err(QueueSetupError::OutsideMemory);
        }
        Ok(ActivatedQueue {
            index: self.index,
            queue,
            notify: self.notify.try_clone()?,
        })
    }
}

/// Which queue setup register a write targets.
#[derive(Clone, Copy)]
pub(super) enum QueueReg {
    Num,
    DescLow,
    DescHigh,
    DriverLow,
    DriverHigh,
    DeviceLow,
    DeviceHigh,
}

pub(super) fn set_low(addr: &mut u64, value: u32) {
    *addr = (*addr & !0xffff_ffff) | u64::from(value);
}

pub(super) fn set_high(addr: &mut u64, value: u32) {
    *addr = (*addr & 0xffff_ffff) | (u64::from(value) << 32);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_halves_combine() {
        let mut addr = 0;
        set_high(&mut addr, 0x1);
        set_low(&mut addr, 0x2000);
        assert_eq!(addr, 0x1_0000_2000);
        set_low(&mut addr, 0xffff_fff0);
        assert_eq!(addr, 0x1_ffff_fff0);
        set_high(&mut addr, 0);
        assert_eq!(addr, 0xffff_fff0);
    }

    #[test]
    fn invalid_layouts_are_rejected() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let mut slot = QueueSlot::new(0, 16).unwrap();
        slot.ready = true;
        slot.desc = 0x1000;
        slot.driver = 0x2000;
        slot.device = 0x3000;
        assert!(slot.activate(&mem, false).is_ok());
        for (field, value) in [(0, 0x1008), (1, 0x2001), (2, 0x3002)] {
            let mut bad = QueueSlot::new(0, 16).unwrap();
            (bad.desc, bad.driver, bad.device) = (slot.desc, slot.driver, slot.device);
            match field {
                0 => bad.desc = value,
                1 => bad.driver = value,
                _ => bad.device = value,
            }
            assert!(matches!(
                bad.activate(&mem, false),
                Err(QueueSetupError::Layout(_))
            ));
        }
        for size in [0, 3, 32, 0x1_0010] {
            slot.size = size;
            assert!(matches!(
                slot.activate(&mem, false),
                Err(QueueSetupError::Layout(virtio_queue::Error::InvalidSize))
            ));
        }
    }
}
