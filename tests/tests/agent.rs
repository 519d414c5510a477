//! The host–guest channel end to end: virtio-vsock in husk-vmm, the agent's gRPC API in the
//! guest, the host client and the `husk run-vm` CLI. All cases share one test-host run.

mod common;

use std::time::Duration;

use common::{line_value, run_once, section, SharedRun};
use husk_tests::testhost::Job;

const SCRIPT: &str = r#"
F="$HUSK_FILES"
export HUSK_KERNEL="$F/vmlinux" HUSK_INITRAMFS="$F/initramfs.cpio"
H="$F/husk"
run() { name=$1; shift; echo "BEGIN $name"; "$@" 2>&1; echo "END $name exit=$?"; }

run details "$H" run-vm --vmm "$F/husk-vmm" --details -- uname -r
run exit7 "$H" run-vm --vmm "$F/husk-vmm" -- sh -c 'echo out; echo err >&2; exit 7'

echo "BEGIN sigterm"
"$H" run-vm --vmm "$F/husk-vmm" -- sh -c 'echo started; exec sleep 120' > /tmp/sig.out 2>&1 &
P=$!
i=0; until grep -q started /tmp/sig.out || [ $i -ge 600 ]; do sleep 0.1; i=$((i+1)); done
kill -TERM $P; wait $P; rc=$?
cat /tmp/sig.out
echo "END sigterm exit=$rc"

echo "BEGIN stream"
head -c 67108864 /dev/urandom > /tmp/in
echo "SHA-IN $(sha256sum < /tmp/in | cut -d' ' -f1)"
stream() {
    "$H" run-vm --vmm "$F/husk-vmm" --memory 512 -- sh -c 'tee /tmp/got | sha256sum | cut -d" " -f1 | sed "s/^/SHA-GUEST /" >&2; cat /tmp/got' < /tmp/in > /tmp/out 2>/tmp/stream.err
}
stream; rc=$?
cat /tmp/stream.err
echo "SHA-OUT $(sha256sum < /tmp/out | cut -d' ' -f1)"
echo "END stream exit=$rc"

echo "BEGIN agent"
mkdir -p /run/husk/check
"$F/husk-vmm" --kernel "$F/vmlinux" --initramfs "$F/initramfs.cpio" --vcpus 2 --memory 256 \
    --vsock-uds /run/husk/check/vsock.sock --console file:/run/husk/check/console.log &
V=$!
"$F/husk-agent-check" check --run-dir /run/husk/check 2>&1; rc=$?
kill $V; wait $V
[ $rc -eq 0 ] || tail -20 /run/husk/check/console.log
echo "END agent exit=$rc"
"#;

/// Runs the shared job once; `None` (after a loud SKIPPED line) without a KVM host.
fn shared(test: &str) -> Option<&'static SharedRun> {
    static RUN: common::Shared<SharedRun> = common::Shared::new();
    run_once(&RUN, test, |a| {
        let bin = common::bin_dir();
        Job::new(SCRIPT)
            .file(&a.vmm, "husk-vmm")
            .file(bin.join("husk"), "husk")
            .file(bin.join("husk-agent-check"), "husk-agent-check")
            .file(&a.vmlinux, "vmlinux")
            .file(&a.initramfs, "initramfs.cpio")
            .timeout(Duration::from_secs(1200))
    })
}

#[test]
fn guest_details_report_the_built_kernel() {
    let Some((a, out)) = shared("guest_details_report_the_built_kernel") else {
        return;
    };
    let (text, code) = section(&out.stdout, "details");
    assert_eq!(code, 0, "{text}");
    let details: serde_json::Value =
        serde_json::from_str(line_value(text, "husk: guest ")).expect("details JSON");
    assert_eq!(
        details["kernel_release"],
        a.kernel_release.as_str(),
        "{text}"
    );
    assert_eq!(details["vcpus"], 1, "{text}");
    // `uname -r` in the guest prints the same release, not the test host's.
    assert!(text.lines().any(|l| l.trim() == a.kernel_release), "{text}");
}

#[test]
fn exit_code_and_output_come_back() {
    let Some((_, out)) = shared("exit_code_and_output_come_back") else {
        return;
    };
    let (text, code) = section(&out.stdout, "exit7");
    assert_eq!(code, 7, "{text}");
    assert!(text.lines().any(|l| l == "out"), "{text}");
    assert!(text.lines().any(|l| l == "err"), "{text}");
}

#[test]
fn a_signal_reaches_the_guest_process_and_is_reported() {
    let Some((_, out)) = shared("a_signal_reaches_the_guest_process_and_is_reported") else {
        return;
    };
    let (text, code) = section(&out.stdout, "sigterm");
    assert_eq!(code, 128 + 15, "{text}");
    assert!(
        text.contains("husk: guest process killed by signal 15"),
        "{text}"
    );
}

#[test]
fn sixty_four_mib_round_trip_through_cat() {
    let Some((_, out)) = shared("sixty_four_mib_round_trip_through_cat") else {
        return;
    };
    let (text, code) = section(&out.stdout, "stream");
    assert_eq!(code, 0, "{text}");
    let sent = line_value(text, "SHA-IN ");
    assert_eq!(sent.len(), 64, "{text}");
    assert_eq!(line_value(text, "SHA-GUEST "), sent, "host → guest: {text}");
    assert_eq!(line_value(text, "SHA-OUT "), sent, "guest → host: {text}");
}

#[test]
fn agent_serves_concurrent_and_abandoned_clients() {
    let Some((_, out)) = shared("agent_serves_concurrent_and_abandoned_clients") else {
        return;
    };
    let (text, code) = section(&out.stdout, "agent");
    assert_eq!(code, 0, "{text}");
    for check in ["details", "exit", "concurrent", "disconnect"] {
        assert!(
            text.contains(&format!("CHECK {check} ok")),
            "{check} missing:\n{text}"
        );
    }
    assert!(text.contains("CHECK concurrent ok 32 calls"), "{text}");
}
