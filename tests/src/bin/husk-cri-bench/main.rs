//! `husk-cri-bench`: husk side by side with runc (and crun and gVisor's runsc, with
//! `--handlers`) through CRI, in the same test-host run: Pod start latency and host
//! memory per idle Pod, then (`--workload-rounds`) what a workload costs, and
//! (`--isolation`) what each runtime lets a container see and do.
//!
//! One job on the KVM host (the emulated test host, or this machine with
//! `--native`) starts a private containerd with CRI, the CNI bridge and both
//! runtime handlers (`runc`, and `husk` for `io.containerd.husk.v2`), imports the
//! busybox and pause images, and runs `husk-cri-check bench` (see
//! [`husk_tests::cri::scenario`]) for each handler in turn: `--rounds` rounds of
//! `--pods` Pods, the order alternating (runc first in odd rounds, husk first in
//! even ones) so that drift in the machine hits both alike, after one warm-up
//! round of `--warmup` Pods each that is not counted. Each Pod is timed from
//! RunPodSandbox to StartContainer's answer for its one idle container; with a
//! round's Pods all idle, each Pod's host PSS is summed over its processes.
//!
//! It prints numbers only: a markdown table (p50 and p95 over all the rounds'
//! Pods, their ratio to runc, mean PSS per idle Pod, processes per Pod), each
//! round's median start per handler with husk's ratio to runc in that round (the
//! paired figure, steadier than the pooled one on a machine whose load drifts),
//! then one JSON line with the raw numbers. A failed round is reported with its error and
//! the exit status is 1.
//!
//! The workload rounds run the `workload` scenario (`husk-probe` in a container:
//! CPU, system calls, I/O on the rootfs and an emptyDir, TCP host → Pod and Pod →
//! Pod), alternating like the start rounds; the table shows medians and each
//! handler's cost against runc. The isolation runs (`isolation` scenario) give a
//! side-by-side table of what each runtime let through. Both need `--probe`, the
//! static `husk-probe` (`scripts/build-guest.sh` writes `build/guest/husk-probe`).
//!
//! ```text
//! husk-cri-bench --shim PATH --vmm PATH --kernel PATH --initramfs PATH
//!                [--check PATH] [--probe PATH] [--handlers runc,crun,runsc,husk]
//!                [--rounds N] [--pods N] [--warmup N] [--bursts 1,4,16]
//!                [--burst-rounds N] [--density-limit-mib MIB] [--workload-rounds N]
//!                [--isolation] [--out DIR] [--vcpus N] [--memory-mib N] [--native] [--quiet]
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

mod plot;
mod probes;
mod start;

use anyhow::{bail, Context, Result};
use husk_tests::cri::job::{self, Check, HuskGuest};
use husk_tests::testhost::{self, HostKind, JobOutput};
use serde_json::json;

use probes::{isolation_section, workload_section};
use start::round_section;

const USAGE: &str = "usage: husk-cri-bench --shim PATH --vmm PATH --kernel PATH --initramfs PATH \
[--check PATH] [--probe PATH] [--handlers runc,crun,runsc,husk] [--rounds N] [--pods N] \
[--warmup N] [--bursts 1,4,16] [--burst-rounds N] [--density-limit-mib MIB] \
[--workload-rounds N] [--isolation] [--out DIR] [--vcpus N] [--memory-mib N] [--native] [--quiet]";

/// The baseline of the ratios, always compared first.
const BASELINE: &str = "runc";

struct Args {
    shim: PathBuf,
    vmm: PathBuf,
    kernel: PathBuf,
    initramfs: PathBuf,
    /// `husk-cri-check`.
    check: PathBuf,
    /// The static `husk-probe`, for the workload and isolation runs.
    probe: Option<PathBuf>,
    /// The handlers compared, runc first.
    handlers: Vec<String>,
    rounds: usize,
    /// Pods per round per handler.
    pods: usize,
    /// Pods per handler in the warm-up round.
    warmup: usize,
    /// Pod counts started at once in the burst rounds (beyond the one-by-one rounds).
    bursts: Vec<usize>,
    /// Rounds per burst size per handler.
    burst_rounds: usize,
    /// The host memory the density estimate divides by PSS per Pod.
    density_limit_mib: f64,
    /// Rounds of the `workload` scenario per handler.
    workload_rounds: usize,
    /// One `isolation` run per handler.
    isolation: bool,
    /// Where to write `cri-bench.json` and the plots (SVG).
    out: Option<PathBuf>,
    guest: HuskGuest,
    /// Run on this machine's own KVM (the job changes its network).
    native: bool,
    /// Do not copy the job's output to stderr as it runs.
    quiet: bool,
}

