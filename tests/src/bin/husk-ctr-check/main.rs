//! `husk-ctr-check`: drives containers in a running guest through the agent API, for the
//! container VM tests and benchmark. Runs on the KVM host next to `husk-vmm`.
//!
//! ```text
//! husk-ctr-check check --run-dir DIR --share DIR --busybox PATH [--tag TAG] [--only A,B]
//! husk-ctr-check bench --run-dir DIR --share DIR --busybox PATH [--tag TAG] [--n N]
//! ```
//! The VM must export `--share` with virtio-fs under `--tag`. Each container's rootfs is a
//! busybox tree the tool writes into the share (`<share>/<id>/rootfs`), which the guest sees
//! under `/run/husk/shared`. `check` prints `CHECK <name> ok ...` per scenario and exits
//! non-zero on the first failure. The scenarios of `limits`, `process` and `confinement` cover
//! the rest of the engine's "what to build" list (cgroup cpu limits and io, exec identity,
//! CloseStdin, ipc and network namespaces, readonly paths and bind mounts).

mod confinement;
mod limits;
mod process;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use husk_proto::client::{AgentClient, EventStream, ExitStatus};
use husk_proto::pb;
use husk_tests::oci;
use serde_json::{json, Value};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(120);
const GUEST_SHARE: &str = "/run/husk/shared";
const OUTPUT_LIMIT: usize = 1 << 20;

struct Ctx {
    agent: AgentClient,
    share: PathBuf,
    busybox: PathBuf,
}

/// What a finished process left.
struct Outcome {
    stdout: String,
    stderr: String,
    status: ExitStatus,
}

impl Outcome {
    /// Ok if the process exited 0; otherwise an error naming `what` with its output.
    fn succeeded(&self, what: &str) -> Result<()> {
        ensure!(
            self.status == ExitStatus::Exited(0),
            "{what} ended {:?}: {}{}",
            self.status,
            self.stdout,
            self.stderr
        );
        Ok(())
    }

    /// The exit code as a shell (and runc) reports it: 128+N for signal N.
    fn code(&self) -> i32 {
        match self.status {
            ExitStatus::Exited(c) => c,
            ExitStatus::Signaled(s) => 128 + s,
        }
    }
}

impl Ctx {
    /// Writes a fresh busybox rootfs for `id` into the share; returns its guest path.
    fn rootfs(&self, id: &str) -> Result<String> {
        let root = self.share.join(id).join("rootfs");
        oci::busybox_rootfs(&root, &self.busybox)
            .with_context(|| format!("writing {}", root.display()))?;
        Ok(format!("{GUEST_SHARE}/{id}/rootfs"))
    }

    async fn create(&self, id: &str, spec: &Value, stdin: bool) -> Result<()> {
        let tty = spec["process"]["terminal"].as_bool().unwrap_or(false);
        self.agent
            .create_container(pb::CreateContainerRequest {
                container_id: id.into(),
                oci_spec: serde_json::to_vec(spec)?,
                storages: vec![],
                tty,
                stdin,
            })
            .await
            .map(|_pid| ())
            .with_context(|| format!("creating {id}"))
    }

    /// Creates and starts `id`, feeds `stdin` (if any), and collects its output and status.
    async fn run(&self, id: &str, spec: &Value, stdin: Option<&[u8]>) -> Result<Outcome> {
        self.create(id, spec, stdin.is_some()).await?;
        let init = pb::ProcessRef {
            container_id: id.into(),
            exec_id: String::new(),
        };
        let outcome = self
            .collect(&init, stdin, || self.agent.start_container(id))
            .await?;
        self.agent.remove_container(id, false).await?;
        Ok(outcome)
    }

    async fn collect<F, Fut>(
        &self,
        process: &pb::ProcessRef,
        stdin: Option<&[u8]>,
        start: F,
    ) -> Result<Outcome>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<u32, husk_proto::client::ClientError>>,
    {
        let out = self.agent.read_stdout(process).await?;
        let err = self.agent.read_stderr(process).await?;
        start().await?;
        if let Some(data) = stdin {
            self.agent
                .write_stdin(process, std::io::Cursor::new(data.to_vec()))
                .await?;
        }
        let (stdout, stderr) =
            tokio::join!(out.read_to_end(OUTPUT_LIMIT), err.read_to_end(OUTPUT_LIMIT));
        let status = self.agent.wait_process(process).await?;
        Ok(Outcome {
            stdout: String::from_utf8_lossy(&stdout?).into_owned(),
            stderr: String::from_utf8_lossy(&stderr?).into_owned(),
            status,
        })
    }

