//! Drives the transport the way Linux's virtio_mmio driver does, and the ways a hostile guest
//! might.

use std::sync::Mutex;

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;

use super::*;
use crate::devices::virtio::features::*;
use crate::devices::virtio::status::*;
use crate::devices::virtio::{
    device_type, read_config_bytes, write_config_bytes, ActivateError, ActivatedQueue,
};

/// A device-specific feature bit the dummy offers, in the high half.
const DUMMY_F_HIGH: u32 = 41;
/// A device-specific feature bit the dummy offers, in the low half.
const DUMMY_F_LOW: u32 = 3;
const DUMMY_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1)
    | (1 << VIRTIO_F_EVENT_IDX)
    | (1 << DUMMY_F_LOW)
    | (1 << DUMMY_F_HIGH);
const QUEUE_SIZES: [u16; 2] = [256, 16];
const MEM_SIZE: usize = 0x10_0000;

/// (size, desc, driver, device) of each dummy queue, inside guest memory.
const LAYOUT: [(u16, u64, u64, u64); 2] =
    [(256, 0x1000, 0x2000, 0x3000), (16, 0x8000, 0x8100, 0x8200)];

/// What activate() received, in a form tests can compare.
#[derive(Debug, PartialEq, Eq)]
struct SeenQueue {
    index: u16,
    size: u16,
    desc: u64,
    driver: u64,
    device: u64,
    event_idx: bool,
    ready: bool,
}

struct Dummy {
    features: u64,
    sizes: Vec<u16>,
    config: [u8; 12],
    acked: Vec<u64>,
    activations: u32,
    seen: Vec<SeenQueue>,
    queues: Vec<ActivatedQueue>,
    irq: Option<Arc<IrqTrigger>>,
    mem: Option<GuestMemoryMmap>,
    resets: u32,
    reset_supported: bool,
    fail_activate: bool,
}

impl Default for Dummy {
    fn default() -> Self {
        Self {
            features: DUMMY_FEATURES,
            sizes: QUEUE_SIZES.to_vec(),
            config: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
            acked: Vec::new(),
            activations: 0,
            seen: Vec::new(),
            queues: Vec::new(),
            irq: None,
            mem: None,
            resets: 0,
            reset_supported: true,
            fail_activate: false,
        }
    }
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn avail_features(&self) -> u64 {
        self.features
    }
    fn ack_features(&mut self, features: u64) {
        self.acked.push(features);
    }
    fn config_space_len(&self) -> u64 {
        self.config.len() as u64
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        assert!(read_config_bytes(&self.config, offset, data));
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        assert!(write_config_bytes(&mut self.config, offset, data));
    }
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<ActivatedQueue>,
        interrupt: Arc<IrqTrigger>,
    ) -> Result<(), ActivateError> {
        if self.fail_activate {
            return Err(ActivateError::MissingQueue(7));
        }
        self.activations += 1;
        self.seen = queues
            .iter()
            .map(|q| SeenQueue {
                index: q.index,
                size: q.queue.size(),
                desc: q.queue.desc_table(),
                driver: q.queue.avail_ring(),
                device: q.queue.used_ring(),
                event_idx: q.queue.event_idx_enabled(),
                ready: q.queue.ready(),
            })
            .collect();
        self.queues = queues;
        self.irq = Some(interrupt);
        self.mem = Some(mem);
        Ok(())
    }
    fn reset(&mut self) -> bool {
        self.resets += 1;
        if self.reset_supported {
            self.queues.clear();
            self.irq = None;
            self.mem = None;
        }
        self.reset_supported
    }
}

struct Fixture {
    t: MmioTransport,
    dev: Arc<Mutex<Dummy>>,
    mem: GuestMemoryMmap,
}

fn fixture() -> Fixture {
    fixture_with(Dummy::default(), &[(GuestAddress(0), MEM_SIZE)])
}

fn fixture_with(dummy: Dummy, ranges: &[(GuestAddress, usize)]) -> Fixture {
    let mem = GuestMemoryMmap::<()>::from_ranges(ranges).unwrap();
    let dev = Arc::new(Mutex::new(dummy));
    let t = MmioTransport::new(mem.clone(), dev.clone()).unwrap();
    Fixture { t, dev, mem }
}

impl Fixture {
    fn r(&mut self, offset: u64) -> u32 {
        let mut buf = [0xa5u8; 4];
        self.t.read(offset, &mut buf);
        u32::from_le_bytes(buf)
    }

    fn w(&mut self, offset: u64, value: u32) {
        self.t.write(offset, &value.to_le_bytes());
    }

