//! vCPU threads. Each vCPU is an explicit state machine:
//!
//! ```text
//! Created --configure()--> Configured --start()--> Running --(exit or error)--> Stopped
//! ```
//!
//! A running vCPU loops on `KVM_RUN`, routes port-I/O and MMIO exits to the buses, and stops
//! when the guest ends the VM (power-off, reset, triple fault, KVM failure) or when another
//! thread has requested the VM's end.

use std::sync::Arc;
use std::thread::JoinHandle;

use kvm_bindings::CpuId;
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};

use crate::arch::x86_64::{cpuid, interrupts, msr, regs};
use crate::devices::bus::Bus;
use crate::exit::{ExitNotifier, VmExit};

/// KVM system event types (`KVM_SYSTEM_EVENT_*`).
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const SYSTEM_EVENT_RESET: u32 = 2;
const SYSTEM_EVENT_CRASH: u32 = 3;

/// Errors creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM ioctl failed.
    #[error("vCPU {vcpu}: {what}: {source}")]
    Kvm {
        /// The vCPU.
        vcpu: u8,
        /// Which operation.
        what: &'static str,
        /// Cause.
        source: kvm_ioctls::Error,
    },
    /// KVM accepted fewer MSRs than given.
    #[error("vCPU {vcpu}: KVM set {set} of {wanted} boot MSRs")]
    Msrs {
        /// The vCPU.
        vcpu: u8,
        /// How many were set.
        set: usize,
        /// How many were given.
        wanted: usize,
    },
    /// Building the MSR list failed.
    #[error(transparent)]
    MsrList(#[from] msr::MsrError),
    /// A state transition that the state machine does not allow.
    #[error("vCPU {vcpu}: cannot {action} in state {state:?}")]
    State {
        /// The vCPU.
        vcpu: u8,
        /// What was asked.
        action: &'static str,
        /// The state it was in.
        state: VcpuState,
    },
    /// The thread could not be spawned.
    #[error("vCPU {vcpu}: spawning its thread: {source}")]
    Spawn {
        /// The vCPU.
        vcpu: u8,
        /// Cause.
        source: std::io::Error,
    },
}

/// Where a vCPU is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuState {
    /// Created in KVM, registers not yet set.
    Created,
    /// CPUID, MSRs, registers and LAPIC set: ready to run.
    Configured,
    /// In its thread, looping on KVM_RUN.
    Running,
    /// Finished; the VM is ending.
    Stopped,
}

/// What one exit handling step decided.
enum Step {
    Continue,
    Stop(Option<VmExit>),
}

/// One virtual CPU.
pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
    state: VcpuState,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    exit: ExitNotifier,
}

