//! `husk-kvm-check`: does this machine's /dev/kvm run a guest? Prints what it
//! finds, then `KVM OK` (exit 0) or `KVM FAILED: <why>` (exit 1).
//! See [`husk_tests::kvmcheck`].

use std::process::ExitCode;

fn main() -> ExitCode {
    match husk_tests::kvmcheck::check() {
        Ok(()) => {
            println!("KVM OK");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("KVM FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}
