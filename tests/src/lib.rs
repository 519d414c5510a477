//! husk's integration-test support: the KVM test host harness ([`testhost`]) and
//! a KVM smoke check ([`kvmcheck`]). The VM tests themselves live in `tests/tests/`.

pub mod kvmcheck;
pub mod testhost;