    /// Linux's virtio_add_status(): read, OR in the bit, write back.
    fn add_status(&mut self, bit: u32) {
        let s = self.r(regs::STATUS);
        self.w(regs::STATUS, s | bit);
    }

    fn device_features(&mut self) -> u64 {
        self.w(regs::DEVICE_FEATURES_SEL, 1);
        let high = u64::from(self.r(regs::DEVICE_FEATURES));
        self.w(regs::DEVICE_FEATURES_SEL, 0);
        let low = u64::from(self.r(regs::DEVICE_FEATURES));
        (high << 32) | low
    }

    /// Reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK; returns whether FEATURES_OK stuck.
    fn negotiate(&mut self, features: u64) -> bool {
        self.w(regs::STATUS, 0);
        self.add_status(ACKNOWLEDGE);
        self.add_status(DRIVER);
        self.w(regs::DRIVER_FEATURES_SEL, 1);
        self.w(regs::DRIVER_FEATURES, (features >> 32) as u32);
        self.w(regs::DRIVER_FEATURES_SEL, 0);
        self.w(regs::DRIVER_FEATURES, features as u32);
        self.add_status(FEATURES_OK);
        self.r(regs::STATUS) & FEATURES_OK != 0
    }

    /// Linux's vm_setup_vq() for a version 2 device.
    fn setup_queue(&mut self, index: u32, size: u32, desc: u64, driver: u64, device: u64) {
        self.w(regs::QUEUE_SEL, index);
        assert_eq!(self.r(regs::QUEUE_READY), 0, "queue {index} already in use");
        let _max = self.r(regs::QUEUE_NUM_MAX);
        self.w(regs::QUEUE_NUM, size);
        self.w(regs::QUEUE_DESC_LOW, desc as u32);
        self.w(regs::QUEUE_DESC_HIGH, (desc >> 32) as u32);
        self.w(regs::QUEUE_DRIVER_LOW, driver as u32);
        self.w(regs::QUEUE_DRIVER_HIGH, (driver >> 32) as u32);
        self.w(regs::QUEUE_DEVICE_LOW, device as u32);
        self.w(regs::QUEUE_DEVICE_HIGH, (device >> 32) as u32);
        self.w(regs::QUEUE_READY, 1);
    }

    fn setup_all_queues(&mut self) {
        for (i, (size, desc, driver, device)) in LAYOUT.into_iter().enumerate() {
            self.setup_queue(i as u32, u32::from(size), desc, driver, device);
        }
    }

    /// The whole Linux probe sequence up to DRIVER_OK.
    fn bring_up(&mut self, features: u64) {
        assert!(self.negotiate(features));
        self.setup_all_queues();
        self.add_status(DRIVER_OK);
    }

    fn counters(&self) -> MmioCountersSnapshot {
        self.t.counters().snapshot()
    }

    fn dev(&self) -> std::sync::MutexGuard<'_, Dummy> {
        self.dev.lock().unwrap()
    }
}

fn expected_queues(event_idx: bool) -> Vec<SeenQueue> {
    LAYOUT
        .iter()
        .enumerate()
        .map(|(i, &(size, desc, driver, device))| SeenQueue {
            index: i as u16,
            size,
            desc,
            driver,
            device,
            event_idx,
            ready: true,
        })
        .collect()
}

#[test]
fn identification_registers() {
    let mut f = fixture();
    assert_eq!(f.r(regs::MAGIC_VALUE), 0x7472_6976);
    assert_eq!(f.r(regs::VERSION), 2);
    assert_eq!(f.r(regs::DEVICE_ID), device_type::VSOCK);
    assert_eq!(f.r(regs::VENDOR_ID), VENDOR_ID);
    assert_eq!(f.r(regs::STATUS), 0);
    assert_eq!(f.r(regs::INTERRUPT_STATUS), 0);
    assert_eq!(f.r(regs::CONFIG_GENERATION), 0);
    for (i, size) in QUEUE_SIZES.into_iter().enumerate() {
        f.w(regs::QUEUE_SEL, i as u32);
        assert_eq!(f.r(regs::QUEUE_NUM_MAX), u32::from(size));
        assert_eq!(f.r(regs::QUEUE_READY), 0);
    }
    assert_eq!(f.counters(), MmioCountersSnapshot::default());
}

#[test]
fn no_shared_memory_regions() {
    let mut f = fixture();
    f.w(regs::SHM_SEL, 0);
    let len = u64::from(f.r(regs::SHM_LEN_LOW)) | (u64::from(f.r(regs::SHM_LEN_HIGH)) << 32);
    assert_eq!(len, u64::MAX, "length -1 means no such region");
    assert_eq!(f.counters(), MmioCountersSnapshot::default());
}

