//! x86_64 guest setup: memory layout, boot parameters, CPU state, CPUID, MSRs and MP tables.
//!
//! The guest is entered directly in 64-bit long mode at the ELF entry point of `vmlinux`
//! (the kernel's 64-bit boot protocol): no firmware, no real mode, no ACPI, no PCI.

pub mod boot;
pub mod cpuid;
pub mod interrupts;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
