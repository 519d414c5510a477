//! The CRI harness proved with runc: a private containerd with CRI and CNI bridge
//! networking on the test host, driven by `husk-cri-check` exactly as kubelet
//! drives CRI, with runtime handler `runc`. All scenarios share one test-host
//! run; each test asserts on its scenario's `key value` lines. See
//! `docs/containerd-tests.md`, section CRI.

mod common;

use std::time::Duration;

use common::cri;
use husk_tests::testhost::JobOutput;

/// Every scenario but `bench` is a test; `bench` runs with 3 pods to prove it works
/// (`HUSK_CRI_BENCH_PODS` sets another number, to measure).
const SCENARIOS: &[&str] = cri::SCENARIOS;

fn bench_pods() -> usize {
    std::env::var("HUSK_CRI_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(3)
}

fn run(test: &str) -> Option<&'static JobOutput> {
    static RUN: common::Shared<JobOutput> = common::Shared::new();
    cri::run_once(&RUN, test, SCENARIOS, || cri::CriRun {
        handler: "runc",
        setup: String::new(),
        args: format!("--pods {}", bench_pods()),
        files: |job| job,
        timeout: Duration::from_secs(1200),
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
        cri::check_pod(out, "runc");
    }
}

#[test]
fn a_container_restarts_in_a_live_sandbox() {
    if let Some(out) = run("a_container_restarts_in_a_live_sandbox") {
        cri::check_restart(out, "runc");
    }
}

#[test]
fn exec_sync_exec_attach_and_a_resized_tty() {
    if let Some(out) = run("exec_sync_exec_attach_and_a_resized_tty") {
        cri::check_exec(out);
        cri::check_exec_tty(out);
    }
}

#[test]
fn volumes_readonly_shared_configmap_and_shm() {
    if let Some(out) = run("volumes_readonly_shared_configmap_and_shm") {
        cri::check_volumes(out, "runc");
    }
}

#[test]
fn container_stats_show_cpu_and_memory() {
    if let Some(out) = run("container_stats_show_cpu_and_memory") {
        cri::check_stats(out);
    }
}

#[test]
fn removed_pods_leave_nothing_behind() {
    if let Some(out) = run("removed_pods_leave_nothing_behind") {
        cri::check_cleanup(out, 6, "runc");
    }
}

#[test]
fn bench_reports_start_latency_and_pss() {
    if let Some(out) = run("bench_reports_start_latency_and_pss") {
        cri::check_bench(out, "runc", bench_pods());
    }
}

/// The isolation probes against runc: the host's kernel, and a privileged
/// container's sysrq write reaches it (what husk's test must not see).
#[test]
fn isolation_probes_see_the_hosts_kernel() {
    if let Some(out) = run("isolation_probes_see_the_hosts_kernel") {
        cri::check_isolation_shared_kernel(out);
    }
}

/// husk-probe's CPU, system call, I/O and TCP measurements run in a runc Pod (the
/// numbers are `husk-cri-bench`'s; here they only have to exist).
#[test]
fn workload_probes_measure_cpu_io_and_network() {
    if let Some(out) = run("workload_probes_measure_cpu_io_and_network") {
        cri::check_workload(out);
    }
}
