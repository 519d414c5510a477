//! The CRI tests' shared run: a private containerd with CRI and the CNI bridge
//! on the test host, the busybox and pause images imported into CRI's
//! namespace, and `husk-cri-check` running each scenario for one runtime
//! handler. Each scenario's output is a section `BEGIN <scenario>` ...
//! `END <scenario> exit=<code>` of `key value` lines; [`Scenario`] reads one.
//! The job itself is `husk_tests::cri::job`, which `husk-cri-bench` shares.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use husk_tests::containerd::Containerd;
use husk_tests::cri::job::{self as shared, Check};
use husk_tests::testhost::{self, HostKind, Job, JobOutput};

use super::{section, step};

/// The private containerd's directory in L2 (a tmpfs).
pub const L2_BASE: &str = shared::L2_BASE;

/// The scenarios both CRI test files run, in this order: `cleanup` last, so that it
/// also catches what the others leaked.
pub const SCENARIOS: &[&str] = &[
    "pod",
    "restart",
    "exec",
    "volumes",
    "stats",
    "bench",
    "isolation",
    "workload",
    "cleanup",
];

/// containerd with CRI (the pause image, runc and `runtimes`) and the CNI bridge.
pub fn containerd(base: &str, runtimes: &[(&str, &str)]) -> Containerd {
    shared::containerd(base, runtimes).expect("containerd settings with CRI and CNI")
}

/// Panics, naming the package to install, when a program or CNI plugin the
/// CRI tests run is missing (or, for containerd, not in `ctrd`'s binary directory).
pub fn require_tools(ctrd: &Containerd) {
    let missing = shared::missing_tools(ctrd);
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

/// Writes the busybox (with `husk-probe`) and the pause images into `dir`.
pub fn build_images(dir: &Path) -> (PathBuf, PathBuf) {
    let probe = super::probe();
    shared::write_images(dir, Some(&probe)).unwrap_or_else(|e| panic!("writing the images: {e:?}"))
}

/// The job script: `setup` (shell lines run first, e.g. to install a shim),
/// containerd start, both images imported into CRI's namespace, then
/// `husk-cri-check --handler <handler> <args> <scenario>` for each scenario
/// (in a section named after it), then containerd stopped and purged.
pub fn script(
    ctrd: &Containerd,
    setup: &str,
    handler: &str,
    args: &str,
    scenarios: &[&str],
) -> String {
    let checks: Vec<Check> = scenarios
        .iter()
        .map(|s| Check::new(handler, args, s))
        .collect();
    shared::script(ctrd, setup, &checks)
}

/// The job: the script, `husk-cri-check` and the images as files, host-root
/// mode, the CNI modules (and the tap modules a VM runtime needs).
pub fn job(script: String, busybox: &Path, pause: &Path, timeout: Duration) -> Job {
    // husk-probe beside husk-cri-check: the host's side of `workload`.
    shared::job(
        script,
        &super::bin_dir().join("husk-cri-check"),
        busybox,
        pause,
        timeout,
    )
    .file(super::probe(), "husk-probe")
}

/// The scenarios to run: all of `all`, or those `HUSK_CRI_SCENARIOS` names
/// (space or comma separated), for iterating by hand.
pub fn scenarios<'a>(all: &[&'a str]) -> Vec<&'a str> {
    match std::env::var("HUSK_CRI_SCENARIOS") {
        Ok(v) if !v.trim().is_empty() => all
            .iter()
            .copied()
            .filter(|s| v.split([' ', ',']).any(|w| w == *s))
            .collect(),
        _ => all.to_vec(),
    }
}

/// What one CRI test file runs in its test-host job.
pub struct CriRun {
    /// The runtime handler under test.
    pub handler: &'static str,
    /// Shell lines run before containerd starts (installing the runtime).
    pub setup: String,
    /// `husk-cri-check`'s extra arguments.
    pub args: String,
    /// Adds the runtime's own files to the job.
    pub files: fn(Job) -> Job,
    pub timeout: Duration,
}