    /// Runs `args` in the running container `id` as exec `exec_id`.
    async fn exec(&self, id: &str, exec_id: &str, args: &[&str]) -> Result<Outcome> {
        let process = pb::ProcessRef {
            container_id: id.into(),
            exec_id: exec_id.into(),
        };
        let out = async {
            let exec = self
                .agent
                .exec_process(pb::ExecProcessRequest {
                    container_id: id.into(),
                    exec_id: exec_id.into(),
                    oci_process: serde_json::to_vec(&oci::process(args, false))?,
                    stdin: false,
                })
                .await?;
            anyhow::Ok(exec.pid)
        };
        let pid = out.await?;
        let stdout = self.agent.read_stdout(&process).await?;
        let stderr = self.agent.read_stderr(&process).await?;
        let (o, e) = tokio::join!(
            stdout.read_to_end(OUTPUT_LIMIT),
            stderr.read_to_end(OUTPUT_LIMIT)
        );
        let status = self.agent.wait_process(&process).await?;
        ensure!(pid > 1);
        Ok(Outcome {
            stdout: String::from_utf8_lossy(&o?).into_owned(),
            stderr: String::from_utf8_lossy(&e?).into_owned(),
            status,
        })
    }

    async fn start_detached(&self, id: &str, spec: &Value) -> Result<u32> {
        self.create(id, spec, false).await?;
        Ok(self.agent.start_container(id).await?)
    }

    /// Runs `script` with `sh -c` in the guest's own root (outside containers).
    async fn guest_sh(&self, script: &str) -> Result<String> {
        let exec = self
            .agent
            .exec_in_guest(pb::ExecInGuestRequest {
                argv: vec!["sh".into(), "-c".into(), script.into()],
                ..Default::default()
            })
            .await?;
        let out = self
            .agent
            .read_stdout(&exec.process)
            .await?
            .read_to_end(OUTPUT_LIMIT)
            .await?;
        let status = self.agent.wait_process(&exec.process).await?;
        ensure!(
            status == ExitStatus::Exited(0),
            "guest `{script}` ended {status:?}"
        );
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

fn init(id: &str) -> pb::ProcessRef {
    pb::ProcessRef {
        container_id: id.into(),
        exec_id: String::new(),
    }
}

/// Own rootfs, own PID 1, own hostname, own cgroup; the agent is invisible.
async fn isolation(ctx: &Ctx) -> Result<()> {
    let id = "iso";
    let root = ctx.rootfs(id)?;
    std::fs::write(ctx.share.join(id).join("rootfs/marker"), "rootfs-of-iso\n")?;
    let script = "cat /marker; echo host=$(hostname); echo pid=$$; cat /proc/self/cgroup; \
                  ps -o pid,comm | tail -n +2; read line";
    let spec = oci::spec(&root, "iso-host", &["sh", "-c", script]);
    ctx.create(id, &spec, true).await?;
    let out = ctx.agent.read_stdout(&init(id)).await?;
    let pid = ctx.agent.start_container(id).await?;
    // While it waits on stdin: the guest sees it in the container's own cgroup.
    let guest_view = ctx.guest_sh(&format!("cat /proc/{pid}/cgroup")).await?;
    let listed = ctx.agent.list_processes(id).await?;
    ctx.agent
        .write_stdin(&init(id), std::io::Cursor::new(b"go\n".to_vec()))
        .await?;
    let stdout = String::from_utf8_lossy(&out.read_to_end(OUTPUT_LIMIT).await?).into_owned();
    let status = ctx.agent.wait_process(&init(id)).await?;
    ctx.agent.remove_container(id, false).await?;
    ensure!(
        status == ExitStatus::Exited(0),
        "ended {status:?}: {stdout}"
    );
    ensure!(
        stdout.contains("rootfs-of-iso"),
        "not its own rootfs: {stdout}"
    );
    ensure!(stdout.contains("host=iso-host"), "hostname: {stdout}");
    ensure!(stdout.contains("pid=1\n"), "not PID 1: {stdout}");
    ensure!(stdout.contains("0::/\n"), "cgroup namespace: {stdout}");
    let procs: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with(char::is_numeric))
        .collect();
    ensure!(
        procs
            .iter()
            .all(|l| !l.contains("init") && !l.contains("husk")),
        "the agent is visible: {procs:?}"
    );
    ensure!(procs.len() <= 4, "sees too many processes: {procs:?}");
    ensure!(
        guest_view.trim() == "0::/husk/iso",
        "guest view of its cgroup: {guest_view}"
    );
    ensure!(
        listed.contains(&pid),
        "ListProcesses {listed:?} lacks init {pid}"
    );
    println!(
        "CHECK isolation ok pid=1 hostname cgroup=/husk/iso procs={}",
        procs.len()
    );
    Ok(())
}

/// stdin, stdout, stderr and an exit code.
async fn stdio(ctx: &Ctx) -> Result<()> {
    let root = ctx.rootfs("io")?;
    let spec = oci::spec(
        &root,
        "io",
        &["sh", "-c", "cat; echo to-stderr >&2; exit 3"],
    );
    let o = ctx.run("io", &spec, Some(b"hello through stdin\n")).await?;
    ensure!(o.stdout == "hello through stdin\n", "stdout {:?}", o.stdout);
    ensure!(o.stderr == "to-stderr\n", "stderr {:?}", o.stderr);
    ensure!(o.status == ExitStatus::Exited(3), "status {:?}", o.status);
    println!("CHECK stdio ok exit=3");
    Ok(())
}

/// Exec into a running container; exit codes and signals, reported exactly.
async fn exec_and_signals(ctx: &Ctx, events: &mut EventStream) -> Result<()> {
    let id = "ex";
    let root = ctx.rootfs(id)?;
    ctx.start_detached(id, &oci::spec(&root, "ex-host", &["sleep", "1000"]))
        .await?;
    let o = ctx
        .exec(
            id,
            "e1",
            &["sh", "-c", "echo exec-ok $(hostname) $$; exit 7"],
        )
        .await?;
    ensure!(
        o.stdout.starts_with("exec-ok ex-host "),
        "exec stdout {:?}",
        o.stdout
    );
    ensure!(
        o.status == ExitStatus::Exited(7),
        "exec status {:?}",
        o.status
    );
    // A process that is not the container's PID 1 dies of SIGTERM.
    let sleeper = pb::ProcessRef {
        container_id: id.into(),
        exec_id: "e2".into(),
    };
    ctx.agent
        .exec_process(pb::ExecProcessRequest {
            container_id: id.into(),
            exec_id: "e2".into(),
            oci_process: serde_json::to_vec(&oci::process(&["sleep", "1000"], false))?,
            stdin: false,
        })
        .await?;
    ctx.agent.signal_process(&sleeper, libc::SIGTERM).await?;
    let s = ctx.agent.wait_process(&sleeper).await?;
    ensure!(
        s == ExitStatus::Signaled(libc::SIGTERM),
        "SIGTERM'd exec ended {s:?}"
    );
    // The init (PID 1 of its namespace, no handler) only dies of SIGKILL: 137.
    ctx.agent.signal_process(&init(id), libc::SIGKILL).await?;
    let s = ctx.agent.wait_process(&init(id)).await?;
    ensure!(
        s == ExitStatus::Signaled(libc::SIGKILL),
        "SIGKILL'd init ended {s:?}"
    );
    // The event stream reported the init's exit.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        ensure!(Instant::now() < deadline, "no exit event for the init");
        let e = tokio::time::timeout(Duration::from_secs(10), events.next_event()).await??;
        if let Some(pb::event::Kind::Exited(x)) = e {
            if x.process
                .as_ref()
                .is_some_and(|p| p.container_id == id && p.exec_id.is_empty())
            {
                break;
            }
        }
    }
    // A second wait still answers (the container remembers its init's exit).
    let again = ctx.agent.wait_process(&init(id)).await?;
    ensure!(again == s, "second wait {again:?}");
    ctx.agent.remove_container(id, false).await?;
    println!("CHECK exec ok exec-exit=7 sigterm=143 sigkill=137 event");
    Ok(())
}

