//! The vsock device as its transport sees it: type, queues, features, configuration space
//! (`guest_cid`, le64), activation and reset.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use super::muxer::Muxer;
use super::unix::HostListener;
use super::{queues, VsockCounters, VsockError, MAX_PKT_DATA, MIN_GUEST_CID, QUEUE_SIZE};
use crate::devices::virtio::{
    device_type, driver_wants_interrupt, features, queues_by_index, read_config_bytes,
    ActivateError, ActivatedQueue, IrqTrigger, VirtioDevice,
};

const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];

/// A queue notification eventfd and whether it is in the event loop's epoll set.
pub(super) struct WatchedEvt {
    pub(super) evt: EventFd,
    pub(super) registered: bool,
}

/// What the device holds while a driver runs it.
pub(super) struct Active {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    /// Kept for the driver's sake; the device sends no events (transport resets happen on
    /// migration, which husk does not do).
    _event: Queue,
    pub(super) rx_evt: WatchedEvt,
    pub(super) tx_evt: WatchedEvt,
    irq: Arc<IrqTrigger>,
}

/// The virtio-vsock device, hybrid (Unix socket backed).
///
/// Share it as `Arc<Mutex<Vsock>>` between its [`MmioTransport`](super::super::MmioTransport)
/// and the VMM's event manager, which it joins as a `MutEventSubscriber`.
pub struct Vsock {
    guest_cid: u64,
    config: [u8; 8],
    acked_features: u64,
    counters: Arc<VsockCounters>,
    pub(super) muxer: Muxer,
    /// Signalled by activate() and reset(), which run on vCPU threads, so that the event loop
    /// updates its epoll set.
    pub(super) control_evt: EventFd,
    /// Fires while host clients are in their handshake, to time them out.
    pub(super) timer: TimerFd,
    pub(super) timer_armed: bool,
    pub(super) active: Option<Active>,
    /// Queue eventfds of a reset device, to be removed from epoll before they are closed.
    pub(super) retired_evts: Vec<WatchedEvt>,
    scratch: Vec<u8>,
}

impl Vsock {
    /// Creates the device for a guest with CID `guest_cid`, listening for host clients on
    /// `uds_path` (a stale socket file there is replaced; the file is removed on drop). Guest
    /// connections to host port `P` go to `<uds_path>_P`.
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> Result<Self, VsockError> {
        if !(MIN_GUEST_CID..u64::from(u32::MAX)).contains(&guest_cid) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        let counters = Arc::new(VsockCounters::default());
        let listener = HostListener::bind(&uds_path)?;
        Ok(Self {
            guest_cid,
            config: guest_cid.to_le_bytes(),
            acked_features: 0,
            muxer: Muxer::new(guest_cid, listener, Arc::clone(&counters)),
            counters,
            control_evt: EventFd::new(EFD_NONBLOCK)?,
            timer: TimerFd::new().map_err(|e| VsockError::Io(e.into()))?,
            timer_armed: false,
            active: None,
            retired_evts: Vec::new(),
            scratch: vec![0u8; MAX_PKT_DATA as usize],
        })
    }

    /// The device's counters; share the `Arc` with a metrics reader.
    pub fn counters(&self) -> Arc<VsockCounters> {
        Arc::clone(&self.counters)
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The socket host clients connect to.
    pub fn uds_path(&self) -> &Path {
        self.muxer.listener.path()
    }

    /// The number of live connections (both directions, handshakes not included).
    pub fn connection_count(&self) -> usize {
        self.muxer.conns.len()
    }

    /// Processes both queues and interrupts the guest if buffers were used (unless the driver
    /// asked for none on that queue).
    pub(super) fn run_queues(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let tx_used = queues::process_tx(
            &active.mem,
            &mut active.tx,
            &mut self.muxer,
            &self.counters,
            self.guest_cid,
            &mut self.scratch,
        );
        let rx_used = queues::process_rx(
            &active.mem,
            &mut active.rx,
            &mut self.muxer,
            &self.counters,
            &mut self.scratch,
        );
        if tx_used && driver_wants_interrupt(&active.mem, &active.tx)
            || rx_used && driver_wants_interrupt(&active.mem, &active.rx)
        {
            if let Err(e) = active.irq.trigger_used() {
                tracing::warn!("vsock: cannot signal the guest: {e}");
            }
        }
    }

    fn signal_control(&self) {
        if let Err(e) = self.control_evt.write(1) {
            tracing::warn!("vsock: cannot wake the event loop: {e}");
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        1 << features::VIRTIO_F_VERSION_1
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn config_space_len(&self) -> u64 {
        self.config.len() as u64
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // guest_cid is read-only.
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<ActivatedQueue>,
        interrupt: Arc<IrqTrigger>,
    ) -> Result<(), ActivateError> {
        // Virtio spec 5.10.2: queues 0, 1 and 2 are rx, tx and event.
        let [rx, tx, event] = queues_by_index::<3>(queues)?;
        self.active = Some(Active {
            mem,
            rx: rx.queue,
            tx: tx.queue,
            _event: event.queue,
            rx_evt: WatchedEvt {
                evt: rx.notify,
                registered: false,
            },
            tx_evt: WatchedEvt {
                evt: tx.notify,
                registered: false,
            },
            irq: interrupt,
        });
        self.muxer.guest_active = true;
        self.signal_control();
        tracing::debug!(guest_cid = self.guest_cid, "vsock: activated");
        Ok(())
    }

    fn reset(&mut self) -> bool {
        if let Some(active) = self.active.take() {
            self.retired_evts.push(active.rx_evt);
            self.retired_evts.push(active.tx_evt);
        }
        self.muxer.reset();
        self.acked_features = 0;
        self.signal_control();
        tracing::debug!(guest_cid = self.guest_cid, "vsock: reset");
        true
    }
}
