//! Pieces shared by husk's host binaries, `containerd-shim-husk-v2` and the `husk` CLI:
//! starting `husk-vmm` and reaching the guest agent ([`vm`]), the configuration file
//! ([`config`]), rewriting a container's OCI spec for the guest ([`spec`]), and wiring the Pod's
//! network namespace to the VM ([`net`]).

pub mod config;
pub mod net;
pub mod spec;
pub mod vm;