/// A terminal: `tty` names a pty and a resize shows in `stty size`. The ids are
/// as long as CRI's (64 characters), as the console sockets' paths must fit.
async fn terminal(ctx: &Ctx) -> Result<()> {
    let long_id = format!("tty{}", "0".repeat(61));
    let id = long_id.as_str();
    let root = ctx.rootfs(id)?;
    let mut spec = oci::spec(&root, "tty", &["sh"]);
    spec["process"]["terminal"] = json!(true);
    ctx.create(id, &spec, true).await?;
    let out = ctx.agent.read_stdout(&init(id)).await?;
    ctx.agent.start_container(id).await?;
    ctx.agent.resize_tty(&init(id), 100, 40).await?;
    // An exec'd process with a terminal of its own.
    let exec_id = "e".repeat(64);
    let e = pb::ProcessRef {
        container_id: id.into(),
        exec_id: exec_id.clone(),
    };
    ctx.agent
        .exec_process(pb::ExecProcessRequest {
            container_id: id.into(),
            exec_id,
            oci_process: serde_json::to_vec(&oci::process(&["sh", "-c", "tty; exit 4"], true))?,
            stdin: false,
        })
        .await?;
    let exec_out = ctx
        .agent
        .read_stdout(&e)
        .await?
        .read_to_end(OUTPUT_LIMIT)
        .await?;
    let exec_out = String::from_utf8_lossy(&exec_out).into_owned();
    let exec_status = ctx.agent.wait_process(&e).await?;
    ensure!(exec_out.contains("/dev/pts/1"), "exec tty: {exec_out:?}");
    ensure!(
        exec_status == ExitStatus::Exited(4),
        "exec tty ended {exec_status:?}"
    );
    ctx.agent
        .write_stdin(
            &init(id),
            std::io::Cursor::new(b"tty; stty size; exit 5\n".to_vec()),
        )
        .await?;
    let text = String::from_utf8_lossy(&out.read_to_end(OUTPUT_LIMIT).await?).into_owned();
    let s = ctx.agent.wait_process(&init(id)).await?;
    ctx.agent.remove_container(id, false).await?;
    ensure!(text.contains("/dev/pts/0"), "tty: {text:?}");
    ensure!(text.contains("40 100"), "stty size after resize: {text:?}");
    ensure!(
        s == ExitStatus::Exited(5),
        "tty shell ended {s:?}: {text:?}"
    );
    println!("CHECK tty ok /dev/pts/0 size=40x100 exec-tty=/dev/pts/1");
    Ok(())
}

