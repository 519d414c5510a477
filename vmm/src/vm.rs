//! Building a VM from a [`VmConfig`] and running it until the guest ends it.

use std::fs::File;
use std::io::{LineWriter, Write};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VmFd};
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::{boot, cpuid, layout, mptable, regs as cpu_regs};
use crate::cmdline::{Cmdline, CmdlineError};
use crate::config::{ConsoleOutput, FsConfig, NetConfig, TapSource, VmConfig, VsockConfig};
use crate::devices::bus::{Bus, BusError};
use crate::devices::legacy::{
    PowerRegister, SerialConsole, I8042, I8042_PORT, I8042_PORT_LEN, POWER_PORT, SERIAL_PORT,
    SERIAL_PORT_LEN,
};
use crate::devices::slots::{SlotAllocator, SlotError};
use crate::devices::virtio::fs::{apply_fd_limit, Fs, FsError};
use crate::devices::virtio::mmio::{regs, MmioError, MmioTransport};
use crate::devices::virtio::net::{Net, NetError, Tap};
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::devices::virtio::SharedVirtioDevice;
use crate::exit::{ExitNotifier, VmExit};
use crate::signals::StopSignals;
use crate::vcpu::{Vcpu, VcpuError};

/// KVM API version this VMM speaks.
const KVM_API_VERSION: i32 = 12;
/// Capabilities husk needs from KVM.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
];

