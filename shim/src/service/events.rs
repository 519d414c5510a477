//! Publishing task events to containerd.
//!
//! Events go out in order through one task, so that, for example, TaskExit
//! never overtakes the TaskStart of the same process. A failure to publish is
//! logged: containerd also learns states through Wait and State. Shutdown
//! [flushes](Events::flush) the queue, so that the last events (TaskDelete,
//! a late TaskOOM) are not lost when the shim exits.

use std::time::Duration;

use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::topics;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::Context;
use tokio::sync::{mpsc, oneshot};

/// One event for containerd.
pub enum Event {
    Create(TaskCreate),
    Start(TaskStart),
    Exit(TaskExit),
    Delete(TaskDelete),
    ExecAdded(TaskExecAdded),
    ExecStarted(TaskExecStarted),
    Paused(TaskPaused),
    Resumed(TaskResumed),
    Oom(TaskOOM),
}

impl Event {
    fn into_parts(self) -> (&'static str, Box<dyn MessageDyn>) {
        match self {
            Event::Create(e) => (topics::TASK_CREATE_EVENT_TOPIC, Box::new(e)),
            Event::Start(e) => (topics::TASK_START_EVENT_TOPIC, Box::new(e)),
            Event::Exit(e) => (topics::TASK_EXIT_EVENT_TOPIC, Box::new(e)),
            Event::Delete(e) => (topics::TASK_DELETE_EVENT_TOPIC, Box::new(e)),
            Event::ExecAdded(e) => (topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(e)),
            Event::ExecStarted(e) => (topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(e)),
            Event::Paused(e) => (topics::TASK_PAUSED_EVENT_TOPIC, Box::new(e)),
            Event::Resumed(e) => (topics::TASK_RESUMED_EVENT_TOPIC, Box::new(e)),
            Event::Oom(e) => (topics::TASK_OOM_EVENT_TOPIC, Box::new(e)),
        }
    }
}

/// What the publishing task is given.
enum Queued {
    Event(Event),
    /// Answered once everything queued before it has been published.
    Flush(oneshot::Sender<()>),
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct Events(mpsc::UnboundedSender<Queued>);

impl Events {
    /// Starts the publishing task for `namespace`.
    pub fn start(publisher: RemotePublisher, namespace: String) -> Events {
        let (tx, mut rx) = mpsc::unbounded_channel::<Queued>();
        tokio::spawn(async move {
            while let Some(queued) = rx.recv().await {
                let event = match queued {
                    Queued::Event(event) => event,
                    Queued::Flush(done) => {
                        let _ = done.send(());
                        continue;
                    }
                };
                let (topic, message) = event.into_parts();
                if let Err(e) = publisher
                    .publish(Context::default(), topic, &namespace, message)
                    .await
                {
                    log::warn!("publishing {topic}: {e}");
                }
            }
        });
        Events(tx)
    }

    /// Queues `event`.
    pub fn send(&self, event: Event) {
        // The task ends only with the process.
        let _ = self.0.send(Queued::Event(event));
    }

    /// Waits until every event queued so far has been published (or failed
    /// to), for at most `limit`. Returns whether the queue was flushed.
    pub async fn flush(&self, limit: Duration) -> bool {
        let (done_tx, done_rx) = oneshot::channel();
        if self.0.send(Queued::Flush(done_tx)).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(limit, done_rx).await, Ok(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn flush_waits_for_the_events_queued_before_it() {
        let (tx, mut rx) = mpsc::unbounded_channel::<Queued>();
        let events = Events(tx);
        events.send(Event::Paused(TaskPaused::default()));
        let flushed = tokio::spawn({
            let events = events.clone();
            async move { events.flush(Duration::from_secs(10)).await }
        });
        // A publisher that has not got to the event yet: no answer.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!flushed.is_finished());
        assert!(matches!(
            rx.recv().await,
            Some(Queued::Event(Event::Paused(_)))
        ));
        match rx.recv().await {
            Some(Queued::Flush(done)) => done.send(()).unwrap(),
            _ => panic!("no flush marker after the event"),
        }
        assert!(flushed.await.unwrap());
    }

    #[tokio::test]
    async fn flush_gives_up_after_its_limit() {
        let (tx, _rx) = mpsc::unbounded_channel::<Queued>();
        assert!(!Events(tx).flush(Duration::from_millis(20)).await);
        let (tx, rx) = mpsc::unbounded_channel::<Queued>();
        drop(rx);
        assert!(!Events(tx).flush(Duration::from_secs(10)).await);
    }
}
