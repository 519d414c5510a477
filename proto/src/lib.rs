//! husk's agent API: the gRPC service husk-agent serves over vsock, and (with
//! the `client` feature) the host's client for it.
//!
//! The messages and services are generated from `agent.proto` into [`pb`].
//! The limits below are part of the protocol: both sides enforce them.

/// The generated messages, the server trait ([`pb::agent_server::Agent`]) and
/// the raw client ([`pb::agent_client::AgentClient`]).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("husk.agent.v1");
}

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "client")]
mod client_containers;
#[cfg(feature = "client")]
mod client_network;
#[cfg(feature = "client")]
pub mod handshake;

/// The AF_VSOCK port the agent listens on.
pub const AGENT_PORT: u32 = 1024;

/// The largest gRPC message either side accepts (4 MiB).
pub const MAX_MESSAGE_SIZE: usize = 4 << 20;

/// The largest stdio chunk (stdin, stdout, stderr) in one message (64 KiB).
pub const MAX_CHUNK_SIZE: usize = 64 << 10;

/// The longest log message the agent sends; longer ones are cut.
pub const MAX_LOG_MESSAGE: usize = 4 << 10;

/// The longest id (exec id, container id) either side accepts.
pub const MAX_ID_LEN: usize = 128;

/// At most this many argv plus env strings in one exec.
pub const MAX_EXEC_STRINGS: usize = 4096;

/// At most this many bytes of argv plus env in one exec (256 KiB).
pub const MAX_EXEC_BYTES: usize = 256 << 10;

impl pb::ProcessRef {
    /// A process started by ExecInGuest.
    pub fn guest(exec_id: impl Into<String>) -> Self {
        pb::ProcessRef {
            container_id: String::new(),
            exec_id: exec_id.into(),
        }
    }
}
