//! The client against a hostile agent: oversized or malformed replies are
//! errors, never trusted values. The fake agent sits behind a Unix socket that
//! plays the VMM's hybrid-vsock handshake.

use std::path::PathBuf;
use std::time::Duration;

use husk_proto::client::{AgentClient, ClientError};
use husk_proto::pb::{self, agent_server::Agent, agent_server::AgentServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Code, Request, Response, Status};

/// An agent whose every answer is wrong.
struct Hostile;

#[tonic::async_trait]
impl Agent for Hostile {
    async fn health(&self, _: Request<pb::Empty>) -> Result<Response<pb::HealthResponse>, Status> {
        Ok(Response::new(pb::HealthResponse { status: 0 }))
    }

    async fn get_guest_details(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::GuestDetails>, Status> {
        // Over the 4 MiB message limit.
        Ok(Response::new(pb::GuestDetails {
            kernel_release: "x".repeat(5 << 20),
            vcpus: 1,
            ..Default::default()
        }))
    }

    async fn exec_in_guest(
        &self,
        _: Request<pb::ExecInGuestRequest>,
    ) -> Result<Response<pb::ExecResponse>, Status> {
        Ok(Response::new(pb::ExecResponse {
            exec_id: "e".repeat(1000),
            pid: 5,
        }))
    }

    async fn wait_process(
        &self,
        _: Request<pb::ProcessRef>,
    ) -> Result<Response<pb::WaitProcessResponse>, Status> {
        Ok(Response::new(pb::WaitProcessResponse {
            status: Some(pb::wait_process_response::Status::ExitCode(300)),
            exited_at_unix_nanos: 0,
        }))
    }

    async fn signal_process(
        &self,
        _: Request<pb::SignalProcessRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        Err(Status::internal("y".repeat(8000)))
    }

    async fn power_off(&self, _: Request<pb::Empty>) -> Result<Response<pb::Empty>, Status> {
        // Never answers in time.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(Response::new(pb::Empty {}))
    }

    async fn read_stdout(
        &self,
        _: Request<pb::ProcessRef>,
    ) -> Result<Response<BoxStream<pb::OutputChunk>>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            let _ = tx.send(Ok(pb::OutputChunk { data: vec![1; 10] })).await;
            // Over the 64 KiB chunk limit.
            let _ = tx
                .send(Ok(pb::OutputChunk {
                    data: vec![2; 100 << 10],
                }))
                .await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

async fn fake_vmm(listener: UnixListener, tx: tokio::sync::mpsc::Sender<UnixStream>) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let mut req = [0u8; 13];
        if stream.read_exact(&mut req).await.is_ok()
            && &req == b"CONNECT 1024\n"
            && stream.write_all(b"OK 7\n").await.is_ok()
        {
            let _ = tx.send(stream).await;
        }
    }
}

async fn start() -> (PathBuf, AgentClient) {
    let dir = std::env::temp_dir().join(format!("husk-proto-hostile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let listener = UnixListener::bind(dir.join("vsock.sock")).expect("bind");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(fake_vmm(listener, tx));
    let incoming = tokio_stream::StreamExt::map(ReceiverStream::new(rx), Ok::<_, std::io::Error>);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentServer::new(Hostile).max_encoding_message_size(64 << 20))
            .serve_with_incoming(incoming),
    );
    let client = AgentClient::connect_when_ready(&dir, Duration::from_secs(10))
        .await
        .expect("connect");
    (dir, client.with_timeout(Duration::from_millis(500)))
}

fn invalid(r: Result<impl std::fmt::Debug, ClientError>) -> bool {
    matches!(r, Err(ClientError::InvalidReply { .. }))
}

#[tokio::test]
async fn hostile_replies_are_errors() {
    let (dir, c) = start().await;

    assert!(invalid(c.health().await), "UNKNOWN health accepted");

    let err = c.guest_details().await.expect_err("5 MiB reply");
    assert_eq!(err.code(), Some(Code::OutOfRange), "{err:?}");

    let exec = pb::ExecInGuestRequest {
        argv: vec!["true".into()],
        ..Default::default()
    };
    assert!(
        invalid(c.exec_in_guest(exec).await),
        "1000-byte id accepted"
    );

    let p = pb::ProcessRef::guest("g");
    assert!(invalid(c.wait_process(&p).await), "exit code 300 accepted");

    match c.signal_process(&p, 15).await {
        Err(ClientError::Status { code, message, .. }) => {
            assert_eq!(code, Code::Internal);
            assert!(message.len() < 2000, "status message kept whole");
        }
        other => panic!("unexpected {other:?}"),
    }

    let err = c.power_off().await.expect_err("deadline");
    assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");

    let mut out = c.read_stdout(&p).await.expect("stream opens");
    assert_eq!(
        out.next_chunk().await.expect("small chunk"),
        Some(vec![1; 10])
    );
    assert!(invalid(out.next_chunk().await), "100 KiB chunk accepted");

    // The exec argv limit is checked before sending.
    let huge = pb::ExecInGuestRequest {
        argv: vec!["x".repeat(husk_proto::MAX_EXEC_BYTES + 1)],
        ..Default::default()
    };
    assert!(matches!(
        c.exec_in_guest(huge).await,
        Err(ClientError::InvalidRequest(_))
    ));
    let _ = std::fs::remove_dir_all(&dir);
}