impl Args {
    /// The defaults, before the command line: runc against husk, 4 rounds of 5 Pods.
    fn defaults() -> Self {
        Self {
            shim: PathBuf::new(),
            vmm: PathBuf::new(),
            kernel: PathBuf::new(),
            initramfs: PathBuf::new(),
            check: PathBuf::new(),
            probe: None,
            handlers: vec![BASELINE.into(), "husk".into()],
            rounds: 4,
            pods: 5,
            warmup: 1,
            bursts: Vec::new(),
            burst_rounds: 1,
            density_limit_mib: 16384.0,
            workload_rounds: 0,
            isolation: false,
            out: None,
            guest: HuskGuest {
                vcpus: 1,
                memory_mib: 256,
                log_level: "warn".into(),
            },
            native: false,
            quiet: false,
        }
    }
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args> {
    let (mut shim, mut vmm, mut kernel, mut initramfs, mut check) = (None, None, None, None, None);
    let mut a = Args::defaults();
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--shim" => shim = Some(PathBuf::from(value()?)),
            "--vmm" => vmm = Some(PathBuf::from(value()?)),
            "--kernel" => kernel = Some(PathBuf::from(value()?)),
            "--initramfs" => initramfs = Some(PathBuf::from(value()?)),
            "--check" => check = Some(PathBuf::from(value()?)),
            "--probe" => a.probe = Some(PathBuf::from(value()?)),
            "--handlers" => a.handlers = handler_list(&value()?)?,
            "--workload-rounds" => {
                a.workload_rounds = value()?.parse().context("--workload-rounds")?
            }
            "--isolation" => a.isolation = true,
            "--out" => a.out = Some(PathBuf::from(value()?)),
            "--bursts" => a.bursts = burst_list(&value()?)?,
            "--burst-rounds" => a.burst_rounds = value()?.parse().context("--burst-rounds")?,
            "--density-limit-mib" => {
                a.density_limit_mib = value()?.parse().context("--density-limit-mib")?
            }
            "--rounds" => a.rounds = value()?.parse().context("--rounds")?,
            "--pods" => a.pods = value()?.parse().context("--pods")?,
            "--warmup" => a.warmup = value()?.parse().context("--warmup")?,
            "--vcpus" => a.guest.vcpus = value()?.parse().context("--vcpus")?,
            "--memory-mib" => a.guest.memory_mib = value()?.parse().context("--memory-mib")?,
            "--native" => a.native = true,
            "--quiet" => a.quiet = true,
            "-h" | "--help" => bail!("{USAGE}"),
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    if a.rounds == 0 || a.pods == 0 || a.guest.vcpus == 0 || a.guest.memory_mib == 0 {
        bail!("--rounds, --pods, --vcpus and --memory-mib must be at least 1");
    }
    let need = |p: Option<PathBuf>, name: &str| -> Result<PathBuf> {
        let p = p.with_context(|| format!("--{name} is required\n{USAGE}"))?;
        if !p.is_file() {
            bail!("--{name} {}: no such file", p.display());
        }
        Ok(p)
    };
    a.shim = need(shim, "shim")?;
    a.vmm = need(vmm, "vmm")?;
    a.kernel = need(kernel, "kernel")?;
    a.initramfs = need(initramfs, "initramfs")?;
    // By default husk-cri-check is built next to this binary.
    let sibling = || -> Option<PathBuf> {
        Some(
            std::env::current_exe()
                .ok()?
                .parent()?
                .join("husk-cri-check"),
        )
    };
    a.check = need(check.or_else(sibling), "check")?;
    if a.workload_rounds > 0 || a.isolation {
        let probe = a.probe.take();
        a.probe = Some(need(probe, "probe")?);
    }
    Ok(a)
}

/// `--handlers`: comma separated, known to the job, no repeats; runc is put first
/// (added if missing): it is the baseline.
fn handler_list(list: &str) -> Result<Vec<String>> {
    let mut out = vec![BASELINE.to_string()];
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if job::handler(name).is_none() {
            let known: Vec<&str> = job::HANDLERS.iter().map(|h| h.name).collect();
            bail!(
                "--handlers: unknown handler {name:?}; known: {}",
                known.join(", ")
            );
        }
        if !out.iter().any(|h| h == name) {
            out.push(name.to_string());
        }
    }
    if out.len() < 2 {
        bail!("--handlers: name at least one handler to compare with {BASELINE}");
    }
    Ok(out)
}

