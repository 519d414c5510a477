//! Kubernetes' path through husk: the CRI harness of `cri_runc.rs`, with runtime
//! handler `husk`. A private containerd with CRI and the CNI bridge on the test host
//! runs every Pod in a husk VM (`io.containerd.husk.v2`), driven by `husk-cri-check`
//! exactly as kubelet drives CRI; the peer Pod of `pod` is a runc Pod on the same
//! bridge. All scenarios share one test-host run. See `docs/containerd-tests.md`.

mod common;

use std::time::Duration;

use common::cri;
use husk_tests::cri::job::{self, HuskGuest};
use husk_tests::testhost::{Job, JobOutput};

/// Every scenario but `bench` is a test; `bench` runs with 3 pods to prove it works.
/// `workload` runs only when `HUSK_CRI_SCENARIOS` names it: its test is ignored (see
/// below), and its Pod-to-Pod traffic is the heaviest load the emulated host gets.
fn scenarios() -> Vec<&'static str> {
    let named = std::env::var("HUSK_CRI_SCENARIOS").unwrap_or_default();
    let workload = named.split([' ', ',']).any(|w| w == "workload");
    cri::SCENARIOS
        .iter()
        .copied()
        .filter(|s| workload || *s != "workload")
        .collect()
}

/// The guests: 1 vCPU (two vCPUs stall under nested emulation, see docs/testing.md).
fn guest() -> HuskGuest {
    HuskGuest {
        vcpus: 1,
        memory_mib: 256,
        log_level: "debug".into(),
    }
}

/// Pods in the `bench` scenario here (a check that it works, not a measurement).
const BENCH_PODS: usize = 3;

/// The husk runtime's files: the shim, the VMM and the guest.
fn husk_files(job: Job) -> Job {
    let a = common::Artifacts::locate();
    job::husk_files(
        job,
        &common::bin_dir().join("containerd-shim-husk-v2"),
        &a.vmm,
        &a.vmlinux,
        &a.initramfs,
    )
}

fn run(test: &str) -> Option<&'static JobOutput> {
    static RUN: common::Shared<JobOutput> = common::Shared::new();
    cri::run_once(&RUN, test, &scenarios(), || cri::CriRun {
        handler: "husk",
        setup: job::husk_setup(&guest()),
        args: format!("--pods {BENCH_PODS} --peer-handler runc"),
        files: husk_files,
        timeout: Duration::from_secs(1500),
    })
}

#[test]
fn containerd_with_cri_and_cni_imports_the_images() {
    if let Some(out) = run("containerd_with_cri_and_cni_imports_the_images") {
        cri::check_images(out);
    }
}

#[test]
fn pod_network_hostname_dns_and_logs() {
    if let Some(out) = run("pod_network_hostname_dns_and_logs") {
        cri::check_pod(out, "husk");
    }
}

#[test]
fn a_container_restarts_in_a_live_sandbox() {
    if let Some(out) = run("a_container_restarts_in_a_live_sandbox") {
        cri::check_restart(out, "husk");
    }
}

#[test]
fn exec_sync_exec_and_attach() {
    if let Some(out) = run("exec_sync_exec_and_attach") {
        cri::check_exec(out);
    }
}

/// A tty exec through the streaming server sees its resize and exits. CRI's
/// 64-character container and exec ids once made the guest's console socket
/// path too long for a Unix socket, and the failed Start then hung the exec.
#[test]
fn exec_with_a_tty_sees_its_resize() {
    if let Some(out) = run("exec_with_a_tty_sees_its_resize") {
        cri::check_exec_tty(out);
    }
}

/// Besides the host volumes: an emptyDir is a guest tmpfs shared by the Pod's
/// containers (its host directory stays empty), sized by its sizeLimit, with
/// subPaths inside it; a hostNetwork Pod is refused with an error naming hostNetwork.
#[test]
fn volumes_readonly_shared_configmap_and_shm() {
    if let Some(out) = run("volumes_readonly_shared_configmap_and_shm") {
        cri::check_volumes(out, "husk");
    }
}

#[test]
fn container_stats_show_cpu_and_memory() {
    if let Some(out) = run("container_stats_show_cpu_and_memory") {
        cri::check_stats(out);
    }
}

/// A husk Pod's host processes are its shim and its husk-vmm; after removal no
/// tap is left anywhere, and nothing of the Pods under /run/husk.
#[test]
fn removed_pods_leave_nothing_behind() {
    if let Some(out) = run("removed_pods_leave_nothing_behind") {
        cri::check_cleanup(out, 4, "husk");
    }
}

#[test]
fn bench_reports_start_latency_and_pss() {
    if let Some(out) = run("bench_reports_start_latency_and_pss") {
        cri::check_bench(out, "husk", BENCH_PODS);
    }
}

/// The Pod runs on the guest's kernel and sees nothing of the host; a privileged
/// container finds no sysrq and no module loader in its kernel, remounts only its own
/// root, and leaves no trace in the host's kernel log.
#[test]
fn a_pod_runs_on_its_own_kernel_and_privilege_stays_in_its_vm() {
    if let Some(out) = run("a_pod_runs_on_its_own_kernel_and_privilege_stays_in_its_vm") {
        let release = common::Artifacts::locate().kernel_release;
        cri::check_isolation_own_kernel(out, &release);
    }
}

/// husk-probe's CPU, system call, I/O and TCP measurements run in a husk Pod (the
/// numbers are `husk-cri-bench`'s; here they only have to exist).
///
/// Known failure, not understood yet (issue 7 stays open for it): in one CI rehearsal of
/// three the Pod → Pod round-trip connection was reset by the peer right after the Pod →
/// Pod stream (6 MiB/s) completed. Run it with `HUSK_CRI_SCENARIOS=workload cargo test
/// -p husk-tests --test cri_husk -- --include-ignored workload`.
#[test]
#[ignore = "husk: a Pod-to-Pod TCP connection was once reset under load (see above)"]
fn workload_probes_measure_cpu_io_and_network() {
    if let Some(out) = run("workload_probes_measure_cpu_io_and_network") {
        cri::check_workload(out);
    }
}
