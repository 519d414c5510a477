//! Runs a job on this machine, whose /dev/kvm runs stock guests.

use std::io::{Read, Write};
use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::tempdir::TempDir;
use super::{tail, HostKind, Job, JobOutput, TestHostError};

/// How long to keep reading after the script exited, for output its leftover
/// background processes still hold open.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

pub fn run(kind: &HostKind, job: &Job, out: &mut dyn Write) -> Result<JobOutput, TestHostError> {
    let start = Instant::now();
    let tmp = TempDir::new()?;
    let files = tmp.path().join("files");
    std::fs::create_dir(&files).map_err(|e| TestHostError::io("creating the files dir", e))?;
    for f in &job.files {
        let target = std::fs::canonicalize(&f.host_path)
            .map_err(|e| TestHostError::io(format!("resolving {}", f.host_path.display()), e))?;
        symlink(&target, files.join(&f.name))
            .map_err(|e| TestHostError::io(format!("linking {}", f.name), e))?;
    }
    let script = tmp.path().join("job.sh");
    std::fs::write(&script, &job.script).map_err(|e| TestHostError::io("writing job.sh", e))?;

    let child = Command::new("sh")
        .arg("-c")
        .arg("exec 2>&1; exec sh \"$0\"")
        .arg(&script)
        .current_dir(&files)
        .env("HUSK_FILES", &files)
        .env("HUSK_TESTHOST", "native")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| TestHostError::io("spawning sh", e))?;
    let mut child = GroupGuard(Some(child));

    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let mut stdout = child.stdout()?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });

    let deadline = start + job.timeout;
    let mut output = Vec::new();
    let mut exited: Option<(i32, Instant)> = None;
    let mut eof = false;
    loop {
        if eof {
            std::thread::sleep(Duration::from_millis(20));
        } else {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(chunk) => {
                    let _ = out.write_all(&chunk);
                    output.extend_from_slice(&chunk);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => eof = true,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
        if eof && exited.is_some() {
            break;
        }
        if exited.is_none() {
            exited = child.try_wait()?.map(|code| (code, Instant::now()));
        }
        match exited {
            Some((_, at)) if at.elapsed() > DRAIN_GRACE => break,
            None if Instant::now() > deadline => {
                child.kill();
                return Err(TestHostError::Timeout {
                    timeout: job.timeout,
                    output_tail: tail(&String::from_utf8_lossy(&output), 30),
                    console_tail: "(native: no console)".into(),
                });
            }
            _ => {}
        }
    }
    let _ = out.flush();
    let exit_code = exited.map(|(c, _)| c).unwrap_or(-1);
    // Leftover background processes of the script go with it.
    child.kill();
    Ok(JobOutput {
        kind: kind.clone(),
        stdout: String::from_utf8_lossy(&output).into_owned(),
        exit_code,
        host_boot: Duration::ZERO,
        l2: None,
        total: start.elapsed(),
        console: String::new(),
    })
}

/// The script's process group, killed on drop.
struct GroupGuard(Option<Child>);

impl GroupGuard {
    fn stdout(&mut self) -> Result<std::process::ChildStdout, TestHostError> {
        self.0
            .as_mut()
            .and_then(|c| c.stdout.take())
            .ok_or_else(|| TestHostError::io("sh stdout", std::io::ErrorKind::BrokenPipe.into()))
    }

    /// The exit code once exited: the status, or 128 + signal like sh reports it.
    fn try_wait(&mut self) -> Result<Option<i32>, TestHostError> {
        let Some(c) = self.0.as_mut() else {
            return Ok(None);
        };
        let status = c
            .try_wait()
            .map_err(|e| TestHostError::io("waiting for sh", e))?;
        Ok(status.map(|s| {
            use std::os::unix::process::ExitStatusExt as _;
            s.code().or(s.signal().map(|sig| 128 + sig)).unwrap_or(-1)
        }))
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            if let Ok(pid) = i32::try_from(c.id()) {
                // SAFETY: kill(2) with a negative pid signals the process group we
                // created for this child (process_group(0)); it touches no memory.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    //! The native runner needs no KVM to be tested: it only runs sh.
    use super::*;

    fn kind() -> HostKind {
        HostKind::Native {
            module: "kvm_test".into(),
        }
    }

    #[test]
    fn merges_output_links_files_and_reports_the_status() {
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let job = Job::new(
            "echo out; echo err >&2; test \"$(pwd)\" = \"$HUSK_FILES\"; \
             head -n 1 data; echo \"$HUSK_TESTHOST\"; exit 5",
        )
        .file(manifest, "data");
        let mut streamed = Vec::new();
        let out = run(&kind(), &job, &mut streamed).unwrap();
        assert_eq!(out.exit_code, 5);
        assert_eq!(out.stdout, "out\nerr\n[package]\nnative\n");
        assert_eq!(streamed, out.stdout.as_bytes());
        assert_eq!(out.host_boot, Duration::ZERO);
    }

    #[test]
    fn a_killed_script_reports_128_plus_the_signal() {
        let out = run(&kind(), &Job::new("kill -9 $$"), &mut std::io::sink()).unwrap();
        assert_eq!(out.exit_code, 137);
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        let job = Job::new("echo started; sleep 600 & sleep 600").timeout(Duration::from_secs(1));
        let t = Instant::now();
        match run(&kind(), &job, &mut std::io::sink()) {
            Err(TestHostError::Timeout { output_tail, .. }) => assert_eq!(output_tail, "started"),
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(t.elapsed() < Duration::from_secs(10));
    }
}