#[test]
fn feature_negotiation_in_two_halves() {
    let mut f = fixture();
    f.add_status(ACKNOWLEDGE);
    f.add_status(DRIVER);
    assert_eq!(f.device_features(), DUMMY_FEATURES);
    f.w(regs::DEVICE_FEATURES_SEL, 2);
    assert_eq!(f.r(regs::DEVICE_FEATURES), 0, "no feature bits above 63");

    let wanted = (1 << VIRTIO_F_VERSION_1) | (1 << DUMMY_F_HIGH) | (1 << DUMMY_F_LOW);
    assert!(f.negotiate(wanted));
    assert_eq!(f.r(regs::STATUS), ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_eq!(f.dev().acked, vec![wanted]);
    assert_eq!(f.counters().ignored_writes, 0);
}

#[test]
fn transport_hides_features_it_cannot_provide() {
    let dummy = Dummy {
        features: DUMMY_FEATURES
            | (1 << VIRTIO_F_RING_PACKED)
            | (1 << VIRTIO_F_NOTIFICATION_DATA)
            | (1 << VIRTIO_F_RING_RESET),
        ..Dummy::default()
    };
    let mut f = fixture_with(dummy, &[(GuestAddress(0), MEM_SIZE)]);
    assert_eq!(f.device_features(), DUMMY_FEATURES);
    assert!(!f.negotiate(DUMMY_FEATURES | (1 << VIRTIO_F_RING_PACKED)));
}

#[test]
fn feature_sets_the_device_does_not_offer_are_refused() {
    let mut f = fixture();
    // A bit the device does not offer.
    assert!(!f.negotiate((1 << VIRTIO_F_VERSION_1) | (1 << 5)));
    assert_eq!(f.r(regs::STATUS), ACKNOWLEDGE | DRIVER);
    // VERSION_1 missing (a legacy driver).
    assert!(!f.negotiate(1 << DUMMY_F_LOW));
    // A bit above 63.
    f.w(regs::STATUS, 0);
    f.add_status(ACKNOWLEDGE);
    f.add_status(DRIVER);
    f.w(regs::DRIVER_FEATURES_SEL, 1);
    f.w(regs::DRIVER_FEATURES, 1);
    f.w(regs::DRIVER_FEATURES_SEL, 2);
    f.w(regs::DRIVER_FEATURES, 1);
    f.add_status(FEATURES_OK);
    assert_eq!(f.r(regs::STATUS) & FEATURES_OK, 0);

    assert!(f.dev().acked.is_empty(), "the device never saw a bad set");
    assert_eq!(f.counters().ignored_writes, 3);
    // Linux then sets FAILED; that is accepted, and nothing else is until a reset.
    f.add_status(FAILED);
    assert_eq!(f.r(regs::STATUS), ACKNOWLEDGE | DRIVER | FAILED);
    f.add_status(FEATURES_OK);
    assert_eq!(f.r(regs::STATUS), ACKNOWLEDGE | DRIVER | FAILED);
    assert!(
        f.negotiate(1 << VIRTIO_F_VERSION_1),
        "a reset clears FAILED"
    );
}

#[test]
fn driver_features_are_frozen_outside_negotiation() {
    let mut f = fixture();
    // Before DRIVER.
    f.w(regs::DRIVER_FEATURES, 1 << DUMMY_F_LOW);
    assert_eq!(f.counters().ignored_writes, 1);
    assert!(f.negotiate(1 << VIRTIO_F_VERSION_1));
    // After FEATURES_OK.
    f.w(regs::DRIVER_FEATURES_SEL, 0);
    f.w(regs::DRIVER_FEATURES, 1 << DUMMY_F_LOW);
    assert_eq!(f.counters().ignored_writes, 2);
    f.setup_all_queues();
    f.add_status(DRIVER_OK);
    assert_eq!(f.dev().acked, vec![1 << VIRTIO_F_VERSION_1]);
    assert_eq!(f.dev().seen, expected_queues(false));
}

#[test]
fn driver_ok_activates_once_with_the_driver_queues() {
    let mut f = fixture();
    f.bring_up(DUMMY_FEATURES);
    assert_eq!(
        f.r(regs::STATUS),
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
    );
    assert!(f.t.is_activated());
    {
        let dev = f.dev();
        assert_eq!(dev.activations, 1);
        assert_eq!(dev.seen, expected_queues(true), "EVENT_IDX was negotiated");
        assert!(dev.mem.is_some() && dev.irq.is_some());
    }
    // Writing DRIVER_OK again (status unchanged) does not start the device twice.
    f.add_status(DRIVER_OK);
    assert_eq!(f.dev().activations, 1);
    let c = f.counters();
    assert_eq!((c.activations, c.activation_failures), (1, 0));
    assert_eq!((c.invalid_accesses, c.ignored_writes), (0, 0));
}

#[test]
fn only_ready_queues_are_handed_over() {
    let mut f = fixture();
    assert!(f.negotiate(1 << VIRTIO_F_VERSION_1));
    let (size, desc, driver, device) = LAYOUT[1];
    f.setup_queue(1, u32::from(size), desc, driver, device);
    f.add_status(DRIVER_OK);
    let seen = &f.dev().seen;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0], expected_queues(false).remove(1));
}

