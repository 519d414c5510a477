//! The `workload` rounds (husk-probe's CPU, system call, I/O and TCP numbers) and
//! the `isolation` runs (what each runtime lets a container see and do), as
//! side-by-side tables.

use std::collections::BTreeMap;

use husk_tests::cri::job;
use husk_tests::cri::scenario::percentile;
use serde_json::json;

/// The section of a workload round.
pub fn workload_section(round: usize, handler: &str) -> String {
    format!("workload-r{round}-{handler}")
}

/// The section of a handler's isolation run.
pub fn isolation_section(handler: &str) -> String {
    format!("isolation-{handler}")
}

/// One workload number: its key in the scenario's output, a label, and whether
/// more is better (throughput) or less (time).
struct Metric {
    key: &'static str,
    label: &'static str,
    higher_is_better: bool,
}

const fn metric(key: &'static str, label: &'static str, higher_is_better: bool) -> Metric {
    Metric {
        key,
        label,
        higher_is_better,
    }
}

const METRICS: &[Metric] = &[
    metric("cpu_cpu_ms", "compute loop (ms)", false),
    metric("syscalls_getpid_ns", "getpid (ns)", false),
    metric("syscalls_open_close_ns", "open+close (ns)", false),
    metric("syscalls_fork_exit_us", "fork+exit+wait (µs)", false),
    metric(
        "io_rootfs_seq_write_mib_s",
        "rootfs seq. write+fsync (MiB/s)",
        true,
    ),
    metric("io_rootfs_seq_read_mib_s", "rootfs seq. read (MiB/s)", true),
    metric(
        "io_rootfs_rand_write_iops",
        "rootfs 4 KiB random write (IOPS)",
        true,
    ),
    metric(
        "io_rootfs_rand_read_iops",
        "rootfs 4 KiB random read (IOPS)",
        true,
    ),
    metric(
        "io_rootfs_meta_ops_s",
        "rootfs create/stat/unlink (ops/s)",
        true,
    ),
    metric(
        "io_emptydir_seq_write_mib_s",
        "emptyDir seq. write+fsync (MiB/s)",
        true,
    ),
    metric(
        "io_emptydir_seq_read_mib_s",
        "emptyDir seq. read (MiB/s)",
        true,
    ),
    metric(
        "io_emptydir_rand_write_iops",
        "emptyDir 4 KiB random write (IOPS)",
        true,
    ),
    metric(
        "io_emptydir_rand_read_iops",
        "emptyDir 4 KiB random read (IOPS)",
        true,
    ),
    metric(
        "io_emptydir_meta_ops_s",
        "emptyDir create/stat/unlink (ops/s)",
        true,
    ),
    metric("host_pod_tcp_mib_s", "TCP host → Pod (MiB/s)", true),
    metric(
        "host_pod_rtt_p50_us",
        "TCP round trip host ↔ Pod, p50 (µs)",
        false,
    ),
    metric("pod_pod_tcp_mib_s", "TCP Pod → Pod (MiB/s)", true),
    metric(
        "pod_pod_rtt_p50_us",
        "TCP round trip Pod ↔ Pod, p50 (µs)",
        false,
    ),
];

/// One handler's workload numbers over its rounds, by key.
#[derive(Default)]
pub struct Workload {
    pub values: BTreeMap<&'static str, Vec<f64>>,
    pub failures: Vec<String>,
}

/// Every handler's workload rounds, in `handlers`' order.
pub fn read_workload(out: &str, handlers: &[String], rounds: usize) -> Vec<(String, Workload)> {
    handlers
        .iter()
        .map(|h| {
            let mut w = Workload::default();
            for round in 1..=rounds {
                let name = workload_section(round, h);
                if let Err(e) = read_workload_round(out, &name, &mut w) {
                    w.failures.push(format!("{name}: {e}"));
                }
            }
            (h.clone(), w)
        })
        .collect()
}

fn read_workload_round(out: &str, name: &str, w: &mut Workload) -> Result<(), String> {
    let (body, code) = job::section(out, name).ok_or("the round did not run to its end")?;
    let values = job::values(body);
    let one = |k: &str| values.get(k).and_then(|v| v.first().copied());
    if code != 0 || one("result") != Some("ok") {
        return Err(format!(
            "exit {code}: {}",
            one("result").unwrap_or("no result line")
        ));
    }
    let mut round = Vec::new();
    for m in METRICS {
        let v = one(m.key).ok_or(format!("no {}", m.key))?;
        let v: f64 = v
            .parse()
            .map_err(|_| format!("{}: {v:?} is not a number", m.key))?;
        round.push((m.key, v));
    }
    for (k, v) in round {
        w.values.entry(k).or_default().push(v);
    }
    Ok(())
}

