//! The worker thread: its own event loop (event-manager), the epoll tokens, and keeping the
//! epoll set in step with the commands the device sends.
//!
//! Watched: the wake eventfd (a command waits in the channel) and, while a driver runs the
//! device, each queue's notification eventfd. A queue's eventfd leaves the epoll set before it
//! is dropped: the transport keeps its own descriptor of the same eventfd, so closing ours
//! would leave the registration behind.

use std::os::fd::AsRawFd;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use fuse_backend_rs::api::filesystem::FileSystem;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::backend::{FsServer, SharedFs};
use super::device::{Active, Command};
use super::queues::process_queue;
use super::{FsCounters, FsError};
use crate::devices::virtio::driver_wants_interrupt;

/// Epoll tokens: the wake eventfd, then one per queue (`TOKEN_QUEUE + index`).
const TOKEN_WAKE: u32 = 0;
const TOKEN_QUEUE: u32 = 1;
/// Requests served before the guest is interrupted, when more are waiting.
const BATCH: usize = 32;

/// The worker's state; the event loop is its only user.
pub(super) struct Worker {
    server: FsServer,
    fs: SharedFs,
    counters: Arc<FsCounters>,
    commands: Receiver<Command>,
    wake: EventFd,
    active: Option<Active>,
    stopped: bool,
}

impl Worker {
    pub(super) fn new(
        server: FsServer,
        fs: SharedFs,
        counters: Arc<FsCounters>,
        commands: Receiver<Command>,
        wake: EventFd,
    ) -> Self {
        Self {
            server,
            fs,
            counters,
            commands,
            wake,
            active: None,
            stopped: false,
        }
    }

    /// Takes every waiting command.
    fn run_commands(&mut self, ops: &mut EventOps) {
        loop {
            match self.commands.try_recv() {
                Ok(Command::Activate(active)) => {
                    self.retire(ops);
                    self.active = Some(active);
                }
                Ok(Command::Reset(ack)) => {
                    self.retire(ops);
                    // A new driver starts with FUSE_INIT: the old one's inodes and open files
                    // go, and their descriptors with them.
                    self.fs.destroy();
                    let _ = ack.send(());
                }
                Ok(Command::Stop) | Err(TryRecvError::Disconnected) => {
                    self.retire(ops);
                    self.stopped = true;
                    return;
                }
                Err(TryRecvError::Empty) => return,
            }
        }
    }

    /// Drops the active queues, removing their eventfds from epoll first.
    fn retire(&mut self, ops: &mut EventOps) {
        if let Some(active) = self.active.take() {
            for q in active.queues.iter().filter(|q| q.registered) {
                if let Err(e) = ops.remove(Events::empty_raw(q.evt.as_raw_fd())) {
                    tracing::debug!("virtio-fs: epoll remove: {e}");
                }
            }
        }
    }

    /// Puts the active queues' eventfds into epoll; serves anything already waiting.
    fn watch_queues(&mut self, ops: &mut EventOps) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut fresh = false;
        for (index, q) in (0u32..).zip(active.queues.iter_mut()) {
            if q.registered {
                continue;
            }
            match ops.add(Events::with_data(&q.evt, TOKEN_QUEUE + index, EventSet::IN)) {
                Ok(()) => {
                    q.registered = true;
                    fresh = true;
                }
                Err(e) => tracing::error!("virtio-fs: cannot watch queue {index}: {e}"),
            }
        }
        let count = active.queues.len();
        if fresh {
            // The driver may have queued requests before the queues were watched.
            for index in 0..count {
                self.serve(index);
            }
        }
    }

    /// Serves queue `index` until it is empty, interrupting the guest after every batch (unless
    /// the driver asked for no interrupts).
    pub(super) fn serve(&mut self, index: usize) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let Some(q) = active.queues.get_mut(index) else {
            return;
        };
        loop {
            let n = process_queue(
                &active.mem,
                &mut q.queue,
                &self.server,
                &self.counters,
                BATCH,
            );
            if n > 0 && driver_wants_interrupt(&active.mem, &q.queue) {
                if let Err(e) = active.irq.trigger_used() {
                    tracing::warn!("virtio-fs: cannot signal the guest: {e}");
                }
            }
            if n < BATCH {
                break;
            }
        }
    }
}

impl MutEventSubscriber for Worker {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(&self.wake, TOKEN_WAKE, EventSet::IN)) {
            tracing::error!("virtio-fs: cannot watch the wake eventfd: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TOKEN_WAKE => {
                // Drain; the commands are in the channel.
                let _ = self.wake.read();
                self.run_commands(ops);
            }
            token => {
                let index = (token - TOKEN_QUEUE) as usize;
                if let Some(q) = self.active.as_ref().and_then(|a| a.queues.get(index)) {
                    // EAGAIN just means there was nothing to drain.
                    let _ = q.evt.read();
                }
                self.serve(index);
            }
        }
        self.watch_queues(ops);
    }
}

/// Starts the worker thread (`husk-fs`) with its own event loop.
pub(super) fn spawn(worker: Worker) -> Result<JoinHandle<()>, FsError> {
    let mut events: EventManager<Arc<Mutex<Worker>>> = EventManager::new()?;
    let worker = Arc::new(Mutex::new(worker));
    events.add_subscriber(Arc::clone(&worker));
    let thread = std::thread::Builder::new()
        .name("husk-fs".into())
        .spawn(move || loop {
            let stopped = worker
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .stopped;
            if stopped {
                break;
            }
            if let Err(e) = events.run() {
                tracing::error!("virtio-fs: event loop: {e}");
                break;
            }
        })?;
    Ok(thread)
}
