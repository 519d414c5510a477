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

impl From<ServiceError> for ttrpc::Error {
    fn from(e: ServiceError) -> ttrpc::Error {
        use ttrpc::Code as T;
        let code = match &e {
            ServiceError::NotFound(_) => T::NOT_FOUND,
            ServiceError::AlreadyExists(_) => T::ALREADY_EXISTS,
            ServiceError::InvalidArgument(_) | ServiceError::Spec(_) => T::INVALID_ARGUMENT,
            ServiceError::FailedPrecondition(_) | ServiceError::VmGone(_) => T::FAILED_PRECONDITION,
            ServiceError::Unimplemented(_) => T::UNIMPLEMENTED,
            ServiceError::Agent(c) => match c.code() {
                Some(Code::NotFound) => T::NOT_FOUND,
                Some(Code::AlreadyExists) => T::ALREADY_EXISTS,
                Some(Code::InvalidArgument) => T::INVALID_ARGUMENT,
                Some(Code::FailedPrecondition) => T::FAILED_PRECONDITION,
                Some(Code::Unimplemented) => T::UNIMPLEMENTED,
                Some(Code::ResourceExhausted) => T::RESOURCE_EXHAUSTED,
                Some(Code::DeadlineExceeded) => T::DEADLINE_EXCEEDED,
                _ if matches!(c, ClientError::Timeout { .. }) => T::DEADLINE_EXCEEDED,
                _ => T::UNAVAILABLE,
            },
            ServiceError::Stdio(_) | ServiceError::Mount(_) | ServiceError::Internal(_) => {
                T::INTERNAL
            }
        };
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, one_line(&e)))
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

    #[test]
    fn errors_map_to_meaningful_codes() {
        assert_eq!(
            code(ServiceError::NotFound("x".into())),
            ttrpc::Code::NOT_FOUND
        );
        assert_eq!(
            code(ServiceError::VmGone("killed".into())),
            ttrpc::Code::FAILED_PRECONDITION
        );
        let timeout = ClientError::Timeout {
            method: "StartContainer",
            timeout: std::time::Duration::from_secs(1),
        };
        assert_eq!(
            code(ServiceError::Agent(timeout)),
            ttrpc::Code::DEADLINE_EXCEEDED
        );
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
