//! The network device as its transport sees it: type, queues, features, configuration space
//! (`mac[6]`, `status` le16, `max_virtqueue_pairs` le16, `mtu` le16), activation and reset;
//! and one pass over both queues.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::NetBackend;
use super::net_features::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS};
use super::queues::{self, RxBuffer, RxStop, MAX_CHAIN_LEN};
use super::{
    bump, MacAddr, NetCounters, NetError, MAX_MTU, MIN_MTU, QUEUE_SIZE, VIRTIO_NET_S_LINK_UP,
};
use crate::devices::virtio::{
    device_type, driver_wants_interrupt, features, queues_by_index, read_config_bytes,
    ActivateError, ActivatedQueue, IrqTrigger, VirtioDevice,
};

const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE; 2];
/// `mac`, `status`, `max_virtqueue_pairs`, `mtu` (virtio spec 5.1.4).
const CONFIG_LEN: usize = 12;
const STATUS_OFFSET: usize = 6;
/// Frames moved each way per pass over the queues, so one busy direction cannot hold up the
/// rest of the event loop; a pass that stops early schedules the next.
const TX_BUDGET: usize = 256;
const RX_BUDGET: usize = 256;

/// A queue notification eventfd and whether it is in the event loop's epoll set.
pub(super) struct WatchedEvt {
    pub(super) evt: EventFd,
    pub(super) registered: bool,
}

impl WatchedEvt {
    /// Makes the event loop come back to this queue.
    fn kick(&self) {
        if let Err(e) = self.evt.write(1) {
            tracing::warn!("virtio-net: cannot reschedule a queue: {e}");
        }
    }
}

/// What the device holds while a driver runs it.
pub(super) struct Active {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    pub(super) rx_evt: WatchedEvt,
    pub(super) tx_evt: WatchedEvt,
    irq: Arc<IrqTrigger>,
    /// A frame waits and the guest has no receive buffer: the backend is not read (nor
    /// watched) until the guest notifies the receive queue.
    pub(super) rx_waiting_for_buffers: bool,
}

/// The virtio-net device.
///
/// Share it as `Arc<Mutex<Net>>` between its [`MmioTransport`](super::super::MmioTransport)
/// and the VMM's event manager, which it joins as a `MutEventSubscriber`.
pub struct Net {
    name: String,
    mac: MacAddr,
    mtu: Option<u16>,
    config: [u8; CONFIG_LEN],
    avail_features: u64,
    acked_features: u64,
    counters: Arc<NetCounters>,
    pub(super) backend: Box<dyn NetBackend>,
    /// Whether the backend's descriptor is in the epoll set.
    pub(super) backend_registered: bool,
    /// The backend answered that it is gone; the link is reported down.
    pub(super) backend_gone: bool,
    /// Signalled by activate() and reset(), which run on vCPU threads, so that the event loop
    /// updates its epoll set.
    pub(super) control_evt: EventFd,
    pub(super) active: Option<Active>,
    /// Queue eventfds of a reset device, to be removed from epoll before they are closed.
    pub(super) retired_evts: Vec<WatchedEvt>,
    rx: RxBuffer,
    tx_buf: Vec<u8>,
    segs: Vec<(vm_memory::GuestAddress, usize)>,
}