/// `--bursts`: comma-separated Pod counts of at least 1, e.g. `1,4,16`.
fn burst_list(list: &str) -> Result<Vec<usize>> {
    let sizes: Vec<usize> = list
        .split(',')
        .map(|s| s.trim().parse::<usize>().ok().filter(|n| *n > 0))
        .collect::<Option<_>>()
        .with_context(|| format!("--bursts {list:?}: want counts like 1,4,16"))?;
    Ok(sizes)
}

/// `handlers` rotated left by `k`: round r goes in the order rotated by r - 1, so each
/// handler goes first equally often and drift hits all alike.
fn rotated(handlers: &[String], k: usize) -> Vec<&str> {
    let n = handlers.len();
    (0..n).map(|i| handlers[(i + k) % n].as_str()).collect()
}

/// The checks: the warm-up, the start rounds, the workload rounds, the isolation
/// runs; each round in its own rotation of the handlers.
fn checks(a: &Args) -> Vec<Check> {
    // Each call may take CALL_TIMEOUT; a Pod that takes longer than this is broken.
    let limit = |pods: usize| format!("--pods {pods} --timeout {}", 60 + pods * 90);
    let mut out = Vec::new();
    if a.warmup > 0 {
        for h in &a.handlers {
            out.push(Check::named(
                &format!("warmup-{h}"),
                h,
                &limit(a.warmup),
                "bench",
            ));
        }
    }
    for round in 1..=a.rounds {
        for h in rotated(&a.handlers, round - 1) {
            out.push(Check::named(
                &round_section(round, h),
                h,
                &limit(a.pods),
                "bench",
            ));
        }
    }
    for &n in &a.bursts {
        for round in 1..=a.burst_rounds {
            for h in rotated(&a.handlers, round - 1) {
                out.push(Check::named(
                    &start::burst_section(n, round, h),
                    h,
                    &format!("--pods {n} --parallel {n} --timeout {}", 120 + n * 120),
                    "bench",
                ));
            }
        }
    }
    for round in 1..=a.workload_rounds {
        for h in rotated(&a.handlers, round - 1) {
            out.push(Check::named(
                &workload_section(round, h),
                h,
                "--timeout 1800",
                "workload",
            ));
        }
    }
    if a.isolation {
        for h in &a.handlers {
            out.push(Check::named(
                &isolation_section(h),
                h,
                "--timeout 600",
                "isolation",
            ));
        }
    }
    out
}

