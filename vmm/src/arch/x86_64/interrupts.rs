//! Local APIC setup: LINT0 delivers the PIC's ExtINT, LINT1 delivers NMIs, as on a PC.

use kvm_bindings::kvm_lapic_state;

/// Offsets of the LVT LINT0/LINT1 registers in the APIC page.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
/// Delivery modes (bits 8..11 of an LVT entry).
const DELIVERY_EXTINT: u32 = 0x7;
const DELIVERY_NMI: u32 = 0x4;

fn get_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &lapic.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[offset + i] = *byte as _;
    }
}

fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Sets LINT0 to ExtINT and LINT1 to NMI in a vCPU's LAPIC state.
pub fn set_lint(lapic: &mut kvm_lapic_state) {
    let lvt0 = get_reg(lapic, APIC_LVT0);
    set_reg(lapic, APIC_LVT0, with_delivery_mode(lvt0, DELIVERY_EXTINT));
    let lvt1 = get_reg(lapic, APIC_LVT1);
    set_reg(lapic, APIC_LVT1, with_delivery_mode(lvt1, DELIVERY_NMI));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint_delivery_modes() {
        let mut lapic = kvm_lapic_state::default();
        set_reg(&mut lapic, APIC_LVT0, 0x0001_0700);
        set_lint(&mut lapic);
        assert_eq!(get_reg(&lapic, APIC_LVT0), 0x0001_0700);
        assert_eq!(get_reg(&lapic, APIC_LVT1), 0x400);
    }
}
