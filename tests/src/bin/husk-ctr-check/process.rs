//! Processes of a container: what an exec'd process runs as, and CloseStdin.

use std::io::Cursor;
use std::time::Duration;

use anyhow::{bail, ensure, Result};
use husk_proto::client::{ClientError, ExitStatus, OutputStream};
use husk_proto::pb;
use husk_tests::oci;
use serde_json::json;

use crate::{init, Ctx, OUTPUT_LIMIT};

/// ExecProcess runs in the container's cgroup and namespaces, as the user, groups, env and cwd
/// its OCI process names (not the init's): seen from inside (`id`, /proc/self/status, `$FOO`,
/// `pwd`, /proc/self/cgroup against the init's) and from the guest (/proc/<pid>/cgroup, the
/// namespace links of the exec against the init's, ListProcesses).
pub async fn exec_identity(ctx: &Ctx) -> Result<()> {
    let id = "exec-id";
    let root = ctx.rootfs(id)?;
    let mut spec = oci::spec(&root, id, &["sleep", "1000"]);
    spec["process"]["env"] = json!(["PATH=/bin", "INIT_ONLY=1"]);
    let init_pid = ctx.start_detached(id, &spec).await?;
    let script = "id; grep -e '^Uid:' -e '^Gid:' -e '^Groups:' /proc/self/status; \
                  echo FOO=$FOO INIT_ONLY=$INIT_ONLY; pwd; \
                  echo self=$(cat /proc/$$/cgroup) init=$(cat /proc/1/cgroup); read go";
    let mut process = oci::process(&["sh", "-c", script], false);
    process["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [2000, 3000]});
    process["env"] = json!(["PATH=/bin", "FOO=bar"]);
    process["cwd"] = json!("/tmp");
    let exec = ctx
        .agent
        .exec_process(pb::ExecProcessRequest {
            container_id: id.into(),
            exec_id: "as-user".into(),
            oci_process: serde_json::to_vec(&process)?,
            stdin: true,
        })
        .await?;
    let (p, pid) = (exec.process, exec.pid);
    let out = ctx.agent.read_stdout(&p).await?;
    let err = ctx.agent.read_stderr(&p).await?;
    // While it waits on stdin: where the guest sees it.
    let guest = ctx
        .guest_sh(&format!(
            "cat /proc/{pid}/cgroup; for n in pid mnt ipc uts cgroup net; do \
             [ \"$(readlink /proc/{pid}/ns/$n)\" = \"$(readlink /proc/{init_pid}/ns/$n)\" ] \
             && echo same-$n; done; true"
        ))
        .await?;
    let listed = ctx.agent.list_processes(id).await?;
    ctx.agent
        .write_stdin(&p, Cursor::new(b"go\n".to_vec()))
        .await?;
    let (o, e) = tokio::join!(out.read_to_end(OUTPUT_LIMIT), err.read_to_end(OUTPUT_LIMIT));
    let (o, e) = (String::from_utf8_lossy(&o?).into_owned(), e?);
    let status = ctx.agent.wait_process(&p).await?;
    ctx.agent.remove_container(id, true).await?;
    ensure!(
        status == ExitStatus::Exited(0),
        "exec ended {status:?}: {o}{}",
        String::from_utf8_lossy(&e)
    );
    ensure!(o.starts_with("uid=1000 gid=1000 groups="), "id: {o}");
    for want in [
        "Uid:\t1000\t1000\t1000\t1000\n",
        "Gid:\t1000\t1000\t1000\t1000\n",
        "Groups:\t2000 3000",
        "FOO=bar INIT_ONLY=\n",
        "/tmp\n",
        // Both at the root of the container's cgroup namespace: the same cgroup.
        "self=0::/ init=0::/\n",
    ] {
        ensure!(o.contains(want), "{want:?} missing: {o}");
    }
    let mut lines = guest.lines();
    ensure!(
        lines.next() == Some("0::/husk/exec-id"),
        "the guest's view of the exec's cgroup: {guest}"
    );
    let same: Vec<&str> = lines.collect();
    ensure!(
        same == [
            "same-pid",
            "same-mnt",
            "same-ipc",
            "same-uts",
            "same-cgroup",
            "same-net"
        ],
        "namespaces the exec shares with the init: {same:?}"
    );
    ensure!(
        listed.contains(&pid) && listed.contains(&init_pid),
        "ListProcesses {listed:?} lacks the exec {pid} or the init {init_pid}"
    );
    println!(
        "CHECK exec-identity ok uid=1000 gid=1000 groups=2000,3000 FOO=bar (init's env not \
         inherited) cwd=/tmp cgroup=/husk/exec-id namespaces=init's"
    );
    Ok(())
}

/// Writes `data` to `process`'s stdin and leaves stdin open. A WriteStdin that ends in an
/// error instead of a clean end of stream gives stdin back open (as when the writer's
/// connection breaks); a second chunk naming another process is such an error, and comes
/// after the first chunk was written.
async fn write_leaving_open(ctx: &Ctx, process: &pb::ProcessRef, data: &[u8]) -> Result<()> {
    let chunks = vec![
        pb::StdinChunk {
            process: Some(process.clone()),
            data: data.to_vec(),
        },
        pb::StdinChunk {
            process: Some(pb::ProcessRef {
                container_id: "not-this-one".into(),
                exec_id: String::new(),
            }),
            data: Vec::new(),
        },
    ];
    match ctx
        .agent
        .raw()
        .write_stdin(futures_util::stream::iter(chunks))
        .await
    {
        Err(s) if s.code() == tonic::Code::InvalidArgument => Ok(()),
        other => bail!("WriteStdin with a bad second chunk: {other:?}"),
    }
}

/// Reads `out` until it has `n` bytes; EOF first is an error.
async fn read_at_least(out: &mut OutputStream, n: usize) -> Result<Vec<u8>> {
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(30), out.next_chunk()).await {
            Ok(Ok(Some(chunk))) => got.extend_from_slice(&chunk),
            Ok(Ok(None)) => bail!("EOF after {:?}", String::from_utf8_lossy(&got)),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => bail!("nothing more after {:?}", String::from_utf8_lossy(&got)),
        }
    }
    Ok(got)
}