fn run(a: &Args) -> Result<bool> {
    let kind = testhost::detect().context("no KVM test host")?;
    if matches!(kind, HostKind::Native { .. }) && !a.native {
        bail!(
            "this machine has native KVM: the benchmark would run containerd here and add a CNI \
             bridge, veths and network namespaces to its network; pass --native to accept that"
        );
    }
    let ctrd = job::containerd_for(job::L2_BASE, &a.handlers)?;
    let missing = job::missing_tools(&ctrd);
    if !missing.is_empty() {
        bail!("{}", missing.join("\n"));
    }
    let dir = std::env::temp_dir().join(format!("husk-cri-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = build_and_run(a, &kind, &ctrd, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    let out = out?;

    let results = start::measure(&out.stdout, &a.handlers, a.rounds, a.pods);
    let version = start::runtime_version(&out.stdout, BASELINE);
    println!("host: {}", out.kind.describe());
    println!("containerd: {version}");
    println!(
        "husk guests: {} vCPU, {} MiB; {} rounds of {} Pods per handler, rotating which \
         handler goes first; {} warm-up Pod(s) per handler not counted; job {:?} (test host boot {:?})",
        a.guest.vcpus,
        a.guest.memory_mib,
        a.rounds,
        a.pods,
        a.warmup,
        out.total,
        out.host_boot
    );
    for (h, m) in &results {
        if !m.pod_processes.is_empty() {
            println!("processes of one {h} Pod: {}", m.pod_processes);
        }
    }
    println!();
    start::print_table(&results);
    println!();
    start::print_rounds(&results);
    let mut failures: Vec<String> = results
        .iter()
        .flat_map(|(_, m)| m.failures.clone())
        .collect();
    println!();
    let cold: Vec<String> = a
        .handlers
        .iter()
        .map(|h| match start::cold_start_ms(&out.stdout, h) {
            Some(ms) => format!("{h} {ms:.0} ms"),
            None => format!("{h} -"),
        })
        .collect();
    println!(
        "cold start (the first Pod of each handler's warm-up): {}",
        cold.join(", ")
    );
    let mut raw = json!({
        "benchmark": "cri",
        "host": out.kind.describe(),
        "containerd": version,
        "rounds": a.rounds,
        "pods_per_round": a.pods,
        "warmup_pods": a.warmup,
        "guest": {"vcpus": a.guest.vcpus, "memory_mib": a.guest.memory_mib},
        "handlers": start::json(&results),
    });
    let bursts = start::measure_bursts(&out.stdout, &a.handlers, &a.bursts, a.burst_rounds);
    if !a.bursts.is_empty() {
        let b = &bursts;
        println!();
        println!(
            "bursts: N Pods started at once, {} round(s) each; the density column divides {} MiB \
             by the measured PSS per Pod (an estimate, not a run to exhaustion):",
            a.burst_rounds, a.density_limit_mib
        );
        println!();
        start::print_bursts(b, a.density_limit_mib);
        failures.extend(
            b.iter()
                .flat_map(|(_, by_n)| by_n.iter().flat_map(|(_, m)| m.failures.clone())),
        );
        raw["bursts"] = start::bursts_json(b);
        raw["density_limit_mib"] = json!(a.density_limit_mib);
    }
    if a.workload_rounds > 0 {
        let w = probes::read_workload(&out.stdout, &a.handlers, a.workload_rounds);
        println!();
        println!(
            "workload: husk-probe in one container, median of {} round(s):",
            a.workload_rounds
        );
        println!();
        probes::print_workload(&w);
        failures.extend(w.iter().flat_map(|(_, w)| w.failures.clone()));
        raw["workload_rounds"] = json!(a.workload_rounds);
        raw["workload"] = probes::workload_json(&w);
    }
    if a.isolation {
        let iso = probes::read_isolation(&out.stdout, &a.handlers);
        println!();
        probes::print_isolation(&iso);
        failures.extend(iso.iter().filter_map(|(h, r)| {
            r.as_ref()
                .err()
                .map(|e| format!("{}: {e}", isolation_section(h)))
        }));
        raw["isolation"] = probes::isolation_json(&iso);
    }
    println!();
    println!("{raw}");
    if let Some(dir) = &a.out {
        write_files(dir, &raw, &results, &bursts)
            .with_context(|| format!("writing into {}", dir.display()))?;
    }
    for f in &failures {
        eprintln!("husk-cri-bench: FAILED {f}");
    }
    if !out.success() {
        eprintln!("husk-cri-bench: the job exited {}", out.exit_code);
    }
    Ok(failures.is_empty() && out.success())
}

/// `cri-bench.json` (the raw numbers), `start.svg` (every Pod's start, one after
/// another) and `burst-<N>.svg` (N Pods at once) into `dir`.
fn write_files(
    dir: &Path,
    raw: &serde_json::Value,
    results: &[(String, start::Measured)],
    bursts: &[(String, Vec<(usize, start::Measured)>)],
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("cri-bench.json"), format!("{raw:#}\n"))?;
    let series: Vec<(String, Vec<f64>)> = results
        .iter()
        .map(|(h, m)| (h.clone(), m.start_ms.clone()))
        .collect();
    let svg = plot::distributions(
        "Pod start, one after another (RunPodSandbox → StartContainer)",
        "ms",
        &series,
    );
    std::fs::write(dir.join("start.svg"), svg)?;
    let sizes: Vec<usize> = bursts
        .first()
        .map(|(_, by_n)| by_n.iter().map(|(n, _)| *n).collect())
        .unwrap_or_default();
    for (i, n) in sizes.iter().enumerate() {
        let series: Vec<(String, Vec<f64>)> = bursts
            .iter()
            .map(|(h, by_n)| (h.clone(), by_n[i].1.start_ms.clone()))
            .collect();
        let title = format!("Pod start, {n} at once (RunPodSandbox → StartContainer)");
        std::fs::write(
            dir.join(format!("burst-{n}.svg")),
            plot::distributions(&title, "ms", &series),
        )?;
    }
    eprintln!("husk-cri-bench: wrote {}", dir.display());
    Ok(())
}

fn build_and_run(
    a: &Args,
    kind: &HostKind,
    ctrd: &husk_tests::containerd::Containerd,
    dir: &Path,
) -> Result<JobOutput> {
    let (busybox, pause) = job::write_images(dir, a.probe.as_deref())?;
    let script = job::script(ctrd, &job::husk_setup(&a.guest), &checks(a));
    let n = a.handlers.len() as u64;
    let burst_pods: usize = a.bursts.iter().sum::<usize>() * a.burst_rounds;
    let counted = n * (a.rounds * a.pods + a.warmup + burst_pods) as u64;
    let probing = n * (a.workload_rounds as u64 * 900 + u64::from(a.isolation) * 300);
    let timeout = Duration::from_secs(600 + 60 * counted + probing);
    // Room for the largest burst's guests, shims and sandboxes beside containerd.
    let largest = a.bursts.iter().copied().max().unwrap_or(0).max(a.pods) as u32;
    let memory = 2048 + largest * (a.guest.memory_mib + 64);
    // Two emulated CPUs, as in the published runs: bursts and Pod↔Pod traffic need
    // parallelism, though L2 wedges more often with two (the tests use one).
    let mut j = job::job(script, &a.check, &busybox, &pause, timeout)
        .memory_mib(memory)
        .cpus(2);
    if let Some(probe) = &a.probe {
        // Beside husk-cri-check: the host's TCP client in `workload`.
        j = j.file(probe, "husk-probe");
    }
    let j = job::husk_files(j, &a.shim, &a.vmm, &a.kernel, &a.initramfs);
    let out = if a.quiet {
        testhost::run_on(kind, &j, &mut std::io::sink())
    } else {
        testhost::run_on(kind, &j, &mut std::io::stderr())
    };
    Ok(out?)
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("husk-cri-bench: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("husk-cri-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(rounds: usize, pods: usize, warmup: usize) -> Args {
        Args {
            rounds,
            pods,
            warmup,
            quiet: true,
            ..Args::defaults()
        }
    }

    #[test]
    fn rounds_alternate_after_the_warm_up() {
        let names: Vec<String> = checks(&args(3, 5, 1))
            .into_iter()
            .map(|c| {
                assert_eq!(c.scenario, "bench");
                format!("{} {}", c.section, c.handler)
            })
            .collect();
        assert_eq!(
            names,
            [
                "warmup-runc runc",
                "warmup-husk husk",
                "bench-r1-runc runc",
                "bench-r1-husk husk",
                "bench-r2-husk husk",
                "bench-r2-runc runc",
                "bench-r3-runc runc",
                "bench-r3-husk husk",
            ]
        );
        assert!(checks(&args(1, 2, 0))
            .iter()
            .all(|c| c.args == "--pods 2 --timeout 240"));
    }

    #[test]
    fn more_handlers_rotate_and_probes_follow_the_start_rounds() {
        let mut a = args(2, 1, 0);
        a.handlers = handler_list("husk,crun,husk").expect("known handlers");
        assert_eq!(a.handlers, ["runc", "husk", "crun"]);
        a.workload_rounds = 1;
        a.isolation = true;
        a.bursts = burst_list("4").expect("a count");
        let names: Vec<String> = checks(&a)
            .into_iter()
            .map(|c| format!("{} {}", c.section, c.scenario))
            .collect();
        assert_eq!(
            names,
            [
                "bench-r1-runc bench",
                "bench-r1-husk bench",
                "bench-r1-crun bench",
                "bench-r2-husk bench",
                "bench-r2-crun bench",
                "bench-r2-runc bench",
                "burst4-r1-runc bench",
                "burst4-r1-husk bench",
                "burst4-r1-crun bench",
                "workload-r1-runc workload",
                "workload-r1-husk workload",
                "workload-r1-crun workload",
                "isolation-runc isolation",
                "isolation-husk isolation",
                "isolation-crun isolation",
            ]
        );
        assert!(handler_list("runc").is_err(), "nothing to compare");
        assert!(handler_list("kata").is_err(), "unknown");
        assert_eq!(burst_list("1, 4,16").expect("counts"), [1, 4, 16]);
        assert!(burst_list("0").is_err() && burst_list("x").is_err());
    }

    #[test]
    fn rounds_pool_and_failures_are_reported() {
        let ok = |name: &str, starts: &str| {
            format!(
                "BEGIN {name}\nruntime containerd 1.6.20~ds1\nbench_pods 2\npod_start_ms {starts}\n\
                 pss_kib_per_pod 8000,9000\nprocesses_per_pod 5,5\npod0_processes 1:sh\n\
                 pod_remove_ms_mean 1400\ncleanup_errors 0\nresult ok\nEND {name} exit=0\n"
            )
        };
        let out = format!(
            "{}{}{}BEGIN bench-r2-husk\nresult failed: RunPodSandbox: boom\n\
             cleanup_error pod x: gone\nEND bench-r2-husk exit=1\n",
            ok("bench-r1-runc", "1000,3000"),
            ok("bench-r1-husk", "5000,6000"),
            ok("bench-r2-runc", "2000,4000"),
        );
        let handlers = args(2, 2, 0).handlers;
        let r = start::measure(&out, &handlers, 2, 2);
        assert_eq!(r[0].0, "runc");
        assert_eq!(r[0].1.start_ms, [1000.0, 3000.0, 2000.0, 4000.0]);
        assert_eq!(r[0].1.pss_kib.len(), 4);
        assert_eq!(r[0].1.processes, [5, 5, 5, 5]);
        assert!(r[0].1.failures.is_empty());
        assert_eq!(r[1].1.start_ms, [5000.0, 6000.0]);
        assert_eq!(r[0].1.round_p50_ms, [(1, 1000.0), (2, 2000.0)]);
        assert_eq!(r[1].1.round_p50_ms, [(1, 5000.0)]);
        assert_eq!(
            r[1].1.failures,
            ["bench-r2-husk: exit 1: failed: RunPodSandbox: boom; cleanup: pod x: gone"]
        );
        assert_eq!(
            start::runtime_version(&out, "runc"),
            "containerd 1.6.20~ds1"
        );
        // A Pod whose sandbox died before the count is left out of PSS and processes.
        let lossy = ok("bench-r1-runc", "1000,3000").replace("pss_kib", "pod_ready 1,0\npss_kib");
        let r = start::measure(&lossy, &handlers, 1, 2);
        assert_eq!((r[0].1.pss_kib.clone(), r[0].1.lost), (vec![8000.0], 1));
        assert_eq!(r[0].1.start_ms.len(), 2);
        // A round that printed the wrong number of Pods is a failure, not data.
        let short = ok("bench-r1-runc", "1000");
        let r = start::measure(&short, &handlers, 1, 2);
        assert!(r[0].1.start_ms.is_empty() && r[0].1.failures.len() == 1);
    }
}