/// 64 MiB under a 32 MiB limit: an OOM event and 137.
async fn oom(ctx: &Ctx, events: &mut EventStream) -> Result<()> {
    let id = "oom";
    let root = ctx.rootfs(id)?;
    let mut spec = oci::spec(
        &root,
        "oom",
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
    );
    spec["linux"]["resources"] = json!({"memory": {"limit": 32u64 << 20}});
    ctx.create(id, &spec, false).await?;
    let o = ctx
        .collect(&init(id), None, || ctx.agent.start_container(id))
        .await?;
    let stats = ctx.agent.stats_container(id).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut saw_oom = false;
    while !saw_oom && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), events.next_event()).await {
            Ok(Ok(Some(pb::event::Kind::Oom(e)))) if e.container_id == id => saw_oom = true,
            Ok(Ok(Some(_))) => {}
            other => bail!("event stream: {other:?}"),
        }
    }
    ctx.agent.remove_container(id, false).await?;
    ensure!(o.code() == 137, "exit {:?} stderr {:?}", o.status, o.stderr);
    ensure!(saw_oom, "no OOM event");
    ensure!(stats.oom_kills >= 1, "stats oom_kills {}", stats.oom_kills);
    ensure!(
        stats.memory_limit_bytes == 32 << 20,
        "limit {}",
        stats.memory_limit_bytes
    );
    println!("CHECK oom ok exit=137 event oom_kills={}", stats.oom_kills);
    Ok(())
}

/// A fork bomb under pids.max=10 stays at 10; the agent stays up.
async fn fork_bomb(ctx: &Ctx) -> Result<()> {
    let id = "bomb";
    let root = ctx.rootfs(id)?;
    let mut spec = oci::spec(
        &root,
        "bomb",
        &["sh", "-c", "b() { b | b & }; b; sleep 1000"],
    );
    spec["linux"]["resources"] = json!({"pids": {"limit": 10}});
    ctx.start_detached(id, &spec).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stats = ctx.agent.stats_container(id).await?;
    ctx.agent
        .health()
        .await
        .context("the agent after the fork bomb")?;
    // kill --all: every process of the container, not only its init.
    ctx.agent.signal_container(id, libc::SIGKILL).await?;
    let init_status = ctx.agent.wait_process(&init(id)).await?;
    // Killed processes leave the cgroup as they finish dying.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut left = ctx.agent.list_processes(id).await?;
    while !left.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = ctx.agent.list_processes(id).await?;
    }
    ctx.agent.remove_container(id, false).await?;
    ensure!(
        init_status == ExitStatus::Signaled(libc::SIGKILL),
        "init ended {init_status:?}"
    );
    ensure!(left.is_empty(), "processes left after kill --all: {left:?}");
    ensure!(stats.pids_limit == 10, "pids.max {}", stats.pids_limit);
    ensure!(
        stats.pids >= 2 && stats.pids <= 10,
        "pids.current {}",
        stats.pids
    );
    println!(
        "CHECK pids ok current={} max=10 agent-alive kill-all",
        stats.pids
    );
    Ok(())
}

/// `p NAME CMD` runs `CMD` with `sh -c` and prints one line: `NAME: rc=N` and what `CMD`
/// printed (stdout and stderr, lines joined by spaces). A check then reads a command's exit
/// code and its message together, not a message from anywhere in the output.
const PROBE_FN: &str = "p() { out=$(sh -c \"$2\" 2>&1); echo \"$1: rc=$?\" $out; }; ";