/// Medians over the rounds, and each handler's ratio to the first's, oriented so that
/// above 1 is always worse than the baseline ("× slower").
pub fn print_workload(results: &[(String, Workload)]) {
    let Some((base_name, base)) = results.first() else {
        return;
    };
    let names: Vec<&str> = results.iter().map(|(h, _)| h.as_str()).collect();
    println!(
        "| measurement (median of rounds) | {} | {} |",
        names.join(" | "),
        names[1..]
            .iter()
            .map(|h| format!("{h} cost vs {base_name}"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|{}", "---|".repeat(2 * names.len() - 1));
    for m in METRICS {
        let median = |w: &Workload| w.values.get(m.key).map(|v| percentile(v, 50.0));
        let cells: Vec<String> = results
            .iter()
            .map(|(_, w)| median(w).map_or("-".into(), number))
            .collect();
        let costs: Vec<String> = results[1..]
            .iter()
            .map(|(_, w)| match (median(w), median(base)) {
                (Some(x), Some(b)) if x > 0.0 && b > 0.0 => {
                    let cost = if m.higher_is_better { b / x } else { x / b };
                    format!("{cost:.2}×")
                }
                _ => "-".into(),
            })
            .collect();
        println!(
            "| {} | {} | {} |",
            m.label,
            cells.join(" | "),
            costs.join(" | ")
        );
    }
}

/// A number with as many decimals as its size deserves.
fn number(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The workload rounds' raw numbers, by handler.
pub fn workload_json(results: &[(String, Workload)]) -> serde_json::Value {
    let map: serde_json::Map<String, serde_json::Value> = results
        .iter()
        .map(|(h, w)| {
            (
                h.clone(),
                json!({"values": w.values, "failures": w.failures}),
            )
        })
        .collect();
    serde_json::Value::Object(map)
}

/// One handler's isolation run: its `key value` lines, or why it failed.
pub type Isolation = Result<BTreeMap<String, String>, String>;

/// Every handler's isolation run, in `handlers`' order.
pub fn read_isolation(out: &str, handlers: &[String]) -> Vec<(String, Isolation)> {
    handlers
        .iter()
        .map(|h| {
            let name = isolation_section(h);
            let r = match job::section(out, &name) {
                None => Err("did not run to its end".to_string()),
                Some((body, code)) => {
                    let values: BTreeMap<String, String> = job::values(body)
                        .into_iter()
                        .filter_map(|(k, v)| Some((k.to_string(), v.first()?.to_string())))
                        .collect();
                    match values.get("result").map(String::as_str) {
                        Some("ok") if code == 0 => Ok(values),
                        other => Err(format!("exit {code}: {}", other.unwrap_or("no result"))),
                    }
                }
            };
            (h.clone(), r)
        })
        .collect()
}

/// What each runtime let through, one row per question.
pub fn print_isolation(results: &[(String, Isolation)]) {
    let names: Vec<&str> = results.iter().map(|(h, _)| h.as_str()).collect();
    println!("| what a container sees or does | {} |", names.join(" | "));
    println!("|---|{}", "---|".repeat(names.len()));
    type Row = fn(&BTreeMap<String, String>) -> String;
    let get = |v: &BTreeMap<String, String>, k: &str| v.get(k).cloned().unwrap_or("?".into());
    let rows: [(&str, Row); 11] = [
        ("kernel", |v| {
            let same = v.get("plain_kernel_release") == v.get("host_kernel_release");
            let r = v.get("plain_kernel_release").cloned().unwrap_or_default();
            format!("{} ({r})", if same { "the host's" } else { "its own" })
        }),
        ("boot id", |v| {
            if v.get("plain_boot_id") == v.get("host_boot_id") {
                "the host's".into()
            } else {
                "its own".into()
            }
        }),
        ("processes visible", |v| {
            v.get("plain_processes").cloned().unwrap_or_default()
        }),
        ("network interfaces", |v| {
            v.get("plain_interfaces").cloned().unwrap_or_default()
        }),
        ("/dev/kvm (privileged)", |v| {
            v.get("privileged_dev_kvm").cloned().unwrap_or_default()
        }),
        ("/proc/sysrq-trigger (plain)", |v| {
            v.get("plain_sysrq").cloned().unwrap_or_default()
        }),
        ("privileged sysrq write reaches", |v| {
            let before: u64 = v
                .get("host_sysrq_lines_before")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let after: u64 = v
                .get("host_sysrq_lines_after")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            match v.get("privileged_sysrq_h").map(String::as_str) {
                Some("written") if after > before => "the host's kernel".into(),
                Some("written") => "its own kernel only".into(),
                Some(e) => format!("refused ({e})"),
                None => "?".into(),
            }
        }),
        ("privileged init_module", |v| {
            v.get("privileged_init_module").cloned().unwrap_or_default()
        }),
        ("privileged remount of /", |v| {
            v.get("privileged_remount_root")
                .cloned()
                .unwrap_or_default()
        }),
        (
            "ExecSync round trip beside a fork bomb + memory hog (ms)",
            |v| {
                format!(
                    "{} → {}",
                    v.get("noisy_baseline_ms").map_or("?", String::as_str),
                    v.get("noisy_during_ms").map_or("?", String::as_str)
                )
            },
        ),
        ("another Pod still answers", |v| {
            v.get("other_pod_answers").cloned().unwrap_or_default()
        }),
    ];
    for (label, row) in rows {
        let cells: Vec<String> = results
            .iter()
            .map(|(_, r)| match r {
                Ok(v) => row(v),
                Err(e) => format!("failed: {e}"),
            })
            .collect();
        println!("| {label} | {} |", cells.join(" | "));
    }
    for (h, r) in results {
        if let Ok(v) = r {
            println!(
                "{h}: plain CapEff {}, privileged CapEff {}",
                get(v, "plain_cap_eff"),
                get(v, "privileged_cap_eff")
            );
        }
    }
}

/// The isolation runs' lines, by handler.
pub fn isolation_json(results: &[(String, Isolation)]) -> serde_json::Value {
    let map: serde_json::Map<String, serde_json::Value> = results
        .iter()
        .map(|(h, r)| {
            let v = match r {
                Ok(values) => json!(values),
                Err(e) => json!({"failure": e}),
            };
            (h.clone(), v)
        })
        .collect();
    serde_json::Value::Object(map)
}
