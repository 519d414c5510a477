//! End-to-end tests of the harness itself. Each boots the test host (about 6 s
//! under emulation), or skips with one loud line where there is none.

use std::time::Duration;

use super::{run, Job, TestHostError};
use crate::require_kvm_host;

#[test]
fn output_exit_code_and_timings() {
    let kind = require_kvm_host!();
    let out = run(&Job::new(
        "echo out; echo err >&2; test -c /dev/kvm || echo NO-KVM; printf 'a\\tb'; exit 7",
    ))
    .expect("run");
    assert_eq!(out.exit_code, 7, "console:\n{}", out.console);
    // Only the script's bytes, unchanged: no \r, no kernel or init lines.
    assert_eq!(out.stdout, "out\nerr\na\tb");
    assert_eq!(out.kind, kind);
    if kind.is_emulated() {
        let l2 = out.l2.expect("L2 timings");
        assert!(out.host_boot >= l2.to_init + l2.module_load, "{out:?}");
        assert!(out.total >= out.host_boot);
        assert!(out.console.contains(":EXIT:7"), "{}", out.console);
    } else {
        assert_eq!(out.host_boot, Duration::ZERO);
    }
}

/// A dynamically linked program (this very test binary) runs there with its
/// files, and drives KVM: API 12, XSAVE, a guest that runs to HLT.
#[test]
fn dynamic_binary_with_files_runs_a_kvm_guest() {
    let _kind = require_kvm_host!();
    let exe = std::env::current_exe().expect("test binary path");
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = run(&Job::new(
        "set -e\n\
         test \"$(pwd)\" = \"$HUSK_FILES\"\n\
         head -n 1 data\n\
         ./self --exact kvmcheck::tests::this_host_runs_a_guest --ignored --nocapture \
         --test-threads 1\n",
    )
    .file(&exe, "self")
    .file(manifest, "data"))
    .expect("run");
    assert_eq!(
        out.exit_code, 0,
        "output:\n{}\nconsole:\n{}",
        out.stdout, out.console
    );
    assert!(out.stdout.starts_with("[package]\n"), "{}", out.stdout);
    for want in [
        "api_version=12",
        "create_vm=ok",
        "guest_out=0x4b",
        "exit=hlt",
        "1 passed",
    ] {
        assert!(out.stdout.contains(want), "no {want:?} in:\n{}", out.stdout);
    }
    assert!(!out.stdout.contains("cap_xsave=0"), "{}", out.stdout);
}

#[test]
fn timeout_kills_the_host_and_keeps_the_output() {
    let kind = require_kvm_host!();
    // Long enough for L2 to boot, short enough for the suite.
    let timeout = if kind.is_emulated() { 20 } else { 2 };
    let t = std::time::Instant::now();
    let err = run(&Job::new("echo started; sleep 600").timeout(Duration::from_secs(timeout)))
        .expect_err("must time out");
    assert!(t.elapsed() < Duration::from_secs(timeout + 30));
    match err {
        TestHostError::Timeout { output_tail, .. } => {
            assert!(output_tail.contains("started"), "{output_tail}")
        }
        other => panic!("expected a timeout, got {other}"),
    }
}

/// With `host_root`, the host's programs run there without being listed as
/// files: L2 shares this machine's root over 9p under a tmpfs overlay.
#[test]
fn host_root_runs_host_programs() {
    let kind = require_kvm_host!();
    // A host file outside /tmp and /run, which L2 covers with tmpfs even in the host view
    // (the checkout itself may live under /tmp).
    let manifest = "/etc/os-release";
    let out = run(&Job::new(format!(
        "set -e\n\
         cmp {manifest} \"$HUSK_FILES/data\"\n\
         ldd /bin/sh >/dev/null\n\
         test -c /dev/kvm\n\
         echo ok\n\
         if [ \"$HUSK_TESTHOST\" = emulated ]; then\n\
           grep -q '^overlay / overlay' /proc/mounts\n\
           echo written >/etc/husk-testhost-probe && cat /etc/husk-testhost-probe\n\
         fi\n"
    ))
    .file(manifest, "data")
    .host_root(true))
    .expect("run");
    assert_eq!(
        out.exit_code, 0,
        "output:\n{}\nconsole:\n{}",
        out.stdout, out.console
    );
    if kind.is_emulated() {
        assert_eq!(out.stdout, "ok\nwritten\n");
        // The write went to L2's overlay, not to this machine.
        assert!(!std::path::Path::new("/etc/husk-testhost-probe").exists());
    } else {
        assert_eq!(out.stdout, "ok\n");
    }
}
