//! Guest physical address map.
//!
//! ```text
//! 0x0000_0500  GDT                  0x0000_0520  IDT (empty)
//! 0x0000_7000  zero page (boot_params)
//! 0x0000_8ff0  boot stack (grows down)
//! 0x0000_9000  PML4, 0xa000 PDPT, 0xb000 PD (identity map of the first 1 GiB)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  MP floating pointer + MP configuration table (EBDA, not RAM in e820)
//! 0x0010_0000  high memory: RAM up to the end of guest memory or the MMIO gap
//! 0x0100_0000  vmlinux is linked to load here
//! 0xc000_0000  MMIO gap start (3 GiB): virtio-mmio slots at 0xd000_0000
//! 0xfec0_0000  IOAPIC               0xfee0_0000  LAPIC
//! 0x1_0000_0000 RAM above 4 GiB, when the guest has more than 3 GiB
//! ```

/// GDT location.
pub const GDT_START: u64 = 0x500;
/// IDT location (an empty IDT; the kernel installs its own).
pub const IDT_START: u64 = 0x520;
/// The zero page: `struct boot_params`, its address is passed in RSI.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level-4 page table.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory (2 MiB pages).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// x86 `COMMAND_LINE_SIZE`, including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the Extended BIOS Data Area, where the MP tables go.
pub const EBDA_START: u64 = 0x9fc00;
/// Size of the area the MP tables may use (up to the 640 KiB boundary).
pub const EBDA_SIZE: u64 = 0xa0000 - EBDA_START;
/// First byte of "high" memory (above the legacy 1 MiB).
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap; RAM above this moves to 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio device slot.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Size of one virtio-mmio slot.
pub const VIRTIO_MMIO_SLOT_SIZE: u64 = 0x1000;
/// IOAPIC MMIO base (in-kernel irqchip).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// LAPIC MMIO base (in-kernel irqchip).
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM's TSS needs three pages in guest physical space below 4 GiB, outside RAM.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// IRQ lines of the IOAPIC.
pub const IOAPIC_PINS: u8 = 24;
/// Legacy IRQ of the first serial port.
pub const SERIAL_IRQ: u32 = 4;
/// First IRQ handed to virtio-mmio devices.
pub const VIRTIO_IRQ_START: u32 = 5;

// The fixed areas must not overlap; checked when compiling.
const _: () = {
    assert!(GDT_START + 4 * 8 <= IDT_START);
    assert!(IDT_START + 8 <= ZERO_PAGE_START);
    assert!(ZERO_PAGE_START + 4096 <= BOOT_STACK_POINTER);
    assert!(BOOT_STACK_POINTER < PML4_START);
    assert!(PDE_START + 4096 <= CMDLINE_START);
    assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
    assert!(VIRTIO_MMIO_START >= MMIO_GAP_START && IOAPIC_START < MMIO_GAP_END);
};

/// The guest RAM ranges (start, length) for a guest of `mem_size` bytes.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

/// End (exclusive) of RAM below the MMIO gap.
pub fn lowmem_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_below_gap_is_one_range() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(ram_ranges(MMIO_GAP_START), vec![(0, MMIO_GAP_START)]);
    }

    #[test]
    fn ram_above_gap_moves_to_4g() {
        let r = ram_ranges(4 << 30);
        assert_eq!(r, vec![(0, MMIO_GAP_START), (MMIO_GAP_END, 1 << 30)]);
        assert_eq!(r.iter().map(|r| r.1).sum::<u64>(), 4 << 30);
        assert_eq!(lowmem_end(4 << 30), MMIO_GAP_START);
    }
}
