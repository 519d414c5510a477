//! husk's integration-test support: the KVM test host harness ([`testhost`]),
//! a KVM smoke check ([`kvmcheck`]), a private containerd ([`containerd`]) and a
//! CRI client with runtime-agnostic scenarios ([`cri`]). The VM tests themselves
//! live in `tests/tests/`.

pub mod containerd;
pub mod cri;
pub mod kvmcheck;
pub mod oci;
pub mod testhost;