/// The test-host run that the `#[test]` functions of one CRI test file share
/// (kept in `cell`): every scenario in `all` (or `HUSK_CRI_SCENARIOS`) for
/// the handler `plan` names. `None` after the loud skip line where the tests
/// cannot run: natively they would change the real machine's network.
pub fn run_once(
    cell: &'static super::Shared<JobOutput>,
    test: &str,
    all: &[&str],
    plan: impl FnOnce() -> CriRun,
) -> Option<&'static JobOutput> {
    let host = testhost::kvm_host_or_skip(test)?;
    if matches!(host, HostKind::Native { .. }) {
        let why = "the CRI tests run on the emulated test host only (they create a bridge, \
                   veths and network namespaces)";
        assert!(
            std::env::var_os("HUSK_REQUIRE_KVM").is_none(),
            "{test}: {why}"
        );
        eprintln!("SKIPPED: {test}: {why}");
        return None;
    }
    Some(super::once(cell, || {
        let run = plan();
        let ctrd = containerd(L2_BASE, &[("husk", "io.containerd.husk.v2")]);
        require_tools(&ctrd);
        let dir =
            std::env::temp_dir().join(format!("husk-cri-{}-{}", run.handler, std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        let (busybox, pause) = build_images(&dir);
        let script = script(&ctrd, &run.setup, run.handler, &run.args, &scenarios(all));
        let job = (run.files)(job(script, &busybox, &pause, run.timeout));
        let out = testhost::run(&job);
        let _ = std::fs::remove_dir_all(&dir);
        let out = out.expect("test host run");
        eprintln!(
            "cri ({}): {}; L2 boot {:?}, total {:?}",
            run.handler,
            out.kind.describe(),
            out.host_boot,
            out.total
        );
        eprintln!("{}", out.stdout);
        assert!(out.success(), "job failed:\n{}", out.stdout);
        out
    }))
}

/// One scenario's `key value` lines.
pub struct Scenario<'a> {
    pub name: String,
    pub body: &'a str,
    pub values: BTreeMap<&'a str, Vec<&'a str>>,
}

impl<'a> Scenario<'a> {
    /// The section of `name`, after checking that it ran to `result ok` with
    /// exit 0 (the panic shows the section and the whole run).
    pub fn ok(out: &'a JobOutput, name: &str) -> Self {
        let (body, code) = section(&out.stdout, name);
        let s = Self::parse(name, body);
        assert!(
            code == 0 && s.values.get("result") == Some(&vec!["ok"]),
            "scenario {name} failed (exit {code}):\n{body}\n--- whole run ---\n{}",
            out.stdout
        );
        s
    }

    pub fn parse(name: &str, body: &'a str) -> Self {
        Self {
            name: name.into(),
            body,
            values: shared::values(body),
        }
    }

    /// The value of `key` (its first line); panics with the section if missing.
    pub fn get(&self, key: &str) -> &'a str {
        self.values
            .get(key)
            .and_then(|v| v.first().copied())
            .unwrap_or_else(|| panic!("{}: no {key} in:\n{}", self.name, self.body))
    }

    /// The value of `key` as a number.
    pub fn num(&self, key: &str) -> u64 {
        let v = self.get(key);
        v.parse().unwrap_or_else(|_| {
            panic!(
                "{}: {key} {v:?} is not a number in:\n{}",
                self.name, self.body
            )
        })
    }

    /// The value of `key` as a decimal number.
    pub fn float(&self, key: &str) -> f64 {
        let v = self.get(key);
        v.parse().unwrap_or_else(|_| {
            panic!(
                "{}: {key} {v:?} is not a number in:\n{}",
                self.name, self.body
            )
        })
    }

    /// Asserts `key`'s value is `want`, showing the section otherwise.
    pub fn expect(&self, key: &str, want: &str) {
        let got = self.get(key);
        assert_eq!(got, want, "{}: {key}:\n{}", self.name, self.body);
    }

    /// Asserts `cond`, showing the section otherwise.
    pub fn check(&self, cond: bool, what: &str) {
        assert!(cond, "{}: {what}:\n{}", self.name, self.body);
    }
}

// ---- The scenarios' checks, shared by cri_runc.rs and cri_husk.rs ----

/// containerd with CRI and CNI started, the images imported, a clean stop.
pub fn check_images(out: &JobOutput) {
    step(out, "start", 0);
    step(out, "import_busybox", 0);
    step(out, "import_pause", 0);
    let stop = step(out, "stop", 0);
    assert!(!stop.contains("SIGKILL"), "{stop}");
}

