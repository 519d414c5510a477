//! The start rounds (`bench` scenario): Pod start latency, PSS per idle Pod,
//! removal time; pooled per handler, and per round for the paired ratios.

use husk_tests::cri::job;
use husk_tests::cri::scenario::percentile;
use serde_json::json;

/// The section name of a counted start round.
pub fn round_section(round: usize, handler: &str) -> String {
    format!("bench-r{round}-{handler}")
}

/// What one handler's rounds measured.
#[derive(Default)]
pub struct Measured {
    pub start_ms: Vec<f64>,
    /// Each counted round's median start time, by round number.
    pub round_p50_ms: Vec<(usize, f64)>,
    pub pss_kib: Vec<f64>,
    pub processes: Vec<u64>,
    pub remove_ms_per_pod: Vec<f64>,
    /// The processes of one Pod (`pid:program` list) of the first round.
    pub pod_processes: String,
    /// The failed rounds: section and what went wrong.
    pub failures: Vec<String>,
    /// Bursts: how long each batch took until all its Pods were running.
    pub batch_ms: Vec<f64>,
    /// Pods whose sandbox was no longer ready when memory was counted: they are
    /// left out of the PSS and process figures.
    pub lost: usize,
}

pub fn numbers(list: &str) -> Result<Vec<f64>, String> {
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| format!("{s:?} is not a number")))
        .collect()
}

/// One counted round of `handler` from the job's output, into `m`.
fn read_round(
    out: &str,
    name: &str,
    round: usize,
    pods: usize,
    m: &mut Measured,
) -> Result<(), String> {
    let (body, code) = job::section(out, name).ok_or("the round did not run to its end")?;
    let values = job::values(body);
    let one = |k: &str| values.get(k).and_then(|v| v.first().copied());
    if code != 0 || one("result") != Some("ok") {
        let mut why = one("result").unwrap_or("no result line").to_string();
        for e in values.get("cleanup_error").into_iter().flatten() {
            why.push_str(&format!("; cleanup: {e}"));
        }
        return Err(format!("exit {code}: {why}"));
    }
    let list = |k: &str| numbers(one(k).ok_or(format!("no {k}"))?).map_err(|e| format!("{k}: {e}"));
    let (start, pss, procs) = (
        list("pod_start_ms")?,
        list("pss_kib_per_pod")?,
        list("processes_per_pod")?,
    );
    if start.len() != pods || pss.len() != pods || procs.len() != pods {
        return Err(format!("expected {pods} Pods' numbers in:\n{body}"));
    }
    // Older output has no readiness line: every Pod counts.
    let ready = match one("pod_ready") {
        Some(r) => r.split(',').map(|f| f == "1").collect(),
        None => vec![true; pods],
    };
    if ready.len() != pods {
        return Err(format!("expected {pods} readiness flags in:\n{body}"));
    }
    m.round_p50_ms.push((round, percentile(&start, 50.0)));
    m.start_ms.extend(start);
    for ((pss, procs), ready) in pss.into_iter().zip(procs).zip(ready) {
        if ready {
            m.pss_kib.push(pss);
            m.processes.push(procs as u64);
        } else {
            m.lost += 1;
        }
    }
    if let Some(r) = one("pod_remove_ms_mean").and_then(|r| r.parse().ok()) {
        m.remove_ms_per_pod.push(r);
    }
    if m.pod_processes.is_empty() {
        m.pod_processes = one("pod0_processes").unwrap_or_default().to_string();
    }
    if let Some(b) = one("batch_ms") {
        m.batch_ms
            .extend(numbers(b).map_err(|e| format!("batch_ms: {e}"))?);
    }
    Ok(())
}

/// The section of a burst round: `n` Pods started at once.
pub fn burst_section(n: usize, round: usize, handler: &str) -> String {
    format!("burst{n}-r{round}-{handler}")
}

/// Every handler's bursts, by the number of Pods started at once.
pub fn measure_bursts(
    out: &str,
    handlers: &[String],
    sizes: &[usize],
    rounds: usize,
) -> Vec<(String, Vec<(usize, Measured)>)> {
    handlers
        .iter()
        .map(|h| {
            let by_n = sizes
                .iter()
                .map(|&n| {
                    let mut m = Measured::default();
                    for round in 1..=rounds {
                        let name = burst_section(n, round, h);
                        if let Err(e) = read_round(out, &name, round, n, &mut m) {
                            m.failures.push(format!("{name}: {e}"));
                        }
                    }
                    (n, m)
                })
                .collect();
            (h.clone(), by_n)
        })
        .collect()
}

/// The first Pod of `handler`'s warm-up: the cold start (nothing of the runtime
/// cached or running yet).
pub fn cold_start_ms(out: &str, handler: &str) -> Option<f64> {
    let (body, code) = job::section(out, &format!("warmup-{handler}"))?;
    let values = job::values(body);
    let first = values.get("pod_start_ms")?.first()?.split(',').next()?;
    (code == 0).then(|| first.parse().ok()).flatten()
}

/// The bursts: per-Pod start, the whole batch, memory per Pod with N idle, and the
/// density that memory implies under `limit_mib` of host memory.
pub fn print_bursts(results: &[(String, Vec<(usize, Measured)>)], limit_mib: f64) {
    println!(
        "| handler | Pods at once | start p50 (ms) | start p95 (ms) | all running after, p50 (ms) | \
         PSS per idle Pod (MiB) | PSS of all N (MiB) | Pods in {limit_mib:.0} MiB at that PSS |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (h, by_n) in results {
        for (n, m) in by_n {
            if m.start_ms.is_empty() {
                println!("| {h} | {n} | - | - | - | - | - | - |");
                continue;
            }
            let pss = mib(mean(&m.pss_kib));
            let fits = if pss > 0.0 {
                format!("{:.0}", (limit_mib / pss).floor())
            } else {
                "-".into()
            };
            println!(
                "| {h} | {n} | {:.0} | {:.0} | {:.0} | {pss:.1} | {:.0} | {fits} |",
                percentile(&m.start_ms, 50.0),
                percentile(&m.start_ms, 95.0),
                percentile(&m.batch_ms, 50.0),
                pss * *n as f64,
            );
        }
    }
}

