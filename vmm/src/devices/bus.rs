//! Port-I/O and MMIO buses: route a guest access to the device that owns the address.
//!
//! Addresses and access sizes come from the guest (through KVM exits), so every lookup is
//! bounds-checked: an access must fall wholly inside one device's range, otherwise it is
//! counted as unhandled and reads return zeros.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A device that answers guest reads and writes in its address range.
///
/// `offset` is relative to the start of the range the device was inserted at.
pub trait BusDevice: Send {
    /// Fills `data` with the value read at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles the guest's write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range is empty or wraps around the address space.
    #[error("invalid bus range {base:#x}+{len:#x}")]
    InvalidRange {
        /// Start of the range.
        base: u64,
        /// Length of the range.
        len: u64,
    },
    /// The range overlaps a device already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps another device")]
    Overlap {
        /// Start of the range.
        base: u64,
        /// Length of the range.
        len: u64,
    },
}

/// A shareable device handle, as stored on a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

struct Entry {
    len: u64,
    device: SharedDevice,
}

/// An address space (port I/O or MMIO) with non-overlapping device ranges.
#[derive(Default)]
pub struct Bus {
    devices: BTreeMap<u64, Entry>,
    unhandled: AtomicU64,
}

impl Bus {
    /// Creates an empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = match base.checked_add(len) {
            Some(end) if len > 0 => end,
            _ => return Err(BusError::InvalidRange { base, len }),
        };
        let overlaps_prev = self
            .devices
            .range(..end)
            .next_back()
            .is_some_and(|(&b, e)| b + e.len > base);
        if overlaps_prev {
            return Err(BusError::Overlap { base, len });
        }
        self.devices.insert(base, Entry { len, device });
        Ok(())
    }

    /// Finds the device whose range holds `[addr, addr + size)` and the offset into it.
    fn resolve(&self, addr: u64, size: usize) -> Option<(&SharedDevice, u64)> {
        let (&base, entry) = self.devices.range(..=addr).next_back()?;
        let offset = addr - base;
        let end = offset.checked_add(size as u64)?;
        (end <= entry.len).then_some((&entry.device, offset))
    }

    /// Routes a guest read. Returns false (and zero-fills `data`) when no device owns it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((device, offset)) => {
                lock(device).read(offset, data);
                true
            }
            None => {
                data.fill(0);
                self.unhandled.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Routes a guest write. Returns false when no device owns it (the write is dropped).
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((device, offset)) => {
                lock(device).write(offset, data);
                true
            }
            None => {
                self.unhandled.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// How many guest accesses hit no device so far.
    pub fn unhandled_accesses(&self) -> u64 {
        self.unhandled.load(Ordering::Relaxed)
    }
}

/// Locks a device, carrying on with the inner value if another thread panicked holding it:
/// device state stays usable and the VMM reports the panic elsewhere.
fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8 + 1);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_and_offset() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut buf = [0u8; 1];
        assert!(bus.read(0x3fa, &mut buf));
        assert_eq!(buf, [3]);
        assert!(bus.write(0x3ff, &[9]));
        assert_eq!(dev.lock().unwrap().writes, vec![(7, vec![9])]);
    }

    #[test]
    fn accesses_outside_or_straddling_are_unhandled() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(dev, 0x1000, 0x10).unwrap();
        let mut buf = [0xffu8; 4];
        assert!(!bus.read(0xfff, &mut buf));
        assert_eq!(buf, [0; 4]);
        // Starts inside, ends past the range.
        assert!(!bus.write(0x100e, &[1, 2, 3, 4]));
        assert!(!bus.write(u64::MAX, &[1, 2]));
        assert_eq!(bus.unhandled_accesses(), 3);
    }

    #[test]
    fn rejects_overlaps_and_empty_ranges() {
        let mut bus = Bus::new();
        let d = || Arc::new(Mutex::new(Recorder::default()));
        bus.insert(d(), 0x100, 0x10).unwrap();
        assert_eq!(
            bus.insert(d(), 0x10f, 1),
            Err(BusError::Overlap {
                base: 0x10f,
                len: 1
            })
        );
        assert_eq!(
            bus.insert(d(), 0xf8, 0x10),
            Err(BusError::Overlap {
                base: 0xf8,
                len: 0x10
            })
        );
        assert_eq!(
            bus.insert(d(), 0x200, 0),
            Err(BusError::InvalidRange {
                base: 0x200,
                len: 0
            })
        );
        assert_eq!(
            bus.insert(d(), u64::MAX, 2),
            Err(BusError::InvalidRange {
                base: u64::MAX,
                len: 2
            })
        );
        bus.insert(d(), 0x110, 0x10).unwrap();
        bus.insert(d(), 0xf0, 0x10).unwrap();
    }
}