/// `pod`: networking, hostname, DNS, logs, ReopenContainerLog.
pub fn check_pod(out: &JobOutput, handler: &str) {
    let s = Scenario::ok(out, "pod");
    let ip = s.get("pod_ip");
    s.check(ip.starts_with("10.88."), "the pod IP is on the CNI bridge");
    s.expect("pod_runtime_handler", handler);
    s.expect("pod_state", "SANDBOX_READY");
    // Inside the pod, over 127.0.0.1; the server names its pod's hostname.
    s.expect("client_exit_code", "0");
    s.expect("client_body", "hello from web-host");
    s.expect("hostname", "web-host");
    s.expect("resolv_nameserver", "nameserver 10.96.0.10");
    s.expect("resolv_search", "search husk-test.svc.cluster.local");
    s.expect("pod_ip_inside", "yes");
    s.expect("loopback_up", "yes");
    // This machine and a second pod, at the pod IP.
    s.expect("host_body", "hello from web-host");
    s.expect("peer_handler", "runc");
    s.check(s.get("peer_ip") != ip, "the peer pod has its own IP");
    s.expect("peer_exit_code", "0");
    s.expect("peer_body", "hello from web-host");
    // CRI logs: in the pod's log directory, CRI's format, both streams.
    s.expect("log_path_in_pod_dir", "true");
    s.expect("log_well_formed", "yes");
    s.expect("log_has_stdout", "true");
    s.expect("log_has_stderr", "true");
    s.check(
        s.get("log_first").starts_with("log-line ") || s.get("log_first").starts_with("err-line "),
        "the first log line is the logger's",
    );
    // ReopenContainerLog: new lines land in a new file, the renamed one stops growing.
    s.check(
        s.num("reopen_new_file_lines") >= 4,
        "lines in the reopened log",
    );
    s.expect("reopen_new_well_formed", "yes");
    s.expect("reopen_continues", "yes");
    s.expect("rotated_grew_after_reopen", "false");
    s.expect("pod_removed", "yes");
}

/// `restart`: a container restarts in the same, live sandbox (for husk: its
/// `husk-vmm` is among the sandbox's processes, and so survives too).
pub fn check_restart(out: &JobOutput, handler: &str) {
    let s = Scenario::ok(out, "restart");
    s.expect("attempt0_exit_code", "1");
    s.expect("attempt0_reason", "Error");
    s.expect("attempt0_log", "attempt-0");
    s.expect("attempt1_state", "CONTAINER_RUNNING");
    s.expect("attempt1_attempt", "1");
    s.expect("attempt1_exec", "attempt-1-alive");
    s.expect("containers_in_pod", "2");
    s.expect("attempt1_stop_exit_code", "0");
    s.expect("attempt2_state", "CONTAINER_RUNNING");
    // The sandbox is the same one: same pause process, same shim, still ready.
    s.expect("before_sandbox_state", "SANDBOX_READY");
    s.expect("after_sandbox_state", "SANDBOX_READY");
    s.check(s.num("before_sandbox_pid") > 0, "the sandbox has a pid");
    s.expect("after_sandbox_pid", s.get("before_sandbox_pid"));
    s.check(s.num("before_shim_pid") > 0, "the pod has a shim");
    s.expect("after_shim_pid", s.get("before_shim_pid"));
    s.expect(
        "after_sandbox_created_at",
        s.get("before_sandbox_created_at"),
    );
    // Every process of the sandbox before is still there after.
    let after = s.get("after_pod_processes");
    let before = s.get("before_pod_processes");
    if handler == "husk" {
        s.check(
            before.split(',').any(|p| p.ends_with(":husk-vmm")),
            "the Pod's husk-vmm is among its processes before the restarts",
        );
    }
    for p in before.split(',') {
        s.check(
            after.split(',').any(|a| a == p),
            &format!("{p} is gone after the restarts"),
        );
    }
}

