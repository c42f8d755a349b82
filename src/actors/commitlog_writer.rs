//! `CommitLogWriter`: the only writer of the commitlog. Assigns queue
//! offsets, appends each batch with one copy per segment, hands the batch to
//! the Dispatcher, and answers the producer once the flush policy is met.
//! Runs on its own arbiter; with sync flush it waits on the flusher thread
//! without blocking, so later batches keep appending (group commit).

use crate::error::{BrokerError, ErrorKind};
use crate::observe::{kind, ActorStats, Tracked};
use std::net::SocketAddr;
use std::sync::Arc;

use actix::prelude::*;

use super::dispatcher::{Dispatch, Dispatcher, ForgetTopic};
use crate::clock::now_millis;
use crate::config::FlushMode;
use crate::store::append::{append_batch, AppendContext, AppendEntry};
use crate::store::commitlog::{AppendError, Appender};
use crate::store::flusher::FlushHandle;
use crate::store::Store;
use crate::wire::send::SendResponse;

/// Append a batch to one topic queue.
#[derive(Message)]
#[rtype(result = "Result<SendResponse, BrokerError>")]
pub struct Append {
    /// Topic (must exist).
    pub topic: Arc<str>,
    /// Queue (must be below the topic's queue count).
    pub queue_id: u32,
    /// The batch.
    pub entries: Vec<AppendEntry>,
    /// The producer's address.
    pub born_host: SocketAddr,
}

/// Forget a deleted topic: its queue offsets here, then (in order after
/// pending dispatches) its consume queues.
#[derive(Message)]
#[rtype(result = "std::io::Result<()>")]
pub struct DeleteTopicData(pub String);

/// The writer actor.
pub struct CommitLogWriter {
    stats: Arc<ActorStats>,
    store: Arc<Store>,
    appender: Appender,
    dispatcher: Tracked<Dispatcher>,
    flusher: FlushHandle,
    mode: FlushMode,
    store_host: SocketAddr,
}

impl CommitLogWriter {
    /// Reports into `stats` (from the broker's actor tree).
    pub fn with_stats(mut self, stats: Arc<ActorStats>) -> Self {
        self.stats = stats;
        self
    }

    /// A writer for `store`'s commitlog.
    pub fn new(
        store: Arc<Store>,
        dispatcher: Tracked<Dispatcher>,
        flusher: FlushHandle,
        mode: FlushMode,
        store_host: SocketAddr,
    ) -> CommitLogWriter {
        let appender = Appender::new(store.log.clone());
        CommitLogWriter {
            stats: ActorStats::detached(kind::COMMITLOG_WRITER, "0"),
            store,
            appender,
            dispatcher,
            flusher,
            mode,
            store_host,
        }
    }
}

impl Actor for CommitLogWriter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.stats.started();
        ctx.set_mailbox_capacity(256);
    }
}

impl Supervised for CommitLogWriter {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.stats.restarting();
        // All durable state (write position, queue offsets) lives in the
        // store; only the scratch buffer is renewed.
        self.appender = Appender::new(self.store.log.clone());
    }
}

impl Handler<Append> for CommitLogWriter {
    type Result = ResponseFuture<Result<SendResponse, BrokerError>>;

    fn handle(&mut self, msg: Append, ctx: &mut Context<Self>) -> Self::Result {
        let _timer = self.stats.handling();
        let actx = AppendContext {
            born_host: msg.born_host,
            store_host: self.store_host,
            now_ms: now_millis(),
        };
        let batch = match append_batch(
            &self.store,
            &mut self.appender,
            &msg.topic,
            msg.queue_id,
            &msg.entries,
            actx,
        ) {
            Ok(b) => b,
            Err(err) => {
                tracing::warn!(error = %err, "append failed");
                let kind = match err {
                    AppendError::TooLarge { .. } => ErrorKind::InvalidArgument,
                    AppendError::Io(_) => {
                        // A failing disk: restart the actor (state is in the store).
                        ctx.stop();
                        ErrorKind::Store
                    }
                };
                return Box::pin(async move { Err(BrokerError::new(kind, err.to_string())) });
            }
        };
        let end = batch.end;
        let labels = [("topic", msg.topic.to_string()), ("queue", msg.queue_id.to_string())];
        metrics::counter!("ferromq_queue_messages_in_total", &labels).increment(batch.dispatch.len() as u64);
        crate::observe::totals::add_in(batch.dispatch.len() as u64);
        let bytes: u64 = batch.dispatch.iter().map(|d| u64::from(d.size)).sum();
        metrics::counter!("ferromq_queue_bytes_in_total", &labels).increment(bytes);
        self.dispatcher.do_send(Dispatch {
            entries: batch.dispatch,
            end,
        });
        let response = SendResponse {
            queue_id: msg.queue_id,
            store_host: self.store_host,
            stored: batch.stored,
        };
        match self.mode {
            FlushMode::Async => Box::pin(async move { Ok(response) }),
            FlushMode::Sync => {
                let durable = self.flusher.durable(end);
                Box::pin(async move {
                    match durable.await {
                        Ok(Ok(())) => Ok(response),
                        Ok(Err(e)) => Err(BrokerError::new(ErrorKind::Store, format!("flush failed: {e}"))),
                        Err(_) => Err(BrokerError::new(ErrorKind::Unavailable, "the flusher stopped")),
                    }
                })
            }
        }
    }
}

impl Handler<DeleteTopicData> for CommitLogWriter {
    type Result = ResponseFuture<std::io::Result<()>>;

    fn handle(&mut self, DeleteTopicData(topic): DeleteTopicData, _: &mut Context<Self>) -> Self::Result {
        let _timer = self.stats.handling();
        if let Err(e) = self.store.forget_topic_offsets(&topic) {
            return Box::pin(async move { Err(e.into()) });
        }
        let forget = self.dispatcher.send(ForgetTopic(topic));
        Box::pin(async move { forget.await.map_err(std::io::Error::other)? })
    }
}

crate::observe::failable!(CommitLogWriter);