/// Errors building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The KVM device cannot be opened.
    #[error("cannot open {path}: {source} (is KVM available and accessible?)")]
    OpenKvm {
        /// Device path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// KVM speaks another API version.
    #[error("KVM API version {0}, husk needs {KVM_API_VERSION}")]
    ApiVersion(i32),
    /// KVM lacks a capability.
    #[error("KVM lacks {0}")]
    MissingCap(&'static str),
    /// A VM-level KVM ioctl failed.
    #[error("{what}: {source}")]
    Kvm {
        /// Which operation.
        what: &'static str,
        /// Cause.
        source: kvm_ioctls::Error,
    },
    /// Wiring a virtio device to KVM failed.
    #[error("{what} ({device}): {source}")]
    DeviceKvm {
        /// Which device.
        device: &'static str,
        /// Which operation.
        what: &'static str,
        /// Cause.
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be allocated.
    #[error("allocating guest memory: {0}")]
    Memory(#[from] vm_memory::mmap::FromRangesError),
    /// Loading boot images failed.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// MP table setup failed.
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
    /// Register tables could not be written.
    #[error(transparent)]
    Regs(#[from] cpu_regs::RegsError),
    /// CPUID could not be read.
    #[error(transparent)]
    Cpuid(#[from] cpuid::CpuidError),
    /// The command line is invalid.
    #[error(transparent)]
    Cmdline(#[from] CmdlineError),
    /// Device placement failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// No device slot left.
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// A virtio transport could not be built.
    #[error(transparent)]
    Mmio(#[from] MmioError),
    /// The vsock device could not be created.
    #[error("vsock device: {0}")]
    Vsock(#[from] VsockError),
    /// The virtio-fs device could not be created.
    #[error("virtio-fs device: {0}")]
    Fs(#[from] FsError),
    /// The virtio-net device or its tap could not be set up.
    #[error("virtio-net device")]
    Net(#[from] NetError),
    /// A vCPU could not be set up.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The console output cannot be opened.
    #[error("opening console output {path}: {source}")]
    Console {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// An eventfd or epoll operation failed.
    #[error("{what}: {source}")]
    Io {
        /// Which operation.
        what: &'static str,
        /// Cause.
        source: std::io::Error,
    },
    /// The event loop failed.
    #[error("event loop: {0}")]
    EventLoop(#[from] event_manager::Error),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// Opens KVM and checks that it can run a husk guest.
fn open_kvm(config: &VmConfig) -> Result<Kvm, VmError> {
    let path = config.kvm_device.display().to_string();
    let cpath = std::ffi::CString::new(path.clone()).map_err(|_| VmError::OpenKvm {
        path: path.clone(),
        source: std::io::ErrorKind::InvalidInput.into(),
    })?;
    let kvm = Kvm::new_with_path(&cpath).map_err(|e| VmError::OpenKvm {
        path,
        source: e.into(),
    })?;
    let version = kvm.get_api_version();
    if version != KVM_API_VERSION {
        return Err(VmError::ApiVersion(version));
    }
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(*cap) {
            return Err(VmError::MissingCap(name));
        }
    }
    Ok(kvm)
}

/// Allocates guest RAM and registers it with KVM.
fn setup_memory(vm: &VmFd, mem_size: u64) -> Result<GuestMemoryMmap, VmError> {
    let ranges: Vec<(GuestAddress, usize)> = layout::ram_ranges(mem_size)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges)?;
    for (slot, region) in mem.iter().enumerate() {
        let host_addr = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|_| VmError::Io {
                what: "guest memory host address",
                source: std::io::ErrorKind::InvalidData.into(),
            })?;
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host_addr as u64,
        };
        // SAFETY: the region maps memory owned by `mem`, which the VM keeps alive for as long
        // as the VM exists (it is returned to the caller and held until the process ends),
        // and slots do not overlap because `ram_ranges` returns disjoint ranges.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(mem)
}

fn console_writer(console: &ConsoleOutput) -> Result<Box<dyn Write + Send>, VmError> {
    Ok(match console {
        ConsoleOutput::Stdout => Box::new(LineWriter::new(std::io::stdout())),
        ConsoleOutput::Null => Box::new(std::io::sink()),
        ConsoleOutput::File(path) => {
            let file = File::create(path).map_err(|source| VmError::Console {
                path: path.display().to_string(),
                source,
            })?;
            Box::new(LineWriter::new(file))
        }
    })
}

/// The port-I/O bus with the 8250 console on COM1 (IRQ 4 through an irqfd), the i8042 and
/// husk's power register.
fn legacy_devices(
    vm: &VmFd,
    config: &VmConfig,
    exit: &ExitNotifier,
) -> Result<(Arc<Bus>, Arc<Mutex<SerialConsole>>), VmError> {
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| VmError::Io {
        what: "creating the serial eventfd",
        source,
    })?;
    vm.register_irqfd(&serial_irq, layout::SERIAL_IRQ)
        .map_err(kvm_err("KVM_IRQFD (serial)"))?;
    let serial = Arc::new(Mutex::new(SerialConsole::new(
        serial_irq,
        console_writer(&config.console)?,
    )));
    let mut pio = Bus::new();
    pio.insert(serial.clone(), SERIAL_PORT, SERIAL_PORT_LEN)?;
    pio.insert(
        Arc::new(Mutex::new(I8042::new(exit.clone()))),
        I8042_PORT,
        I8042_PORT_LEN,
    )?;
    pio.insert(
        Arc::new(Mutex::new(PowerRegister::new(exit.clone()))),
        POWER_PORT,
        1,
    )?;
    Ok((Arc::new(pio), serial))
}

/// Where devices go: the MMIO bus, its slots, and the command line that announces them.
struct MmioDevices<'a> {
    vm: &'a VmFd,
    mem: &'a GuestMemoryMmap,
    slots: SlotAllocator,
    bus: Bus,
    cmdline: &'a mut Cmdline,
}

impl MmioDevices<'_> {
    /// Puts `device` in the next slot: MMIO window, irqfd, ioeventfds for the queue
    /// notifications, and the kernel command line entry.
    fn attach(&mut self, device: SharedVirtioDevice, name: &'static str) -> Result<(), VmError> {
        let kvm = |what| {
            move |source| VmError::DeviceKvm {
                device: name,
                what,
                source,
            }
        };
        let slot = self.slots.allocate()?;
        let transport = MmioTransport::new(self.mem.clone(), device)?;
        self.vm
            .register_irqfd(transport.interrupt().eventfd(), slot.irq)
            .map_err(kvm("KVM_IRQFD"))?;
        let notify = IoEventAddress::Mmio(slot.base + regs::QUEUE_NOTIFY);
        for (queue, evt) in transport.queue_evts().enumerate() {
            self.vm
                .register_ioevent(evt, &notify, queue as u32)
                .map_err(kvm("KVM_IOEVENTFD"))?;
        }
        self.bus
            .insert(Arc::new(Mutex::new(transport)), slot.base, slot.size)?;
        self.cmdline
            .virtio_mmio_device(slot.base, slot.size, slot.irq);
        Ok(())
    }

    fn vsock(&mut self, config: &VsockConfig) -> Result<Arc<Mutex<Vsock>>, VmError> {
        let device = Arc::new(Mutex::new(Vsock::new(
            config.guest_cid,
            config.uds_path.clone(),
        )?));
        self.attach(device.clone(), "vsock")?;
        Ok(device)
    }

    /// The virtio-fs device, after bounding the process's descriptors to its budget.
    fn fs(&mut self, config: &FsConfig) -> Result<Arc<Mutex<Fs>>, VmError> {
        let limit = apply_fd_limit(config.max_fds)?;
        let device = Arc::new(Mutex::new(Fs::new(
            &config.shared_dir,
            &config.tag,
            config.max_fds,
        )?));
        self.attach(device.clone(), "virtio-fs")?;
        tracing::info!(share = ?config.shared_dir, tag = %config.tag, limit, "virtio-fs device");
        Ok(device)
    }

    fn net(&mut self, config: &NetConfig, tap: Tap) -> Result<Arc<Mutex<Net>>, VmError> {
        let name = tap.name().to_string();
        let device = Arc::new(Mutex::new(Net::new(
            Box::new(tap),
            &name,
            config.mac,
            config.mtu,
        )?));
        self.attach(device.clone(), "virtio-net")?;
        tracing::info!(tap = %name, mac = %config.mac, mtu = ?config.mtu, "virtio-net device");
        Ok(device)
    }
}

/// Opens the virtio-net device's tap: by name, or by adopting the inherited descriptor.
fn open_tap(config: &NetConfig) -> Result<Tap, VmError> {
    Ok(match &config.tap {
        TapSource::Name(name) => Tap::open(name)?,
        // SAFETY: `VmConfig::validate` checked that the descriptor (3 or more) was open before
        // the VMM opened anything, so it is the one the parent passed down for the tap; the
        // VMM keeps no other handle to it, and this is the only place that adopts it.
        TapSource::Fd(fd) => unsafe { Tap::from_inherited_fd(*fd) }?,
    })
}

/// Wakes the event loop when the VM is asked to end.
struct ExitWatcher {
    exit: ExitNotifier,
}

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // Drain the counter; the main loop reads the reason from the notifier.
        let _ = self.exit.eventfd().read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.exit.eventfd(), EventSet::IN)) {
            tracing::error!("cannot watch the exit eventfd: {e}");
            self.exit.request(VmExit::VcpuError {
                vcpu: 0,
                message: format!("event loop setup: {e}"),
            });
        }
    }
}

/// Ends the VM when the host sends a stop signal.
struct SignalWatcher {
    signals: StopSignals,
    exit: ExitNotifier,
}

impl MutEventSubscriber for SignalWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        while let Ok(Some(signal)) = self.signals.read() {
            self.exit.request(VmExit::Stopped { signal });
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.signals, EventSet::IN)) {
            tracing::error!("cannot watch the stop signals: {e}");
        }
    }
}

