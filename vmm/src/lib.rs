//! husk-vmm: the KVM virtual machine monitor library.
//!
//! [`vm::Vm::build`] turns a validated [`config::VmConfig`] into a VM (KVM, guest memory,
//! in-kernel irqchip and PIT, the kernel and initramfs, MP tables, legacy devices and
//! configured vCPUs); [`vm::Vm::run`] runs it until the guest ends it and reports why.

pub mod arch;
pub mod cmdline;
pub mod config;
pub mod devices;
pub mod exit;
pub mod initramfs;
pub mod signals;
pub mod vcpu;
pub mod vm;