/// `exec`: ExecSync, its timeout, Exec with stdin, Attach (not the tty part).
pub fn check_exec(out: &JobOutput) {
    let s = Scenario::ok(out, "exec");
    s.expect("execsync_stdout", "out");
    s.expect("execsync_stderr", "err");
    s.expect("execsync_exit_code", "3");
    // A 2 s timeout on `sleep 30` comes back well before 30 s.
    let ms = s.num("exec_timeout_ms");
    s.check(
        (1500..15_000).contains(&ms),
        "ExecSync's timeout took effect",
    );
    s.check(
        s.get("exec_timeout_result") == "error" && s.get("exec_timeout_error").contains("timeout"),
        "an expired ExecSync is an error naming the timeout",
    );
    // containerd kills, waits for and deletes an exec whose Start failed: a
    // shim that never reports its exit holds ExecSync for a minute.
    s.check(
        s.num("exec_missing_ms") < 30_000,
        "an exec that cannot start fails at once",
    );
    s.check(
        !matches!(s.get("exec_missing_result"), "" | "exit 0"),
        "an exec of a missing binary is not a success",
    );
    s.expect("exec_after_timeout", "still-here");
    s.check(
        s.get("exec_url").starts_with("http://127.0.0.1:"),
        "the streaming server is on loopback",
    );
    s.expect("exec_stdout", "got:ping");
    s.expect("exec_stderr", "to-err");
    s.expect("exec_exit_code", "5");
    s.expect("attach_stdout", "attached:hi");
    s.expect("attach_container_after", "CONTAINER_RUNNING");
}

/// `exec`, the tty part: a tty exec sees its resize and exits.
pub fn check_exec_tty(out: &JobOutput) {
    let s = Scenario::ok(out, "exec");
    s.expect("tty_size_seen", "45 123");
    s.expect("tty_exit_code", "0");
    s.expect("tty_stderr_bytes", "0");
}

/// `volumes`: read-only hostPath, a shared directory, a configMap swap, /dev/shm,
/// emptyDirs, subPaths, single files, /etc/hosts, and the Pod namespaces
/// (`shareProcessNamespace`, `hostNetwork`).
pub fn check_volumes(out: &JobOutput, handler: &str) {
    let s = Scenario::ok(out, "volumes");
    s.expect("ro_read", "read-only-data");
    s.check(
        s.num("ro_write_exit_code") != 0,
        "a write to a read-only mount fails",
    );
    s.check(
        s.get("ro_write_error").contains("Read-only file system"),
        "the failed write is EROFS",
    );
    s.expect("ro_host_untouched", "true");
    s.expect("shared_write_exit_code", "0");
    s.expect("shared_read", "shared-data");
    s.expect("shared_back_exit_code", "0");
    s.expect("shared_read_back", "from-reader");
    s.expect("shared_host_sees", "from-reader");
    s.expect("config_before", "v1");
    s.expect("config_after", "v2");
    s.check(
        s.num("config_write_exit_code") != 0,
        "the configMap is read-only",
    );
    s.expect("shm_write", "shm-data");
    s.expect("shm_shared", "shm-data");
    s.expect("shm_fstype", "tmpfs");
    check_empty_dirs(&s, handler);
    check_files_and_namespaces(&s, handler);
}

/// `volumes`, the emptyDirs: `cache` shared by two containers (read-only in
/// one, a subPath of it in the other), `mem` with its sizeLimit.
fn check_empty_dirs(s: &Scenario, handler: &str) {
    s.expect("emptydir_write_exit_code", "0");
    s.expect("emptydir_read", "from-writer");
    s.expect("emptydir_back_exit_code", "0");
    s.expect("emptydir_read_back", "from-reader");
    s.expect("emptydir_ro_read", "from-writer");
    s.check(
        s.num("emptydir_ro_write_exit_code") != 0,
        "a write to a read-only emptyDir mount fails",
    );
    s.check(
        s.get("emptydir_ro_write_error")
            .contains("Read-only file system"),
        "the failed emptyDir write is EROFS",
    );
    // The subPath `logs` shows the writer's file there, and nothing else of the volume.
    s.expect("emptydir_subpath", "w.log\\nlog-line");
    // medium: Memory with sizeLimit 8Mi.
    s.expect("emptydir_mem_size_kib", "8192");
    s.expect("emptydir_mem_write", "m");
    if handler == "husk" {
        // A guest tmpfs: the host directory never sees the containers' files.
        s.expect("emptydir_fstype", "tmpfs");
        s.expect("emptydir_host_sees_writes", "false");
        s.expect("emptydir_host_subpath_entries", "0");
    } else {
        s.expect("emptydir_host_sees_writes", "true");
        s.expect("emptydir_host_subpath_entries", "1");
    }
}