#[test]
fn queues_carry_real_buffers_end_to_end() {
    let mut f = fixture();
    let mem = f.mem.clone();
    let mock = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
    let desc = SplitDescriptor::new(0x9_0000, 0x100, 0, 0);
    mock.add_desc_chains(&[RawDescriptor::from(desc)], 0)
        .unwrap();

    assert!(f.negotiate(1 << VIRTIO_F_VERSION_1));
    f.setup_queue(
        1,
        16,
        mock.desc_table_addr().0,
        mock.avail_addr().0,
        mock.used_addr().0,
    );
    f.add_status(DRIVER_OK);

    let mut dev = f.dev();
    let irq = dev.irq.clone().unwrap();
    let q = &mut dev.queues[0];
    assert_eq!(q.index, 1);
    let chain = q.queue.pop_descriptor_chain(&mem).unwrap();
    let head = chain.head_index();
    let d = chain.into_iter().next().unwrap();
    assert_eq!((d.addr().0, d.len()), (0x9_0000, 0x100));
    q.queue.add_used(&mem, head, 0x80).unwrap();
    irq.trigger_used().unwrap();
    drop(dev);
    assert_eq!(mock.used().idx().load(), 1);
    assert_eq!(f.r(regs::INTERRUPT_STATUS), 1);
}

#[test]
fn notify_signals_the_queue_eventfd() {
    let mut f = fixture();
    f.bring_up(DUMMY_FEATURES);
    f.w(regs::QUEUE_NOTIFY, 1);
    f.w(regs::QUEUE_NOTIFY, 1);
    {
        let dev = f.dev();
        assert_eq!(dev.queues[1].notify.read().unwrap(), 2);
        assert!(
            dev.queues[0].notify.read().is_err(),
            "queue 0 was not notified"
        );
    }
    f.w(regs::QUEUE_NOTIFY, 2);
    f.w(regs::QUEUE_NOTIFY, u32::MAX);
    let c = f.counters();
    assert_eq!((c.notifications, c.invalid_accesses), (2, 2));
    // The transport keeps the eventfds for KVM ioeventfd registration.
    assert_eq!(f.t.queue_evts().count(), 2);
}

#[test]
fn notification_before_driver_ok_stays_latched() {
    let mut f = fixture();
    assert!(f.negotiate(1 << VIRTIO_F_VERSION_1));
    f.setup_all_queues();
    f.w(regs::QUEUE_NOTIFY, 0);
    f.add_status(DRIVER_OK);
    assert_eq!(f.dev().queues[0].notify.read().unwrap(), 1);
}

#[test]
fn interrupt_status_and_ack() {
    let mut f = fixture();
    f.bring_up(DUMMY_FEATURES);
    let irq = f.dev().irq.clone().unwrap();
    let irq_evt = f.t.interrupt().eventfd().try_clone().unwrap();

    irq.trigger_used().unwrap();
    assert_eq!(irq_evt.read().unwrap(), 1, "the irqfd fired");
    assert_eq!(f.r(regs::INTERRUPT_STATUS), 1);
    let generation = f.r(regs::CONFIG_GENERATION);
    irq.trigger_config().unwrap();
    assert_eq!(f.r(regs::INTERRUPT_STATUS), 3);
    assert_ne!(f.r(regs::CONFIG_GENERATION), generation);

    // Linux's vm_interrupt(): read the status, acknowledge what it read.
    f.w(regs::INTERRUPT_ACK, 1);
    assert_eq!(f.r(regs::INTERRUPT_STATUS), 2);
    f.w(regs::INTERRUPT_ACK, 2 | 0xf0);
    assert_eq!(f.r(regs::INTERRUPT_STATUS), 0);
    // InterruptStatus is read-only.
    f.w(regs::INTERRUPT_STATUS, 3);
    assert_eq!(f.r(regs::INTERRUPT_STATUS), 0);
    assert_eq!(f.counters().ignored_writes, 1);
}

