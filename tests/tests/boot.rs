//! Boots the guest under `husk-vmm` on a KVM host and checks what the agent reports and how
//! the VMM ends. All cases share one test-host run (one L2 boot when emulated).

mod common;

use std::time::Duration;

use common::{line_value, ready_line, run_once, section, triple_fault_elf, SharedRun};
use husk_tests::testhost::Job;

/// Boots in the shared run: (section name, vCPUs, MiB).
const BOOTS: &[(&str, u8, u32)] = &[("smp1", 1, 128), ("smp2", 2, 256)];

const SCRIPT: &str = r#"
V="$HUSK_FILES/husk-vmm"; K="$HUSK_FILES/vmlinux"; I="$HUSK_FILES/initramfs.cpio"
echo "HOST-RELEASE $(uname -r)"
boot() { name=$1; shift; echo "BEGIN $name"; "$V" "$@" 2>&1; echo "END $name exit=$?"; }
boot smp1 --kernel "$K" --initramfs "$I" --vcpus 1 --memory 128 --init-arg=--poweroff
boot smp2 --kernel "$K" --initramfs "$I" --vcpus 2 --memory 256 --init-arg=--poweroff
boot panic --kernel "$K" --initramfs "$I" --cmdline "rdinit=/nonexistent"
boot triple --kernel "$HUSK_FILES/triple-fault.elf"
"#;

/// Runs the shared job once; `None` (after a loud SKIPPED line) without a KVM host.
fn shared(test: &str) -> Option<&'static SharedRun> {
    static RUN: common::Shared<SharedRun> = common::Shared::new();
    let dir = std::env::temp_dir().join(format!("husk-boot-test-{}", std::process::id()));
    let run = run_once(&RUN, test, |a| {
        std::fs::create_dir_all(&dir).expect("temp dir");
        let elf = dir.join("triple-fault.elf");
        std::fs::write(&elf, triple_fault_elf()).expect("write test ELF");
        Job::new(SCRIPT)
            .file(&a.vmm, "husk-vmm")
            .file(&a.vmlinux, "vmlinux")
            .file(&a.initramfs, "initramfs.cpio")
            .file(&elf, "triple-fault.elf")
            .timeout(Duration::from_secs(600))
            // The "triple" section's guest faults on purpose.
            .guest_faults_expected()
    });
    let _ = std::fs::remove_dir_all(&dir);
    run
}

#[test]
fn guest_reports_the_built_kernel_and_the_configured_vcpus_and_memory() {
    let Some((artifacts, output)) =
        shared("guest_reports_the_built_kernel_and_the_configured_vcpus_and_memory")
    else {
        return;
    };
    let host_release = line_value(&output.stdout, "HOST-RELEASE ");
    for &(name, vcpus, mib) in BOOTS {
        let (text, code) = section(&output.stdout, name);
        let ready = ready_line(text);
        assert_eq!(ready.kernel_release, artifacts.kernel_release, "{name}");
        assert_ne!(
            ready.kernel_release, host_release,
            "{name}: guest runs the host kernel?"
        );
        assert_eq!(ready.vcpus, Some(u32::from(vcpus)), "{name}");
        let configured_kib = u64::from(mib) * 1024;
        let ram_kib = ready.ram_kib.expect("ram_kib reported");
        // The e820 map leaves out only the legacy hole between 639 KiB and 1 MiB.
        assert!(
            ram_kib <= configured_kib && configured_kib - ram_kib < 1024,
            "{name}: guest sees {ram_kib} KiB of RAM, configured {configured_kib} KiB"
        );
        assert!(ready.mem_total_kib < ram_kib, "{name}: MemTotal above RAM?");
        assert!(!ready.agent_version.is_empty());
        assert_eq!(
            code, 0,
            "{name}: husk-vmm must exit 0 on power-off:\n{text}"
        );
        assert!(
            text.contains("husk-vmm: guest powered off"),
            "{name}:\n{text}"
        );
    }
}

#[test]
fn a_guest_kernel_panic_ends_the_vmm_with_the_reset_status() {
    let Some((_, output)) = shared("a_guest_kernel_panic_ends_the_vmm_with_the_reset_status")
    else {
        return;
    };
    let (text, code) = section(&output.stdout, "panic");
    assert!(
        !text.contains("HUSK-READY"),
        "the agent must not have run:\n{text}"
    );
    assert!(
        text.contains("Kernel panic"),
        "the panic is on the console:\n{text}"
    );
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("husk-vmm: guest reset the machine"), "{text}");
}

#[test]
fn a_triple_fault_is_reported_not_hung_on() {
    let Some((_, output)) = shared("a_triple_fault_is_reported_not_hung_on") else {
        return;
    };
    let (text, code) = section(&output.stdout, "triple");
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("husk-vmm: vCPU 0 triple-faulted"), "{text}");
}
