//! The agent API end to end on the host: the real service, process table and
//! reaper behind a Unix socket that plays the VMM's hybrid-vsock handshake,
//! driven by husk-proto's real client.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use husk_proto::client::{AgentClient, ClientError, ExitStatus, LogLevel};
use husk_proto::pb;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tonic::Code;

use crate::processes::{self, Processes, ReapScope};
use crate::service::{AgentService, Guest, LinuxGuest};

const T: Duration = Duration::from_secs(20);

#[derive(Default)]
struct FakeGuest {
    time: Mutex<Option<(i64, u32)>>,
    power_offs: AtomicU32,
}

impl Guest for FakeGuest {
    fn details(&self) -> Result<pb::GuestDetails, String> {
        Ok(pb::GuestDetails {
            kernel_release: "6.1.0-test".into(),
            mem_total_kib: 1024,
            vcpus: 2,
            agent_version: "0.0.0".into(),
            uptime_ms: 5,
        })
    }

    fn set_time(&self, seconds: i64, nanos: u32) -> std::io::Result<()> {
        *self.time.lock().expect("lock") = Some((seconds, nanos));
        Ok(())
    }

    fn request_power_off(&self) {
        self.power_offs.fetch_add(1, Ordering::Relaxed);
    }
}

struct Harness {
    dir: PathBuf,
    procs: Arc<Processes>,
    guest: Arc<FakeGuest>,
    /// The server side of every connection, to cut them.
    conns: Conns,
}

type Conns = Arc<Mutex<Vec<std::os::fd::OwnedFd>>>;

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Plays the VMM: reads `CONNECT 1024\n`, answers `OK 1\n`, hands the
/// connection to the server. Anything else is closed, like a port nobody
/// listens on.
async fn fake_vmm(listener: UnixListener, tx: mpsc::Sender<UnixStream>, conns: Conns) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let tx = tx.clone();
        if let Ok(fd) = std::os::fd::AsFd::as_fd(&stream).try_clone_to_owned() {
            conns.lock().expect("lock").push(fd);
        }
        tokio::spawn(async move {
            let mut line = Vec::new();
            while line.len() < 64 && !line.ends_with(b"\n") {
                let mut byte = [0u8; 1];
                match stream.read(&mut byte).await {
                    Ok(1) => line.push(byte[0]),
                    _ => return,
                }
            }
            if line == b"CONNECT 1024\n" && stream.write_all(b"OK 1\n").await.is_ok() {
                let _ = tx.send(stream).await;
            }
        });
    }
}

async fn start() -> Harness {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "husk-agent-api-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let listener = UnixListener::bind(dir.join("vsock.sock")).expect("bind");
    let (tx, rx) = mpsc::channel(16);
    let conns = Conns::default();
    tokio::spawn(fake_vmm(listener, tx, conns.clone()));
    let procs = Processes::new(ReapScope::Tracked);
    let sigchld = signal(SignalKind::child()).expect("SIGCHLD handler");
    tokio::spawn(processes::run_reaper(procs.clone(), sigchld));
    let guest = Arc::new(FakeGuest::default());
    let containers = crate::container::Containers::with_paths(
        procs.clone(),
        dir.join("bundles"),
        dir.join("state"),
    );
    let service = AgentService::new(
        procs.clone(),
        guest.clone(),
        containers,
        Arc::new(crate::mounts::Linux),
    );
    tokio::spawn(crate::server::serve(service, rx));
    Harness {
        dir,
        procs,
        guest,
        conns,
    }
}

impl Harness {
    /// Breaks every connection so far, as a vanished host would.
    fn cut_connections(&self) {
        for fd in self.conns.lock().expect("lock").drain(..) {
            // SAFETY: fd is an open socket we own (a duplicate of the
            // server's); shutdown(2) takes no pointers.
            unsafe { libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(&fd), libc::SHUT_RDWR) };
        }
    }

    async fn client(&self) -> AgentClient {
        // The test's deadline, not the client's 5 s default: a loaded machine
        // (CI on 2 cores) must not fail a call that is only slow.
        AgentClient::connect_when_ready(&self.dir, T)
            .await
            .expect("connect")
            .with_timeout(T)
    }
}

