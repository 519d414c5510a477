//! The shim's task service: containerd's task API v2 on top of one sandbox VM.
//!
//! One shim process serves one sandbox (a Pod, or a lone `ctr run`
//! container). The first Create boots the VM ([`sandbox`]); each container's
//! rootfs and host mounts are mounted into the sandbox's `shared/` directory,
//! which the guest sees over virtio-fs; the rewritten spec goes to the agent.
//! Every agent error becomes a ttrpc status with a meaningful code.

mod events;
mod mounts;
mod process;
mod sandbox;
mod task;

use std::collections::HashMap;
use std::sync::Arc;

use containerd_shim::protos::ttrpc;
use husk_proto::client::ClientError;
use tonic::Code;

pub use events::Events;
pub use task::{cleanup_after_crash, Service};

/// Errors of task requests, mapped to ttrpc codes at the boundary.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("the sandbox VM is gone: {0}")]
    VmGone(String),
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Agent(#[from] ClientError),
    #[error(transparent)]
    Stdio(#[from] process::StdioError),
    #[error(transparent)]
    Mount(#[from] mounts::MountError),
    #[error(transparent)]
    Spec(#[from] husk_shim::spec::SpecError),
}

/// One line: the error and its sources.
fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

impl ServiceError {
    /// The ttrpc code containerd gets for this error.
    fn code(&self) -> ttrpc::Code {
        use ttrpc::Code as T;
        match self {
            ServiceError::NotFound(_) => T::NOT_FOUND,
            ServiceError::AlreadyExists(_) => T::ALREADY_EXISTS,
            ServiceError::InvalidArgument(_) | ServiceError::Spec(_) => T::INVALID_ARGUMENT,
            ServiceError::Stdio(process::StdioError::Unsupported(_)) => T::INVALID_ARGUMENT,
            ServiceError::FailedPrecondition(_) | ServiceError::VmGone(_) => T::FAILED_PRECONDITION,
            ServiceError::Unimplemented(_) => T::UNIMPLEMENTED,
            ServiceError::Agent(e) => agent_code(e),
            ServiceError::Stdio(process::StdioError::Open { .. })
            | ServiceError::Mount(_)
            | ServiceError::Internal(_) => T::INTERNAL,
        }
    }
}

/// The ttrpc code of a failed agent call: the agent's own gRPC status codes
/// one to one (ttrpc uses gRPC's codes), a deadline as DEADLINE_EXCEEDED, and
/// a failure to reach the agent at all as UNAVAILABLE.
fn agent_code(e: &ClientError) -> ttrpc::Code {
    use ttrpc::Code as T;
    match e {
        ClientError::Status { code, message, .. } if is_transport_failure(*code, message) => {
            T::UNAVAILABLE
        }
        ClientError::Status { code, .. } => grpc_code(*code),
        ClientError::Timeout { .. } => T::DEADLINE_EXCEEDED,
        ClientError::Connect { .. }
        | ClientError::Handshake(_)
        | ClientError::Channel(_)
        | ClientError::NotReady { .. } => T::UNAVAILABLE,
        // The agent answered something the shim cannot use: a bug on one side.
        ClientError::InvalidReply { .. } => T::INTERNAL,
        // The shim refused to send it (an id too long, say): containerd's input.
        ClientError::InvalidRequest(_) => T::INVALID_ARGUMENT,
    }
}

/// Whether a status is tonic's report of a broken connection (the VM died, the
/// vsock closed) rather than an answer of the agent, which never sends UNKNOWN
/// and never uses these texts.
fn is_transport_failure(code: Code, message: &str) -> bool {
    code == Code::Unknown
        || message.starts_with("transport error")
        || message.starts_with("h2 protocol error")
}

/// gRPC's code as ttrpc's (the same numbering and meaning).
fn grpc_code(code: Code) -> ttrpc::Code {
    use ttrpc::Code as T;
    match code {
        // Not an error: an agent that says so and fails anyway is not understood.
        Code::Ok | Code::Unknown => T::UNKNOWN,
        Code::Cancelled => T::CANCELLED,
        Code::InvalidArgument => T::INVALID_ARGUMENT,
        Code::DeadlineExceeded => T::DEADLINE_EXCEEDED,
        Code::NotFound => T::NOT_FOUND,
        Code::AlreadyExists => T::ALREADY_EXISTS,
        Code::PermissionDenied => T::PERMISSION_DENIED,
        Code::ResourceExhausted => T::RESOURCE_EXHAUSTED,
        Code::FailedPrecondition => T::FAILED_PRECONDITION,
        Code::Aborted => T::ABORTED,
        Code::OutOfRange => T::OUT_OF_RANGE,
        Code::Unimplemented => T::UNIMPLEMENTED,
        Code::Internal => T::INTERNAL,
        Code::Unavailable => T::UNAVAILABLE,
        Code::DataLoss => T::DATA_LOSS,
        Code::Unauthenticated => T::UNAUTHENTICATED,
    }
}

impl From<ServiceError> for ttrpc::Error {
    fn from(e: ServiceError) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), one_line(&e)))
    }
}

