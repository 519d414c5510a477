//! `husk-testhost`: run a shell script on a KVM host that boots stock guests,
//! this machine's own or the emulated L2 (see docs/testing.md).
//!
//! ```text
//! husk-testhost [--file HOSTPATH[:NAME]]... [--timeout SECS] [--memory MIB]
//!               [--module NAME]... [--host-root] [--verbose] -- SCRIPT...
//! ```
//! The script's output goes to stdout as it comes; the host kind and the timings
//! go to stderr; the exit status is the script's, or 125 if the harness failed
//! (no KVM host, the test host broke, timeout).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use husk_tests::testhost::{self, Job};

const USAGE: &str = "usage: husk-testhost [--file HOSTPATH[:NAME]]... [--timeout SECS] \
[--memory MIB] [--module NAME]... [--host-root] [--verbose] -- SCRIPT...";

fn parse_args(args: &[String]) -> Result<Job> {
    let mut job = Job::new(String::new());
    let mut i = 0;
    let value = |i: usize| {
        args.get(i + 1)
            .cloned()
            .with_context(|| format!("{} needs a value\n{USAGE}", args[i]))
    };
    while i < args.len() {
        match args[i].as_str() {
            "--" => {
                job.script = args[i + 1..].join(" ");
                break;
            }
            "--file" => {
                let v = value(i)?;
                let (path, name) = match v.rsplit_once(':') {
                    Some((p, n)) if !n.is_empty() && !n.contains('/') => (PathBuf::from(p), n),
                    _ => {
                        let p = PathBuf::from(&v);
                        let n = p
                            .file_name()
                            .and_then(|n| n.to_str())
                            .with_context(|| format!("--file {v}: no file name"))?
                            .to_string();
                        job = job.file(p, n);
                        i += 2;
                        continue;
                    }
                };
                job = job.file(path, name);
                i += 2;
            }
            "--timeout" => {
                let secs: u64 = value(i)?.parse().context("--timeout: seconds")?;
                job = job.timeout(Duration::from_secs(secs));
                i += 2;
            }
            "--memory" => {
                job = job.memory_mib(value(i)?.parse().context("--memory: MiB")?);
                i += 2;
            }
            "--module" => {
                job = job.module(value(i)?);
                i += 2;
            }
            "--host-root" => {
                job = job.host_root(true);
                i += 1;
            }
            "--verbose" => {
                // Read by the harness: echo L2's console to stderr.
                std::env::set_var("HUSK_TESTHOST_VERBOSE", "1");
                i += 1;
            }
            "-h" | "--help" => bail!("{USAGE}"),
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if job.script.trim().is_empty() {
        bail!("no script given\n{USAGE}");
    }
    Ok(job)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// The exit status when the harness itself fails (like timeout(1) and env(1)).
const HARNESS_FAILED: u8 = 125;

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("husk-testhost: {e:#}");
            ExitCode::from(HARNESS_FAILED)
        }
    }
}

fn run() -> Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let job = parse_args(&args)?;
    let kind = testhost::detect()?;
    let mut stdout = std::io::stdout();
    let out = testhost::run_on(&kind, &job, &mut stdout)?;
    stdout.flush().ok();
    let mut timing = format!("husk testhost: exit {}", out.exit_code);
    if let Some(l2) = out.l2 {
        timing.push_str(&format!(
            ", L2 boot {} (to /init {}, modules {})",
            secs(out.host_boot),
            secs(l2.to_init),
            secs(l2.module_load)
        ));
    }
    timing.push_str(&format!(", total {}", secs(out.total)));
    eprintln!("{timing}");
    Ok(ExitCode::from(u8::try_from(out.exit_code).unwrap_or(255)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_files_and_script() {
        let here = env!("CARGO_MANIFEST_DIR");
        let cargo = format!("{here}/Cargo.toml");
        let job = parse_args(&args(&[
            "--file",
            &cargo,
            "--file",
            &format!("{cargo}:c.toml"),
            "--timeout",
            "9",
            "--",
            "echo",
            "hi;",
            "ls",
        ]))
        .unwrap();
        assert_eq!(job.script, "echo hi; ls");
        assert_eq!(job.files[0].name, "Cargo.toml");
        assert_eq!(job.files[1].name, "c.toml");
        assert_eq!(job.files[1].host_path, PathBuf::from(&cargo));
        assert_eq!(job.timeout, Duration::from_secs(9));
    }

    #[test]
    fn rejects_missing_script_and_unknown_flags() {
        assert!(parse_args(&args(&["--timeout", "3"])).is_err());
        assert!(parse_args(&args(&["--bogus", "--", "true"])).is_err());
        assert!(parse_args(&args(&["--timeout"])).is_err());
    }
}
