//! The virtio-mmio transport, version 2 (virtio 1.x "modern" only), as in virtio spec 4.2.
//!
//! [`MmioTransport`] sits on the MMIO bus at a 4 KiB slot that the kernel command line
//! announces (`virtio_mmio.device=4K@<base>:<irq>`). It keeps the register file, runs the
//! device status state machine and feature negotiation, collects the queue setup, and hands
//! validated queues to the device when the driver sets DRIVER_OK.
//!
//! Everything that arrives here is guest-controlled. Registers below 0x100 only answer
//! aligned 32-bit accesses; anything else is dropped and counted. Writes that break the
//! protocol are dropped and counted too. Only the first occurrence of each kind is logged,
//! so a hostile guest cannot flood the host's logs; the counters keep the full tally.

use std::fmt::Display;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard, PoisonError};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::irq::IrqTrigger;
use super::{features, status, SharedVirtioDevice, VirtioDevice};
use crate::devices::bus::BusDevice;
use queue::{set_high, set_low, QueueReg, QueueSlot};

mod queue;
pub mod regs;

/// The size of one virtio-mmio slot on the bus (the `4K` of `virtio_mmio.device=`).
pub const MMIO_REGION_SIZE: u64 = 0x1000;
/// The MagicValue register's content: "virt" in little-endian.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// The transport version: 2, the virtio 1.x register layout (1 was the legacy layout).
pub const MMIO_VERSION: u32 = 2;
/// The VendorID register's content: "HUSK" in little-endian. Drivers do not look at it.
pub const VENDOR_ID: u32 = 0x4b53_5548;
/// The most queues a device may have; every queue costs an eventfd.
pub const MAX_QUEUES: usize = 1024;

/// What the SHM length and base registers read: no shared memory region exists, which the spec
/// signals with a length of -1.
const NO_SHM_REGION: u32 = 0xffff_ffff;

/// Features the transport cannot provide, whatever the device offers: it only builds split
/// virtqueues, reads QueueNotify as a bare queue index, and has no per-queue reset register.
const TRANSPORT_UNSUPPORTED_FEATURES: u64 = (1 << features::VIRTIO_F_RING_PACKED)
    | (1 << features::VIRTIO_F_NOTIFICATION_DATA)
    | (1 << features::VIRTIO_F_RING_RESET);

/// The status bits a driver may set.
const DRIVER_STATUS_BITS: u32 =
    status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK | status::FAILED;

/// The initialisation steps, in the only order the driver may take them (virtio spec 3.1.1).
const STATUS_STEPS: [u32; 4] = [
    status::ACKNOWLEDGE,
    status::DRIVER,
    status::FEATURES_OK,
    status::DRIVER_OK,
];

/// Errors building a transport for a device.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// The device does not offer VIRTIO_F_VERSION_1, which a modern transport requires.
    #[error("device does not offer VIRTIO_F_VERSION_1")]
    NoVersion1,
    /// A queue's maximum size is zero, above 32768, or not a power of two.
    #[error("queue {index} has invalid maximum size {size}")]
    InvalidQueueSize {
        /// Queue index.
        index: usize,
        /// The size the device gave.
        size: u16,
    },
    /// The device has more than [`MAX_QUEUES`] queues.
    #[error("device has {0} queues")]
    TooManyQueues(usize),
    /// The configuration space does not fit in the slot after the registers.
    #[error("configuration space of {0} bytes does not fit the MMIO slot")]
    ConfigSpaceTooLarge(u64),
    /// Creating an eventfd failed.
    #[error("eventfd")]
    EventFd(#[from] std::io::Error),
}