/// The exit code and output that `p NAME ...` ([`PROBE_FN`]) printed in `out`.
fn probe<'a>(out: &'a str, name: &str) -> Result<(i32, &'a str)> {
    let prefix = format!("{name}: rc=");
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .with_context(|| format!("no `{name}` line in {out:?}"))?;
    let (rc, text) = line.split_once(' ').unwrap_or((line, ""));
    let rc = rc.parse().with_context(|| format!("{name}: rc {rc:?}"))?;
    Ok((rc, text))
}

const SECURITY_PROBE: &str = "p touch 'touch /newfile'; p secret 'cat /etc/secret'; \
    p ping 'ping -c 1 -W 1 127.0.0.1'; p mkdir 'mkdir /tmp/d'; \
    if [ -d /tmp/d ]; then echo mkdir-made=yes; else echo mkdir-made=no; fi";

/// Read-only rootfs, masked path, a dropped capability, a seccomp profile; and the same
/// probe without them, which must succeed (so the checks can fail).
async fn security(ctx: &Ctx) -> Result<()> {
    let mut outs = Vec::new();
    for (id, locked) in [("sec-open", false), ("sec-locked", true)] {
        let root = ctx.rootfs(id)?;
        std::fs::write(ctx.share.join(id).join("rootfs/etc/secret"), "topsecret\n")?;
        let script = format!("{PROBE_FN}{SECURITY_PROBE}");
        let mut spec = oci::spec(&root, id, &["sh", "-c", &script]);
        if locked {
            spec["root"]["readonly"] = json!(true);
            spec["linux"]["maskedPaths"]
                .as_array_mut()
                .context("maskedPaths")?
                .push(json!("/etc/secret"));
            let caps: Vec<&str> = oci::DEFAULT_CAPS
                .iter()
                .copied()
                .filter(|c| *c != "CAP_NET_RAW")
                .collect();
            for set in ["bounding", "effective", "permitted"] {
                spec["process"]["capabilities"][set] = json!(caps);
            }
            spec["linux"]["seccomp"] = oci::seccomp_deny(&["mkdir", "mkdirat"]);
        }
        let o = ctx.run(id, &spec, None).await?;
        o.succeeded(id)?;
        outs.push(o.stdout);
    }
    let (open, locked) = (&outs[0], &outs[1]);
    let denied = |text: &str| text.contains("ermission denied") || text.contains("not permitted");
    // The control: without the restrictions every probe works.
    ensure!(probe(open, "touch")?.0 == 0, "open touch: {open}");
    ensure!(
        probe(open, "secret")? == (0, "topsecret"),
        "open secret: {open}"
    );
    ensure!(probe(open, "mkdir")? == (0, ""), "open mkdir: {open}");
    ensure!(open.contains("mkdir-made=yes"), "open mkdir: {open}");
    ensure!(!denied(probe(open, "ping")?.1), "open ping: {open}");
    let (rc, text) = probe(locked, "touch")?;
    ensure!(
        rc != 0 && text.contains("Read-only file system"),
        "ro root: {locked}"
    );
    ensure!(probe(locked, "secret")? == (0, ""), "masked path: {locked}");
    let (rc, text) = probe(locked, "ping")?;
    ensure!(
        rc == 1 && denied(text),
        "ping without CAP_NET_RAW: {locked}"
    );
    // mkdir itself failed with EPERM (the seccomp profile's errnoRet), and made nothing.
    let (rc, text) = probe(locked, "mkdir")?;
    ensure!(
        rc == 1 && text.contains("/tmp/d") && text.ends_with("Operation not permitted"),
        "seccomp mkdir: {locked}"
    );
    ensure!(locked.contains("mkdir-made=no"), "seccomp mkdir: {locked}");
    println!("CHECK security ok readonly masked cap_net_raw seccomp (and the open control passes)");
    Ok(())
}