impl Vcpu {
    /// Creates vCPU `id` in `vm`.
    pub fn new(
        vm: &VmFd,
        id: u8,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        exit: ExitNotifier,
    ) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|source| VcpuError::Kvm {
                vcpu: id,
                what: "KVM_CREATE_VCPU",
                source,
            })?;
        Ok(Self {
            id,
            fd,
            state: VcpuState::Created,
            pio,
            mmio,
            exit,
        })
    }

    /// The current state.
    pub fn state(&self) -> &VcpuState {
        &self.state
    }

    fn kvm_err(&self, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
        let vcpu = self.id;
        move |source| VcpuError::Kvm { vcpu, what, source }
    }

    /// Sets CPUID, MSRs, long-mode registers at `entry`, FPU and LAPIC. Created → Configured.
    pub fn configure(
        &mut self,
        base_cpuid: &CpuId,
        count: u8,
        entry: u64,
    ) -> Result<(), VcpuError> {
        if self.state != VcpuState::Created {
            return Err(VcpuError::State {
                vcpu: self.id,
                action: "configure",
                state: self.state.clone(),
            });
        }
        let cpuid = cpuid::for_vcpu(base_cpuid, self.id, count);
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(self.kvm_err("KVM_SET_CPUID2"))?;

        let msrs = msr::boot_msrs()?;
        let set = self
            .fd
            .set_msrs(&msrs)
            .map_err(self.kvm_err("KVM_SET_MSRS"))?;
        if set != msrs.as_slice().len() {
            return Err(VcpuError::Msrs {
                vcpu: self.id,
                set,
                wanted: msrs.as_slice().len(),
            });
        }

        let sregs = self.fd.get_sregs().map_err(self.kvm_err("KVM_GET_SREGS"))?;
        self.fd
            .set_sregs(&regs::long_mode_sregs(sregs))
            .map_err(self.kvm_err("KVM_SET_SREGS"))?;
        self.fd
            .set_regs(&regs::boot_regs(entry))
            .map_err(self.kvm_err("KVM_SET_REGS"))?;
        self.fd
            .set_fpu(&regs::boot_fpu())
            .map_err(self.kvm_err("KVM_SET_FPU"))?;

        let mut lapic = self.fd.get_lapic().map_err(self.kvm_err("KVM_GET_LAPIC"))?;
        interrupts::set_lint(&mut lapic);
        self.fd
            .set_lapic(&lapic)
            .map_err(self.kvm_err("KVM_SET_LAPIC"))?;

        self.state = VcpuState::Configured;
        Ok(())
    }

    /// Starts the vCPU's thread. Configured → Running (in the thread).
    pub fn start(mut self) -> Result<JoinHandle<()>, VcpuError> {
        if self.state != VcpuState::Configured {
            return Err(VcpuError::State {
                vcpu: self.id,
                action: "start",
                state: self.state.clone(),
            });
        }
        let id = self.id;
        std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || self.run())
            .map_err(|source| VcpuError::Spawn { vcpu: id, source })
    }

    /// The thread body: run until the VM ends.
    fn run(&mut self) {
        self.state = VcpuState::Running;
        while self.state == VcpuState::Running {
            match self.run_once() {
                Step::Continue => {}
                Step::Stop(reason) => {
                    if let Some(reason) = reason {
                        self.exit.request(reason);
                    }
                    self.state = VcpuState::Stopped;
                }
            }
        }
        tracing::debug!(vcpu = self.id, "vCPU stopped");
    }

    /// Logs where the vCPU was when it triple-faulted: the guest printed nothing, so this is
    /// the only evidence left for a post-mortem.
    fn log_fault_state(&self) {
        match (self.fd.get_regs(), self.fd.get_sregs()) {
            (Ok(r), Ok(s)) => tracing::error!(
                vcpu = self.id,
                rip = format_args!("{:#x}", r.rip),
                rsp = format_args!("{:#x}", r.rsp),
                rflags = format_args!("{:#x}", r.rflags),
                cr0 = format_args!("{:#x}", s.cr0),
                cr2 = format_args!("{:#x}", s.cr2),
                cr3 = format_args!("{:#x}", s.cr3),
                cr4 = format_args!("{:#x}", s.cr4),
                efer = format_args!("{:#x}", s.efer),
                cs = format_args!("{:#x}", s.cs.selector),
                idt = format_args!("{:#x}/{:#x}", s.idt.base, s.idt.limit),
                "vCPU triple-faulted"
            ),
            (regs, sregs) => tracing::error!(
                vcpu = self.id,
                regs_ok = regs.is_ok(),
                sregs_ok = sregs.is_ok(),
                "vCPU triple-faulted; its registers could not be read"
            ),
        }
    }

    /// One KVM_RUN and the handling of its exit.
    fn run_once(&mut self) -> Step {
        if self.exit.is_requested() {
            return Step::Stop(None);
        }
        let vcpu = self.id;
        let step = match self.fd.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                self.pio.write(u64::from(port), data);
                Step::Continue
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                self.pio.read(u64::from(port), data);
                Step::Continue
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                self.mmio.write(addr, data);
                Step::Continue
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                self.mmio.read(addr, data);
                Step::Continue
            }
            Ok(VcpuExit::Shutdown) => {
                self.log_fault_state();
                Step::Stop(Some(VmExit::TripleFault { vcpu }))
            }
            Ok(VcpuExit::FailEntry(reason, _)) => {
                Step::Stop(Some(VmExit::FailEntry { vcpu, reason }))
            }
            Ok(VcpuExit::InternalError) => Step::Stop(Some(VmExit::InternalError { vcpu })),
            Ok(VcpuExit::SystemEvent(kind, _)) => Step::Stop(Some(match kind {
                SYSTEM_EVENT_SHUTDOWN => VmExit::PowerOff,
                SYSTEM_EVENT_RESET => VmExit::Reset,
                SYSTEM_EVENT_CRASH => VmExit::Crash { vcpu },
                other => VmExit::VcpuError {
                    vcpu,
                    message: format!("unknown KVM system event {other}"),
                },
            })),
            Ok(other) => Step::Stop(Some(VmExit::VcpuError {
                vcpu,
                message: format!("unexpected KVM exit {other:?}"),
            })),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Step::Continue,
            Err(e) => Step::Stop(Some(VmExit::VcpuError {
                vcpu,
                message: format!("KVM_RUN: {e}"),
            })),
        };
        // A device may have asked the VM to end during this exit (power-off, reset).
        match step {
            Step::Continue if self.exit.is_requested() => Step::Stop(None),
            step => step,
        }
    }
}