/// What the transport counts. Guest-driven oddities are counted here rather than logged.
#[derive(Debug, Default)]
pub struct MmioCounters {
    /// Accesses that hit no register, had the wrong width or alignment, selected a queue that
    /// does not exist, or fell outside the configuration space.
    pub invalid_accesses: AtomicU64,
    /// Well-formed writes that the protocol state forbids: to read-only registers, status
    /// changes out of order, feature or queue setup at the wrong time, and refused feature sets.
    pub ignored_writes: AtomicU64,
    /// Times the device was started.
    pub activations: AtomicU64,
    /// Times DRIVER_OK led to DEVICE_NEEDS_RESET instead of a started device.
    pub activation_failures: AtomicU64,
    /// Device resets (status writes of 0).
    pub resets: AtomicU64,
    /// Queue notifications passed on to a queue's eventfd.
    pub notifications: AtomicU64,
}

/// A copy of [`MmioCounters`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MmioCountersSnapshot {
    /// See [`MmioCounters::invalid_accesses`].
    pub invalid_accesses: u64,
    /// See [`MmioCounters::ignored_writes`].
    pub ignored_writes: u64,
    /// See [`MmioCounters::activations`].
    pub activations: u64,
    /// See [`MmioCounters::activation_failures`].
    pub activation_failures: u64,
    /// See [`MmioCounters::resets`].
    pub resets: u64,
    /// See [`MmioCounters::notifications`].
    pub notifications: u64,
}

impl MmioCounters {
    /// Reads every counter.
    pub fn snapshot(&self) -> MmioCountersSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MmioCountersSnapshot {
            invalid_accesses: get(&self.invalid_accesses),
            ignored_writes: get(&self.ignored_writes),
            activations: get(&self.activations),
            activation_failures: get(&self.activation_failures),
            resets: get(&self.resets),
            notifications: get(&self.notifications),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Kinds of abnormal events; each is logged once per transport, then only counted.
#[derive(Clone, Copy, Debug)]
enum Oddity {
    RegisterWidth,
    UnknownRegister,
    ReadOnlyWrite,
    QueueSelOutOfRange,
    ConfigOutOfRange,
    StatusTransition,
    FeaturesWrite,
    FeaturesRefused,
    QueueWrite,
    NotifyInvalid,
    QueueSetup,
    ActivateFailed,
    ResetUnsupported,
    Signal,
}

impl Oddity {
    fn what(self) -> &'static str {
        match self {
            Self::RegisterWidth => "register access that is not 32-bit and aligned",
            Self::UnknownRegister => "access to an unknown register, or read of a write-only one",
            Self::ReadOnlyWrite => "write to a read-only register",
            Self::QueueSelOutOfRange => "queue register access with QueueSel out of range",
            Self::ConfigOutOfRange => "access past the end of the configuration space",
            Self::StatusTransition => "status change out of order",
            Self::FeaturesWrite => "DriverFeatures write outside feature negotiation",
            Self::FeaturesRefused => "FEATURES_OK refused",
            Self::QueueWrite => "queue setup write while the queue is ready or the device live",
            Self::NotifyInvalid => "notification for a queue that does not exist",
            Self::QueueSetup => "queue setup invalid at DRIVER_OK; DEVICE_NEEDS_RESET set",
            Self::ActivateFailed => "device failed to activate; DEVICE_NEEDS_RESET set",
            Self::ResetUnsupported => "device cannot be reset; failed for good",
            Self::Signal => "eventfd signal failed",
        }
    }
}

/// One virtio device behind the virtio-mmio register interface.
///
/// The device is shared (`Arc<Mutex<..>>`) rather than owned: its queue processing runs on the
/// VMM's event loop, which needs the concrete device type and must not have to lock the
/// transport (the vCPU side) to reach it. The lock order is transport, then device; the device
/// never calls back into the transport.
pub struct MmioTransport {
    device: SharedVirtioDevice,
    mem: GuestMemoryMmap,
    queues: Vec<QueueSlot>,
    irq: Arc<IrqTrigger>,
    counters: Arc<MmioCounters>,

    // Facts about the device, read once.
    device_type: u32,
    avail_features: u64,
    config_len: u64,