/// `volumes`, the rest: a subPath of a host volume, a secret's file, the
/// termination log, /etc/hosts, and the Pod namespaces.
fn check_files_and_namespaces(s: &Scenario, handler: &str) {
    s.expect("subpath_view", "inner\\ninner-data");
    s.expect("secret_read", "s3cret");
    s.check(
        s.num("secret_write_exit_code") != 0
            && s.get("secret_write_error")
                .contains("Read-only file system"),
        "the secret's file is read-only",
    );
    s.expect("termination_log_write_exit_code", "0");
    s.expect("termination_log_host", "bye-from-writer");
    let hosts = s.get("etc_hosts_line");
    s.check(
        hosts.starts_with("10.88.") && hosts.ends_with(" volumes-host"),
        "kubelet's etc-hosts is the container's /etc/hosts",
    );
    s.expect("pid_isolated_sees_other", "no");
    s.expect("sharepid_sees_other", "yes");
    let hostnet = s.get("hostnet_result");
    if handler == "husk" {
        s.check(
            hostnet.starts_with("error: ") && hostnet.contains("hostNetwork"),
            "a hostNetwork Pod is refused with an error naming hostNetwork",
        );
    } else {
        s.expect("hostnet_result", "ok");
    }
}

/// `stats`: ContainerStats and ListContainerStats.
pub fn check_stats(out: &JobOutput) {
    let s = Scenario::ok(out, "stats");
    s.check(s.num("busy_cpu_ns") > 0, "CPU usage");
    s.check(
        s.num("busy_working_set_bytes") >= 8_000_000,
        "the 8 MB string in the working set",
    );
    s.expect("busy_cpu_grew", "true");
    s.expect("busy_attributes_id", "true");
    s.expect("list_count", "2");
    s.check(s.num("list_busy_cpu_ns") > 0, "ListContainerStats CPU");
    s.check(
        s.num("list_busy_working_set_bytes") > 0,
        "ListContainerStats memory",
    );
    s.check(
        s.num("list_idle_working_set_bytes") > 0,
        "the idle container's memory",
    );
    let names = s.get("list_names");
    s.check(
        names.split(',').any(|n| n == "busy") && names.split(',').any(|n| n == "idle"),
        "both containers listed",
    );
}

/// `cleanup`: nothing left after Stop + Remove; a pod had at least
/// `min_pod_processes` processes on the host. For husk also: a tap per Pod
/// while they ran and none after, and nothing of them left in `/run/husk`.
pub fn check_cleanup(out: &JobOutput, min_pod_processes: u64, handler: &str) {
    let s = Scenario::ok(out, "cleanup");
    s.expect("pods_started", "2");
    s.check(
        s.num("pod_processes_before") >= min_pod_processes,
        "the pods' processes on the host (runc: shim, pause, container; husk: shim, husk-vmm)",
    );
    s.expect("netns_before", "2");
    s.check(s.num("veths_before") >= 2, "a veth per pod");
    for key in [
        "pod_processes_left",
        "pods_left",
        "containers_left",
        "shims_left",
        "runtime_processes_left",
        "mounts_left",
        "netns_left",
        "netns_dir_entries",
        "veths_left",
        "cgroups_left",
        "taps_left",
        "links_new_left",
    ] {
        s.expect(key, "0");
    }
    if handler == "husk" {
        s.check(s.num("taps_before") >= 2, "a tap per Pod while they ran");
        s.expect("run_dir_entries_before", "2");
        s.expect("run_dir_entries_left", "0");
        s.expect("run_dir_mounts_left", "0");
    } else {
        s.expect("taps_before", "0");
    }
}

/// `bench` with `n` pods: the numbers are there (printed, never judged).
pub fn check_bench(out: &JobOutput, handler: &str, n: usize) {
    let s = Scenario::ok(out, "bench");
    s.expect("bench_pods", &n.to_string());
    let starts = s.get("pod_start_ms");
    s.check(starts.split(',').count() == n, "one start time per pod");
    s.check(s.num("pod_start_p50_ms") > 0, "a p50");
    s.check(
        s.num("pod_start_p95_ms") >= s.num("pod_start_p50_ms"),
        "p95 >= p50",
    );
    s.check(s.num("pss_kib_per_pod_mean") > 0, "PSS per pod");
    // Informational only: the emulated host is no place for pass/fail on time.
    eprintln!(
        "{handler} bench ({n} pods, {}): pod start p50 {} ms, p95 {} ms; PSS per idle pod {} KiB \
         (processes per pod {})",
        out.kind.describe(),
        s.get("pod_start_p50_ms"),
        s.get("pod_start_p95_ms"),
        s.get("pss_kib_per_pod_mean"),
        s.get("processes_per_pod"),
    );
}

