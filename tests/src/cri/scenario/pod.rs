//! `pod`: pod networking, the pod's view of itself, and container logs.
//!
//! A pod runs a web server (busybox httpd on 8080) and a client that fetches
//! from it over 127.0.0.1; this machine fetches from the pod IP; a second pod,
//! always runc, on the same bridge fetches from the pod IP too. Inside, the
//! pod has its hostname, CRI's resolv.conf, its IP and a loopback that is up.
//! A logger container writes a line every 0.2 s into its CRI log; the log is
//! renamed, ReopenContainerLog called, and new lines land in a new file.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::{log_file, read_log, stdout, wait_exit, Ctx, Pod};
use crate::cri::{container_config, CriError, Result};

const PORT: u16 = 8080;
const HOSTNAME: &str = "web-host";

pub async fn run(ctx: &mut Ctx) -> Result<()> {
    let handler = ctx.handler();
    let image = ctx.opts.image.clone();
    let web = ctx.run_pod("web", HOSTNAME, &handler).await?;
    ctx.say("pod_ip", &web.ip);
    let (status, _) = ctx.cri.pod_status(&web.id).await?;
    ctx.say("pod_runtime_handler", &status.runtime_handler);
    ctx.say("pod_state", status.state().as_str_name());

    let server = container_config(
        "server",
        0,
        &image,
        &[
            "sh",
            "-c",
            "mkdir -p /www && echo \"hello from $(hostname)\" > /www/index.html && exec httpd -f -p 8080 -h /www",
        ],
    );
    let server_id = ctx.start_container(&web, server).await?;

    // A client in the same pod, over the pod's loopback.
    let client = container_config(
        "client",
        0,
        &image,
        &[
            "sh",
            "-c",
            "for i in $(seq 1 150); do wget -q -O - http://127.0.0.1:8080/index.html && exit 0; sleep 0.2; done; exit 1",
        ],
    );
    let client_id = ctx.start_container(&web, client).await?;
    let st = wait_exit(ctx, &client_id, Duration::from_secs(90)).await?;
    ctx.say("client_exit_code", st.exit_code);
    let (lines, _) = read_log(&log_file(&web, &st));
    ctx.say("client_body", lines.join(" | "));

    inside_view(ctx, &server_id, &web).await?;

    // This machine, at the pod IP.
    let t = Instant::now();
    match http_get(&web.ip, Duration::from_secs(30)) {
        Ok(body) => ctx.say("host_body", body),
        Err(e) => ctx.say("host_body", format!("ERROR {e}")),
    }
    ctx.say("host_fetch_ms", t.elapsed().as_millis());

    peer(ctx, &web).await?;
    logs(ctx, &web).await?;

    ctx.remove_pod(&web).await?;
    ctx.say("pod_removed", "yes");
    Ok(())
}

/// What the pod sees of itself: hostname, resolv.conf, its address, loopback.
async fn inside_view(ctx: &mut Ctx, id: &str, pod: &Pod) -> Result<()> {
    let no_timeout = Duration::ZERO;
    let r = ctx.cri.exec_sync(id, &["hostname"], no_timeout).await?;
    ctx.say("hostname", stdout(&r));
    let r = ctx
        .cri
        .exec_sync(id, &["cat", "/etc/resolv.conf"], no_timeout)
        .await?;
    let resolv = stdout(&r);
    ctx.say("resolv_conf_exit_code", r.exit_code);
    ctx.say("resolv_conf", format!("{resolv}{}", super::stderr(&r)));
    let nameserver = resolv
        .lines()
        .find(|l| l.starts_with("nameserver"))
        .unwrap_or("");
    ctx.say("resolv_nameserver", nameserver);
    let search = resolv
        .lines()
        .find(|l| l.starts_with("search"))
        .unwrap_or("");
    ctx.say("resolv_search", search);
    let r = ctx
        .cri
        .exec_sync(id, &["ip", "-o", "-4", "addr", "show"], no_timeout)
        .await?;
    let addrs = stdout(&r);
    let has_ip = addrs
        .split_whitespace()
        .any(|w| w.split('/').next() == Some(pod.ip.as_str()));
    ctx.say("pod_ip_inside", if has_ip { "yes" } else { "no" });
    let r = ctx
        .cri
        .exec_sync(id, &["ip", "-o", "link", "show", "lo"], no_timeout)
        .await?;
    let lo = stdout(&r);
    let up = lo.contains(",UP") || lo.contains("<UP");
    ctx.say("loopback_up", if up { "yes" } else { "no" });
    Ok(())
}

