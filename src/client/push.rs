//! The push consumer: a group member that calls the application's listener
//! for every message, with bounded concurrency, and commits each message's
//! offset once its listener call returned (at-least-once).
//!
//! With `concurrency > 1` messages of one queue may be processed in parallel
//! and out of order (RocketMQ's "concurrently" mode); committed offsets
//! never pass a message whose listener has not finished.

use std::sync::Arc;

use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinHandle;

use super::core::ClientConfig;
use super::group::{GroupConsumer, GroupConsumerConfig};
use crate::record::StoredRecord;

/// What the application runs for each message.
pub type Listener = Arc<dyn Fn(&StoredRecord) + Send + Sync>;

/// A running push consumer.
pub struct PushConsumer {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl PushConsumer {
    /// Joins the group and starts calling `listener` on up to `concurrency`
    /// blocking threads at once.
    pub fn start(
        client: ClientConfig,
        cfg: GroupConsumerConfig,
        concurrency: usize,
        listener: Listener,
    ) -> PushConsumer {
        let (stop_tx, mut stop) = oneshot::channel::<()>();
        let concurrency = concurrency.max(1);
        let task = tokio::spawn(async move {
            let mut consumer = GroupConsumer::start(client, cfg);
            let slots = Arc::new(Semaphore::new(concurrency));
            loop {
                let delivery = tokio::select! {
                    _ = &mut stop => break,
                    d = consumer.next_delivery() => d,
                };
                let Some(delivery) = delivery else { break };
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    break;
                };
                let listener = listener.clone();
                tokio::task::spawn_blocking(move || {
                    listener(&delivery.record);
                    delivery.ack();
                    drop(slot);
                });
            }
            // Let running listeners finish so their offsets are committed.
            let _ = slots.acquire_many(concurrency as u32).await;
            consumer.close().await;
        });
        PushConsumer {
            stop: Some(stop_tx),
            task: Some(task),
        }
    }

    /// Stops delivering, waits for running listeners, commits and leaves.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for PushConsumer {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}
