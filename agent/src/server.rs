//! Serving the agent API: on AF_VSOCK port [`AGENT_PORT`] in the guest, on
//! any stream of connections in the tests.

use std::sync::Arc;

use husk_proto::pb::agent_server::AgentServer;
use husk_proto::{AGENT_PORT, MAX_MESSAGE_SIZE};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_vsock::{VsockAddr, VsockListener, VMADDR_CID_ANY};
use tonic::transport::server::Connected;
use tonic::transport::Server;

use crate::container::Containers;
use crate::mounts;
use crate::processes::{self, Processes, ReapScope};
use crate::service::{AgentService, LinuxGuest, POWER_OFF_DELAY};
use crate::{error, info, supervisor, warn};

/// Accepted connections queued before the accept loop waits.
const ACCEPT_QUEUE: usize = 16;

/// At most this many concurrent calls on one connection.
const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// Serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("installing the {0} handler")]
    Signal(&'static str, #[source] std::io::Error),
    #[error("unblocking signals")]
    Unblock(#[source] std::io::Error),
    #[error("listening on vsock port {AGENT_PORT}")]
    Listen(#[source] std::io::Error),
    #[error("the gRPC server stopped")]
    Server(#[source] tonic::transport::Error),
    #[error("the gRPC server stopped without an error")]
    ServerEnded,
}

/// Why PID 1 stops serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// A PowerOff call.
    Requested,
    /// SIGTERM.
    Terminated,
}

/// Serves `service` on every connection `incoming` yields, until it ends.
pub async fn serve<IO>(
    service: AgentService,
    incoming: mpsc::Receiver<IO>,
) -> Result<(), tonic::transport::Error>
where
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
{
    let incoming =
        tokio_stream::StreamExt::map(ReceiverStream::new(incoming), Ok::<_, std::io::Error>);
    Server::builder()
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .add_service(
            AgentServer::new(service)
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
        )
        .serve_with_incoming(incoming)
        .await
}

/// Accepts vsock connections into `tx`; accept errors (e.g. out of file
/// descriptors) are logged and retried after a pause instead of ending the
/// server.
async fn accept_vsock(listener: VsockListener, tx: mpsc::Sender<tokio_vsock::VsockStream>) {
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                if tx.send(stream).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                error!("accepting a vsock connection: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// PID 1's serving life: installs the signal handlers, unblocks the signals,
/// starts the reaper, and serves the API on vsock until PowerOff or SIGTERM.
pub async fn run_guest() -> Result<Shutdown, ServeError> {
    let sigchld = signal(SignalKind::child()).map_err(|e| ServeError::Signal("SIGCHLD", e))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| ServeError::Signal("SIGTERM", e))?;
    // The handlers exist now; signals that came while blocked are delivered.
    supervisor::unblock().map_err(ServeError::Unblock)?;

    if let Err(e) = crate::network::loopback_up().await {
        warn!("bringing lo up: {e}");
    }
    let procs = Processes::new(ReapScope::All);
    procs.reap();
    tokio::spawn(processes::run_reaper(procs.clone(), sigchld));

    let (power_tx, mut power_rx) = mpsc::channel(1);
    let containers = Containers::new(procs.clone());
    tokio::spawn(containers.clone().run_events());
    let service = AgentService::new(
        procs.clone(),
        Arc::new(LinuxGuest {
            power_off: power_tx,
        }),
        containers,
        Arc::new(mounts::Linux),
    );
    let listener = VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, AGENT_PORT))
        .map_err(ServeError::Listen)?;
    let (conn_tx, conn_rx) = mpsc::channel(ACCEPT_QUEUE);
    tokio::spawn(accept_vsock(listener, conn_tx));
    info!("serving the agent API on vsock port {AGENT_PORT}");

    let server = serve(service, conn_rx);
    tokio::pin!(server);
    let shutdown = tokio::select! {
        r = &mut server => return Err(r.map_or_else(ServeError::Server, |()| ServeError::ServerEnded)),
        _ = sigterm.recv() => Shutdown::Terminated,
        _ = power_rx.recv() => Shutdown::Requested,
    };
    if shutdown == Shutdown::Requested {
        // Keep serving a moment so the PowerOff reply reaches the host.
        let _ = tokio::time::timeout(POWER_OFF_DELAY, &mut server).await;
    }
    procs.kill_all(libc::SIGKILL);
    Ok(shutdown)
}