/// A VM that is built and ready to start.
pub struct Vm {
    // Field order matters for drop order only at process end; all are kept alive while the
    // vCPUs run.
    _kvm: Kvm,
    _vm: VmFd,
    _mem: GuestMemoryMmap,
    vcpus: Vec<Vcpu>,
    serial: Arc<Mutex<SerialConsole>>,
    pio: Arc<Bus>,
    vsock: Option<Arc<Mutex<Vsock>>>,
    fs: Option<Arc<Mutex<Fs>>>,
    net: Option<Arc<Mutex<Net>>>,
    exit: ExitNotifier,
    /// The kernel command line given to the guest.
    pub cmdline: String,
}

impl Vm {
    /// Builds the VM: KVM, memory, irqchip, boot images, devices and configured vCPUs.
    pub fn build(config: &VmConfig) -> Result<Self, VmError> {
        // First, so that a tap that cannot be used is reported whatever the state of KVM.
        let tap = config.net.as_ref().map(open_tap).transpose()?;
        let kvm = open_kvm(config)?;
        let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        vm.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        vm.create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;

        let mem_size = config.memory_bytes();
        let mem = setup_memory(&vm, mem_size)?;
        let kernel = boot::load_kernel(&mem, &config.kernel)?;
        let initramfs = match &config.initramfs {
            Some(path) => Some(boot::load_initramfs(&mem, mem_size, kernel.end, path)?),
            None => None,
        };

        let exit = ExitNotifier::new().map_err(|source| VmError::Io {
            what: "creating the exit eventfd",
            source,
        })?;
        let (pio, serial) = legacy_devices(&vm, config, &exit)?;

        let mut cmdline = Cmdline::with_defaults();
        let mut devices = MmioDevices {
            vm: &vm,
            mem: &mem,
            slots: SlotAllocator::default(),
            bus: Bus::new(),
            cmdline: &mut cmdline,
        };
        let vsock = config
            .vsock
            .as_ref()
            .map(|c| devices.vsock(c))
            .transpose()?;
        let fs = config.fs.as_ref().map(|c| devices.fs(c)).transpose()?;
        let net = match (config.net.as_ref(), tap) {
            (Some(c), Some(tap)) => Some(devices.net(c, tap)?),
            _ => None,
        };
        let mmio = Arc::new(devices.bus);
        for param in &config.kernel_params {
            cmdline.param(param)?;
        }
        for arg in &config.init_args {
            cmdline.init_arg(arg)?;
        }
        let cmdline = cmdline.render()?;
        boot::write_boot_data(&mem, mem_size, &cmdline, initramfs)?;
        mptable::setup(&mem, config.vcpus)?;
        cpu_regs::write_tables(&mem)?;

        let base_cpuid = cpuid::supported(&kvm)?;
        let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
        for id in 0..config.vcpus {
            let mut vcpu = Vcpu::new(&vm, id, pio.clone(), mmio.clone(), exit.clone())?;
            vcpu.configure(&base_cpuid, config.vcpus, kernel.entry)?;
            vcpus.push(vcpu);
        }

        Ok(Self {
            _kvm: kvm,
            _vm: vm,
            _mem: mem,
            vcpus,
            serial,
            pio,
            vsock,
            fs,
            net,
            exit,
            cmdline,
        })
    }

