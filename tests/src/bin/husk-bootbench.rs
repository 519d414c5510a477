//! `husk-bootbench`: boot-time and idle-memory benchmark for `husk-vmm`.
//!
//! Runs on a KVM host (natively, or inside the emulated test host through `husk-testhost`).
//! For each vCPU/memory configuration it boots the guest N times with `--poweroff` and
//! measures, on the host's wall clock, `husk-vmm` process start → the agent's `HUSK-READY`
//! line on the console, and start → VMM exit. Then it boots once more without
//! `--poweroff`, lets the guest idle, and reads the VMM's RSS and PSS from
//! `/proc/<pid>/smaps_rollup`. It prints numbers only; there is no pass/fail.
//!
//! Usage: husk-bootbench --vmm PATH --kernel PATH --initramfs PATH [--runs N]
//!        [--configs 1:128,2:128,1:512,2:512] [--idle-ms MS]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const POWER_OFF_TIMEOUT: Duration = Duration::from_secs(30);

struct Options {
    vmm: PathBuf,
    kernel: PathBuf,
    initramfs: PathBuf,
    runs: usize,
    configs: Vec<(u8, u32)>,
    idle: Duration,
}

fn parse_args() -> Result<Options> {
    let mut args = std::env::args().skip(1);
    let mut vmm = None;
    let mut kernel = None;
    let mut initramfs = None;
    let mut runs = 10;
    let mut configs = vec![(1, 128), (2, 128), (1, 512), (2, 512)];
    let mut idle = Duration::from_millis(1500);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--vmm" => vmm = Some(PathBuf::from(value()?)),
            "--kernel" => kernel = Some(PathBuf::from(value()?)),
            "--initramfs" => initramfs = Some(PathBuf::from(value()?)),
            "--runs" => runs = value()?.parse().context("--runs")?,
            "--idle-ms" => idle = Duration::from_millis(value()?.parse().context("--idle-ms")?),
            "--configs" => {
                configs = value()?
                    .split(',')
                    .map(|c| {
                        let (v, m) = c.split_once(':').context("config is VCPUS:MIB")?;
                        Ok((v.parse()?, m.parse()?))
                    })
                    .collect::<Result<_>>()?
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    Ok(Options {
        vmm: vmm.context("--vmm is required")?,
        kernel: kernel.context("--kernel is required")?,
        initramfs: initramfs.context("--initramfs is required")?,
        runs,
        configs,
        idle,
    })
}

fn spawn(o: &Options, vcpus: u8, mib: u32, poweroff: bool) -> Result<Child> {
    let mut cmd = Command::new(&o.vmm);
    cmd.arg("--kernel")
        .arg(&o.kernel)
        .arg("--initramfs")
        .arg(&o.initramfs)
        .args(["--vcpus", &vcpus.to_string(), "--memory", &mib.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if poweroff {
        cmd.arg("--init-arg=--poweroff");
    }
    cmd.spawn()
        .with_context(|| format!("starting {}", o.vmm.display()))
}

/// Waits for the readiness line on the child's console; returns the time it arrived.
fn wait_ready(child: &mut Child) -> Result<Instant> {
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("HUSK-READY ") {
                let _ = tx.send(Instant::now());
            }
        }
    });
    rx.recv_timeout(BOOT_TIMEOUT)
        .context("no HUSK-READY line before the timeout")
}

struct Boot {
    ready: Duration,
    exit: Duration,
}

fn boot_once(o: &Options, vcpus: u8, mib: u32) -> Result<Boot> {
    let start = Instant::now();
    let mut child = spawn(o, vcpus, mib, true)?;
    let ready = match wait_ready(&mut child) {
        Ok(t) => t - start,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    // The guest powers off right after the readiness line; don't wait forever if it doesn't.
    let deadline = Instant::now() + POWER_OFF_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("no power-off within {POWER_OFF_TIMEOUT:?} of the readiness line");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let exit = start.elapsed();
    if !status.success() {
        bail!("husk-vmm exited with {status}");
    }
    Ok(Boot { ready, exit })
}

/// (RSS KiB, PSS KiB) of an idle VMM.
fn idle_memory(o: &Options, vcpus: u8, mib: u32) -> Result<(u64, u64)> {
    let mut child = spawn(o, vcpus, mib, false)?;
    let result = wait_ready(&mut child).and_then(|_| {
        std::thread::sleep(o.idle);
        let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", child.id()))?;
        let field = |name: &str| {
            rollup
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .with_context(|| format!("{name} missing in smaps_rollup"))
        };
        Ok((field("Rss:")?, field("Pss:")?))
    });
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    let mean = v.iter().sum::<f64>() / n as f64;
    let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
    (median, v[0], v[n - 1], sd)
}

fn main() -> Result<()> {
    let o = parse_args()?;
    println!(
        "| vCPUs | MiB | runs | start→ready median (ms) | min | max | stdev | start→exit median (ms) | idle RSS (KiB) | idle PSS (KiB) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &(vcpus, mib) in &o.configs {
        let mut boots = Vec::with_capacity(o.runs);
        let mut failures = 0;
        for _ in 0..o.runs {
            match boot_once(&o, vcpus, mib) {
                Ok(boot) => boots.push(boot),
                Err(e) => {
                    failures += 1;
                    eprintln!("husk-bootbench: {vcpus} vCPUs, {mib} MiB: {e:#}");
                }
            }
        }
        if boots.is_empty() {
            println!(
                "| {vcpus} | {mib} | 0 of {} succeeded | | | | | | | |",
                o.runs
            );
            continue;
        }
        let (r_med, r_min, r_max, r_sd) = stats(boots.iter().map(|b| ms(b.ready)).collect());
        let (e_med, ..) = stats(boots.iter().map(|b| ms(b.exit)).collect());
        let (rss, pss) = idle_memory(&o, vcpus, mib)?;
        let runs = if failures == 0 {
            o.runs.to_string()
        } else {
            format!("{} ({failures} failed)", boots.len())
        };
        println!(
            "| {vcpus} | {mib} | {runs} | {r_med:.0} | {r_min:.0} | {r_max:.0} | {r_sd:.0} | {e_med:.0} | {rss} | {pss} |"
        );
    }
    Ok(())
}