/// The bursts' raw numbers, by handler and size.
pub fn bursts_json(results: &[(String, Vec<(usize, Measured)>)]) -> serde_json::Value {
    let map: serde_json::Map<String, serde_json::Value> = results
        .iter()
        .map(|(h, by_n)| {
            let v: serde_json::Map<String, serde_json::Value> = by_n
                .iter()
                .map(|(n, m)| {
                    (
                        n.to_string(),
                        json!({
                            "start_ms": m.start_ms,
                            "batch_ms": m.batch_ms,
                            "pss_kib": m.pss_kib,
                            "failures": m.failures,
                        }),
                    )
                })
                .collect();
            (h.clone(), serde_json::Value::Object(v))
        })
        .collect();
    serde_json::Value::Object(map)
}

/// Every handler's counted rounds, in `handlers`' order.
pub fn measure(
    out: &str,
    handlers: &[String],
    rounds: usize,
    pods: usize,
) -> Vec<(String, Measured)> {
    handlers
        .iter()
        .map(|h| {
            let mut m = Measured::default();
            for round in 1..=rounds {
                let name = round_section(round, h);
                if let Err(e) = read_round(out, &name, round, pods, &mut m) {
                    m.failures.push(format!("{name}: {e}"));
                }
            }
            (h.clone(), m)
        })
        .collect()
}

/// containerd's name and version, as the first round printed it.
pub fn runtime_version(out: &str, first: &str) -> String {
    job::section(out, &round_section(1, first))
        .and_then(|(body, _)| {
            job::values(body)
                .get("runtime")?
                .first()
                .map(|v| v.to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

pub fn mib(kib: f64) -> f64 {
    kib / 1024.0
}

pub fn print_table(results: &[(String, Measured)]) {
    let base = &results[0].1;
    let (b50, b95) = (
        percentile(&base.start_ms, 50.0),
        percentile(&base.start_ms, 95.0),
    );
    let ratio = |x: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}", x / b)
        } else {
            "-".into()
        }
    };
    println!(
        "| handler | pods | start p50 (ms) | start p95 (ms) | p50 / runc | p95 / runc | \
         PSS per idle Pod, mean (MiB) | PSS min–max (MiB) | processes per Pod | removal per Pod (ms) | \
         Pods lost before the count |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (h, m) in results {
        if m.start_ms.is_empty() {
            println!("| {h} | 0 | - | - | - | - | - | - | - | - | - |");
            continue;
        }
        let (p50, p95) = (percentile(&m.start_ms, 50.0), percentile(&m.start_ms, 95.0));
        let (lo, hi) = m
            .pss_kib
            .iter()
            .fold((f64::INFINITY, 0.0f64), |(lo, hi), k| {
                (lo.min(*k), hi.max(*k))
            });
        let mut procs: Vec<u64> = m.processes.clone();
        procs.sort_unstable();
        procs.dedup();
        let procs: Vec<String> = procs.iter().map(u64::to_string).collect();
        println!(
            "| {h} | {} | {p50:.0} | {p95:.0} | {} | {} | {:.1} | {:.1}–{:.1} | {} | {:.0} | {} |",
            m.start_ms.len(),
            ratio(p50, b50),
            ratio(p95, b95),
            mib(mean(&m.pss_kib)),
            mib(lo),
            mib(hi),
            procs.join(", "),
            mean(&m.remove_ms_per_pod),
            m.lost,
        );
    }
}

/// Each round's median start of every handler, and its ratio to the
/// baseline's in the same round: the paired comparison the alternation is for.
pub fn print_rounds(results: &[(String, Measured)]) {
    let base = &results[0].1.round_p50_ms;
    for (h, m) in results {
        let medians: Vec<String> = m
            .round_p50_ms
            .iter()
            .map(|(r, ms)| format!("r{r} {ms:.0}"))
            .collect();
        let ratios: Vec<String> = m
            .round_p50_ms
            .iter()
            .filter_map(|(r, ms)| {
                let (_, b) = base.iter().find(|(br, _)| br == r)?;
                (*b > 0.0).then(|| format!("r{r} {:.2}", ms / b))
            })
            .collect();
        println!(
            "round medians, {h} (ms): {}; / {} in the same round: {}",
            medians.join(", "),
            results[0].0,
            ratios.join(", ")
        );
    }
}

/// The start rounds' raw numbers, by handler.
pub fn json(results: &[(String, Measured)]) -> serde_json::Value {
    let handlers: serde_json::Map<String, serde_json::Value> = results
        .iter()
        .map(|(h, m)| {
            let v = json!({
                "pods": m.start_ms.len(),
                "start_ms": m.start_ms,
                "start_p50_ms": percentile(&m.start_ms, 50.0),
                "start_p95_ms": percentile(&m.start_ms, 95.0),
                "round_p50_ms": m.round_p50_ms,
                "pss_kib": m.pss_kib,
                "pss_kib_mean": mean(&m.pss_kib),
                "processes": m.processes,
                "remove_ms_per_pod_by_round": m.remove_ms_per_pod,
                "pod_processes": m.pod_processes,
                "lost_before_count": m.lost,
                "failures": m.failures,
            });
            (h.clone(), v)
        })
        .collect();
    serde_json::Value::Object(handlers)
}
