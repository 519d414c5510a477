//! Why a VM stopped, and how the parts of the VMM report it.
//!
//! Devices and vCPU threads call [`ExitNotifier::request`]; the first request wins. The main
//! thread's event loop wakes on the notifier's eventfd and ends the VM.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

/// Why the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest wrote the power-off value to husk's power register.
    PowerOff,
    /// The guest reset the machine (i8042 reset: a reboot, or a kernel panic with `panic=-1`).
    Reset,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault {
        /// The vCPU.
        vcpu: u8,
    },
    /// KVM could not enter the guest.
    FailEntry {
        /// The vCPU.
        vcpu: u8,
        /// Hardware entry failure reason.
        reason: u64,
    },
    /// KVM reported an internal error (e.g. emulation failure).
    InternalError {
        /// The vCPU.
        vcpu: u8,
    },
    /// The guest reported a crash through a KVM system event.
    Crash {
        /// The vCPU.
        vcpu: u8,
    },
    /// The host asked the VMM to stop (SIGTERM, SIGINT or SIGHUP).
    Stopped {
        /// The signal.
        signal: i32,
    },
    /// A vCPU stopped on an error of the VMM or KVM.
    VcpuError {
        /// The vCPU.
        vcpu: u8,
        /// What went wrong.
        message: String,
    },
}

impl VmExit {
    /// The husk-vmm process exit status for this ending (1 is reserved for VMM errors).
    pub fn exit_code(&self) -> i32 {
        match self {
            VmExit::PowerOff => 0,
            VmExit::Reset => 2,
            VmExit::TripleFault { .. } => 3,
            VmExit::FailEntry { .. }
            | VmExit::InternalError { .. }
            | VmExit::Crash { .. }
            | VmExit::VcpuError { .. } => 4,
            VmExit::Stopped { signal } => 128 + signal,
        }
    }
}

impl fmt::Display for VmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmExit::PowerOff => write!(f, "guest powered off"),
            VmExit::Reset => write!(f, "guest reset the machine (reboot or kernel panic)"),
            VmExit::TripleFault { vcpu } => write!(f, "vCPU {vcpu} triple-faulted"),
            VmExit::FailEntry { vcpu, reason } => {
                write!(
                    f,
                    "vCPU {vcpu} failed to enter the guest (reason {reason:#x})"
                )
            }
            VmExit::InternalError { vcpu } => write!(f, "KVM internal error on vCPU {vcpu}"),
            VmExit::Crash { vcpu } => write!(f, "guest reported a crash on vCPU {vcpu}"),
            VmExit::VcpuError { vcpu, message } => write!(f, "vCPU {vcpu} stopped: {message}"),
            VmExit::Stopped { signal } => write!(f, "stopped by signal {signal}"),
        }
    }
}

struct Inner {
    reason: Mutex<Option<VmExit>>,
    requested: AtomicBool,
    evt: EventFd,
}

/// Shared handle through which any thread asks the VM to end.
#[derive(Clone)]
pub struct ExitNotifier {
    inner: Arc<Inner>,
}

impl ExitNotifier {
    /// A notifier with no exit requested yet.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            inner: Arc::new(Inner {
                reason: Mutex::new(None),
                requested: AtomicBool::new(false),
                evt: EventFd::new(libc::EFD_NONBLOCK)?,
            }),
        })
    }

    /// Asks the VM to end for `exit`, unless an earlier request is pending.
    pub fn request(&self, exit: VmExit) {
        let mut reason = self
            .inner
            .reason
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if reason.is_none() {
            *reason = Some(exit);
            self.inner.requested.store(true, Ordering::Release);
            // A full eventfd counter still wakes the reader, so an error here loses nothing.
            let _ = self.inner.evt.write(1);
        }
    }

    /// Whether any exit was requested (cheap: for vCPU loops).
    pub fn is_requested(&self) -> bool {
        self.inner.requested.load(Ordering::Acquire)
    }

    /// The first requested exit, if any.
    pub fn requested(&self) -> Option<VmExit> {
        self.inner
            .reason
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The eventfd that becomes readable on the first request.
    pub fn eventfd(&self) -> &EventFd {
        &self.inner.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_request_wins_and_wakes() {
        let n = ExitNotifier::new().unwrap();
        assert!(!n.is_requested());
        n.request(VmExit::PowerOff);
        n.clone().request(VmExit::Reset);
        assert!(n.is_requested());
        assert_eq!(n.requested(), Some(VmExit::PowerOff));
        assert_eq!(n.eventfd().read().unwrap(), 1);
    }

    #[test]
    fn exit_codes_are_distinct_per_kind() {
        assert_eq!(VmExit::PowerOff.exit_code(), 0);
        assert_eq!(VmExit::Reset.exit_code(), 2);
        assert_eq!(VmExit::TripleFault { vcpu: 0 }.exit_code(), 3);
        assert_eq!(VmExit::InternalError { vcpu: 1 }.exit_code(), 4);
        assert_eq!(
            VmExit::TripleFault { vcpu: 1 }.to_string(),
            "vCPU 1 triple-faulted"
        );
    }
}
