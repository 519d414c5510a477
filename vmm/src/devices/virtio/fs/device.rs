//! The file system device as its transport sees it: type, queues, features, configuration
//! space (`tag[36]`, `num_request_queues` le32), activation and reset, and the worker thread
//! that serves the queues.
//!
//! The transport calls into [`Fs`] on vCPU threads; [`Fs`] hands the queues to the worker over
//! a channel and wakes it through an eventfd. The worker never takes the device's lock, so a
//! request blocked on the host's disk holds up nothing but the file system.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::{self, SharedFs};
use super::event_handler::{self, Worker};
use super::{
    validate_tag, FsCounters, FsError, HIPRIO_QUEUE_SIZE, NUM_REQUEST_QUEUES, REQUEST_QUEUE_SIZE,
    TAG_LEN,
};
use crate::devices::virtio::{
    device_type, features, queues_by_index, read_config_bytes, ActivateError, ActivatedQueue,
    IrqTrigger, VirtioDevice,
};

const QUEUE_SIZES: [u16; 2] = [HIPRIO_QUEUE_SIZE, REQUEST_QUEUE_SIZE];
const CONFIG_LEN: usize = TAG_LEN + 4;
/// How long a reset waits for the worker to finish the request it is serving.
const RESET_TIMEOUT: Duration = Duration::from_secs(10);

/// What the worker is told.
pub(super) enum Command {
    /// Serve these queues.
    Activate(Active),
    /// Drop the queues and the file system's state, then acknowledge.
    Reset(mpsc::SyncSender<()>),
    /// End the thread.
    Stop,
}

/// One queue the worker serves.
pub(super) struct ServedQueue {
    pub(super) queue: Queue,
    pub(super) evt: EventFd,
    /// Whether `evt` is in the worker's epoll set.
    pub(super) registered: bool,
}

/// What the worker holds while a driver runs the device.
pub(super) struct Active {
    pub(super) mem: GuestMemoryMmap,
    /// Index order: the high-priority queue, then the request queue.
    pub(super) queues: Vec<ServedQueue>,
    pub(super) irq: Arc<IrqTrigger>,
}

/// The virtio-fs device, exporting one host directory.
///
/// Share it as `Arc<Mutex<Fs>>` with its [`MmioTransport`](super::super::MmioTransport); it
/// needs no place in the VMM's event loop, as its worker thread runs its own.
pub struct Fs {
    tag: String,
    share: PathBuf,
    config: [u8; CONFIG_LEN],
    acked_features: u64,
    counters: Arc<FsCounters>,
    fs: SharedFs,
    commands: mpsc::Sender<Command>,
    wake: EventFd,
    worker: Option<JoinHandle<()>>,
}

impl Fs {
    /// Creates the device exporting `share` under `tag`, holding at most `max_fds` host
    /// descriptors for the guest, and starts its worker thread. The directory is opened here,
    /// so a share that cannot be served fails now rather than at the guest's mount.
    pub fn new(share: &Path, tag: &str, max_fds: u32) -> Result<Self, FsError> {
        validate_tag(tag)?;
        let counters = Arc::new(FsCounters::default());
        let (server, fs, root) = backend::build(share, max_fds, Arc::clone(&counters))?;
        let (commands, receiver) = mpsc::channel();
        let wake = EventFd::new(EFD_NONBLOCK)?;
        let worker = Worker::new(
            server,
            Arc::clone(&fs),
            Arc::clone(&counters),
            receiver,
            wake.try_clone()?,
        );
        let worker = event_handler::spawn(worker)?;
        let mut config = [0u8; CONFIG_LEN];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_LEN..].copy_from_slice(&NUM_REQUEST_QUEUES.to_le_bytes());
        Ok(Self {
            tag: tag.to_string(),
            share: root,
            config,
            acked_features: 0,
            counters,
            fs,
            commands,
            wake,
            worker: Some(worker),
        })
    }

    /// The device's counters; share the `Arc` with a metrics reader.
    pub fn counters(&self) -> Arc<FsCounters> {
        Arc::clone(&self.counters)
    }

    /// The tag the guest mounts the share by.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The exported directory, as resolved when the device was created.
    pub fn share(&self) -> &Path {
        &self.share
    }

    /// Host descriptors held for the guest now (inodes it holds and files it has open).
    pub fn fds_in_use(&self) -> usize {
        self.fs.fds_in_use()
    }

    /// The features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn send(&self, command: Command) -> bool {
        if self.commands.send(command).is_err() {
            return false;
        }
        if let Err(e) = self.wake.write(1) {
            tracing::warn!("virtio-fs: cannot wake the worker: {e}");
        }
        true
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        device_type::FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        (1 << features::VIRTIO_F_VERSION_1) | (1 << features::VIRTIO_F_INDIRECT_DESC)
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
        // tag and num_request_queues are read-only.
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<ActivatedQueue>,
        interrupt: Arc<IrqTrigger>,
    ) -> Result<(), ActivateError> {
        // Virtio spec 5.11.2: queue 0 is the high-priority queue, then the request queue.
        let [hiprio, request] = queues_by_index::<2>(queues)?;
        let served = |q: ActivatedQueue| ServedQueue {
            queue: q.queue,
            evt: q.notify,
            registered: false,
        };
        let active = Active {
            mem,
            queues: vec![served(hiprio), served(request)],
            irq: interrupt,
        };
        if !self.send(Command::Activate(active)) {
            return Err(ActivateError::Backend("the worker thread has ended".into()));
        }
        tracing::debug!(tag = %self.tag, "virtio-fs: activated");
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.acked_features = 0;
        let (ack, acked) = mpsc::sync_channel(1);
        if !self.send(Command::Reset(ack)) {
            return false;
        }
        match acked.recv_timeout(RESET_TIMEOUT) {
            Ok(()) => {
                tracing::debug!(tag = %self.tag, "virtio-fs: reset");
                true
            }
            Err(e) => {
                tracing::warn!("virtio-fs: the worker did not finish for the reset: {e}");
                false
            }
        }
    }
}

impl Drop for Fs {
    fn drop(&mut self) {
        if self.send(Command::Stop) {
            if let Some(worker) = self.worker.take() {
                let _ = worker.join();
            }
        }
    }
}
