//! `bench` (a benchmark, not a test): pod start latency and memory per pod.
//!
//! Starts N pods, `--parallel` at a time (1: one after another), each timed
//! from RunPodSandbox through CreateContainer to StartContainer's answer (one
//! idle container), each batch also as a whole (`batch_ms`); then,
//! with all N idle, sums each pod's PSS over its processes
//! ([`host::pod_processes`]: for runc the shim, pause and the container; for
//! husk the shim and husk-vmm); then removes them, timed. The per-pod start
//! times, PSS and process counts are printed raw too (`pod_start_ms`,
//! `pss_kib_per_pod`, `processes_per_pod`), for `husk-cri-bench` to pool rounds.

use std::time::{Duration, Instant};

use super::{create_container, Ctx, Pod, PodRegistry, IDLE};
use crate::cri::{container_config, host, v1 as api, CriClient, PodName, Result};

pub async fn run(ctx: &mut Ctx) -> Result<()> {
    let handler = ctx.handler();
    let image = ctx.opts.image.clone();
    let n = ctx.opts.pods.max(1);
    ctx.say("bench_pods", n);
    let parallel = ctx.opts.parallel.clamp(1, n);
    ctx.say("bench_parallel", parallel);
    let mut start_ms = Vec::with_capacity(n);
    let mut batch_ms = Vec::new();
    let mut pods = Vec::with_capacity(n);
    let mut first = 0;
    while first < n {
        let batch: Vec<usize> = (first..n.min(first + parallel)).collect();
        first += batch.len();
        let t = Instant::now();
        let mut starts = Vec::new();
        for i in &batch {
            let name = format!("bench-{i}");
            let (pod_name, config) = ctx.pod_config(&name, &name)?;
            let container = container_config("idle", 0, &image, IDLE);
            starts.push(start_pod(
                ctx.cri.clone(),
                ctx.registry(),
                pod_name,
                config,
                handler.clone(),
                container,
            ));
        }
        let mut failure = None;
        for (pod, result) in futures_util::future::join_all(starts).await {
            if let Some(pod) = pod {
                pods.push(pod);
            }
            match result {
                Ok(ms) => start_ms.push(ms),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        batch_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let list: Vec<String> = batch_ms.iter().map(|m| format!("{m:.0}")).collect();
    ctx.say("batch_ms", list.join(","));
    let list: Vec<String> = start_ms.iter().map(|m| format!("{m:.0}")).collect();
    ctx.say("pod_start_ms", list.join(","));
    ctx.say(
        "pod_start_p50_ms",
        format!("{:.0}", percentile(&start_ms, 50.0)),
    );
    ctx.say(
        "pod_start_p95_ms",
        format!("{:.0}", percentile(&start_ms, 95.0)),
    );

    // Let the pods settle, then count their memory. A pod that is no longer
    // ready (its sandbox died) has nothing to count: say so, and say which.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut ready = Vec::with_capacity(n);
    for pod in &pods {
        let (status, _) = ctx.cri.pod_status(&pod.id).await?;
        ready.push(status.state() == api::PodSandboxState::SandboxReady);
    }
    ctx.say(
        "pod_ready",
        ready
            .iter()
            .map(|r| if *r { "1" } else { "0" })
            .collect::<Vec<_>>()
            .join(","),
    );
    let procs = host::processes();
    let mut pss = Vec::with_capacity(n);
    let mut counts = Vec::with_capacity(n);
    for pod in &pods {
        let pids = host::pod_processes(&handler, &procs, &pod.id);
        counts.push(pids.len());
        pss.push(pids.iter().filter_map(|p| host::pss_kib(*p)).sum::<u64>() as f64);
    }
    let list: Vec<String> = pss.iter().map(|k| format!("{k:.0}")).collect();
    ctx.say("pss_kib_per_pod", list.join(","));
    let mean = pss.iter().sum::<f64>() / pss.len() as f64;
    ctx.say("pss_kib_per_pod_mean", format!("{mean:.0}"));
    ctx.say(
        "pss_kib_per_pod_p50",
        format!("{:.0}", percentile(&pss, 50.0)),
    );
    ctx.say(
        "pss_kib_per_pod_min",
        format!("{:.0}", pss.iter().copied().fold(f64::INFINITY, f64::min)),
    );
    ctx.say(
        "pss_kib_per_pod_max",
        format!("{:.0}", pss.iter().copied().fold(0.0, f64::max)),
    );
    ctx.say(
        "processes_per_pod",
        counts
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(","),
    );
    if let Some(first) = pods.first() {
        let pids = host::pod_processes(&handler, &procs, &first.id);
        ctx.say("pod0_processes", super::describe_pids(&procs, &pids));
    }

    let t = Instant::now();
    for pod in &pods {
        ctx.remove_pod(pod).await?;
    }
    ctx.say(
        "pod_remove_ms_mean",
        format!("{:.0}", t.elapsed().as_secs_f64() * 1000.0 / n as f64),
    );
    Ok(())
}

/// One pod and its idle container, timed from RunPodSandbox to StartContainer's
/// answer. Once RunPodSandbox succeeded the pod is in `registry` (for teardown)
/// and comes back.
async fn start_pod(
    mut cri: CriClient,
    registry: PodRegistry,
    name: PodName,
    config: api::PodSandboxConfig,
    handler: String,
    container: api::ContainerConfig,
) -> (Option<Pod>, Result<f64>) {
    let t = Instant::now();
    let id = match cri.run_pod(&config, &handler).await {
        Ok(id) => id,
        Err(e) => return (None, Err(e)),
    };
    let pod = Pod {
        id,
        name,
        config,
        handler,
        ip: String::new(),
    };
    registry
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(pod.clone());
    let started = async {
        let id = create_container(&mut cri, &pod, &container).await?;
        cri.start_container(&id).await
    };
    match started.await {
        Ok(()) => (Some(pod), Ok(t.elapsed().as_secs_f64() * 1000.0)),
        Err(e) => (Some(pod), Err(e)),
    }
}

/// The nearest-rank percentile `p` (0–100) of `values`; 0 for none.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 10.0);
        assert_eq!(percentile(&v, 95.0), 19.0);
        assert_eq!(percentile(&v, 100.0), 20.0);
        assert_eq!(percentile(&[7.0], 95.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), 2.0);
    }
}
