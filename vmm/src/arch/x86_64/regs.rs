//! Initial vCPU register state for entering the kernel in 64-bit long mode.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    BOOT_STACK_POINTER, GDT_START, IDT_START, PDE_START, PDPTE_START, PML4_START, ZERO_PAGE_START,
};

const CR0_PE: u64 = 1;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Page table entry bits: present, writable.
const PTE_PRESENT_RW: u64 = 0x3;
/// Page directory entry bits: present, writable, 2 MiB page.
const PDE_2M: u64 = 0x83;
/// RFLAGS bit 1 is reserved and always set.
const RFLAGS_RESERVED: u64 = 0x2;
/// x87 control word at reset: all exceptions masked.
const FPU_CONTROL_WORD: u16 = 0x37f;
/// MXCSR at reset: all SSE exceptions masked.
const MXCSR_DEFAULT: u32 = 0x1f80;

/// GDT: null, 64-bit code, data, TSS. Selector = index * 8.
const GDT: [u64; 4] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];
const CODE_SELECTOR: u16 = 1;
const DATA_SELECTOR: u16 = 2;
const TSS_SELECTOR: u16 = 3;

/// Errors setting up CPU state.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Writing the GDT, IDT or page tables failed.
    #[error("writing {what} to guest memory: {source}")]
    GuestMemory {
        /// What was written.
        what: &'static str,
        /// Cause.
        source: vm_memory::GuestMemoryError,
    },
}

/// Packs a segment descriptor. `flags` holds the access byte in bits 0..8 and the
/// G/D/L/AVL nibble in bits 12..16.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (flags as u64, base as u64, limit as u64);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The KVM view of descriptor `index` of the GDT.
fn segment(index: u16) -> kvm_segment {
    let e = GDT[index as usize];
    let base = ((e >> 16) & 0xff_ffff) | ((e >> 32) & 0xff00_0000);
    let raw_limit = (e & 0xffff) | ((e >> 32) & 0xf_0000);
    let g = ((e >> 55) & 1) as u8;
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    kvm_segment {
        base,
        limit: limit as u32,
        selector: index * 8,
        type_: ((e >> 40) & 0xf) as u8,
        s: ((e >> 44) & 1) as u8,
        dpl: ((e >> 45) & 3) as u8,
        present: ((e >> 47) & 1) as u8,
        avl: ((e >> 52) & 1) as u8,
        l: ((e >> 53) & 1) as u8,
        db: ((e >> 54) & 1) as u8,
        g,
        unusable: 0,
        padding: 0,
    }
}

/// Writes the GDT, an empty IDT and identity-mapping page tables for the first 1 GiB.
pub fn write_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    let w = |what: &'static str, addr: u64, val: u64| {
        mem.write_obj(val, GuestAddress(addr))
            .map_err(|source| RegsError::GuestMemory { what, source })
    };
    for (i, e) in GDT.iter().enumerate() {
        w("GDT", GDT_START + 8 * i as u64, *e)?;
    }
    w("IDT", IDT_START, 0)?;
    w("page tables", PML4_START, PDPTE_START | PTE_PRESENT_RW)?;
    w("page tables", PDPTE_START, PDE_START | PTE_PRESENT_RW)?;
    for i in 0..512u64 {
        w("page tables", PDE_START + 8 * i, (i << 21) | PDE_2M)?;
    }
    Ok(())
}

/// Adjusts KVM's reset `sregs` for long mode with the tables from [`write_tables`].
pub fn long_mode_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = segment(CODE_SELECTOR);
    let data = segment(DATA_SELECTOR);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(TSS_SELECTOR);
    sregs.cr0 |= CR0_PE | CR0_PG;
    sregs.cr3 = PML4_START;
    sregs.cr4 |= CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
    sregs
}

/// General registers at the kernel's 64-bit entry: RSI points at the zero page.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

/// FPU/SSE state with exceptions masked.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: FPU_CONTROL_WORD,
        mxcsr: MXCSR_DEFAULT,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_encode_known_values() {
        assert_eq!(GDT[1], 0x00af_9b00_0000_ffff);
        assert_eq!(GDT[2], 0x00cf_9300_0000_ffff);
        assert_eq!(GDT[3], 0x008f_8b00_0000_ffff);
    }

    #[test]
    fn code_segment_is_64_bit() {
        let cs = segment(CODE_SELECTOR);
        assert_eq!((cs.l, cs.db, cs.present, cs.s, cs.type_), (1, 0, 1, 1, 0xb));
        assert_eq!(cs.selector, 8);
        assert_eq!(cs.limit, 0xffff_ffff);
        let tr = segment(TSS_SELECTOR);
        assert_eq!((tr.type_, tr.s, tr.g), (0xb, 0, 1));
    }

    #[test]
    fn sregs_enable_long_mode() {
        let s = long_mode_sregs(kvm_sregs::default());
        assert_eq!(s.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cr3, PML4_START);
        assert_eq!(s.ss.selector, 16);
    }

    #[test]
    fn page_tables_identity_map_first_gib() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        let last: u64 = mem.read_obj(GuestAddress(PDE_START + 511 * 8)).unwrap();
        assert_eq!(last, (511 << 21) | 0x83);
        let regs = boot_regs(0x100_0000);
        assert_eq!((regs.rip, regs.rsi), (0x100_0000, ZERO_PAGE_START));
    }
}