#[test]
fn config_space_is_forwarded_at_any_width() {
    let mut f = fixture();
    let mut b1 = [0u8; 1];
    f.t.read(regs::CONFIG + 3, &mut b1);
    assert_eq!(b1, [3]);
    let mut b2 = [0u8; 2];
    f.t.read(regs::CONFIG + 10, &mut b2);
    assert_eq!(b2, [10, 11]);
    assert_eq!(f.r(regs::CONFIG + 4), u32::from_le_bytes([4, 5, 6, 7]));
    let mut b8 = [0u8; 8];
    f.t.read(regs::CONFIG, &mut b8);
    assert_eq!(b8, [0, 1, 2, 3, 4, 5, 6, 7]);

    f.t.write(regs::CONFIG + 1, &[0xee]);
    f.t.write(regs::CONFIG + 8, &0xdead_beef_u32.to_le_bytes());
    assert_eq!(
        f.dev().config,
        [0, 0xee, 2, 3, 4, 5, 6, 7, 0xef, 0xbe, 0xad, 0xde]
    );
    assert_eq!(f.counters(), MmioCountersSnapshot::default());
}

#[test]
fn config_accesses_past_the_end_are_dropped() {
    let mut f = fixture();
    let before = f.dev().config;
    // Straddling the end, wholly past it, and at the far end of the slot.
    f.t.write(regs::CONFIG + 10, &[1, 2, 3, 4]);
    f.t.write(regs::CONFIG + 12, &[1]);
    f.t.write(MMIO_REGION_SIZE - 1, &[1]);
    f.t.write(u64::MAX, &[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(f.dev().config, before);
    let mut buf = [0xffu8; 4];
    f.t.read(regs::CONFIG + 10, &mut buf);
    assert_eq!(buf, [0; 4]);
    let mut buf = [0xffu8; 8];
    f.t.read(u64::MAX - 3, &mut buf);
    assert_eq!(buf, [0; 8]);
    assert_eq!(f.counters().invalid_accesses, 6);
}

#[test]
fn reset_returns_everything_to_the_start() {
    let mut f = fixture();
    f.bring_up(DUMMY_FEATURES);
    f.dev().irq.clone().unwrap().trigger_used().unwrap();
    f.w(regs::QUEUE_NOTIFY, 0);

    f.w(regs::STATUS, 0);
    assert_eq!(f.r(regs::STATUS), 0);
    assert_eq!(f.r(regs::INTERRUPT_STATUS), 0);
    assert!(!f.t.is_activated());
    {
        let dev = f.dev();
        assert_eq!(dev.resets, 1);
        assert!(dev.queues.is_empty() && dev.irq.is_none());
    }
    for (i, size) in QUEUE_SIZES.into_iter().enumerate() {
        f.w(regs::QUEUE_SEL, i as u32);
        assert_eq!(f.r(regs::QUEUE_READY), 0);
        assert_eq!(f.r(regs::QUEUE_NUM_MAX), u32::from(size));
    }
    assert!(
        f.t.queue_evts().all(|e| e.read().is_err()),
        "stale notifications are dropped"
    );
    // Driver features are forgotten: FEATURES_OK without new ones is refused.
    f.add_status(ACKNOWLEDGE);
    f.add_status(DRIVER);
    f.add_status(FEATURES_OK);
    assert_eq!(f.r(regs::STATUS) & FEATURES_OK, 0);

    // The device comes up again, with the new feature set.
    f.bring_up(1 << VIRTIO_F_VERSION_1);
    assert_eq!(f.dev().activations, 2);
    assert_eq!(f.dev().seen, expected_queues(false));
    let c = f.counters();
    assert_eq!((c.activations, c.resets), (2, 3));
}

#[test]
fn a_device_that_cannot_reset_fails_for_good() {
    let dummy = Dummy {
        reset_supported: false,
        ..Dummy::default()
    };
    let mut f = fixture_with(dummy, &[(GuestAddress(0), MEM_SIZE)]);
    f.bring_up(DUMMY_FEATURES);
    f.w(regs::STATUS, 0);
    assert_eq!(f.r(regs::STATUS), FAILED);
    assert!(!f.negotiate(DUMMY_FEATURES));
    assert_eq!(f.r(regs::STATUS), FAILED);
    assert_eq!(f.dev().activations, 1);
    assert_eq!(f.dev().acked.len(), 1);
}

#[test]
fn rings_outside_guest_memory_need_reset() {
    let mut f = fixture();
    assert!(f.negotiate(1 << VIRTIO_F_VERSION_1));
    let (size, desc, driver, _) = LAYOUT[0];
    f.setup_all_queues();
    // Re-do queue 0 with its used ring straddling the end of guest memory.
    f.w(regs::QUEUE_SEL, 0);
    f.w(regs::QUEUE_READY, 0);
    f.setup_queue(0, u32::from(size), desc, driver, MEM_SIZE as u64 - 0x100);
    let irq_evt = f.t.interrupt().eventfd().try_clone().unwrap();
    f.add_status(DRIVER_OK);

    assert_eq!(f.dev().activations, 0);
    assert!(!f.t.is_activated());
    assert_eq!(f.r(regs::STATUS) & (DEVICE_NEEDS_RESET | DRIVER_OK), 0x44);
    assert_eq!(f.r(regs::INTERRUPT_STATUS), 2, "config change interrupt");
    assert_eq!(irq_evt.read().unwrap(), 1);
    let c = f.counters();
    assert_eq!((c.activations, c.activation_failures), (0, 1));

    // Linux echoes NEEDS_RESET back when it adds FAILED; progress waits for a reset.
    f.add_status(FAILED);
    assert_eq!(f.r(regs::STATUS) & FAILED, FAILED);
    f.bring_up(1 << VIRTIO_F_VERSION_1);
    assert_eq!(f.dev().activations, 1);
}

#[test]
fn rings_starting_in_a_memory_hole_need_reset() {
    // Two regions with a hole between them; the ring starts in the hole and ends in the
    // second region, which an end-address check alone would accept.
    let ranges = [(GuestAddress(0), 0x10000), (GuestAddress(0x20000), 0x10000)];
    let mut f = fixture_with(Dummy::default(), &ranges);
    assert!(f.negotiate(1 << VIRTIO_F_VERSION_1));
    f.setup_queue(0, 256, 0x1f000, 0x2000, 0x3000);
    f.add_status(DRIVER_OK);
    assert_eq!(f.dev().activations, 0);
    assert_ne!(f.r(regs::STATUS) & DEVICE_NEEDS_RESET, 0);
}

#[test]
fn bad_queue_sizes_and_alignment_need_reset() {
    let cases: [(u32, u64, u64, u64); 5] = [
        (100, 0x1000, 0x2000, 0x3000), // not a power of two
        (512, 0x1000, 0x2000, 0x3000), // above QueueNumMax
        (256, 0x1008, 0x2000, 0x3000), // descriptor table not 16-byte aligned
        (256, 0x1000, 0x2001, 0x3000), // driver ring not 2-byte aligned
        (256, 0x1000, 0x2000, 0x3002), // device ring not 4-byte aligned
    ];
    for (size, desc, driver, device) in cases {
        let mut f = fixture();
        assert!(f.negotiate(1 << VIRTIO_F_VERSION_1));
        f.setup_queue(0, size, desc, driver, device);
        f.add_status(DRIVER_OK);
        assert_eq!(f.dev().activations, 0, "size {size} desc {desc:#x}");
        assert_ne!(f.r(regs::STATUS) & DEVICE_NEEDS_RESET, 0);
    }
}

#[test]
fn device_activation_error_needs_reset() {
    let dummy = Dummy {
        fail_activate: true,
        ..Dummy::default()
    };
    let mut f = fixture_with(dummy, &[(GuestAddress(0), MEM_SIZE)]);
    f.bring_up(DUMMY_FEATURES);
    assert!(!f.t.is_activated());
    assert_ne!(f.r(regs::STATUS) & DEVICE_NEEDS_RESET, 0);
    assert_eq!(f.counters().activation_failures, 1);
    // Nothing was activated, so a reset does not bother the device.
    f.w(regs::STATUS, 0);
    assert_eq!(f.dev().resets, 0);
    assert_eq!(f.r(regs::STATUS), 0);
}

#[test]
fn narrow_wide_and_misaligned_register_accesses_are_ignored() {
    let mut f = fixture();
    let mut b1 = [0xffu8; 1];
    f.t.read(regs::MAGIC_VALUE, &mut b1);
    assert_eq!(b1, [0]);
    let mut b2 = [0xffu8; 2];
    f.t.read(regs::VERSION, &mut b2);
    assert_eq!(b2, [0, 0]);
    let mut b8 = [0xffu8; 8];
    f.t.read(regs::MAGIC_VALUE, &mut b8);
    assert_eq!(b8, [0; 8]);
    let mut b4 = [0xffu8; 4];
    f.t.read(regs::MAGIC_VALUE + 2, &mut b4);
    assert_eq!(b4, [0; 4]);
    // A 4-byte access that straddles the registers and the config space.
    f.t.read(regs::CONFIG - 2, &mut b4);
    assert_eq!(b4, [0; 4]);

    f.t.write(regs::STATUS, &[ACKNOWLEDGE as u8]);
    f.t.write(regs::STATUS, &[ACKNOWLEDGE as u8, 0]);
    f.t.write(regs::STATUS + 1, &ACKNOWLEDGE.to_le_bytes());
    f.t.write(regs::STATUS, &u64::from(ACKNOWLEDGE).to_le_bytes());
    assert_eq!(f.r(regs::STATUS), 0);
    assert_eq!(f.counters().invalid_accesses, 9);
}

#[test]
fn unknown_write_only_and_read_only_registers() {
    let mut f = fixture();
    // Legacy registers, holes, write-only registers: read as 0.
    for offset in [
        0x028,
        0x03c,
        0x040,
        0x048,
        0x0c0,
        0x0f8,
        regs::QUEUE_NUM,
        regs::QUEUE_SEL,
    ] {
        assert_eq!(f.r(offset), 0, "offset {offset:#x}");
    }
    assert_eq!(f.counters().invalid_accesses, 8);
    f.w(0x040, 0x1234);
    f.w(0x0f8, 1);
    assert_eq!(f.counters().invalid_accesses, 10);
    for offset in [
        regs::MAGIC_VALUE,
        regs::VERSION,
        regs::DEVICE_ID,
        regs::VENDOR_ID,
        regs::DEVICE_FEATURES,
        regs::QUEUE_NUM_MAX,
        regs::SHM_LEN_LOW,
        regs::CONFIG_GENERATION,
    ] {
        f.w(offset, 0);
    }
    assert_eq!(f.counters().ignored_writes, 8);
    assert_eq!(f.r(regs::MAGIC_VALUE), MAGIC_VALUE);
    assert_eq!(f.r(regs::DEVICE_ID), device_type::VSOCK);
    f.w(regs::QUEUE_SEL, 0);
    assert_eq!(f.r(regs::QUEUE_NUM_MAX), 256);
}

#[test]
fn queue_sel_out_of_range() {
    let mut f = fixture();
    assert!(f.negotiate(1 << VIRTIO_F_VERSION_1));
    for sel in [2, 0xffff, u32::MAX] {
        f.w(regs::QUEUE_SEL, sel);
        assert_eq!(f.r(regs::QUEUE_NUM_MAX), 0, "no such queue");
        assert_eq!(f.r(regs::QUEUE_READY), 0);
        f.w(regs::QUEUE_NUM, 16);
        f.w(regs::QUEUE_DESC_LOW, 0x1000);
        f.w(regs::QUEUE_READY, 1);
        assert_eq!(f.r(regs::QUEUE_READY), 0);
    }
    assert_eq!(f.counters().invalid_accesses, 18);
    f.setup_all_queues();
    f.add_status(DRIVER_OK);
    assert_eq!(f.dev().seen, expected_queues(false));
}

#[test]
fn status_only_moves_forward_in_order() {
    let mut f = fixture();
    // Skipping ACKNOWLEDGE, and unknown bits.
    f.w(regs::STATUS, DRIVER);
    f.w(regs::STATUS, ACKNOWLEDGE | 0x10);
    f.w(regs::STATUS, ACKNOWLEDGE | DEVICE_NEEDS_RESET | 0x20);
    assert_eq!(f.r(regs::STATUS), 0);
    assert!(f.negotiate(1 << VIRTIO_F_VERSION_1));
    // Clearing bits.
    f.w(regs::STATUS, ACKNOWLEDGE);
    f.w(regs::STATUS, ACKNOWLEDGE | DRIVER | DRIVER_OK);
    assert_eq!(f.r(regs::STATUS), ACKNOWLEDGE | DRIVER | FEATURES_OK);
    // A device-owned bit written by the driver is not taken.
    f.w(
        regs::STATUS,
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DEVICE_NEEDS_RESET,
    );
    assert_eq!(f.r(regs::STATUS), ACKNOWLEDGE | DRIVER | FEATURES_OK);
    assert_eq!(f.counters().ignored_writes, 5);
    // DRIVER_OK before ACKNOWLEDGE, in one go from reset.
    f.w(regs::STATUS, 0);
    f.w(regs::STATUS, DRIVER_OK);
    assert_eq!(f.r(regs::STATUS), 0);
    assert_eq!(f.dev().activations, 0);
}

#[test]
fn queue_setup_only_between_features_ok_and_driver_ok() {
    let mut f = fixture();
    let (size, desc, driver, device) = LAYOUT[0];
    // Before FEATURES_OK.
    f.add_status(ACKNOWLEDGE);
    f.add_status(DRIVER);
    f.w(regs::QUEUE_SEL, 0);
    f.w(regs::QUEUE_NUM, 16);
    f.w(regs::QUEUE_READY, 1);
    assert_eq!(f.r(regs::QUEUE_READY), 0);
    assert_eq!(f.counters().ignored_writes, 2);

    assert!(f.negotiate(1 << VIRTIO_F_VERSION_1));
    f.setup_queue(0, u32::from(size), desc, driver, device);
    // While ready: changes are refused.
    f.w(regs::QUEUE_DESC_LOW, 0x5000);
    f.w(regs::QUEUE_NUM, 16);
    assert_eq!(f.counters().ignored_writes, 4);
    f.add_status(DRIVER_OK);
    assert_eq!(f.dev().seen[0], expected_queues(false).remove(0));

    // After DRIVER_OK: queue 1 cannot be set up any more.
    f.w(regs::QUEUE_SEL, 1);
    f.w(regs::QUEUE_NUM, 16);
    f.w(regs::QUEUE_READY, 1);
    assert_eq!(f.r(regs::QUEUE_READY), 0);
    assert_eq!(f.counters().ignored_writes, 6);
    // Linux's vm_del_vq(): clear QueueReady and read it back as 0.
    f.w(regs::QUEUE_SEL, 0);
    f.w(regs::QUEUE_READY, 0);
    assert_eq!(f.r(regs::QUEUE_READY), 0);
    assert_eq!(f.dev().activations, 1);
}

#[test]
fn construction_checks_the_device() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    let make = |dummy: Dummy| MmioTransport::new(mem.clone(), Arc::new(Mutex::new(dummy)));
    let no_v1 = Dummy {
        features: 1 << DUMMY_F_LOW,
        ..Dummy::default()
    };
    assert!(matches!(make(no_v1), Err(MmioError::NoVersion1)));
    for size in [0, 100, 65535] {
        let bad = Dummy {
            sizes: vec![16, size],
            ..Dummy::default()
        };
        assert!(matches!(
            make(bad),
            Err(MmioError::InvalidQueueSize { index: 1, .. })
        ));
    }
    let many = Dummy {
        sizes: vec![16; MAX_QUEUES + 1],
        ..Dummy::default()
    };
    assert!(matches!(make(many), Err(MmioError::TooManyQueues(_))));
}

/// Random register and config traffic from a hostile guest: nothing panics, and a reset
/// brings the device back to a working state.
#[test]
fn random_traffic_does_not_break_the_transport() {
    let mut f = fixture();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    const REGISTERS: [u64; 28] = [
        regs::MAGIC_VALUE,
        regs::VERSION,
        regs::DEVICE_ID,
        regs::VENDOR_ID,
        regs::DEVICE_FEATURES,
        regs::DEVICE_FEATURES_SEL,
        regs::DRIVER_FEATURES,
        regs::DRIVER_FEATURES_SEL,
        regs::QUEUE_SEL,
        regs::QUEUE_NUM_MAX,
        regs::QUEUE_NUM,
        regs::QUEUE_READY,
        regs::QUEUE_NOTIFY,
        regs::INTERRUPT_STATUS,
        regs::INTERRUPT_ACK,
        regs::STATUS,
        regs::QUEUE_DESC_LOW,
        regs::QUEUE_DESC_HIGH,
        regs::QUEUE_DRIVER_LOW,
        regs::QUEUE_DRIVER_HIGH,
        regs::QUEUE_DEVICE_LOW,
        regs::QUEUE_DEVICE_HIGH,
        regs::SHM_SEL,
        regs::SHM_LEN_LOW,
        regs::SHM_BASE_HIGH,
        regs::CONFIG_GENERATION,
        regs::CONFIG,
        regs::CONFIG + 8,
    ];
    for _ in 0..50_000 {
        let r = next();
        let offset = match r & 3 {
            0 | 1 => REGISTERS[(r >> 8) as usize % REGISTERS.len()],
            2 => ((r >> 8) % 0x104) & !0x3,
            _ => (r >> 8) % MMIO_REGION_SIZE,
        };
        let len = if r & 4 == 0 {
            4
        } else {
            [1, 2, 4, 8][(r >> 5) as usize % 4]
        };
        let value = next();
        // Bias values towards small numbers, which drive more state transitions.
        let value = if r & 8 == 0 { value % 16 } else { value };
        let bytes = value.to_le_bytes();
        if r & 16 == 0 {
            let mut buf = [0u8; 8];
            f.t.read(offset, &mut buf[..len]);
        } else {
            f.t.write(offset, &bytes[..len]);
        }
    }
    let c = f.counters();
    assert!(c.invalid_accesses > 0 && c.ignored_writes > 0 && c.resets > 0);
    f.bring_up(DUMMY_FEATURES);
    assert!(f.t.is_activated());
    assert_eq!(f.dev().seen, expected_queues(true));
}
