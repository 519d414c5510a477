//! The device on the VMM's event loop: epoll tokens, dispatch, and keeping the epoll set in step
//! with the device's state.
//!
//! Watched: the control eventfd (activation and reset, which happen on vCPU threads), the
//! receive and transmit queue notifications, and the backend while a driver runs the device,
//! the backend is there, and the guest has receive buffers (or none has been found missing
//! yet). A frame that found no buffer waits in the device; the backend is watched again once
//! the guest notifies the receive queue. Level-triggered epoll on the backend would otherwise
//! spin while the guest posts no buffers.
//!
//! Every descriptor leaves the epoll set before it is closed: event-manager keys its dispatch on
//! the descriptor number, and an eventfd duplicate would even stay in the kernel's set.

use std::os::fd::{AsRawFd, RawFd};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::{Net, WatchedEvt};
use super::queues::RxStop;

/// Epoll tokens (the `data` of each registration).
const TOKEN_CONTROL: u32 = 1;
const TOKEN_RX_QUEUE: u32 = 2;
const TOKEN_TX_QUEUE: u32 = 3;
const TOKEN_BACKEND: u32 = 4;

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        let control = Events::with_data(&self.control_evt, TOKEN_CONTROL, EventSet::IN);
        if let Err(e) = ops.add(control) {
            tracing::error!("virtio-net: cannot watch the control eventfd: {e}");
        }
        // Activation may have happened before the device joined the loop.
        self.sync_epoll(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let set = events.event_set();
        match events.data() {
            TOKEN_CONTROL => {
                // Drain; the sync below does the work.
                let _ = self.control_evt.read();
            }
            TOKEN_RX_QUEUE => {
                drain(self.active.as_ref().map(|a| &a.rx_evt));
                self.rx_buffers_posted();
            }
            TOKEN_TX_QUEUE => drain(self.active.as_ref().map(|a| &a.tx_evt)),
            TOKEN_BACKEND => {}
            _ => {}
        }
        let rx = self.run_queues();
        if events.data() == TOKEN_BACKEND
            && set.intersects(EventSet::ERROR | EventSet::HANG_UP)
            && rx == Some(RxStop::Empty)
        {
            // The pass above read the backend dry, yet it reports an error or hang-up: it is
            // gone (a tap whose interface is being deleted polls as EPOLLERR), and watching it
            // further would spin.
            self.set_backend_gone();
        }
        self.sync_epoll(ops);
    }
}

fn drain(evt: Option<&WatchedEvt>) {
    if let Some(w) = evt {
        // EAGAIN just means another event already drained it.
        let _ = w.evt.read();
    }
}

impl Net {
    /// Brings the epoll set in line with the device: retired queue eventfds out (then closed),
    /// the active ones in, the backend in or out.
    fn sync_epoll(&mut self, ops: &mut EventOps) {
        for w in self.retired_evts.drain(..) {
            if w.registered {
                remove(ops, w.evt.as_raw_fd());
            }
        }
        if let Some(active) = self.active.as_mut() {
            for (w, token) in [
                (&mut active.rx_evt, TOKEN_RX_QUEUE),
                (&mut active.tx_evt, TOKEN_TX_QUEUE),
            ] {
                if !w.registered {
                    match ops.add(Events::with_data(&w.evt, token, EventSet::IN)) {
                        Ok(()) => w.registered = true,
                        Err(e) => tracing::error!("virtio-net: cannot watch a queue: {e}"),
                    }
                }
            }
        }
        let wanted = self.wants_backend_events();
        if wanted == self.backend_registered {
            return;
        }
        let fd = self.backend.as_raw_fd();
        let result = if wanted {
            ops.add(Events::with_data_raw(fd, TOKEN_BACKEND, EventSet::IN))
        } else {
            ops.remove(Events::empty_raw(fd))
        };
        match result {
            Ok(()) => self.backend_registered = wanted,
            // Rare (ENOMEM); the next sync tries again.
            Err(e) => tracing::debug!(fd, "virtio-net: epoll update: {e}"),
        }
    }
}

fn remove(ops: &mut EventOps, fd: RawFd) {
    if let Err(e) = ops.remove(Events::empty_raw(fd)) {
        tracing::debug!(fd, "virtio-net: epoll remove: {e}");
    }
}
