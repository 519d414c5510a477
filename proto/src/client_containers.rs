//! The client's container calls (an `impl` block of
//! [`AgentClient`](crate::client::AgentClient), kept apart for size).
//!
//! Creating, starting, exec'ing and removing run the agent's container helper
//! and may take seconds on a slow guest: they get [`LIFECYCLE_TIMEOUT`]
//! rather than the default deadline. Replies are checked like all others.

use std::time::Duration;

use tonic::Streaming;

use crate::client::{check_id, AgentClient, ClientError, Exec};
use crate::pb;

/// The deadline of CreateContainer, StartContainer, ExecProcess and
/// RemoveContainer.
pub const LIFECYCLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The most pids ListProcesses may return.
const MAX_PIDS: usize = 1 << 16;

fn container(id: &str) -> pb::ContainerRef {
    pb::ContainerRef {
        container_id: id.to_owned(),
    }
}

impl AgentClient {
    fn lifecycle_timeout(&self) -> Option<Duration> {
        Some(self.timeout.max(LIFECYCLE_TIMEOUT))
    }

    /// AddStorage: mounts `storage` in the guest.
    pub async fn add_storage(&self, storage: pb::Storage) -> Result<(), ClientError> {
        let mut c = self.inner.clone();
        let t = Some(self.timeout);
        let request = pb::AddStorageRequest {
            storage: Some(storage),
        };
        Self::call("AddStorage", t, c.add_storage(self.request(request, t))).await?;
        Ok(())
    }

    /// RemoveStorage: unmounts the storage `id`.
    pub async fn remove_storage(&self, id: &str) -> Result<(), ClientError> {
        let mut c = self.inner.clone();
        let t = Some(self.timeout);
        let request = pb::RemoveStorageRequest { id: id.to_owned() };
        Self::call(
            "RemoveStorage",
            t,
            c.remove_storage(self.request(request, t)),
        )
        .await?;
        Ok(())
    }

    /// CreateContainer: returns the (waiting) init's pid.
    pub async fn create_container(
        &self,
        request: pb::CreateContainerRequest,
    ) -> Result<u32, ClientError> {
        const M: &str = "CreateContainer";
        let mut c = self.inner.clone();
        let t = self.lifecycle_timeout();
        let r = Self::call(M, t, c.create_container(self.request(request, t))).await?;
        if r.pid <= 1 {
            return Err(ClientError::invalid(M, format!("pid {}", r.pid)));
        }
        Ok(r.pid)
    }

    /// SignalProcess with `all`: signals every process of the container.
    pub async fn signal_container(&self, id: &str, signal: i32) -> Result<(), ClientError> {
        let request = pb::SignalProcessRequest {
            process: Some(pb::ProcessRef {
                container_id: id.to_owned(),
                exec_id: String::new(),
            }),
            signal,
            all: true,
        };
        let mut c = self.inner.clone();
        let t = Some(self.timeout);
        Self::call(
            "SignalProcess",
            t,
            c.signal_process(self.request(request, t)),
        )
        .await?;
        Ok(())
    }

    /// StartContainer: returns the init's pid.
    pub async fn start_container(&self, id: &str) -> Result<u32, ClientError> {
        const M: &str = "StartContainer";
        let mut c = self.inner.clone();
        let t = self.lifecycle_timeout();
        let r = Self::call(M, t, c.start_container(self.request(container(id), t))).await?;
        if r.pid <= 1 {
            return Err(ClientError::invalid(M, format!("pid {}", r.pid)));
        }
        Ok(r.pid)
    }

    /// ExecProcess: runs a process in a container.
    pub async fn exec_process(&self, request: pb::ExecProcessRequest) -> Result<Exec, ClientError> {
        const M: &str = "ExecProcess";
        let container_id = request.container_id.clone();
        let mut c = self.inner.clone();
        let t = self.lifecycle_timeout();
        let r = Self::call(M, t, c.exec_process(self.request(request, t))).await?;
        check_id(M, &r.exec_id)?;
        if r.pid <= 1 {
            return Err(ClientError::invalid(M, format!("pid {}", r.pid)));
        }
        Ok(Exec {
            process: pb::ProcessRef {
                container_id,
                exec_id: r.exec_id,
            },
            pid: r.pid,
        })
    }

