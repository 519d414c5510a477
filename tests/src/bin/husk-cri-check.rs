//! `husk-cri-check`: runs one CRI scenario against a containerd, as kubelet
//! would drive it, for a runtime handler; prints `key value` lines for the
//! tests to assert on, and tears down every pod it made on every path.
//!
//! ```text
//! husk-cri-check --socket PATH [--base DIR] [--handler NAME] [--peer-handler NAME]
//!                [--image REF] [--pause-image REF] [--workdir DIR] [--bridge NAME]
//!                [--pods N] [--parallel N] [--timeout SECS] SCENARIO
//! ```
//!
//! Scenarios: pod, restart, exec, volumes, stats, cleanup, bench (see
//! [`husk_tests::cri::scenario`]). The exit status is 0 when the scenario ran to
//! its end and the teardown left no error; the checks on the values are the
//! tests'.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use husk_tests::containerd::image::{DEFAULT_IMAGE, PAUSE_IMAGE};
use husk_tests::containerd::Cni;
use husk_tests::cri::scenario::{self, Options, SCENARIOS};

const USAGE: &str = "usage: husk-cri-check --socket PATH [--base DIR] [--handler NAME] \
[--peer-handler NAME] [--image REF] [--pause-image REF] [--workdir DIR] [--bridge NAME] \
[--pods N] [--parallel N] [--timeout SECS] SCENARIO";

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<(Options, String)> {
    let mut socket: Option<PathBuf> = None;
    let mut base: Option<PathBuf> = None;
    let mut o = Options {
        socket: PathBuf::new(),
        base: PathBuf::new(),
        handler: "runc".into(),
        peer_handler: "runc".into(),
        image: DEFAULT_IMAGE.into(),
        pause_image: PAUSE_IMAGE.into(),
        workdir: PathBuf::from(format!("/tmp/husk-cri-check-{}", std::process::id())),
        bridge: Cni::default().bridge,
        pods: 20,
        parallel: 1,
        timeout: Duration::from_secs(600),
    };
    let mut name = None;
    while let Some(arg) = args.next() {
        let mut value = |what: &str| args.next().with_context(|| format!("{arg} needs {what}"));
        match arg.as_str() {
            "--socket" => socket = Some(value("a path")?.into()),
            "--base" => base = Some(value("a directory")?.into()),
            "--handler" => o.handler = value("a name")?,
            "--peer-handler" => o.peer_handler = value("a name")?,
            "--image" => o.image = value("an image")?,
            "--pause-image" => o.pause_image = value("an image")?,
            "--workdir" => o.workdir = value("a directory")?.into(),
            "--bridge" => o.bridge = value("a name")?,
            "--pods" => o.pods = value("a number")?.parse().context("--pods")?,
            "--parallel" => o.parallel = value("a number")?.parse().context("--parallel")?,
            "--timeout" => {
                o.timeout = Duration::from_secs(value("seconds")?.parse().context("--timeout")?)
            }
            "-h" | "--help" => bail!("{USAGE}"),
            a if a.starts_with('-') => bail!("unknown option {a}\n{USAGE}"),
            a if name.is_none() => name = Some(a.to_string()),
            a => bail!("unexpected argument {a}\n{USAGE}"),
        }
    }
    let name = name.context(USAGE)?;
    if !SCENARIOS.contains(&name.as_str()) {
        bail!("unknown scenario {name:?}; known: {}", SCENARIOS.join(", "));
    }
    o.socket = socket.context("--socket is required")?;
    // containerd's base holds its socket (husk_tests::containerd's layout).
    o.base = match base {
        Some(b) => b,
        None => o
            .socket
            .parent()
            .context("the socket has no directory")?
            .to_path_buf(),
    };
    if o.pods == 0 || o.parallel == 0 {
        bail!("--pods and --parallel must be at least 1");
    }
    Ok((o, name))
}

fn main() -> ExitCode {
    let (opts, name) = match parse_args(std::env::args().skip(1)) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("husk-cri-check: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("husk-cri-check: error: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if rt.block_on(scenario::run(opts, &name)) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