/// The spec's user, groups, env, cwd, rlimits, sysctls and no_new_privileges reach the process.
async fn process_attributes(ctx: &Ctx) -> Result<()> {
    let id = "attrs";
    let root = ctx.rootfs(id)?;
    let script = "id; echo FOO=$FOO; pwd; ulimit -n; cat /proc/sys/kernel/msgmax; \
                  grep NoNewPrivs /proc/self/status; grep CapEff /proc/self/status";
    let mut spec = oci::spec(&root, id, &["sh", "-c", script]);
    spec["process"]["user"] = json!({"uid": 65534, "gid": 65534, "additionalGids": [1234]});
    spec["process"]["env"] = json!(["PATH=/bin", "FOO=bar"]);
    spec["process"]["cwd"] = json!("/tmp");
    spec["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 123, "soft": 123}]);
    spec["linux"]["sysctl"] = json!({"kernel.msgmax": "4096"});
    let o = ctx.run(id, &spec, None).await?;
    o.succeeded(id)?;
    let out = &o.stdout;
    ensure!(
        out.contains("uid=65534(nobody) gid=65534(nobody) groups=65534(nobody),1234")
            || out.contains("uid=65534(nobody) gid=65534(nobody) groups=1234"),
        "id: {out}"
    );
    for want in [
        "FOO=bar\n",
        "/tmp\n",
        "123\n",
        "4096\n",
        "NoNewPrivs:\t1",
        "CapEff:\t0000000000000000",
    ] {
        ensure!(out.contains(want), "{want:?} missing: {out}");
    }
    println!("CHECK process ok user=65534 groups env cwd rlimit sysctl no_new_privs");
    Ok(())
}

/// Files the container writes land in the host's share with the same content.
async fn files_reach_the_host(ctx: &Ctx) -> Result<()> {
    let id = "files";
    let root = ctx.rootfs(id)?;
    let script = "seq 1 10000 > /out.txt; echo hello-host > /data/note; sync";
    let o = ctx
        .run(id, &oci::spec(&root, id, &["sh", "-c", script]), None)
        .await?;
    o.succeeded(id)?;
    let out = std::fs::read_to_string(ctx.share.join(id).join("rootfs/out.txt"))?;
    let want: String = (1..=10000).map(|i| format!("{i}\n")).collect();
    ensure!(
        out == want,
        "out.txt differs on the host ({} bytes)",
        out.len()
    );
    let note = std::fs::read_to_string(ctx.share.join(id).join("rootfs/data/note"))?;
    ensure!(note == "hello-host\n", "note {note:?}");
    println!("CHECK files ok {} bytes", out.len());
    Ok(())
}

/// Two containers share a tmpfs volume, and nothing else.
async fn shared_volume(ctx: &Ctx) -> Result<()> {
    ctx.agent
        .add_storage(pb::Storage {
            id: "vol1".into(),
            source: "tmpfs".into(),
            fstype: "tmpfs".into(),
            options: vec!["size=16m".into()],
            mount_point: "/run/husk/volumes/vol1".into(),
        })
        .await?;
    let volume = json!({"destination": "/vol", "type": "bind", "source": "/run/husk/volumes/vol1",
                        "options": ["rbind", "rw"]});
    let mut specs = Vec::new();
    for (id, script) in [
        (
            "vol-a",
            "echo from-a > /vol/a.txt; echo private > /tmp/private.txt; exec sleep 1000",
        ),
        (
            "vol-b",
            "cat /vol/a.txt; ls /tmp; ps -o comm | grep -c sleep; true",
        ),
    ] {
        let root = ctx.rootfs(id)?;
        let mut spec = oci::spec(&root, id, &["sh", "-c", script]);
        spec["mounts"]
            .as_array_mut()
            .context("mounts")?
            .push(volume.clone());
        specs.push(spec);
    }
    ctx.start_detached("vol-a", &specs[0]).await?;
    // Wait until a wrote its file.
    let deadline = Instant::now() + Duration::from_secs(20);
    while ctx
        .guest_sh("cat /run/husk/volumes/vol1/a.txt 2>/dev/null || true")
        .await?
        .trim()
        != "from-a"
    {
        ensure!(Instant::now() < deadline, "a never wrote to the volume");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b = ctx.run("vol-b", &specs[1], None).await?;
    ctx.agent.remove_container("vol-a", true).await?;
    ctx.agent.remove_storage("vol1").await?;
    let lines: Vec<&str> = b.stdout.lines().collect();
    ensure!(
        lines.first() == Some(&"from-a"),
        "b does not see the volume: {:?}",
        b.stdout
    );
    ensure!(
        !b.stdout.contains("private.txt"),
        "b sees a's /tmp: {:?}",
        b.stdout
    );
    ensure!(
        lines.last() == Some(&"0"),
        "b sees a's processes: {:?}",
        b.stdout
    );
    println!("CHECK volume ok shared=/vol private=/tmp,pids");
    Ok(())
}

/// Pause freezes a busy loop (no CPU progress); resume continues it.
async fn pause_resume(ctx: &Ctx) -> Result<()> {
    let id = "busy";
    let root = ctx.rootfs(id)?;
    ctx.start_detached(
        id,
        &oci::spec(&root, id, &["sh", "-c", "while :; do :; done"]),
    )
    .await?;
    let cpu = |s: &pb::ContainerStats| s.cpu_usage_ns;
    tokio::time::sleep(Duration::from_millis(500)).await;
    ctx.agent.set_paused(id, true).await?;
    let frozen = ctx.agent.stats_container(id).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let still = ctx.agent.stats_container(id).await?;
    // Exec into a paused container is refused clearly.
    let refused = ctx
        .agent
        .exec_process(pb::ExecProcessRequest {
            container_id: id.into(),
            exec_id: "x".into(),
            oci_process: serde_json::to_vec(&oci::process(&["true"], false))?,
            stdin: false,
        })
        .await
        .err()
        .and_then(|e| e.code());
    ctx.agent.set_paused(id, false).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let resumed = ctx.agent.stats_container(id).await?;
    ctx.agent.remove_container(id, true).await?;
    ensure!(frozen.frozen && still.frozen, "not frozen");
    ensure!(
        cpu(&still) == cpu(&frozen),
        "CPU advanced while paused: {} -> {}",
        cpu(&frozen),
        cpu(&still)
    );
    ensure!(
        cpu(&resumed) > cpu(&still) + 100_000_000,
        "no progress after resume: {} -> {}",
        cpu(&still),
        cpu(&resumed)
    );
    ensure!(!resumed.frozen, "still frozen");
    ensure!(
        refused == Some(tonic::Code::FailedPrecondition),
        "exec while paused: {refused:?}"
    );
    println!(
        "CHECK pause ok frozen-cpu-delta=0 resumed-cpu-delta={}ms",
        (cpu(&resumed) - cpu(&still)) / 1_000_000
    );
    Ok(())
}

/// UpdateContainer changes limits; bad requests get clear codes.
async fn update_and_errors(ctx: &Ctx) -> Result<()> {
    let id = "upd";
    let root = ctx.rootfs(id)?;
    ctx.start_detached(id, &oci::spec(&root, id, &["sleep", "1000"]))
        .await?;
    ctx.agent
        .update_container(
            id,
            br#"{"memory":{"limit":67108864},"pids":{"limit":20}}"#.to_vec(),
        )
        .await?;
    let s = ctx.agent.stats_container(id).await?;
    ensure!(
        s.memory_limit_bytes == 64 << 20 && s.pids_limit == 20,
        "after update: {s:?}"
    );
    let code = |r: Result<(), husk_proto::client::ClientError>| r.err().and_then(|e| e.code());
    ensure!(
        code(ctx.agent.remove_container(id, false).await) == Some(tonic::Code::FailedPrecondition)
    );
    ensure!(code(ctx.agent.remove_container("nope", true).await) == Some(tonic::Code::NotFound));
    let dup = ctx
        .create(id, &oci::spec(&root, id, &["true"]), false)
        .await;
    ensure!(dup.is_err(), "a second container {id} was created");
    let bad = ctx
        .agent
        .create_container(pb::CreateContainerRequest {
            container_id: "bad".into(),
            oci_spec: b"{not json".to_vec(),
            ..Default::default()
        })
        .await;
    ensure!(bad.err().and_then(|e| e.code()) == Some(tonic::Code::InvalidArgument));
    let missing = oci::spec("/run/husk/shared/none/rootfs", "x", &["true"]);
    let failed = ctx.create("norootfs", &missing, false).await;
    ensure!(failed.is_err(), "a container without a rootfs was created");
    ctx.agent.remove_container(id, true).await?;
    println!("CHECK update ok memory=64MiB pids=20 errors");
    Ok(())
}

/// Nothing is left behind: no containers' cgroups, bundles, state or processes.
async fn nothing_left(ctx: &Ctx) -> Result<()> {
    let left = ctx
        .guest_sh(
            "for d in /sys/fs/cgroup/husk/*/ /run/husk/containers/* /run/husk/state/*; do \
             [ -e \"$d\" ] && echo \"$d\"; done; true",
        )
        .await?;
    ensure!(left.trim().is_empty(), "left behind: {left}");
    let procs = ctx
        .guest_sh("ps -o comm | grep -c -e sleep -e 'sh -c' || true")
        .await?;
    ensure!(procs.trim() == "0", "processes left: {procs}");
    println!("CHECK cleanup ok");
    Ok(())
}

async fn connect(run_dir: &Path, tag: &str) -> Result<AgentClient> {
    let agent = AgentClient::connect_when_ready(run_dir, CONNECT_TIMEOUT).await?;
    agent
        .add_storage(pb::Storage {
            id: "share".into(),
            source: tag.into(),
            fstype: "virtiofs".into(),
            options: vec![],
            mount_point: GUEST_SHARE.into(),
        })
        .await
        .context("mounting the share")?;
    Ok(agent)
}

/// Runs the scenarios in order, or only those named in `only` (for debugging).
async fn check(ctx: &Ctx, only: &[String]) -> Result<()> {
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    let mut events = ctx.agent.events().await?;
    macro_rules! scenario {
        ($name:literal, $call:expr) => {
            if wanted($name) {
                $call.await.with_context(|| format!("scenario {}", $name))?;
            }
        };
    }
    scenario!("isolation", isolation(ctx));
    scenario!("stdio", stdio(ctx));
    scenario!("exec", exec_and_signals(ctx, &mut events));
    scenario!("tty", terminal(ctx));
    scenario!("oom", oom(ctx, &mut events));
    scenario!("pids", fork_bomb(ctx));
    scenario!("security", security(ctx));
    scenario!("process", process_attributes(ctx));
    scenario!("files", files_reach_the_host(ctx));
    scenario!("volume", shared_volume(ctx));
    scenario!("pause", pause_resume(ctx));
    scenario!("update", update_and_errors(ctx));
    scenario!("cpu", limits::cpu(ctx));
    scenario!("io", limits::io(ctx));
    scenario!("exec-identity", process::exec_identity(ctx));
    scenario!("close-stdin", process::close_stdin(ctx));
    scenario!("namespaces", confinement::namespaces(ctx));
    scenario!("ro-paths", confinement::readonly_paths_and_binds(ctx));
    scenario!("cleanup", nothing_left(ctx));
    Ok(())
}

/// Container create+start latency (and to exit and removal), `n` times.
async fn bench(ctx: &Ctx, n: usize) -> Result<()> {
    let root = ctx.rootfs("bench")?;
    let mut create_start = Vec::new();
    let mut total = Vec::new();
    for i in 0..n {
        let id = format!("bench{i}");
        // All share one rootfs: it is read-only here.
        let mut spec = oci::spec(&root, &id, &["true"]);
        spec["root"]["readonly"] = json!(true);
        let t0 = Instant::now();
        ctx.create(&id, &spec, false).await?;
        ctx.agent.start_container(&id).await?;
        let started = t0.elapsed();
        let s = ctx.agent.wait_process(&init(&id)).await?;
        ctx.agent.remove_container(&id, false).await?;
        ensure!(s == ExitStatus::Exited(0), "bench container ended {s:?}");
        create_start.push(started);
        total.push(t0.elapsed());
    }
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    let stat = |v: &mut Vec<Duration>| {
        v.sort();
        (ms(&v[v.len() / 2]), ms(&v[0]), ms(&v[v.len() - 1]))
    };
    let (m, lo, hi) = stat(&mut create_start);
    println!("BENCH container create+start n={n} median={m:.1}ms min={lo:.1}ms max={hi:.1}ms");
    let (m, lo, hi) = stat(&mut total);
    println!("BENCH container create+start+exit+remove n={n} median={m:.1}ms min={lo:.1}ms max={hi:.1}ms");
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("");
    let (mut run_dir, mut share, mut busybox) = (None, None, None);
    let (mut tag, mut n) = ("husk".to_string(), 10usize);
    let mut only = Vec::new();
    let mut i = 1;
    while i < args.len() {
        let value = args
            .get(i + 1)
            .with_context(|| format!("{} needs a value", args[i]))?;
        match args[i].as_str() {
            "--run-dir" => run_dir = Some(PathBuf::from(value)),
            "--share" => share = Some(PathBuf::from(value)),
            "--busybox" => busybox = Some(PathBuf::from(value)),
            "--tag" => tag = value.clone(),
            "--n" => n = value.parse().context("--n")?,
            "--only" => only = value.split(',').map(str::to_owned).collect(),
            other => bail!("unknown option {other}"),
        }
        i += 2;
    }
    let run_dir = run_dir.context("--run-dir is required")?;
    let share = share.context("--share is required")?;
    let busybox = busybox.context("--busybox is required")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let agent = connect(&run_dir, &tag).await?;
        let ctx = Ctx {
            agent,
            share,
            busybox,
        };
        match mode {
            "check" => check(&ctx, &only).await,
            "bench" => bench(&ctx, n.max(1)).await,
            // Debugging: a shell command in the guest's root, with the share mounted.
            "guest-sh" => {
                let script = std::env::var("HUSK_GUEST_SH").context("HUSK_GUEST_SH")?;
                let exec = ctx
                    .agent
                    .exec_in_guest(pb::ExecInGuestRequest {
                        argv: vec!["sh".into(), "-c".into(), format!("{script} 2>&1")],
                        ..Default::default()
                    })
                    .await?;
                let out = ctx.agent.read_stdout(&exec.process).await?;
                print!(
                    "{}",
                    String::from_utf8_lossy(&out.read_to_end(OUTPUT_LIMIT).await?)
                );
                println!(
                    "guest-sh: {:?}",
                    ctx.agent.wait_process(&exec.process).await?
                );
                Ok(())
            }
            _ => {
                bail!("usage: husk-ctr-check check|bench --run-dir DIR --share DIR --busybox PATH")
            }
        }
    })
}