/// Per-container bookkeeping shared by the modules.
pub struct Container {
    pub id: String,
    pub bundle: String,
    pub init: Arc<process::Process>,
    pub execs: HashMap<String, Arc<process::Process>>,
    /// Host mounts made for it, in the order made.
    pub mounts: mounts::Mounts,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(e: ServiceError) -> ttrpc::Code {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => s.code(),
            other => panic!("{other:?}"),
        }
    }

    fn status(code: Code, message: &str) -> ServiceError {
        ServiceError::Agent(ClientError::Status {
            method: "StartContainer",
            code,
            message: message.into(),
        })
    }

    #[test]
    fn the_shims_own_errors_map_to_meaningful_codes() {
        use ttrpc::Code as T;
        let io = || std::io::Error::from_raw_os_error(libc::ENOENT);
        let table: Vec<(ServiceError, T)> = vec![
            (ServiceError::NotFound("x".into()), T::NOT_FOUND),
            (ServiceError::AlreadyExists("x".into()), T::ALREADY_EXISTS),
            (
                ServiceError::InvalidArgument("x".into()),
                T::INVALID_ARGUMENT,
            ),
            (
                ServiceError::Spec(husk_shim::spec::SpecError::Json("x".into())),
                T::INVALID_ARGUMENT,
            ),
            (
                ServiceError::Stdio(process::StdioError::Unsupported("tcp://x".into())),
                T::INVALID_ARGUMENT,
            ),
            (
                ServiceError::FailedPrecondition("x".into()),
                T::FAILED_PRECONDITION,
            ),
            (
                ServiceError::VmGone("killed".into()),
                T::FAILED_PRECONDITION,
            ),
            (ServiceError::Unimplemented("x".into()), T::UNIMPLEMENTED),
            (
                ServiceError::Stdio(process::StdioError::Open {
                    path: "/run/fifo".into(),
                    source: io(),
                }),
                T::INTERNAL,
            ),
            (
                ServiceError::Mount(mounts::MountError::Prepare {
                    path: "/run/husk/s".into(),
                    source: io(),
                }),
                T::INTERNAL,
            ),
            (ServiceError::Internal("x".into()), T::INTERNAL),
        ];
        for (e, want) in table {
            let shown = e.to_string();
            assert_eq!(code(e), want, "{shown}");
        }
    }

    #[test]
    fn agent_status_codes_map_one_to_one() {
        use ttrpc::Code as T;
        // Every gRPC code the agent could answer with, and what containerd gets.
        let table = [
            (Code::Ok, T::UNKNOWN),
            (Code::Cancelled, T::CANCELLED),
            // The agent never answers UNKNOWN: tonic's code for a broken transport.
            (Code::Unknown, T::UNAVAILABLE),
            (Code::InvalidArgument, T::INVALID_ARGUMENT),
            (Code::DeadlineExceeded, T::DEADLINE_EXCEEDED),
            (Code::NotFound, T::NOT_FOUND),
            (Code::AlreadyExists, T::ALREADY_EXISTS),
            (Code::PermissionDenied, T::PERMISSION_DENIED),
            (Code::ResourceExhausted, T::RESOURCE_EXHAUSTED),
            (Code::FailedPrecondition, T::FAILED_PRECONDITION),
            (Code::Aborted, T::ABORTED),
            (Code::OutOfRange, T::OUT_OF_RANGE),
            (Code::Unimplemented, T::UNIMPLEMENTED),
            (Code::Internal, T::INTERNAL),
            (Code::Unavailable, T::UNAVAILABLE),
            (Code::DataLoss, T::DATA_LOSS),
            (Code::Unauthenticated, T::UNAUTHENTICATED),
        ];
        assert_eq!(table.len(), 17, "every gRPC code");
        for (grpc, want) in table {
            assert_eq!(code(status(grpc, "from the agent")), want, "{grpc:?}");
            if grpc != Code::Ok && grpc != Code::Unknown {
                // The same number on both sides: one to one.
                assert_eq!(grpc as i32, want as i32, "{grpc:?}");
            }
        }
    }

    #[test]
    fn transport_failures_are_unavailable() {
        use ttrpc::Code as T;
        // tonic's own statuses for a connection that broke mid-call.
        assert_eq!(
            code(status(Code::Internal, "h2 protocol error: broken pipe")),
            T::UNAVAILABLE
        );
        assert_eq!(
            code(status(Code::Cancelled, "transport error")),
            T::UNAVAILABLE
        );
        let refused = || std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        let connect = ClientError::Connect {
            path: "/run/husk/s/vsock.sock".into(),
            source: refused(),
        };
        let handshake = ClientError::Handshake(husk_proto::handshake::HandshakeError::Closed);
        let not_ready = ClientError::NotReady {
            timeout: std::time::Duration::from_secs(60),
            last: Box::new(ClientError::Handshake(
                husk_proto::handshake::HandshakeError::Read(refused()),
            )),
        };
        for e in [connect, handshake, not_ready] {
            assert_eq!(code(ServiceError::Agent(e)), T::UNAVAILABLE);
        }
        // Channel(tonic::transport::Error) has no public constructor; it is
        // matched with Connect in `agent_code`.
    }

    #[test]
    fn the_clients_own_errors_map_to_their_meaning() {
        use ttrpc::Code as T;
        let timeout = ClientError::Timeout {
            method: "StartContainer",
            timeout: std::time::Duration::from_secs(1),
        };
        assert_eq!(code(ServiceError::Agent(timeout)), T::DEADLINE_EXCEEDED);
        let reply = ClientError::InvalidReply {
            method: "CreateContainer",
            reason: "pid 0".into(),
        };
        assert_eq!(code(ServiceError::Agent(reply)), T::INTERNAL);
        let request = ClientError::InvalidRequest("id length".into());
        assert_eq!(code(ServiceError::Agent(request)), T::INVALID_ARGUMENT);
    }

    #[test]
    fn messages_are_one_line_without_repeats() {
        let e = ServiceError::Mount(mounts::MountError::Mount {
            target: "/run/husk/s/shared/c1/rootfs".into(),
            source: std::io::Error::from_raw_os_error(libc::EPERM),
        });
        let text = match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => s.message().to_owned(),
            other => panic!("{other:?}"),
        };
        assert!(!text.contains('\n'), "{text}");
        assert!(
            text.contains("rootfs") && text.contains("not permitted"),
            "{text}"
        );
    }
}
