//! The device on the VMM's event loop: epoll tokens, dispatch, and keeping the epoll set in step
//! with the device's state.
//!
//! Watched: the control eventfd (activation and reset, which happen on vCPU threads), the rx
//! and tx queue notifications, the host listener, a handshake timer, and every host stream with
//! the interest its connection needs now (EPOLLIN while the guest has credit and the stream has
//! not been found empty yet, EPOLLOUT only while guest data waits). A stream with no interest is
//! not registered at all, so a hung-up socket cannot make the loop spin.
//!
//! Every descriptor leaves the epoll set before it is closed: event-manager keys its dispatch on
//! the descriptor number, and an eventfd duplicate would even stay in the kernel's set.

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::{Vsock, WatchedEvt};
use super::unix::HANDSHAKE_TIMEOUT;

/// Epoll tokens (the `data` of each registration).
const TOKEN_CONTROL: u32 = 1;
const TOKEN_RX_QUEUE: u32 = 2;
const TOKEN_TX_QUEUE: u32 = 3;
const TOKEN_LISTENER: u32 = 4;
const TOKEN_TIMER: u32 = 5;
const TOKEN_STREAM: u32 = 6;

/// How often pending handshakes are checked against their deadline.
const HANDSHAKE_TICK: Duration = Duration::from_secs(1);

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        let fixed = [
            (
                self.control_evt.as_raw_fd(),
                TOKEN_CONTROL,
                "control eventfd",
            ),
            (
                self.muxer.listener.listener.as_raw_fd(),
                TOKEN_LISTENER,
                "listener",
            ),
            (self.timer.as_raw_fd(), TOKEN_TIMER, "timer"),
        ];
        for (fd, token, what) in fixed {
            if let Err(e) = ops.add(Events::with_data_raw(fd, token, EventSet::IN)) {
                tracing::error!("vsock: cannot watch the {what}: {e}");
            }
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
            TOKEN_RX_QUEUE => drain(self.active.as_ref().map(|a| &a.rx_evt)),
            TOKEN_TX_QUEUE => drain(self.active.as_ref().map(|a| &a.tx_evt)),
            TOKEN_LISTENER => self.muxer.accept(Instant::now()),
            TOKEN_TIMER => {
                // Readable, so this does not block.
                let _ = self.timer.wait();
                self.muxer.expire(Instant::now());
            }
            TOKEN_STREAM => self.muxer.on_stream_event(events.fd(), set, Instant::now()),
            _ => {}
        }
        self.run_queues();
        self.sync_epoll(ops);
    }
}

fn drain(evt: Option<&WatchedEvt>) {
    if let Some(w) = evt {
        // EAGAIN just means another event already drained it.
        let _ = w.evt.read();
    }
}

impl Vsock {
    /// Brings the epoll set in line with the device: retired descriptors out (then closed),
    /// queue eventfds in, each stream with the interest it needs now.
    fn sync_epoll(&mut self, ops: &mut EventOps) {
        for r in self.muxer.retired.drain(..) {
            if r.registered {
                remove(ops, r.stream.as_raw_fd());
            }
        }
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
                    let ev = Events::with_data(&w.evt, token, EventSet::IN);
                    match ops.add(ev) {
                        Ok(()) => w.registered = true,
                        Err(e) => tracing::error!("vsock: cannot watch a queue: {e}"),
                    }
                }
            }
        }
        for conn in self.muxer.conns.values_mut() {
            let fd = conn.stream.as_raw_fd();
            let desired = conn.interest();
            apply(ops, fd, &mut conn.registered, desired);
        }
        for hs in self.muxer.handshakes.values_mut() {
            let fd = hs.stream.as_raw_fd();
            apply(ops, fd, &mut hs.registered, EventSet::IN);
        }
        self.sync_timer();
    }

    /// Runs the timer only while something waits on a deadline.
    fn sync_timer(&mut self) {
        let wanted = self.muxer.has_deadlines();
        if wanted == self.timer_armed {
            return;
        }
        let result = if wanted {
            self.timer
                .reset(HANDSHAKE_TICK.min(HANDSHAKE_TIMEOUT), Some(HANDSHAKE_TICK))
        } else {
            self.timer.clear()
        };
        match result {
            Ok(()) => self.timer_armed = wanted,
            Err(e) => tracing::warn!("vsock: handshake timer: {e}"),
        }
    }
}

/// Moves one stream's registration from `registered` to `desired` (empty: not registered).
fn apply(ops: &mut EventOps, fd: RawFd, registered: &mut Option<EventSet>, desired: EventSet) {
    let result = match *registered {
        None if desired.is_empty() => return,
        None => ops
            .add(Events::with_data_raw(fd, TOKEN_STREAM, desired))
            .map(|()| Some(desired)),
        Some(_) if desired.is_empty() => ops.remove(Events::empty_raw(fd)).map(|()| None),
        Some(current) if current == desired => return,
        Some(_) => ops
            .modify(Events::with_data_raw(fd, TOKEN_STREAM, desired))
            .map(|()| Some(desired)),
    };
    match result {
        Ok(now) => *registered = now,
        // Rare (ENOMEM); the next sync tries again.
        Err(e) => tracing::debug!(fd, "vsock: epoll update: {e}"),
    }
}

fn remove(ops: &mut EventOps, fd: RawFd) {
    if let Err(e) = ops.remove(Events::empty_raw(fd)) {
        tracing::debug!(fd, "vsock: epoll remove: {e}");
    }
}