/// `call`'s result, or an error after 30 s.
async fn within<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T> {
    match tokio::time::timeout(Duration::from_secs(30), call).await {
        Ok(result) => Ok(result?),
        Err(_) => bail!("{what}: nothing after 30 s"),
    }
}

/// `cat` with stdin, as a container's init and as an exec: the bytes written come back while
/// stdin stays open, `cat` keeps running, and CloseStdin (not ExecInGuest's, a container
/// process's) ends it with exit 0 and nothing more.
pub async fn close_stdin(ctx: &Ctx) -> Result<()> {
    let id = "stdin";
    let root = ctx.rootfs(id)?;
    ctx.create(id, &oci::spec(&root, id, &["cat"]), true)
        .await?;
    let mut init_out = ctx.agent.read_stdout(&init(id)).await?;
    let init_pid = ctx.agent.start_container(id).await?;
    let to_init = b"to the init, before CloseStdin\n";
    write_leaving_open(ctx, &init(id), to_init).await?;
    let init_echo = read_at_least(&mut init_out, to_init.len()).await?;

    let exec = ctx
        .agent
        .exec_process(pb::ExecProcessRequest {
            container_id: id.into(),
            exec_id: "cat".into(),
            oci_process: serde_json::to_vec(&oci::process(&["cat"], false))?,
            stdin: true,
        })
        .await?;
    let mut exec_out = ctx.agent.read_stdout(&exec.process).await?;
    let to_exec = b"to the exec, before CloseStdin\n";
    write_leaving_open(ctx, &exec.process, to_exec).await?;
    let exec_echo = read_at_least(&mut exec_out, to_exec.len()).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let running = ctx.agent.list_processes(id).await?;
    // Bounded: if CloseStdin did not close, `cat` would wait for ever.
    ctx.agent.close_stdin(&exec.process).await?;
    let exec_rest = within("exec stdout", exec_out.read_to_end(OUTPUT_LIMIT)).await?;
    let exec_status = within("exec wait", ctx.agent.wait_process(&exec.process)).await?;
    ctx.agent.close_stdin(&init(id)).await?;
    let init_rest = within("init stdout", init_out.read_to_end(OUTPUT_LIMIT)).await?;
    let init_status = within("init wait", ctx.agent.wait_process(&init(id))).await?;
    ctx.agent.remove_container(id, false).await?;
    ensure!(
        init_echo == to_init && exec_echo == to_exec,
        "echoed {:?} {:?}",
        String::from_utf8_lossy(&init_echo),
        String::from_utf8_lossy(&exec_echo)
    );
    ensure!(
        running.contains(&init_pid) && running.contains(&exec.pid),
        "cat ended before CloseStdin: {running:?} lacks {init_pid} or {}",
        exec.pid
    );
    ensure!(
        exec_status == ExitStatus::Exited(0) && init_status == ExitStatus::Exited(0),
        "after CloseStdin: exec {exec_status:?}, init {init_status:?}"
    );
    ensure!(
        exec_rest.is_empty() && init_rest.is_empty(),
        "more output after the echo: {exec_rest:?} {init_rest:?}"
    );
    println!("CHECK close-stdin ok echoed init+exec, running until CloseStdin, exit=0");
    Ok(())
}