    /// RemoveContainer.
    pub async fn remove_container(&self, id: &str, force: bool) -> Result<(), ClientError> {
        let mut c = self.inner.clone();
        let t = self.lifecycle_timeout();
        let request = pb::RemoveContainerRequest {
            container_id: id.to_owned(),
            force,
        };
        Self::call(
            "RemoveContainer",
            t,
            c.remove_container(self.request(request, t)),
        )
        .await?;
        Ok(())
    }

    /// StatsContainer.
    pub async fn stats_container(&self, id: &str) -> Result<pb::ContainerStats, ClientError> {
        let mut c = self.inner.clone();
        let t = Some(self.timeout);
        Self::call(
            "StatsContainer",
            t,
            c.stats_container(self.request(container(id), t)),
        )
        .await
    }

    /// UpdateContainer: `resources` is OCI `linux.resources` JSON.
    pub async fn update_container(&self, id: &str, resources: Vec<u8>) -> Result<(), ClientError> {
        let mut c = self.inner.clone();
        let t = Some(self.timeout);
        let request = pb::UpdateContainerRequest {
            container_id: id.to_owned(),
            resources,
        };
        Self::call(
            "UpdateContainer",
            t,
            c.update_container(self.request(request, t)),
        )
        .await?;
        Ok(())
    }

    /// PauseContainer (`true`) or ResumeContainer (`false`).
    pub async fn set_paused(&self, id: &str, paused: bool) -> Result<(), ClientError> {
        let mut c = self.inner.clone();
        let t = Some(self.timeout);
        let request = self.request(container(id), t);
        if paused {
            Self::call("PauseContainer", t, c.pause_container(request)).await?;
        } else {
            Self::call("ResumeContainer", t, c.resume_container(request)).await?;
        }
        Ok(())
    }

    /// ListProcesses: the container's pids, ascending.
    pub async fn list_processes(&self, id: &str) -> Result<Vec<u32>, ClientError> {
        const M: &str = "ListProcesses";
        let mut c = self.inner.clone();
        let t = Some(self.timeout);
        let r = Self::call(M, t, c.list_processes(self.request(container(id), t))).await?;
        if r.pids.len() > MAX_PIDS || r.pids.contains(&0) {
            return Err(ClientError::invalid(M, "pids"));
        }
        Ok(r.pids)
    }

    /// ResizeTty.
    pub async fn resize_tty(
        &self,
        process: &pb::ProcessRef,
        width: u32,
        height: u32,
    ) -> Result<(), ClientError> {
        let mut c = self.inner.clone();
        let t = Some(self.timeout);
        let request = pb::ResizeTtyRequest {
            process: Some(process.clone()),
            width,
            height,
        };
        Self::call("ResizeTty", t, c.resize_tty(self.request(request, t))).await?;
        Ok(())
    }

    /// CloseStdin.
    pub async fn close_stdin(&self, process: &pb::ProcessRef) -> Result<(), ClientError> {
        let mut c = self.inner.clone();
        let t = Some(self.timeout);
        Self::call(
            "CloseStdin",
            t,
            c.close_stdin(self.request(process.clone(), t)),
        )
        .await?;
        Ok(())
    }

    /// GetEvents: the guest's events from now on.
    pub async fn events(&self) -> Result<EventStream, ClientError> {
        let mut c = self.inner.clone();
        let t = Some(self.timeout);
        let request = self.request(pb::GetEventsRequest {}, None);
        let inner = Self::call("GetEvents", t, c.get_events(request)).await?;
        Ok(EventStream { inner })
    }
}

/// The agent's event stream.
#[derive(Debug)]
pub struct EventStream {
    inner: Streaming<pb::Event>,
}

impl EventStream {
    /// The next event (always with a kind), or `None` when the stream ends.
    pub async fn next_event(&mut self) -> Result<Option<pb::event::Kind>, ClientError> {
        const M: &str = "GetEvents";
        match self.inner.message().await {
            Ok(Some(pb::Event { kind: Some(kind) })) => Ok(Some(kind)),
            Ok(Some(_)) => Err(ClientError::invalid(M, "event without a kind")),
            Ok(None) => Ok(None),
            Err(status) => Err(ClientError::status(M, status)),
        }
    }
}
