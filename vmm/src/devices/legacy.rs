//! Legacy port-I/O devices: the 8250 serial console, the i8042 reset line and husk's power
//! register.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vm_superio::{I8042Device, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;
use crate::exit::{ExitNotifier, VmExit};

/// Port of the first serial port (COM1).
pub const SERIAL_PORT: u64 = 0x3f8;
/// Ports the 8250 decodes.
pub const SERIAL_PORT_LEN: u64 = 8;
/// i8042 data port; the status/command port is at +4.
pub const I8042_PORT: u64 = 0x60;
/// The i8042 range covers 0x60..=0x64.
pub const I8042_PORT_LEN: u64 = 5;
/// husk's power register: the agent writes [`POWER_OFF_VALUE`] here (with `outb`) to power
/// the VM off. Port 0x604 is unused on the machine husk emulates (no ACPI, no PCI).
pub const POWER_PORT: u64 = 0x604;
/// The byte that requests power-off.
pub const POWER_OFF_VALUE: u8 = 0x01;

/// Raises an interrupt by writing to an eventfd that KVM injects through an irqfd.
pub struct IrqEvent(pub EventFd);

impl Trigger for IrqEvent {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The 8250 UART on COM1, writing the guest console to `out`.
pub struct SerialConsole {
    uart: Serial<IrqEvent, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
    failed_writes: u64,
}

impl SerialConsole {
    /// A console that interrupts through `irq` and writes to `out`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: Serial::new(IrqEvent(irq), out),
            failed_writes: 0,
        }
    }

    /// Flushes buffered console output.
    pub fn flush(&mut self) {
        let _ = self.uart.writer_mut().flush();
    }

    /// How many guest writes could not be delivered to the output (or raise the IRQ).
    pub fn failed_writes(&self) -> u64 {
        self.failed_writes
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let ([byte], Ok(offset)) = (&mut *data, u8::try_from(offset)) {
            *byte = self.uart.read(offset);
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let ([byte], Ok(offset)) = (data, u8::try_from(offset)) {
            if self.uart.write(offset, *byte).is_err() {
                self.failed_writes += 1;
            }
        }
    }
}

/// Tells the VMM that the guest pulsed the reset line.
pub struct ResetTrigger(pub ExitNotifier);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(VmExit::Reset);
        Ok(())
    }
}

/// The i8042 keyboard controller, as far as Linux's `reboot=k` needs it: a CPU reset
/// command (0xfe on port 0x64) ends the VM.
pub struct I8042 {
    inner: I8042Device<ResetTrigger>,
}

impl I8042 {
    /// An i8042 that reports resets to `exit`.
    pub fn new(exit: ExitNotifier) -> Self {
        Self {
            inner: I8042Device::new(ResetTrigger(exit)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (&mut *data, offset) {
            ([byte], 0 | 4) => *byte = self.inner.read(offset as u8),
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let ([byte], 0 | 4) = (data, offset) {
            let _ = self.inner.write(offset as u8, *byte);
        }
    }
}

/// husk's power register (see [`POWER_PORT`]).
pub struct PowerRegister {
    exit: ExitNotifier,
    ignored_writes: Arc<AtomicU64>,
}

impl PowerRegister {
    /// A power register that reports power-off to `exit`.
    pub fn new(exit: ExitNotifier) -> Self {
        Self {
            exit,
            ignored_writes: Arc::default(),
        }
    }

    /// Writes that were not a power-off request.
    pub fn ignored_writes(&self) -> u64 {
        self.ignored_writes.load(Ordering::Relaxed)
    }
}

impl BusDevice for PowerRegister {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if data == [POWER_OFF_VALUE] {
            self.exit.request(VmExit::PowerOff);
        } else {
            self.ignored_writes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn serial_writes_reach_the_output_and_raise_the_irq() {
        let out = Shared::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut serial = SerialConsole::new(irq.try_clone().unwrap(), Box::new(out.clone()));
        // Enable the THR-empty interrupt (IER bit 1), then send two bytes.
        serial.write(1, &[0x02]);
        serial.write(0, b"h");
        serial.write(0, b"i");
        assert_eq!(&*out.0.lock().unwrap(), b"hi");
        assert!(irq.read().unwrap() >= 1);
        // Multi-byte and out-of-range accesses are ignored.
        serial.write(0, b"xy");
        serial.write(300, b"z");
        assert_eq!(&*out.0.lock().unwrap(), b"hi");
    }

    #[test]
    fn i8042_reset_command_requests_reset() {
        let exit = ExitNotifier::new().unwrap();
        let mut kbd = I8042::new(exit.clone());
        kbd.write(4, &[0xaa]);
        assert_eq!(exit.requested(), None);
        kbd.write(4, &[0xfe]);
        assert_eq!(exit.requested(), Some(VmExit::Reset));
    }

    #[test]
    fn power_register_powers_off_on_the_right_byte_only() {
        let exit = ExitNotifier::new().unwrap();
        let mut power = PowerRegister::new(exit.clone());
        power.write(0, &[0x02]);
        power.write(0, &[0x01, 0x00]);
        assert_eq!(exit.requested(), None);
        assert_eq!(power.ignored_writes(), 2);
        power.write(0, &[POWER_OFF_VALUE]);
        assert_eq!(exit.requested(), Some(VmExit::PowerOff));
    }
}
