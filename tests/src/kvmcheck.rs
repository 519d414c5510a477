//! Does this machine's /dev/kvm work? [`check`] passes only if the KVM API is
//! version 12, KVM_CAP_XSAVE is there (our VMM needs it), and a one-page real-mode
//! guest runs (`out 0x10, al; hlt`) to its HLT. It prints what it finds.
//!
//! Plain libc ioctls, so that the check depends on nothing but the kernel ABI.
//! The `husk-kvm-check` binary runs it; the harness's own end-to-end test runs it
//! inside the test host.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use anyhow::{bail, ensure, Context, Result};

const KVM_GET_API_VERSION: u64 = 0xAE00;
const KVM_CREATE_VM: u64 = 0xAE01;
const KVM_CHECK_EXTENSION: u64 = 0xAE03;
const KVM_GET_VCPU_MMAP_SIZE: u64 = 0xAE04;
const KVM_CREATE_VCPU: u64 = 0xAE41;
const KVM_SET_USER_MEMORY_REGION: u64 = 0x4020_AE46;
const KVM_RUN: u64 = 0xAE80;
const KVM_SET_REGS: u64 = 0x4090_AE82;
const KVM_GET_SREGS: u64 = 0x8138_AE83;
const KVM_SET_SREGS: u64 = 0x4138_AE84;

const KVM_CAP_USER_MEMORY: u64 = 3;
const KVM_CAP_XSAVE: u64 = 55;
const KVM_EXIT_IO: u32 = 2;
const KVM_EXIT_HLT: u32 = 5;

const MEM_SIZE: usize = 0x10000;
const CODE_ADDR: usize = 0x1000;
/// mov al, 0x4b; out 0x10, al; hlt
const CODE: [u8; 5] = [0xB0, 0x4B, 0xE6, 0x10, 0xF4];

#[repr(C)]
struct UserspaceMemoryRegion {
    slot: u32,
    flags: u32,
    guest_phys_addr: u64,
    memory_size: u64,
    userspace_addr: u64,
}

/// `struct kvm_regs`: rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp, r8..r15, rip, rflags.
#[repr(C)]
#[derive(Default)]
struct Regs([u64; 18]);

/// `struct kvm_sregs` is 312 bytes; `cs` comes first: base (u64), limit (u32),
/// selector (u16), ...
#[repr(C, align(8))]
struct Sregs([u8; 312]);