/// `isolation`, what every runtime shows: the probe ran in both containers, the
/// privileged one got every capability, and the other pod still answers.
fn check_isolation_common<'a>(out: &'a JobOutput) -> Scenario<'a> {
    let s = Scenario::ok(out, "isolation");
    s.expect("plain_exit", "0");
    s.expect("privileged_exit", "0");
    s.check(
        s.get("privileged_cap_eff") != s.get("plain_cap_eff"),
        "the privileged container has more capabilities than the plain one",
    );
    s.expect("other_pod_answers", "alive");
    // A fork bomb and a memory hog in another pod slow this one down, but it keeps
    // answering well within CRI's timeouts (the ratio itself is a benchmark number).
    s.check(
        s.num("noisy_during_ms") < 30_000,
        "a pod keeps answering beside a noisy one",
    );
    s
}

/// `isolation` on a host-kernel runtime (runc): the container runs on the host's
/// kernel, and a privileged container's sysrq write reaches the host's log. The
/// probe sees what runc lets through, so the husk checks mean something.
pub fn check_isolation_shared_kernel(out: &JobOutput) {
    let s = check_isolation_common(out);
    s.expect("plain_kernel_release", s.get("host_kernel_release"));
    s.expect("plain_boot_id", s.get("host_boot_id"));
    s.expect("privileged_sysrq_h", "written");
    s.check(
        s.num("host_sysrq_lines_after") > s.num("host_sysrq_lines_before"),
        "the privileged container's sysrq write reached the host's kernel log",
    );
}

/// `isolation` in a VM runtime (husk): another kernel, nothing of the host in
/// sight, and a privileged container's actions stay in its VM.
pub fn check_isolation_own_kernel(out: &JobOutput, guest_release: &str) {
    let s = check_isolation_common(out);
    for who in ["plain", "privileged"] {
        let key = |k: &str| format!("{who}_{k}");
        s.expect(&key("kernel_release"), guest_release);
        s.check(
            s.get(&key("kernel_release")) != s.get("host_kernel_release"),
            "the container's kernel is not the host's",
        );
        s.check(
            s.get(&key("boot_id")) != s.get("host_boot_id"),
            "the container's kernel booted apart from the host's",
        );
        s.expect(&key("hypervisor"), "yes");
        s.expect(&key("dev_kvm"), "no");
        s.expect(&key("interfaces"), "eth0,lo");
    }
    // The guest runs the Pod and the agent, not the host's processes.
    s.check(
        s.num("plain_processes") < 20,
        "a handful of processes visible, not the host's",
    );
    // The privileged container remounted its root, in its VM. The guest kernel has
    // no magic sysrq and no modules at all (kernel-config/), so there is nothing
    // to write to and nothing to load; what matters is that the host saw nothing.
    s.expect("privileged_sysrq", "ENOENT");
    s.expect("privileged_init_module", "ENOSYS");
    s.expect("privileged_remount_root", "ok");
    s.expect("host_sysrq_lines_after", s.get("host_sysrq_lines_before"));
}

/// `workload`: every measurement ran and gave a positive number.
pub fn check_workload(out: &JobOutput) {
    let s = Scenario::ok(out, "workload");
    for m in [
        "cpu",
        "syscalls",
        "io_rootfs",
        "io_emptydir",
        "host_pod",
        "pod_pod",
    ] {
        s.expect(&format!("{m}_exit"), "0");
    }
    for key in [
        "cpu_cpu_ms",
        "syscalls_getpid_ns",
        "syscalls_open_close_ns",
        "syscalls_fork_exit_us",
        "io_rootfs_seq_write_mib_s",
        "io_rootfs_rand_read_iops",
        "io_emptydir_seq_write_mib_s",
        "io_emptydir_meta_ops_s",
        "host_pod_tcp_mib_s",
        "host_pod_rtt_p50_us",
        "pod_pod_tcp_mib_s",
        "pod_pod_rtt_p50_us",
    ] {
        let v = s.float(key);
        s.check(
            v.is_finite() && v > 0.0,
            &format!("{key} is a positive number"),
        );
    }
    s.expect("host_pod_tcp_mib", "32");
}