/// A second pod, with the peer handler (runc), fetches from the first pod's IP.
async fn peer(ctx: &mut Ctx, web: &Pod) -> Result<()> {
    let handler = ctx.opts.peer_handler.clone();
    let image = ctx.opts.image.clone();
    let peer = ctx.run_pod("peer", "peer-host", &handler).await?;
    ctx.say("peer_handler", &handler);
    ctx.say("peer_ip", &peer.ip);
    let cmd = format!(
        "for i in $(seq 1 150); do wget -q -O - http://{}:{PORT}/index.html && exit 0; sleep 0.2; done; exit 1",
        web.ip
    );
    let fetch = container_config("fetch", 0, &image, &["sh", "-c", &cmd]);
    let id = ctx.start_container(&peer, fetch).await?;
    let st = wait_exit(ctx, &id, Duration::from_secs(90)).await?;
    ctx.say("peer_exit_code", st.exit_code);
    let (lines, _) = read_log(&log_file(&peer, &st));
    ctx.say("peer_body", lines.join(" | "));
    ctx.remove_pod(&peer).await
}

/// CRI logs: the format, and ReopenContainerLog after the log is renamed.
async fn logs(ctx: &mut Ctx, pod: &Pod) -> Result<()> {
    let image = ctx.opts.image.clone();
    let logger = container_config(
        "logger",
        0,
        &image,
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; i=0; while :; do echo \"log-line $i\"; echo \"err-line $i\" >&2; i=$((i+1)); sleep 0.2; done",
        ],
    );
    let id = ctx.start_container(pod, logger).await?;
    let (st, _) = ctx.cri.container_status(&id).await?;
    let path = log_file(pod, &st);
    ctx.say("log_path_in_pod_dir", path.starts_with(pod.log_dir()));
    let wait = Duration::from_secs(30);
    wait_lines(&path, 6, wait).await?;
    let (lines, ok) = read_log(&path);
    ctx.say("log_well_formed", if ok { "yes" } else { "no" });
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let streams: Vec<&str> = text.lines().filter_map(|l| l.split(' ').nth(1)).collect();
    ctx.say("log_has_stdout", streams.contains(&"stdout"));
    ctx.say("log_has_stderr", streams.contains(&"stderr"));
    ctx.say("log_first", lines.first().map(String::as_str).unwrap_or(""));

    // Rotate as kubelet does: rename, ReopenContainerLog, new lines in a new file.
    let rotated = path.with_extension("log.1");
    std::fs::rename(&path, &rotated)
        .map_err(|e| CriError::io(format!("renaming {}", path.display()), e))?;
    ctx.cri.reopen_log(&id).await?;
    let len_after_reopen = file_len(&rotated);
    wait_lines(&path, 4, wait).await?;
    let (new_lines, new_ok) = read_log(&path);
    ctx.say("reopen_new_file_lines", new_lines.len());
    ctx.say("reopen_new_well_formed", if new_ok { "yes" } else { "no" });
    let last_old = last_number(&read_log(&rotated).0);
    let first_new = new_lines.iter().find_map(|l| number(l));
    ctx.say(
        "reopen_continues",
        match (last_old, first_new) {
            (Some(a), Some(b)) if b > a => "yes".to_string(),
            other => format!("no {other:?}"),
        },
    );
    ctx.say(
        "rotated_grew_after_reopen",
        file_len(&rotated) > len_after_reopen,
    );
    Ok(())
}

fn file_len(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// The number in a `log-line N` / `err-line N` text.
fn number(text: &str) -> Option<u64> {
    let (kind, n) = text.split_once(' ')?;
    matches!(kind, "log-line" | "err-line")
        .then(|| n.parse().ok())
        .flatten()
}

fn last_number(lines: &[String]) -> Option<u64> {
    lines.iter().filter_map(|l| number(l)).max()
}

async fn wait_lines(path: &std::path::Path, n: usize, timeout: Duration) -> Result<()> {
    let what = format!("{n} lines in {}", path.display());
    crate::cri::poll(&what, timeout, || async {
        let count = std::fs::read_to_string(path)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        Ok((count >= n).then_some(()))
    })
    .await
}

/// GET /index.html from `ip`:8080 with retries until `timeout`; the body.
fn http_get(ip: &str, timeout: Duration) -> std::io::Result<String> {
    let start = Instant::now();
    loop {
        match http_get_once(ip) {
            Ok(body) => return Ok(body),
            Err(e) if start.elapsed() >= timeout => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn http_get_once(ip: &str) -> std::io::Result<String> {
    let addr: std::net::SocketAddr = format!("{ip}:{PORT}")
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{ip}: {e}")))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET /index.html HTTP/1.0\r\nHost: pod\r\n\r\n")?;
    let mut resp = Vec::new();
    s.take(1 << 20).read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.") || !head.contains(" 200 ") {
        return Err(std::io::Error::other(format!(
            "answer {:?}",
            head.lines().next()
        )));
    }
    Ok(body.trim_end().to_string())
}