    /// Starts the vCPUs and runs the device event loop until the guest ends the VM.
    ///
    /// The vCPU threads are not joined: they may be blocked in KVM_RUN, and the caller ends
    /// the process after reporting the exit.
    pub fn run(mut self) -> Result<VmExit, VmError> {
        // Before the vCPU threads exist, so that they inherit the blocked mask.
        let signals = StopSignals::block().map_err(|source| VmError::Io {
            what: "blocking the stop signals",
            source,
        })?;
        let mut events: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
            EventManager::new()?;
        events.add_subscriber(Arc::new(Mutex::new(SignalWatcher {
            signals,
            exit: self.exit.clone(),
        })));
        events.add_subscriber(Arc::new(Mutex::new(ExitWatcher {
            exit: self.exit.clone(),
        })));
        if let Some(vsock) = &self.vsock {
            events.add_subscriber(vsock.clone());
        }
        if let Some(net) = &self.net {
            events.add_subscriber(net.clone());
        }
        for vcpu in self.vcpus.drain(..) {
            vcpu.start()?;
        }
        let reason = loop {
            if let Some(reason) = self.exit.requested() {
                break reason;
            }
            events.run()?;
        };
        self.serial
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .flush();
        if let Some(vsock) = &self.vsock {
            // The process ends without dropping the device (vCPU threads hold the bus), so
            // remove its socket here.
            let vsock = vsock
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let _ = std::fs::remove_file(vsock.uds_path());
            tracing::info!(counters = ?vsock.counters().snapshot(), "vsock device");
        }
        if let Some(fs) = &self.fs {
            let fs = fs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            tracing::info!(
                counters = ?fs.counters().snapshot(),
                fds_in_use = fs.fds_in_use(),
                "virtio-fs device"
            );
        }
        if let Some(net) = &self.net {
            let net = net.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            tracing::info!(
                counters = ?net.counters().snapshot(),
                tap = net.name(),
                link_up = net.link_up(),
                "virtio-net device"
            );
        }
        let unhandled = self.pio.unhandled_accesses();
        if unhandled > 0 {
            tracing::debug!(unhandled, "port I/O accesses hit no device");
        }
        Ok(reason)
    }
}