/// ioctl on `fd` with an integer or pointer argument; the result or the OS error.
///
/// # Safety
/// `arg` must be what the ioctl `req` expects: a value, or a pointer to a live
/// object of the size encoded in `req`.
unsafe fn ioctl(fd: RawFd, req: u64, arg: u64) -> std::io::Result<i32> {
    // SAFETY: the caller guarantees `arg` suits `req`.
    let r = unsafe { libc::ioctl(fd, req as _, arg) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// An anonymous shared mapping, unmapped on drop.
struct Mapping(*mut libc::c_void, usize);

impl Mapping {
    fn new(len: usize, fd: RawFd, shared: bool) -> Result<Self> {
        let flags = if shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE
        };
        // SAFETY: a fresh mapping at a kernel-chosen address; nothing aliases it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        ensure!(
            p != libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        Ok(Self(p, len))
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value owns.
        unsafe {
            libc::munmap(self.0, self.1);
        }
    }
}

fn owned(fd: i32) -> OwnedFd {
    // SAFETY: `fd` was just returned by a KVM ioctl that creates a descriptor; we
    // are its only owner.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Runs the check on /dev/kvm, printing one `key=value` line per finding.
pub fn check() -> Result<()> {
    let kvm = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .context("open /dev/kvm")?;
    let kvm = kvm.as_raw_fd();
    // SAFETY: KVM_GET_API_VERSION takes no argument.
    let api = unsafe { ioctl(kvm, KVM_GET_API_VERSION, 0) }?;
    println!("api_version={api}");
    ensure!(api == 12, "KVM API version {api}, expected 12");
    for (name, cap) in [
        ("user_memory", KVM_CAP_USER_MEMORY),
        ("xsave", KVM_CAP_XSAVE),
    ] {
        // SAFETY: KVM_CHECK_EXTENSION takes the capability number by value.
        let v = unsafe { ioctl(kvm, KVM_CHECK_EXTENSION, cap) }?;
        println!("cap_{name}={v}");
        ensure!(v > 0, "KVM_CAP_{} missing", name.to_uppercase());
    }
    // Declared before the VM, so that it outlives it.
    let mem = Mapping::new(MEM_SIZE, -1, false)?;
    // SAFETY: `mem` is MEM_SIZE writable bytes; CODE fits at CODE_ADDR.
    unsafe {
        std::ptr::copy_nonoverlapping(CODE.as_ptr(), mem.0.cast::<u8>().add(CODE_ADDR), CODE.len());
    }
    // SAFETY: KVM_CREATE_VM takes the machine type (0) by value.
    let vm = owned(unsafe { ioctl(kvm, KVM_CREATE_VM, 0) }.context("KVM_CREATE_VM")?);
    println!("create_vm=ok");

    let region = UserspaceMemoryRegion {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: mem.0 as u64,
    };
    // SAFETY: `region` is a live kvm_userspace_memory_region describing `mem`,
    // which outlives the VM.
    unsafe {
        ioctl(
            vm.as_raw_fd(),
            KVM_SET_USER_MEMORY_REGION,
            &region as *const _ as u64,
        )
    }
    .context("KVM_SET_USER_MEMORY_REGION")?;
    // SAFETY: KVM_CREATE_VCPU takes the vCPU id by value.
    let vcpu =
        owned(unsafe { ioctl(vm.as_raw_fd(), KVM_CREATE_VCPU, 0) }.context("KVM_CREATE_VCPU")?);
    // SAFETY: KVM_GET_VCPU_MMAP_SIZE takes no argument.
    let run_size = unsafe { ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0) }? as usize;
    let run = Mapping::new(run_size, vcpu.as_raw_fd(), true)?;

    let mut sregs = Sregs([0; 312]);
    // SAFETY: `sregs` is a writable kvm_sregs-sized buffer.
    unsafe { ioctl(vcpu.as_raw_fd(), KVM_GET_SREGS, sregs.0.as_mut_ptr() as u64) }?;
    sregs.0[..8].copy_from_slice(&0u64.to_ne_bytes()); // cs.base
    sregs.0[12..14].copy_from_slice(&0u16.to_ne_bytes()); // cs.selector
                                                          // SAFETY: `sregs` is a full kvm_sregs as KVM returned it, with CS moved to 0.
    unsafe { ioctl(vcpu.as_raw_fd(), KVM_SET_SREGS, sregs.0.as_ptr() as u64) }?;
    let mut regs = Regs::default();
    regs.0[16] = CODE_ADDR as u64; // rip
    regs.0[17] = 2; // rflags: the reserved bit
                    // SAFETY: `regs` is a live kvm_regs.
    unsafe { ioctl(vcpu.as_raw_fd(), KVM_SET_REGS, &regs as *const _ as u64) }?;

    let base = run.0.cast::<u8>();
    let mut out = None;
    for _ in 0..16 {
        // SAFETY: KVM_RUN takes no argument; the run page is mapped.
        unsafe { ioctl(vcpu.as_raw_fd(), KVM_RUN, 0) }.context("KVM_RUN")?;
        // SAFETY: `run` maps at least the kvm_run header: exit_reason at 8, and the
        // io exit (direction 32, size 33, port 34, count 36, data_offset 40).
        let (reason, port, data_off) = unsafe {
            (
                base.add(8).cast::<u32>().read(),
                base.add(34).cast::<u16>().read(),
                base.add(40).cast::<u64>().read() as usize,
            )
        };
        match reason {
            KVM_EXIT_IO if port == 0x10 && data_off < run_size => {
                // SAFETY: KVM put the byte at data_offset inside the run mapping.
                let v = unsafe { base.add(data_off).read() };
                println!("guest_out=0x{v:02x}");
                out = Some(v);
            }
            KVM_EXIT_HLT => {
                println!("exit=hlt");
                ensure!(out == Some(0x4B), "the guest's OUT never arrived");
                return Ok(());
            }
            other => bail!("unexpected KVM exit reason {other}"),
        }
    }
    bail!("the guest did not halt")
}

#[cfg(test)]
mod tests {
    /// Run inside the test host by `testhost::e2e`; natively with `--ignored`.
    #[test]
    #[ignore = "needs a /dev/kvm that runs guests; testhost's end-to-end test runs it there"]
    fn this_host_runs_a_guest() {
        super::check().expect("KVM check");
    }
}