impl Net {
    /// Creates the device for `backend` (named `name` in logs), with the guest NIC's `mac`
    /// and, if given, the MTU the guest is told (68 to 65535).
    pub fn new(
        backend: Box<dyn NetBackend>,
        name: &str,
        mac: MacAddr,
        mtu: Option<u32>,
    ) -> Result<Self, NetError> {
        if !mac.is_unicast() {
            return Err(NetError::Mac(mac));
        }
        let mtu = match mtu {
            Some(m) if (MIN_MTU..=MAX_MTU).contains(&m) => {
                Some(u16::try_from(m).map_err(|_| NetError::Mtu(m))?)
            }
            Some(m) => return Err(NetError::Mtu(m)),
            None => None,
        };
        let mut config = [0u8; CONFIG_LEN];
        config[..6].copy_from_slice(&mac.0);
        config[STATUS_OFFSET..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        config[10..12].copy_from_slice(&mtu.unwrap_or(0).to_le_bytes());
        let mut avail_features = (1 << features::VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_NET_F_MAC)
            | (1 << VIRTIO_NET_F_STATUS);
        if mtu.is_some() {
            avail_features |= 1 << VIRTIO_NET_F_MTU;
        }
        Ok(Self {
            name: name.to_string(),
            mac,
            mtu,
            config,
            avail_features,
            acked_features: 0,
            counters: Arc::new(NetCounters::default()),
            backend,
            backend_registered: false,
            backend_gone: false,
            control_evt: EventFd::new(EFD_NONBLOCK)?,
            active: None,
            retired_evts: Vec::new(),
            rx: RxBuffer::new(),
            tx_buf: vec![0; MAX_CHAIN_LEN],
            segs: Vec::with_capacity(usize::from(QUEUE_SIZE)),
        })
    }

    /// The device's counters; share the `Arc` with a metrics reader.
    pub fn counters(&self) -> Arc<NetCounters> {
        Arc::clone(&self.counters)
    }

    /// The backend's name (the tap's interface name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The guest NIC's MAC address.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// The MTU the guest is told, if any.
    pub fn mtu(&self) -> Option<u16> {
        self.mtu
    }

    /// Whether the link is reported up (false once the backend is gone).
    pub fn link_up(&self) -> bool {
        !self.backend_gone
    }

    /// The features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Whether the event loop should watch the backend for frames now.
    pub(super) fn wants_backend_events(&self) -> bool {
        !self.backend_gone
            && self
                .active
                .as_ref()
                .is_some_and(|a| !a.rx_waiting_for_buffers)
    }

    /// One pass over both queues: sends what the guest queued, delivers what the backend has
    /// while the guest has buffers, and interrupts the guest if it wants to know. Returns why
    /// the receive side stopped, if it ran.
    pub(super) fn run_queues(&mut self) -> Option<RxStop> {
        let active = self.active.as_mut()?;
        // No transmit notifications while the device is at it anyway: the guest then queues
        // frames without an exit each. Enabling them again re-checks the ring, so a frame
        // queued in between is not left behind.
        let _ = active.tx.disable_notification(&active.mem);
        let tx = queues::process_tx(
            &active.mem,
            &mut active.tx,
            self.backend.as_mut(),
            &mut self.tx_buf,
            &mut self.segs,
            &self.counters,
            TX_BUDGET,
        );
        let mut interrupt = tx.used > 0 && driver_wants_interrupt(&active.mem, &active.tx);
        if tx.more || queues::rearm(&active.mem, &mut active.tx) {
            active.tx_evt.kick();
        }
        let mut gone = tx.gone;
        let mut rx_stop = None;
        if !self.backend_gone && !active.rx_waiting_for_buffers {
            // Receive notifications only matter while the device waits for buffers.
            let _ = active.rx.disable_notification(&active.mem);
            let (used, stop) = queues::process_rx(
                &active.mem,
                &mut active.rx,
                self.backend.as_mut(),
                &mut self.rx,
                &mut self.segs,
                &self.counters,
                RX_BUDGET,
            );
            interrupt |= used > 0 && driver_wants_interrupt(&active.mem, &active.rx);
            match stop {
                RxStop::Empty => {}
                RxStop::NoBuffer => {
                    // Ask to be told when buffers come; if some came meanwhile, go again.
                    if queues::rearm(&active.mem, &mut active.rx) {
                        active.rx_evt.kick();
                    } else {
                        active.rx_waiting_for_buffers = true;
                    }
                }
                RxStop::Budget => active.rx_evt.kick(),
                RxStop::Gone => gone = true,
            }
            rx_stop = Some(stop);
        }
        if interrupt {
            bump(&self.counters.interrupts);
            if let Err(e) = active.irq.trigger_used() {
                tracing::warn!("virtio-net: cannot signal the guest: {e}");
            }
        }
        if gone {
            self.set_backend_gone();
        }
        rx_stop
    }

    /// The guest posted receive buffers: the backend may be read again.
    pub(super) fn rx_buffers_posted(&mut self) {
        if let Some(active) = self.active.as_mut() {
            active.rx_waiting_for_buffers = false;
        }
    }

    /// The backend went away for good: the link goes down and the driver is told.
    pub(super) fn set_backend_gone(&mut self) {
        if self.backend_gone {
            return;
        }
        self.backend_gone = true;
        tracing::warn!(tap = %self.name, "virtio-net: the tap is gone; link down");
        self.config[STATUS_OFFSET..STATUS_OFFSET + 2].copy_from_slice(&0u16.to_le_bytes());
        self.rx.drop_pending(&self.counters);
        if let Some(active) = &self.active {
            if let Err(e) = active.irq.trigger_config() {
                tracing::warn!("virtio-net: cannot signal the guest: {e}");
            }
        }
    }

    fn signal_control(&self) {
        if let Err(e) = self.control_evt.write(1) {
            tracing::warn!("virtio-net: cannot wake the event loop: {e}");
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn config_space_len(&self) -> u64 {
        CONFIG_LEN as u64
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Every field is read-only for a virtio 1.x driver (spec 5.1.4.2).
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<ActivatedQueue>,
        interrupt: Arc<IrqTrigger>,
    ) -> Result<(), ActivateError> {
        // Virtio spec 5.1.2: queue 0 receives, queue 1 transmits (no multiqueue, no control
        // queue).
        let [rx, tx] = queues_by_index::<2>(queues)?;
        let watched = |evt| WatchedEvt {
            evt,
            registered: false,
        };
        self.active = Some(Active {
            mem,
            rx: rx.queue,
            tx: tx.queue,
            rx_evt: watched(rx.notify),
            tx_evt: watched(tx.notify),
            irq: interrupt,
            rx_waiting_for_buffers: false,
        });
        self.signal_control();
        tracing::debug!(tap = %self.name, mac = %self.mac, "virtio-net: activated");
        Ok(())
    }

    fn reset(&mut self) -> bool {
        if let Some(active) = self.active.take() {
            self.retired_evts.push(active.rx_evt);
            self.retired_evts.push(active.tx_evt);
        }
        self.rx.drop_pending(&self.counters);
        self.acked_features = 0;
        self.signal_control();
        tracing::debug!(tap = %self.name, "virtio-net: reset");
        true
    }
}