    // Register state.
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    /// The driver set a feature bit above bit 63; no device offers one.
    driver_features_beyond: bool,
    queue_sel: u32,

    /// The device was activated and not reset since.
    activated: bool,
    /// The device could not be reset: the driver can never set it up again.
    broken: bool,
    /// One bit per [`Oddity`] already logged.
    warned: u32,
}

impl MmioTransport {
    /// Wraps `device` in a transport over guest memory `mem`.
    pub fn new(mem: GuestMemoryMmap, device: SharedVirtioDevice) -> Result<Self, MmioError> {
        let (device_type, avail_features, max_sizes, config_len) = {
            let d = device.lock().unwrap_or_else(PoisonError::into_inner);
            (
                d.device_type(),
                d.avail_features(),
                d.queue_max_sizes().to_vec(),
                d.config_space_len(),
            )
        };
        if avail_features & (1 << features::VIRTIO_F_VERSION_1) == 0 {
            return Err(MmioError::NoVersion1);
        }
        if config_len > MMIO_REGION_SIZE - regs::CONFIG {
            return Err(MmioError::ConfigSpaceTooLarge(config_len));
        }
        if max_sizes.len() > MAX_QUEUES {
            return Err(MmioError::TooManyQueues(max_sizes.len()));
        }
        let mut queues = Vec::with_capacity(max_sizes.len());
        for (index, &size) in max_sizes.iter().enumerate() {
            let invalid = || MmioError::InvalidQueueSize { index, size };
            Queue::new(size).map_err(|_| invalid())?;
            let index = u16::try_from(index).map_err(|_| invalid())?;
            queues.push(QueueSlot::new(index, size)?);
        }
        Ok(Self {
            device,
            mem,
            queues,
            irq: Arc::new(IrqTrigger::new()?),
            counters: Arc::default(),
            device_type,
            avail_features: avail_features & !TRANSPORT_UNSUPPORTED_FEATURES,
            config_len,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            driver_features_beyond: false,
            queue_sel: 0,
            activated: false,
            broken: false,
            warned: 0,
        })
    }

    /// The device behind this transport.
    pub fn device(&self) -> &SharedVirtioDevice {
        &self.device
    }

    /// The device's interrupt; register `interrupt().eventfd()` with KVM as an irqfd.
    pub fn interrupt(&self) -> &Arc<IrqTrigger> {
        &self.irq
    }

    /// The notification eventfd of each queue, in index order. QueueNotify writes signal them;
    /// they may also be registered with KVM as ioeventfds on [`regs::QUEUE_NOTIFY`], matching
    /// the queue index.
    pub fn queue_evts(&self) -> impl Iterator<Item = &EventFd> {
        self.queues.iter().map(|q| &q.notify)
    }

