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
    cpu_limits_show_in_cpu_max_and_cpu_weight_and_update_changes_them,
    "cpu",
    "cpu.max=50000/100000",
    "weight=174",
    "updated=20000/100000",
    "weight=59",
    "throttled-periods="
);
scenario!(
    io_counters_read_zero_without_a_block_device_and_io_limits_are_refused_clearly,
    "io",
    "io-bytes=0",
    "block-devices=0",
    "limits-refused"
);
scenario!(
    exec_runs_in_the_containers_cgroup_as_the_requested_user_with_its_env,
    "exec-identity",
    "uid=1000",
    "groups=2000,3000",
    "FOO=bar",
    "cgroup=/husk/exec-id",
    "namespaces=init's"
);
scenario!(
    close_stdin_ends_a_container_process_after_its_input_was_echoed,
    "close-stdin",
    "echoed",
    "exit=0"
);
scenario!(
    ipc_is_private_unless_shared_and_the_network_is_the_vms_unless_asked,
    "namespaces",
    "ipc-own",
    "ipc-vm-when-absent",
    "ipc-joined-by-path",
    "net-shared-with-vm",
    "net-own=lo"
);
scenario!(
    readonly_paths_and_bind_mounts_from_the_share_hold,
    "ro-paths",
    "readonly-dir",
    "readonly-file",
    "neighbours-writable",
    "bind-rw",
    "bind-ro",
    "bind-file-ro"
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
