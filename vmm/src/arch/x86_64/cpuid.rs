//! Guest CPUID: what KVM supports on this host, adjusted so that each vCPU reports its own
//! APIC id and the topology the VMM built (one socket, one thread per core).

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;

/// Leaf 1: family, features, APIC id.
const LEAF_FEATURES: u32 = 0x1;
/// Leaf 4: deterministic cache parameters (Intel), carries the cores-per-package count.
const LEAF_CACHE_PARAMS: u32 = 0x4;
/// Leaf 0xb: extended topology enumeration.
const LEAF_TOPOLOGY: u32 = 0xb;
/// Leaf 0x1f: v2 extended topology enumeration.
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
/// Leaf 0x8000_0008: address sizes and (AMD) the core count.
const LEAF_AMD_SIZES: u32 = 0x8000_0008;

/// Leaf 1 ECX: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: the logical-processor count in EBX is valid.
const EDX_HTT: u32 = 1 << 28;

/// Topology level types in leaf 0xb/0x1f ECX[15:8].
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Errors getting the guest's CPUID.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    /// KVM_GET_SUPPORTED_CPUID failed.
    #[error("KVM_GET_SUPPORTED_CPUID: {0}")]
    Supported(kvm_ioctls::Error),
}

/// What KVM can offer a guest on this host.
pub fn supported(kvm: &Kvm) -> Result<CpuId, CpuidError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(CpuidError::Supported)
}

/// Bits needed to hold `n - 1` (the width of an id field for `n` units).
fn id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Adjusts one CPUID entry for vCPU `id` of `count`.
fn adjust_entry(e: &mut kvm_cpuid_entry2, id: u8, count: u8) {
    let id = u32::from(id);
    let count = u32::from(count);
    match e.function {
        LEAF_FEATURES => {
            // EBX[31:24] initial APIC id, [23:16] logical processors per package,
            // [15:8] CLFLUSH line size in 8-byte units (64 bytes).
            e.ebx = (id << 24) | (count << 16) | (8 << 8) | (e.ebx & 0xff);
            e.ecx |= ECX_HYPERVISOR;
            if count > 1 {
                e.edx |= EDX_HTT;
            } else {
                e.edx &= !EDX_HTT;
            }
        }
        LEAF_CACHE_PARAMS => {
            // EAX[31:26]: cores per package - 1; [25:14]: threads sharing this cache - 1
            // (a cache at level 3 is shared by the package, lower levels by one core).
            let level = (e.eax >> 5) & 0x7;
            let sharing = if level >= 3 { count - 1 } else { 0 };
            e.eax = (e.eax & 0x3fff) | (sharing << 14) | ((count - 1) << 26);
        }
        LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
            // Sub-leaf 0: SMT level, 1 thread per core. Sub-leaf 1: core level, all vCPUs.
            // Others: invalid level. EDX is the x2APIC id on every sub-leaf.
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = (LEVEL_SMT << 8) | e.index;
                }
                1 => {
                    e.eax = id_bits(count);
                    e.ebx = count;
                    e.ecx = (LEVEL_CORE << 8) | e.index;
                }
                _ => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = e.index;
                }
            }
            e.edx = id;
        }
        LEAF_AMD_SIZES => {
            // ECX[7:0]: cores - 1; [15:12]: APIC id bits used for the core id.
            e.ecx = (e.ecx & !0xf0ff) | (id_bits(count) << 12) | (count - 1);
        }
        _ => {}
    }
}

/// The CPUID table for vCPU `id` of `count`, derived from `base`.
pub fn for_vcpu(base: &CpuId, id: u8, count: u8) -> CpuId {
    let mut cpuid = base.clone();
    for e in cpuid.as_mut_slice() {
        adjust_entry(e, id, count);
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0xff,
            edx: EDX_HTT,
            ..Default::default()
        }
    }

    #[test]
    fn leaf1_carries_apic_id_count_and_hypervisor_bit() {
        let mut e = entry(LEAF_FEATURES, 0);
        adjust_entry(&mut e, 3, 4);
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_eq!(e.ebx & 0xff, 0xff, "brand index kept");
        assert_ne!(e.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e.edx & EDX_HTT, 0);
        let mut e = entry(LEAF_FEATURES, 0);
        adjust_entry(&mut e, 0, 1);
        assert_eq!(e.edx & EDX_HTT, 0);
    }

    #[test]
    fn topology_leaf_describes_cores() {
        let mut smt = entry(LEAF_TOPOLOGY, 0);
        let mut core = entry(LEAF_TOPOLOGY, 1);
        let mut end = entry(LEAF_TOPOLOGY, 2);
        for e in [&mut smt, &mut core, &mut end] {
            adjust_entry(e, 5, 6);
            assert_eq!(e.edx, 5);
        }
        assert_eq!((smt.ebx, smt.ecx >> 8), (1, LEVEL_SMT));
        assert_eq!((core.eax, core.ebx, core.ecx >> 8), (3, 6, LEVEL_CORE));
        assert_eq!((end.ebx, end.ecx), (0, 2));
    }

    #[test]
    fn id_bits_widths() {
        assert_eq!([1, 2, 3, 4, 5, 32].map(id_bits), [0, 1, 2, 2, 3, 5]);
    }

    #[test]
    fn amd_core_count() {
        let mut e = entry(LEAF_AMD_SIZES, 0);
        e.ecx = 0xffff_ffff;
        adjust_entry(&mut e, 0, 2);
        assert_eq!(e.ecx & 0xff, 1);
        assert_eq!((e.ecx >> 12) & 0xf, 1);
        assert_eq!(e.ecx >> 16, 0xffff, "other fields kept");
    }
}
