//! Intel MultiProcessor Specification 1.4 tables, so that the guest finds its vCPUs, the
//! IOAPIC and the ISA interrupt routing without ACPI.
//!
//! Layout written at the EBDA: the 16-byte floating pointer, then the configuration table
//! (header, one processor entry per vCPU, the ISA bus, the IOAPIC, one I/O interrupt entry
//! per IOAPIC pin, and the two local interrupt entries LINT0 = ExtINT, LINT1 = NMI).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_START, EBDA_SIZE, EBDA_START, IOAPIC_PINS, IOAPIC_START};

/// Most vCPUs whose tables fit in the 1 KiB EBDA area.
pub const MAX_VCPUS: u8 = 32;

const FLOATING_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const PROCESSOR_LEN: usize = 20;
const SMALL_ENTRY_LEN: usize = 8;
const SPEC_REV: u8 = 4;
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const IOAPIC_ENABLED: u8 = 1;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const ISA_BUS_ID: u8 = 0;
/// CPUID signature: family 6 (only used by ancient kernels).
const CPU_SIGNATURE: u32 = 0x600;
/// FPU + APIC present.
const CPU_FEATURES: u32 = 0x201;

/// Errors building MP tables.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    /// Zero vCPUs, or more than fit.
    #[error("MP tables support 1 to {MAX_VCPUS} vCPUs, not {0}")]
    VcpuCount(u8),
    /// Writing to guest memory failed.
    #[error("writing MP tables to guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// Builds the MP tables for `vcpus` CPUs, to be placed at `base`.
pub fn build(vcpus: u8, base: u64) -> Result<Vec<u8>, MpTableError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(MpTableError::VcpuCount(vcpus));
    }
    let ioapic_id = vcpus; // APIC ids 0..vcpus are the CPUs.
    let table_addr = base + FLOATING_LEN as u64;

    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..vcpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BSP } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, LAPIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, IOAPIC_ENABLED]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    count += 1;
    for pin in 0..IOAPIC_PINS {
        // Type, interrupt type, flags (conforming polarity and trigger), source bus + IRQ,
        // destination IOAPIC + pin.
        entries.extend_from_slice(&[ENTRY_IO_INTERRUPT, INT_TYPE_INT, 0, 0, ISA_BUS_ID, pin]);
        entries.extend_from_slice(&[ioapic_id, pin]);
        count += 1;
    }
    // LINT0 of every local APIC is ExtINT (the PIC), LINT1 is NMI.
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, ISA_BUS_ID, 0]);
    entries.extend_from_slice(&[0xff, 0]);
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, ISA_BUS_ID, 0]);
    entries.extend_from_slice(&[0xff, 1]);
    count += 2;
    debug_assert_eq!(
        entries.len(),
        PROCESSOR_LEN * usize::from(vcpus)
            + SMALL_ENTRY_LEN * usize::from(count - u16::from(vcpus))
    );

    let table_len = HEADER_LEN + entries.len();
    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.push(SPEC_REV);
    table.push(0); // checksum, filled below
    table.extend_from_slice(b"HUSK    "); // OEM id, 8 bytes
    table.extend_from_slice(b"HUSK-VMM    "); // product id, 12 bytes
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    table.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    table.push(0); // extended table checksum
    table.push(0); // reserved
    debug_assert_eq!(table.len(), HEADER_LEN);
    table.extend_from_slice(&entries);
    table[7] = checksum_byte(&table);

    let mut floating = Vec::with_capacity(FLOATING_LEN);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&(table_addr as u32).to_le_bytes());
    floating.push(1); // length in 16-byte units
    floating.push(SPEC_REV);
    floating.push(0); // checksum, filled below
    floating.extend_from_slice(&[0; 5]); // feature bytes: 0 = a configuration table follows
    floating[10] = checksum_byte(&floating);

    floating.extend_from_slice(&table);
    Ok(floating)
}

/// The byte that makes the sum of `bytes` (with it in place of a zero) equal 0 mod 256.
fn checksum_byte(bytes: &[u8]) -> u8 {
    let sum = bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
    0u8.wrapping_sub(sum)
}

/// Writes the MP tables for `vcpus` CPUs into the EBDA.
pub fn setup(mem: &GuestMemoryMmap, vcpus: u8) -> Result<(), MpTableError> {
    let bytes = build(vcpus, EBDA_START)?;
    debug_assert!(bytes.len() as u64 <= EBDA_SIZE);
    mem.write_slice(&bytes, GuestAddress(EBDA_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    #[test]
    fn checksums_are_zero() {
        for vcpus in [1, 2, 7, MAX_VCPUS] {
            let t = build(vcpus, EBDA_START).unwrap();
            assert_eq!(sum(&t[..16]), 0, "floating pointer, {vcpus} vcpus");
            let len = u16::from_le_bytes([t[16 + 4], t[16 + 5]]) as usize;
            assert_eq!(len, t.len() - 16);
            assert_eq!(sum(&t[16..16 + len]), 0, "config table, {vcpus} vcpus");
        }
    }

    #[test]
    fn layout_and_counts() {
        let t = build(2, EBDA_START).unwrap();
        assert_eq!(&t[..4], b"_MP_");
        assert_eq!(
            u32::from_le_bytes([t[4], t[5], t[6], t[7]]) as u64,
            EBDA_START + 16
        );
        assert_eq!(&t[16..20], b"PCMP");
        let count = u16::from_le_bytes([t[16 + 34], t[16 + 35]]);
        assert_eq!(count, 2 + 1 + 1 + u16::from(IOAPIC_PINS) + 2);
        // First processor is the enabled BSP with APIC id 0, the second is enabled only.
        let cpu0 = &t[16 + HEADER_LEN..];
        assert_eq!(&cpu0[..4], &[ENTRY_PROCESSOR, 0, LAPIC_VERSION, 3]);
        assert_eq!(&cpu0[20..24], &[ENTRY_PROCESSOR, 1, LAPIC_VERSION, 1]);
    }

    #[test]
    fn fits_in_the_ebda_up_to_the_maximum() {
        assert!(build(MAX_VCPUS, EBDA_START).unwrap().len() as u64 <= EBDA_SIZE);
    }

    #[test]
    fn rejects_bad_vcpu_counts() {
        assert!(matches!(
            build(0, EBDA_START),
            Err(MpTableError::VcpuCount(0))
        ));
        assert!(matches!(
            build(MAX_VCPUS + 1, EBDA_START),
            Err(MpTableError::VcpuCount(_))
        ));
    }
}
