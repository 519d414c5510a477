//! Containers in the guest end to end: the agent's container engine (libcontainer in a helper
//! process), rootfs over virtio-fs, cgroups, terminals and events, driven through the agent
//! API by `husk-ctr-check`. All cases share one test-host run and one VM.

mod common;

use std::time::Duration;

use common::{run_once, section, SharedRun};
use husk_tests::testhost::Job;

const SCRIPT: &str = r#"
F="$HUSK_FILES"
mkdir -p /srv/share /run/husk/ctr
mount -t tmpfs -o size=512m tmpfs /srv/share
chmod +x "$F/busybox"

echo "BEGIN containers"
"$F/husk-vmm" --kernel "$F/vmlinux" --initramfs "$F/initramfs.cpio" --vcpus 2 --memory 512 \
    --vsock-uds /run/husk/ctr/vsock.sock --fs-share /srv/share --fs-tag husk \
    --console file:/run/husk/ctr/console.log &
V=$!
"$F/husk-ctr-check" check --run-dir /run/husk/ctr --share /srv/share --busybox "$F/busybox" 2>&1
rc=$?
kill $V; wait $V
[ $rc -eq 0 ] || tail -40 /run/husk/ctr/console.log
echo "END containers exit=$rc"
"#;

/// Runs the shared job once; `None` (after a loud SKIPPED line) without a KVM host.
fn shared(test: &str) -> Option<&'static SharedRun> {
    static RUN: common::Shared<SharedRun> = common::Shared::new();
    run_once(&RUN, test, |a| {
        let bin = common::bin_dir();
        Job::new(SCRIPT)
            .file(&a.vmm, "husk-vmm")
            .file(bin.join("husk-ctr-check"), "husk-ctr-check")
            .file(common::busybox(), "busybox")
            .file(&a.vmlinux, "vmlinux")
            .file(&a.initramfs, "initramfs.cpio")
            .timeout(Duration::from_secs(1200))
    })
}

/// The scenario's `CHECK` line, or a panic showing the whole run.
fn check_line<'a>(out: &'a str, name: &str) -> &'a str {
    let (text, code) = section(out, "containers");
    let prefix = format!("CHECK {name} ok");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("scenario {name} did not pass (exit {code}):\n{text}"))
}

macro_rules! scenario {
    ($test:ident, $name:literal, $($want:literal),*) => {
        #[test]
        fn $test() {
            let Some((_, out)) = shared(stringify!($test)) else {
                return;
            };
            let line = check_line(&out.stdout, $name);
            $(assert!(line.contains($want), "{line}");)*
        }
    };
}

scenario!(
    a_container_sees_its_own_rootfs_pid1_hostname_and_cgroup,
    "isolation",
    "pid=1",
    "cgroup=/husk/iso"
);
scenario!(stdin_stdout_stderr_and_exit_codes, "stdio", "exit=3");
scenario!(
    exec_into_a_running_container_and_signals,
    "exec",
    "exec-exit=7",
    "sigterm=143",
    "sigkill=137",
    "event"
);
scenario!(
    a_terminal_reports_a_pty_and_its_resized_size,
    "tty",
    "/dev/pts/0",
    "size=40x100",
    "exec-tty=/dev/pts/1"
);
scenario!(
    an_oom_kill_is_an_event_and_exit_137,
    "oom",
    "exit=137",
    "event"
);
scenario!(
    a_pids_limit_stops_a_fork_bomb_and_the_agent_survives,
    "pids",
    "max=10",
    "agent-alive",
    "kill-all"
);
scenario!(
    readonly_rootfs_masked_paths_capabilities_and_seccomp_hold,
    "security",
    "readonly",
    "masked",
    "cap_net_raw",
    "seccomp"
);
scenario!(
    user_groups_env_cwd_rlimits_sysctls_and_no_new_privs_apply,
    "process",
    "user=65534",
    "groups",
    "sysctl",
    "no_new_privs"
);
scenario!(
    files_written_in_a_container_reach_the_hosts_share,
    "files",
    "bytes"
);
scenario!(
    two_containers_share_a_volume_and_nothing_else,
    "volume",
    "shared=/vol"
);
scenario!(
    pause_freezes_and_resume_continues,
    "pause",
    "frozen-cpu-delta=0"
);
scenario!(
    update_changes_limits_and_bad_requests_get_clear_codes,
    "update",
    "memory=64MiB",
    "pids=20"
);
scenario!(
    removing_containers_leaves_nothing_behind,
    "cleanup",
    "cleanup ok"
);

#[test]
fn the_whole_run_succeeded() {
    let Some((_, out)) = shared("the_whole_run_succeeded") else {
        return;
    };
    let (text, code) = section(&out.stdout, "containers");
    assert_eq!(code, 0, "{text}");
}