    /// The transport's counters; share the `Arc` with a metrics reader.
    pub fn counters(&self) -> &Arc<MmioCounters> {
        &self.counters
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the device is running (activated and not reset since).
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    fn lock_device(&self) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
        self.device.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn warn_once(&mut self, kind: Oddity, detail: impl Display) {
        let bit = 1u32 << (kind as u32);
        if self.warned & bit == 0 {
            self.warned |= bit;
            tracing::warn!(
                device_type = self.device_type,
                "virtio-mmio: {} ({detail}); further ones are only counted",
                kind.what()
            );
        }
    }

    fn invalid(&mut self, kind: Oddity, detail: impl Display) {
        bump(&self.counters.invalid_accesses);
        self.warn_once(kind, detail);
    }

    fn ignored(&mut self, kind: Oddity, detail: impl Display) {
        bump(&self.counters.ignored_writes);
        self.warn_once(kind, detail);
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            regs::MAGIC_VALUE => MAGIC_VALUE,
            regs::VERSION => MMIO_VERSION,
            regs::DEVICE_ID => self.device_type,
            regs::VENDOR_ID => VENDOR_ID,
            regs::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.avail_features as u32,
                1 => (self.avail_features >> 32) as u32,
                _ => 0,
            },
            regs::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size)),
            regs::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready)),
            regs::INTERRUPT_STATUS => self.irq.status(),
            regs::STATUS => self.status,
            regs::SHM_LEN_LOW | regs::SHM_LEN_HIGH | regs::SHM_BASE_LOW | regs::SHM_BASE_HIGH => {
                NO_SHM_REGION
            }
            regs::CONFIG_GENERATION => self.irq.config_generation(),
            _ => {
                self.invalid(Oddity::UnknownRegister, format_args!("read {offset:#x}"));
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            regs::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            regs::DRIVER_FEATURES => self.write_driver_features(value),
            regs::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            regs::QUEUE_SEL => self.queue_sel = value,
            regs::QUEUE_NUM => self.write_queue_reg(QueueReg::Num, value),
            regs::QUEUE_READY => self.write_queue_ready(value),
            regs::QUEUE_NOTIFY => self.notify(value),
            regs::INTERRUPT_ACK => self.irq.ack(value),
            regs::STATUS => self.write_status(value),
            regs::QUEUE_DESC_LOW => self.write_queue_reg(QueueReg::DescLow, value),
            regs::QUEUE_DESC_HIGH => self.write_queue_reg(QueueReg::DescHigh, value),
            regs::QUEUE_DRIVER_LOW => self.write_queue_reg(QueueReg::DriverLow, value),
            regs::QUEUE_DRIVER_HIGH => self.write_queue_reg(QueueReg::DriverHigh, value),
            regs::QUEUE_DEVICE_LOW => self.write_queue_reg(QueueReg::DeviceLow, value),
            regs::QUEUE_DEVICE_HIGH => self.write_queue_reg(QueueReg::DeviceHigh, value),
            // No shared memory regions exist, so any selection reads as absent.
            regs::SHM_SEL => {}
            regs::MAGIC_VALUE
            | regs::VERSION
            | regs::DEVICE_ID
            | regs::VENDOR_ID
            | regs::DEVICE_FEATURES
            | regs::QUEUE_NUM_MAX
            | regs::INTERRUPT_STATUS
            | regs::SHM_LEN_LOW
            | regs::SHM_LEN_HIGH
            | regs::SHM_BASE_LOW
            | regs::SHM_BASE_HIGH
            | regs::CONFIG_GENERATION => {
                self.ignored(Oddity::ReadOnlyWrite, format_args!("{offset:#x}"));
            }
            _ => self.invalid(Oddity::UnknownRegister, format_args!("write {offset:#x}")),
        }
    }

    /// The queue QueueSel points at; counts an invalid access if there is none.
    fn selected_queue(&mut self) -> Option<&mut QueueSlot> {
        let index = self.queue_sel as usize;
        if index < self.queues.len() {
            return self.queues.get_mut(index);
        }
        let sel = self.queue_sel;
        self.invalid(Oddity::QueueSelOutOfRange, format_args!("QueueSel {sel}"));
        None
    }

    /// Whether the driver may set queues up now: after FEATURES_OK, before DRIVER_OK, and
    /// not after a failure.
    fn queue_setup_open(&self) -> bool {
        let s = self.status;
        s & status::FEATURES_OK != 0
            && s & (status::DRIVER_OK | status::FAILED | status::DEVICE_NEEDS_RESET) == 0
            && !self.broken
    }

    fn write_queue_reg(&mut self, reg: QueueReg, value: u32) {
        let open = self.queue_setup_open();
        let status = self.status;
        let Some(queue) = self.selected_queue() else {
            return;
        };
        if !open || queue.ready {
            let index = queue.index;
            self.ignored(
                Oddity::QueueWrite,
                format_args!("queue {index}, status {status:#x}"),
            );
            return;
        }
        match reg {
            QueueReg::Num => queue.size = value,
            QueueReg::DescLow => set_low(&mut queue.desc, value),
            QueueReg::DescHigh => set_high(&mut queue.desc, value),
            QueueReg::DriverLow => set_low(&mut queue.driver, value),
            QueueReg::DriverHigh => set_high(&mut queue.driver, value),
            QueueReg::DeviceLow => set_low(&mut queue.device, value),
            QueueReg::DeviceHigh => set_high(&mut queue.device, value),
        }
    }

    fn write_queue_ready(&mut self, value: u32) {
        let open = self.queue_setup_open();
        let Some(queue) = self.selected_queue() else {
            return;
        };
        match value {
            // Always accepted: Linux clears QueueReady when it deletes a queue and reads it
            // back. After DRIVER_OK the device keeps using the queue until the next reset.
            0 => queue.ready = false,
            1 if open => queue.ready = true,
            _ => {
                let index = queue.index;
                self.ignored(
                    Oddity::QueueWrite,
                    format_args!("QueueReady {value} on queue {index}"),
                );
            }
        }
    }

    fn notify(&mut self, value: u32) {
        // VIRTIO_F_NOTIFICATION_DATA is never offered, so the value is just the queue index.
        // A notification before DRIVER_OK stays latched in the eventfd for the device to find.
        let Some(queue) = self.queues.get(value as usize) else {
            self.invalid(Oddity::NotifyInvalid, format_args!("queue {value}"));
            return;
        };
        match queue.notify.write(1) {
            Ok(()) => bump(&self.counters.notifications),
            Err(e) => self.warn_once(Oddity::Signal, e),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        let s = self.status;
        if s & (status::DRIVER | status::FEATURES_OK | status::FAILED) != status::DRIVER
            || self.broken
        {
            self.ignored(Oddity::FeaturesWrite, format_args!("status {s:#x}"));
            return;
        }
        match self.driver_features_sel {
            0 => set_low(&mut self.driver_features, value),
            1 => set_high(&mut self.driver_features, value),
            _ => self.driver_features_beyond |= value != 0,
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status & !status::DEVICE_NEEDS_RESET;
        // Drivers write back the status they read plus one bit, so DEVICE_NEEDS_RESET may be
        // echoed; that bit belongs to the device.
        let mut new = value & !status::DEVICE_NEEDS_RESET;
        let stuck = self.broken || self.status & (status::FAILED | status::DEVICE_NEEDS_RESET) != 0;
        let added = new & !old;
        let in_order = new & !DRIVER_STATUS_BITS == 0
            && new & old == old
            && is_step_prefix(new)
            && (!stuck || added & !status::FAILED == 0);
        if !in_order {
            let current = self.status;
            self.ignored(
                Oddity::StatusTransition,
                format_args!("{current:#x} -> {value:#x}"),
            );
            return;
        }
        if added & status::FEATURES_OK != 0 && !self.negotiate_features() {
            // The driver reads the status back and gives up on the device.
            new &= !(status::FEATURES_OK | status::DRIVER_OK);
        }
        self.status = new | (self.status & status::DEVICE_NEEDS_RESET);
        if new & added & status::DRIVER_OK != 0 {
            self.activate();
        }
    }

    /// Checks the driver's feature choice; passes it to the device if acceptable.
    fn negotiate_features(&mut self) -> bool {
        let acked = self.driver_features;
        let offered = self.avail_features;
        let acceptable = !self.driver_features_beyond
            && acked & !offered == 0
            && acked & (1 << features::VIRTIO_F_VERSION_1) != 0;
        if !acceptable {
            self.ignored(
                Oddity::FeaturesRefused,
                format_args!("driver acked {acked:#x}, device offers {offered:#x}"),
            );
            return false;
        }
        self.lock_device().ack_features(acked);
        true
    }

    fn activate(&mut self) {
        let event_idx = self.driver_features & (1 << features::VIRTIO_F_EVENT_IDX) != 0;
        let queues: Result<Vec<_>, _> = self
            .queues
            .iter()
            .filter(|q| q.ready)
            .map(|q| q.activate(&self.mem, event_idx).map_err(|e| (q.index, e)))
            .collect();
        let queues = match queues {
            Ok(queues) => queues,
            Err((index, e)) => {
                self.fail_activation(Oddity::QueueSetup, format_args!("queue {index}: {e}"));
                return;
            }
        };
        let result = self
            .lock_device()
            .activate(self.mem.clone(), queues, Arc::clone(&self.irq));
        match result {
            Ok(()) => {
                self.activated = true;
                bump(&self.counters.activations);
                tracing::debug!(device_type = self.device_type, "virtio-mmio: activated");
            }
            Err(e) => self.fail_activation(Oddity::ActivateFailed, e),
        }
    }

    /// Sets DEVICE_NEEDS_RESET and tells the driver through a configuration interrupt.
    fn fail_activation(&mut self, kind: Oddity, detail: impl Display) {
        self.status |= status::DEVICE_NEEDS_RESET;
        bump(&self.counters.activation_failures);
        self.warn_once(kind, detail);
        if let Err(e) = self.irq.trigger_config() {
            self.warn_once(Oddity::Signal, e);
        }
    }

    /// Returns device and transport to their initial state (virtio spec 2.4, 4.2.2.1).
    fn reset(&mut self) {
        if self.activated {
            self.activated = false;
            if !self.lock_device().reset() {
                // The device still holds the old queues; it must never get new ones.
                self.broken = true;
                self.warn_once(Oddity::ResetUnsupported, "status stays FAILED");
            }
        }
        self.status = if self.broken { status::FAILED } else { 0 };
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.driver_features_beyond = false;
        self.queue_sel = 0;
        for queue in &mut self.queues {
            queue.reset();
        }
        self.irq.clear();
        bump(&self.counters.resets);
        tracing::debug!(device_type = self.device_type, "virtio-mmio: reset");
    }

    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        if self.config_access_ok(offset, data.len()) {
            self.lock_device().read_config(offset, data);
        } else {
            data.fill(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if self.config_access_ok(offset, data.len()) {
            self.lock_device().write_config(offset, data);
        }
    }

    /// Whether an access lies wholly inside the configuration space; counts it if not.
    fn config_access_ok(&mut self, offset: u64, len: usize) -> bool {
        let end = u64::try_from(len)
            .ok()
            .and_then(|len| offset.checked_add(len));
        if end.is_some_and(|end| end <= self.config_len) {
            return true;
        }
        self.invalid(
            Oddity::ConfigOutOfRange,
            format_args!("{len} bytes at config offset {offset:#x}"),
        );
        false
    }
}

/// Whether the initialisation bits in `value` are a prefix of the required order.
fn is_step_prefix(value: u32) -> bool {
    let mut seen_gap = false;
    for step in STATUS_STEPS {
        let set = value & step != 0;
        if set && seen_gap {
            return false;
        }
        seen_gap |= !set;
    }
    true
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(config_offset) = offset.checked_sub(regs::CONFIG) {
            self.read_config(config_offset, data);
            return;
        }
        if !is_register_access(offset, data.len()) {
            data.fill(0);
            self.invalid(
                Oddity::RegisterWidth,
                format_args!("read {} bytes at {offset:#x}", data.len()),
            );
            return;
        }
        let value = self.read_register(offset);
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(config_offset) = offset.checked_sub(regs::CONFIG) {
            self.write_config(config_offset, data);
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(bytes) if is_register_access(offset, data.len()) => {
                self.write_register(offset, u32::from_le_bytes(bytes));
            }
            _ => self.invalid(
                Oddity::RegisterWidth,
                format_args!("write {} bytes at {offset:#x}", data.len()),
            ),
        }
    }
}

/// Registers only answer aligned 32-bit accesses (virtio spec 4.2.2.2).
fn is_register_access(offset: u64, len: usize) -> bool {
    len == 4 && offset & 0x3 == 0
}

#[cfg(test)]
mod tests;
