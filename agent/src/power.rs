//! Ending the VM from inside.
//!
//! # husk's power register
//!
//! husk's VM has no ACPI, so the guest cannot power off the usual way. Instead
//! `husk-vmm` watches one x86 I/O port, [`POWER_PORT`] (`0x604`). A one-byte
//! write of [`POWER_OFF`] (`0x01`) to it is a clean power-off: the VMM stops
//! the VM and exits with status 0. Other values are reserved.
//!
//! A *reset* is the failure path: `reboot(RB_AUTOBOOT)`, which the guest
//! kernel (booted with `reboot=k`) turns into an i8042 keyboard-controller
//! reset. The VMM reports that as a guest reset and exits non-zero.
//!
//! [`power_off`] drains the console, syncs, unmounts what it can, writes the power register and,
//! if the VM is still running a second later (or the port cannot be reached),
//! resets. [`reset`] is for fatal errors.

use std::time::Duration;

use crate::mounts::{self, MountSpec, Syscalls};
use crate::{debug, error};

/// husk's power register: the x86 I/O port the VMM watches.
pub const POWER_PORT: u16 = 0x604;

/// The byte that, written to [`POWER_PORT`], asks for a clean power-off.
pub const POWER_OFF: u8 = 0x01;

/// How long to wait for the VMM to act on the power register.
const POWER_OFF_GRACE: Duration = Duration::from_secs(1);

/// Powers the VM off cleanly; resets it if that does not work. Never returns.
pub fn power_off(sys: &dyn Syscalls, plan: &[MountSpec]) -> ! {
    debug!("powering off");
    drain_console();
    sync();
    mounts::unmount_all(sys, plan);
    match write_power_register(POWER_OFF) {
        Ok(()) => {
            std::thread::sleep(POWER_OFF_GRACE);
            error!("VMM ignored the power-off request on port {POWER_PORT:#x}; resetting");
        }
        Err(e) => error!("cannot reach power port {POWER_PORT:#x}: {e}; resetting"),
    }
    reset()
}

/// Resets the VM: the failure path, reported by the VMM as non-zero. Never
/// returns; if even the reset fails, PID 1 parks forever (exiting would panic
/// the kernel).
pub fn reset() -> ! {
    drain_console();
    sync();
    // SAFETY: reboot(2) takes no pointers; RB_AUTOBOOT restarts the machine
    // and does not return on success.
    unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    error!("reboot failed: {}", std::io::Error::last_os_error());
    loop {
        // SAFETY: pause(2) takes no arguments and only waits for a signal.
        unsafe { libc::pause() };
    }
}

/// Waits until the console has sent what was written to it: write(2) on a
/// tty returns once the bytes are in the kernel's buffer, and ending the VM
/// then would lose the end of the readiness line or of an error message.
fn drain_console() {
    for fd in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: tcdrain(3) takes no pointers; on a descriptor that is not a
        // tty it fails with ENOTTY, which is fine to ignore.
        unsafe { libc::tcdrain(fd) };
    }
}

fn sync() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// Writes `value` to [`POWER_PORT`].
#[cfg(target_arch = "x86_64")]
fn write_power_register(value: u8) -> std::io::Result<()> {
    // SAFETY: ioperm(2) takes no pointers; it only changes this thread's I/O
    // permission bitmap (it needs CAP_SYS_RAWIO, which PID 1 has).
    if unsafe { libc::ioperm(libc::c_ulong::from(POWER_PORT), 1, 1) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: ioperm above granted this thread access to POWER_PORT, so `out`
    // does not fault. The instruction touches no memory and no stack, and the
    // port is husk's power register, whose only effect is on the VM as a whole.
    unsafe {
        core::arch::asm!(
            "out dx, al",
            in("dx") POWER_PORT,
            in("al") value,
            options(nomem, nostack, preserves_flags)
        );
    }
    Ok(())
}

#[cfg(not(target_arch = "x86_64"))]
fn write_power_register(_value: u8) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_register_is_husks() {
        // The VMM side must agree on these; changing them is a protocol change.
        assert_eq!(POWER_PORT, 0x604);
        assert_eq!(POWER_OFF, 0x01);
    }
}