fn exec(argv: &[&str]) -> pb::ExecInGuestRequest {
    pb::ExecInGuestRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Waits until `f` holds, at most [`T`].
async fn eventually(mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + T;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition never held"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_output_and_cleanup() {
    let h = start().await;
    let c = h.client().await;
    let e = c
        .exec_in_guest(exec(&["sh", "-c", "echo out; echo err >&2; exit 7"]))
        .await
        .expect("exec");
    assert!(e.pid > 0);
    assert_eq!(
        c.wait_process(&e.process).await.expect("wait"),
        ExitStatus::Exited(7)
    );
    let out = c.read_stdout(&e.process).await.expect("stdout");
    assert_eq!(out.read_to_end(1024).await.expect("read"), b"out\n");
    assert_eq!(h.procs.len(), 1, "stderr not read yet");
    let err = c.read_stderr(&e.process).await.expect("stderr");
    assert_eq!(err.read_to_end(1024).await.expect("read"), b"err\n");
    // Waited and both outputs at EOF: the entry is gone.
    assert_eq!(h.procs.len(), 0);
    let gone = c.wait_process(&e.process).await.expect_err("forgotten");
    assert_eq!(gone.code(), Some(Code::NotFound));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_is_reported() {
    let h = start().await;
    let c = h.client().await;
    let e = c.exec_in_guest(exec(&["sleep", "10"])).await.expect("exec");
    let waiter = {
        let c = c.clone();
        let p = e.process.clone();
        tokio::spawn(async move { c.wait_process(&p).await })
    };
    c.signal_process(&e.process, libc::SIGTERM)
        .await
        .expect("signal");
    let status = tokio::time::timeout(T, waiter)
        .await
        .expect("exits in time")
        .expect("task")
        .expect("wait");
    assert_eq!(status, ExitStatus::Signaled(libc::SIGTERM));
    // A second waiter gets the same status; signalling now is refused.
    assert_eq!(
        c.wait_process(&e.process).await.expect("wait again"),
        ExitStatus::Signaled(15)
    );
    let err = c
        .signal_process(&e.process, libc::SIGKILL)
        .await
        .expect_err("exited");
    assert_eq!(err.code(), Some(Code::FailedPrecondition));
}

/// A deterministic pseudo-random byte stream (xorshift64).
fn data(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_mib_through_cat() {
    const LEN: usize = 8 << 20;
    let h = start().await;
    let c = h.client().await;
    let mut req = exec(&["cat"]);
    req.stdin = true;
    let e = c.exec_in_guest(req).await.expect("exec");
    let input = data(LEN);
    let sent_hash = Sha256::digest(&input);
    let writer = {
        let c = c.clone();
        let p = e.process.clone();
        tokio::spawn(async move { c.write_stdin(&p, std::io::Cursor::new(input)).await })
    };
    let mut out = c.read_stdout(&e.process).await.expect("stdout");
    let mut hasher = Sha256::new();
    let mut received = 0usize;
    let mut chunks = 0usize;
    while let Some(chunk) = tokio::time::timeout(T, out.next_chunk())
        .await
        .expect("progress")
        .expect("chunk")
    {
        assert!(chunk.len() <= husk_proto::MAX_CHUNK_SIZE);
        received += chunk.len();
        chunks += 1;
        hasher.update(&chunk);
    }
    let written = writer.await.expect("task").expect("write_stdin");
    assert_eq!(written, LEN as u64);
    assert_eq!(received, LEN);
    assert!(chunks >= LEN / husk_proto::MAX_CHUNK_SIZE);
    assert_eq!(hasher.finalize(), sent_hash);
    assert_eq!(
        c.wait_process(&e.process).await.expect("wait"),
        ExitStatus::Exited(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_disconnects_leaves_the_rest_for_the_next() {
    const LEN: usize = 4 << 20;
    let h = start().await;
    let first = h.client().await;
    let e = first
        .exec_in_guest(exec(&["head", "-c", &LEN.to_string(), "/dev/zero"]))
        .await
        .expect("exec");
    let mut out = first.read_stdout(&e.process).await.expect("stdout");
    let head = out.next_chunk().await.expect("chunk").expect("not EOF");
    // Gone mid-stream: the connection closes with the stream in flight.
    drop(out);
    drop(first);

    let second = h.client().await;
    second.health().await.expect("served after a disconnect");
    // The pipe returns to the table once the first stream's task notices.
    let deadline = tokio::time::Instant::now() + T;
    let out = loop {
        match second.read_stdout(&e.process).await {
            Ok(out) => break out,
            Err(err) if err.code() == Some(Code::FailedPrecondition) => {
                assert!(tokio::time::Instant::now() < deadline, "stdout never freed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(err) => panic!("read_stdout: {err}"),
        }
    };
    let rest = out.read_to_end(LEN).await.expect("rest");
    assert!(!rest.is_empty() && head.len() + rest.len() <= LEN);
    assert!(rest.iter().all(|&b| b == 0));
    assert_eq!(
        second.wait_process(&e.process).await.expect("wait"),
        ExitStatus::Exited(0)
    );
    let err = second.read_stderr(&e.process).await.expect("stderr");
    assert!(err.read_to_end(1024).await.expect("read").is_empty());
    assert_eq!(h.procs.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_stays_open_when_a_writer_breaks_off_and_close_stdin_ends_it() {
    let h = start().await;
    let c = h.client().await;
    let mut req = exec(&["cat"]);
    req.stdin = true;
    let e = c.exec_in_guest(req).await.expect("exec");
    // A writer whose source never ends, cut off by a broken connection.
    let (_keep_open, never_ends) = tokio::io::duplex(16);
    let stuck = {
        let c = c.clone();
        let p = e.process.clone();
        tokio::spawn(async move { c.write_stdin(&p, never_ends).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.cut_connections();
    let broken = tokio::time::timeout(T, stuck)
        .await
        .expect("the call ends")
        .expect("task");
    assert!(broken.is_err(), "{broken:?}");
    drop(c);
    // A new connection: stdin is still open and usable.
    let c = h.client().await;
    let deadline = tokio::time::Instant::now() + T;
    loop {
        match c
            .write_stdin(&e.process, std::io::Cursor::new(b"again\n".to_vec()))
            .await
        {
            Ok(n) => {
                assert_eq!(n, 6);
                break;
            }
            Err(err) if err.code() == Some(Code::FailedPrecondition) => {
                assert!(tokio::time::Instant::now() < deadline, "stdin never freed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(err) => panic!("write_stdin: {err}"),
        }
    }
    let out = c.read_stdout(&e.process).await.expect("stdout");
    assert_eq!(out.read_to_end(64).await.expect("read"), b"again\n");
    assert_eq!(
        c.wait_process(&e.process).await.expect("wait"),
        ExitStatus::Exited(0)
    );

    // CloseStdin without a writer.
    let mut req = exec(&["cat"]);
    req.stdin = true;
    let e = c.exec_in_guest(req).await.expect("exec");
    c.raw()
        .close_stdin(e.process.clone())
        .await
        .expect("close_stdin");
    assert_eq!(
        c.wait_process(&e.process).await.expect("wait"),
        ExitStatus::Exited(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_health_calls() {
    let h = start().await;
    let c = h.client().await;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let c = c.clone();
        calls.spawn(async move { c.health().await });
    }
    let mut ok = 0;
    while let Some(r) = calls.join_next().await {
        r.expect("task").expect("health");
        ok += 1;
    }
    assert_eq!(ok, 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_calls_and_logs() {
    let h = start().await;
    let c = h.client().await;
    let details = c.guest_details().await.expect("details");
    assert_eq!(details.kernel_release, "6.1.0-test");
    assert_eq!(details.vcpus, 2);

    let mut logs = c.stream_logs(false).await.expect("logs");
    let when = std::time::UNIX_EPOCH + Duration::new(1_700_000_000, 123);
    c.set_time(when).await.expect("set_time");
    assert_eq!(
        *h.guest.time.lock().expect("lock"),
        Some((1_700_000_000, 123))
    );
    // The service logged the change; other tests log too, so look for it.
    let found = tokio::time::timeout(T, async {
        while let Some(r) = logs.next_record().await.expect("record") {
            if r.message.contains("clock set to 1700000000.000000123") {
                return Some(r);
            }
        }
        None
    })
    .await
    .expect("in time")
    .expect("record seen");
    assert_eq!(found.level, LogLevel::Info);
    assert_eq!(found.target, "husk_agent::service");

    c.power_off().await.expect("power_off");
    assert_eq!(h.guest.power_offs.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_meaningful_codes() {
    let h = start().await;
    let c = h.client().await;
    fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> Option<Code> {
        r.expect_err("refused").code()
    }

    let mut raw = c.raw();
    let huge = pb::ExecInGuestRequest {
        argv: vec!["x".repeat(300 << 10)],
        ..Default::default()
    };
    let status = raw.exec_in_guest(huge).await.expect_err("too large");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = raw
        .create_container(pb::CreateContainerRequest::default())
        .await
        .expect_err("no id");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = raw
        .create_sandbox(pb::CreateSandboxRequest::default())
        .await
        .expect_err("not yet");
    assert_eq!(status.code(), Code::Unimplemented);

    let mut tty = exec(&["sh"]);
    tty.tty = true;
    assert_eq!(code(c.exec_in_guest(tty).await), Some(Code::Unimplemented));
    assert_eq!(
        code(c.exec_in_guest(exec(&["/nonexistent/binary"])).await),
        Some(Code::NotFound)
    );
    let mut relative = exec(&["true"]);
    relative.cwd = "tmp".into();
    assert_eq!(
        code(c.exec_in_guest(relative).await),
        Some(Code::InvalidArgument)
    );
    let nobody = pb::ProcessRef::guest("guest-999999");
    assert_eq!(code(c.wait_process(&nobody).await), Some(Code::NotFound));
    assert_eq!(
        code(c.signal_process(&nobody, 15).await),
        Some(Code::NotFound)
    );
    let in_container = pb::ProcessRef {
        container_id: "c1".into(),
        exec_id: "e1".into(),
    };
    assert_eq!(
        code(c.wait_process(&in_container).await),
        Some(Code::NotFound)
    );
    let bad_container = pb::ProcessRef {
        container_id: "../c1".into(),
        exec_id: String::new(),
    };
    assert_eq!(
        code(c.wait_process(&bad_container).await),
        Some(Code::InvalidArgument)
    );
    // Nothing leaked from the refused requests.
    eventually(|| h.procs.len() == 0).await;
}

#[test]
fn linux_guest_details_on_this_host() {
    let (tx, _rx) = mpsc::channel(1);
    let details = LinuxGuest { power_off: tx }.details().expect("details");
    assert!(!details.kernel_release.is_empty());
    assert!(details.vcpus >= 1);
    assert!(details.mem_total_kib > 0);
}
