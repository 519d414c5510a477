//! Boot-time model-specific registers.

use kvm_bindings::{kvm_msr_entry, Msrs};

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// MISC_ENABLE: fast string operations.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRdefType: MTRRs enabled, default memory type write-back (6).
const MTRR_ENABLE_DEFAULT_WB: u64 = (1 << 11) | 6;

/// Errors building the MSR list.
#[derive(Debug, thiserror::Error)]
pub enum MsrError {
    /// The FAM wrapper refused the list.
    #[error("building the MSR list: {0:?}")]
    Build(vmm_sys_util::fam::Error),
}

/// The MSRs every vCPU starts with: syscall entry points cleared (the kernel sets them),
/// the TSC at zero, fast strings on, and write-back memory by default.
pub fn boot_msrs() -> Result<Msrs, MsrError> {
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_DEFAULT_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    Msrs::from_entries(&entries).map_err(MsrError::Build)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_msrs_enable_write_back_mtrr() {
        let msrs = boot_msrs().unwrap();
        let mtrr = msrs
            .as_slice()
            .iter()
            .find(|e| e.index == MSR_MTRR_DEF_TYPE)
            .unwrap();
        assert_eq!(mtrr.data, 0x806);
        assert_eq!(msrs.as_slice().len(), 11);
    }
}
