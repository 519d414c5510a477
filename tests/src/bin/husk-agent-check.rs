//! `husk-agent-check`: drives a running guest agent through the hybrid-vsock socket of a
//! VM, for the VM tests and the vsock benchmark. Runs on the KVM host next to `husk-vmm`.
//!
//! ```text
//! husk-agent-check check --run-dir DIR       # correctness scenarios, one result line each
//! husk-agent-check bench --run-dir DIR [--rpcs N] [--mib N]
//! ```
//! `check` prints `CHECK <name> ok ...` per scenario and exits non-zero on the first failure.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use husk_proto::client::{AgentClient, ExitStatus};
use husk_proto::pb;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(120);

fn exec_request(argv: &[&str], stdin: bool) -> pb::ExecInGuestRequest {
    pb::ExecInGuestRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        stdin,
        ..Default::default()
    }
}

/// 32 calls at once, each on its own connection.
async fn concurrent_connections(run_dir: &Path) -> Result<()> {
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let dir = run_dir.to_path_buf();
        tasks.push(tokio::spawn(async move {
            let agent = AgentClient::connect(&dir).await?;
            agent.health().await?;
            agent.guest_details().await?;
            anyhow::Ok(())
        }));
    }
    let mut ok = 0;
    for task in tasks {
        task.await??;
        ok += 1;
    }
    println!("CHECK concurrent ok {ok} calls on {ok} connections");
    Ok(())
}

/// A client that goes away in the middle of a stream leaves the agent serving others.
async fn disconnect_mid_stream(run_dir: &Path) -> Result<()> {
    let victim = {
        let agent = AgentClient::connect(run_dir).await?;
        let exec = agent
            .exec_in_guest(exec_request(&["cat", "/dev/zero"], false))
            .await?;
        let mut stdout = agent.read_stdout(&exec.process).await?;
        let mut got = 0;
        while got < 256 * 1024 {
            got += stdout.next_chunk().await?.context("early EOF")?.len();
        }
        exec.process
        // `agent` and `stdout` drop here: the connection closes mid-stream.
    };
    let agent = AgentClient::connect(run_dir).await?;
    agent.health().await?;
    let exec = agent
        .exec_in_guest(exec_request(&["echo", "alive"], false))
        .await?;
    let out = agent
        .read_stdout(&exec.process)
        .await?
        .read_to_end(1024)
        .await?;
    ensure!(out == b"alive\n", "unexpected output {out:?}");
    ensure!(agent.wait_process(&exec.process).await? == ExitStatus::Exited(0));
    agent.signal_process(&victim, libc::SIGKILL).await?;
    let status = agent.wait_process(&victim).await?;
    ensure!(
        status == ExitStatus::Signaled(libc::SIGKILL),
        "victim ended {status:?}"
    );
    println!("CHECK disconnect ok agent served a new client; abandoned process ended {status:?}");
    Ok(())
}

/// Exit codes and signals come back as they happened.
async fn exit_and_signal(agent: &AgentClient) -> Result<()> {
    let exec = agent
        .exec_in_guest(exec_request(&["sh", "-c", "exit 7"], false))
        .await?;
    let status = agent.wait_process(&exec.process).await?;
    ensure!(
        status == ExitStatus::Exited(7),
        "sh -c 'exit 7' ended {status:?}"
    );
    let exec = agent
        .exec_in_guest(exec_request(&["sleep", "60"], false))
        .await?;
    agent.signal_process(&exec.process, libc::SIGTERM).await?;
    let status = agent.wait_process(&exec.process).await?;
    ensure!(
        status == ExitStatus::Signaled(libc::SIGTERM),
        "sleep ended {status:?}"
    );
    println!("CHECK exit ok exit 7 and SIGTERM reported");
    Ok(())
}

async fn check(run_dir: &Path) -> Result<()> {
    let agent = AgentClient::connect_when_ready(run_dir, CONNECT_TIMEOUT).await?;
    let d = agent.guest_details().await?;
    println!(
        "CHECK details ok kernel_release={} vcpus={} mem_total_kib={} agent_version={}",
        d.kernel_release, d.vcpus, d.mem_total_kib, d.agent_version
    );
    exit_and_signal(&agent).await?;
    concurrent_connections(run_dir).await?;
    disconnect_mid_stream(run_dir).await?;
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn bench(run_dir: &Path, rpcs: usize, mib: u64) -> Result<()> {
    let agent = AgentClient::connect_when_ready(run_dir, CONNECT_TIMEOUT).await?;
    let mut times = Vec::with_capacity(rpcs);
    for _ in 0..rpcs {
        let t = Instant::now();
        agent.health().await?;
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "BENCH rpc Health n={rpcs} p50_us={} p99_us={}",
        percentile(&times, 0.5).as_micros(),
        percentile(&times, 0.99).as_micros()
    );

    let bytes = mib << 20;
    // Guest → host: the agent streams a process's stdout.
    let t = Instant::now();
    let exec = agent
        .exec_in_guest(exec_request(
            &["head", "-c", &bytes.to_string(), "/dev/zero"],
            false,
        ))
        .await?;
    let out = agent
        .read_stdout(&exec.process)
        .await?
        .read_to_end(bytes as usize + 1)
        .await?;
    agent.wait_process(&exec.process).await?;
    let secs = t.elapsed().as_secs_f64();
    ensure!(
        out.len() as u64 == bytes,
        "read {} of {bytes} bytes",
        out.len()
    );
    println!(
        "BENCH guest_to_host MiB={mib} MiB_per_s={:.1}",
        mib as f64 / secs
    );

    // Host → guest: stdin of `cat > /dev/null`.
    let t = Instant::now();
    let exec = agent
        .exec_in_guest(exec_request(&["sh", "-c", "cat > /dev/null"], true))
        .await?;
    let data = std::io::Cursor::new(vec![0u8; bytes as usize]);
    let written = agent.write_stdin(&exec.process, data).await?;
    agent.wait_process(&exec.process).await?;
    let secs = t.elapsed().as_secs_f64();
    ensure!(written == bytes, "wrote {written} of {bytes} bytes");
    println!(
        "BENCH host_to_guest MiB={mib} MiB_per_s={:.1}",
        mib as f64 / secs
    );
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("");
    let mut run_dir = None;
    let mut rpcs = 1000;
    let mut mib = 64;
    let mut i = 1;
    while i < args.len() {
        let value = args
            .get(i + 1)
            .with_context(|| format!("{} needs a value", args[i]))?;
        match args[i].as_str() {
            "--run-dir" => run_dir = Some(PathBuf::from(value)),
            "--rpcs" => rpcs = value.parse()?,
            "--mib" => mib = value.parse()?,
            other => bail!("unknown argument {other}"),
        }
        i += 2;
    }
    let run_dir = run_dir.context("--run-dir is required")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match mode {
        "check" => rt.block_on(check(&run_dir)),
        "bench" => rt.block_on(bench(&run_dir, rpcs.max(1), mib)),
        _ => bail!("usage: husk-agent-check check|bench --run-dir DIR [--rpcs N] [--mib N]"),
    }
}
