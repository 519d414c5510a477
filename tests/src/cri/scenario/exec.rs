//! `exec`: ExecSync, Exec and Attach.
//!
//! - ExecSync returns stdout, stderr and the exit code; with a 2 s timeout a
//!   `sleep 30` comes back promptly.
//! - Exec through the streaming server (websocket, `v4.channel.k8s.io`): stdin
//!   in, stdout and stderr apart, the exit code in the status.
//! - Exec with a tty: `stty size` shows the size the client sent.
//! - Attach to a container started with stdin: a line in, its echo out; the
//!   container goes on after the client leaves.

use std::time::{Duration, Instant};

use super::{stderr, stdout, Ctx, IDLE};
use crate::cri::stream::Stream;
use crate::cri::{container_config, v1 as api, Result};

const STREAM_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn run(ctx: &mut Ctx) -> Result<()> {
    let handler = ctx.handler();
    let image = ctx.opts.image.clone();
    let pod = ctx.run_pod("exec", "exec-host", &handler).await?;
    let id = ctx
        .start_container(&pod, container_config("shell", 0, &image, IDLE))
        .await?;
    exec_sync(ctx, &id).await?;
    exec_stream(ctx, &id).await?;
    exec_tty(ctx, &id).await?;

    let mut cfg = container_config(
        "attached",
        0,
        &image,
        &["sh", "-c", "while read l; do echo \"attached:$l\"; done"],
    );
    cfg.stdin = true;
    let attached = ctx.start_container(&pod, cfg).await?;
    attach(ctx, &attached).await?;
    ctx.remove_pod(&pod).await
}

async fn exec_sync(ctx: &mut Ctx, id: &str) -> Result<()> {
    let r = ctx
        .cri
        .exec_sync(
            id,
            &["sh", "-c", "echo out; echo err >&2; exit 3"],
            Duration::ZERO,
        )
        .await?;
    ctx.say("execsync_stdout", stdout(&r));
    ctx.say("execsync_stderr", stderr(&r));
    ctx.say("execsync_exit_code", r.exit_code);

    // `sleep` itself, not a shell around it: killing a shell would leave the
    // sleep holding the output pipes open.
    let t = Instant::now();
    let r = ctx
        .cri
        .exec_sync(id, &["sleep", "30"], Duration::from_secs(2))
        .await;
    ctx.say("exec_timeout_ms", t.elapsed().as_millis());
    match r {
        Ok(r) => ctx.say("exec_timeout_result", format!("exit {}", r.exit_code)),
        Err(e) => {
            let code = e.status().map(|s| format!("{:?}", s.code()));
            ctx.say("exec_timeout_result", "error");
            ctx.say("exec_timeout_code", code.unwrap_or_default());
            ctx.say("exec_timeout_error", e);
        }
    }
    // An exec that cannot start fails at once, and leaves nothing waiting.
    let t = Instant::now();
    let r = ctx
        .cri
        .exec_sync(id, &["/no/such/binary"], Duration::ZERO)
        .await;
    ctx.say("exec_missing_ms", t.elapsed().as_millis());
    match r {
        Ok(r) => ctx.say("exec_missing_result", format!("exit {}", r.exit_code)),
        Err(e) => {
            ctx.say("exec_missing_result", "error");
            ctx.say("exec_missing_error", e);
        }
    }
    // The container is still fine afterwards.
    let r = ctx
        .cri
        .exec_sync(id, &["echo", "still-here"], Duration::ZERO)
        .await?;
    ctx.say("exec_after_timeout", stdout(&r));
    Ok(())
}

async fn exec_stream(ctx: &mut Ctx, id: &str) -> Result<()> {
    let url = ctx
        .cri
        .exec(api::ExecRequest {
            container_id: id.into(),
            cmd: [
                "sh",
                "-c",
                "read l; echo \"got:$l\"; echo to-err >&2; exit 5",
            ]
            .map(String::from)
            .to_vec(),
            tty: false,
            stdin: true,
            stdout: true,
            stderr: true,
        })
        .await?;
    ctx.say("exec_url", &url);
    let mut s = Stream::connect(&url).await?;
    s.stdin(b"ping\n").await?;
    let out = s.finish(STREAM_TIMEOUT).await?;
    ctx.say("exec_stdout", out.stdout_text());
    ctx.say("exec_stderr", out.stderr_text());
    ctx.say(
        "exec_exit_code",
        out.exit_code()
            .map_or("none".to_string(), |c| c.to_string()),
    );
    Ok(())
}

async fn exec_tty(ctx: &mut Ctx, id: &str) -> Result<()> {
    let url = ctx
        .cri
        .exec(api::ExecRequest {
            container_id: id.into(),
            cmd: [
                "sh",
                "-c",
                "while read l; do [ \"$l\" = q ] && exit 0; stty size; done",
            ]
            .map(String::from)
            .to_vec(),
            tty: true,
            stdin: true,
            stdout: true,
            stderr: false,
        })
        .await?;
    let mut s = Stream::connect(&url).await?;
    s.resize(123, 45).await?;
    // The resize and the input travel apart: ask again until the size shows.
    let start = Instant::now();
    let seen = loop {
        s.stdin(b"\n").await?;
        let r = s
            .until("stty size", Duration::from_millis(500), |o| {
                o.stdout_text().contains("45 123")
            })
            .await;
        if r.is_ok() {
            break true;
        }
        if start.elapsed() > Duration::from_secs(30) || s.output().closed {
            break false;
        }
    };
    ctx.say("tty_size_seen", if seen { "45 123" } else { "no" });
    let sizes: Vec<String> = s
        .output()
        .stdout_text()
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| l.split(' ').count() == 2 && l.split(' ').all(|w| w.parse::<u32>().is_ok()))
        .collect();
    ctx.say("tty_sizes", sizes.join(","));
    s.stdin(b"q\n").await?;
    let out = s.finish(STREAM_TIMEOUT).await?;
    ctx.say(
        "tty_exit_code",
        out.exit_code()
            .map_or("none".to_string(), |c| c.to_string()),
    );
    ctx.say("tty_stderr_bytes", out.stderr.len());
    Ok(())
}

async fn attach(ctx: &mut Ctx, id: &str) -> Result<()> {
    let url = ctx
        .cri
        .attach(api::AttachRequest {
            container_id: id.into(),
            stdin: true,
            tty: false,
            stdout: true,
            stderr: true,
        })
        .await?;
    let mut s = Stream::connect(&url).await?;
    // The attach may come up after the first line was sent: send until it echoes.
    let start = Instant::now();
    let seen = loop {
        s.stdin(b"hi\n").await?;
        let r = s
            .until("attached:hi", Duration::from_secs(1), |o| {
                o.stdout_text().contains("attached:hi")
            })
            .await;
        if r.is_ok() {
            break true;
        }
        if start.elapsed() > Duration::from_secs(30) || s.output().closed {
            break false;
        }
    };
    ctx.say(
        "attach_stdout",
        if seen {
            "attached:hi".to_string()
        } else {
            format!("NOT SEEN {:?}", s.output().stdout_text())
        },
    );
    s.close().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (st, _) = ctx.cri.container_status(id).await?;
    ctx.say("attach_container_after", st.state().as_str_name());
    Ok(())
}
