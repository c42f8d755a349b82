//! `CommitLogWriter`: the only writer of the commitlog. Assigns queue
//! offsets, appends each batch (possibly for several queues) atomically
//! with one copy per segment, hands the batch to the Dispatcher, and
//! answers when its [`AckPolicy`] says so (after the page cache, after
//! fsync, later also after replicas). Runs on its own arbiter; waiting for
//! the policy does not block it, so later batches keep appending (group
//! commit). It imports no other actor but the Dispatcher.

use crate::error::{BrokerError, ErrorKind};
use crate::observe::{kind, ActorStats, Tracked};
use std::net::SocketAddr;
use std::sync::Arc;

use actix::prelude::*;

use super::ack_policy::AckPolicy;
use super::dispatcher::{Dispatch, Dispatcher, ForgetTopic};
use crate::clock::now_millis;
use crate::store::append::{append_to, AppendContext, AppendEntry, Appended, Destination};
use crate::store::commitlog::{AppendError, Appender};
use crate::store::Store;

/// Records for one (topic, queue) from one origin: one share of an
/// [`Append`].
#[derive(Debug)]
pub struct AppendGroup {
    /// Topic (must exist).
    pub topic: Arc<str>,
    /// Queue (must be below the topic's queue count).
    pub queue_id: u32,
    /// Who sent them: the producer, or this broker for its own records.
    pub born_host: SocketAddr,
    /// The records, in order.
    pub entries: Vec<AppendEntry>,
}

/// Append one batch, atomically: every record of every group is stored, or
/// none is. The only message that writes records: producers' batches
/// (their delayed messages in the delay topic's groups), dead letters,
/// released delayed messages and offset commits all arrive as one.
#[derive(Message, Debug)]
#[rtype(result = "Result<Appended, BrokerError>")]
pub struct Append {
    /// The groups, in order. [`Appended::stored`] lists their records in
    /// this order, and its `queue_id` is the first group's.
    pub groups: Vec<AppendGroup>,
}

/// Forget a deleted topic: its queue offsets here, then (in order after
/// pending dispatches) its consume queues.
#[derive(Message)]
#[rtype(result = "std::io::Result<()>")]
pub struct DeleteTopicData(pub String);

/// A slave stores a chunk of its master's log, byte for byte, at `at`
/// (its own log's end).
#[derive(Message, Debug)]
#[rtype(result = "Result<ReplicatedEnd, BrokerError>")]
pub struct AppendReplicated {
    /// Where the chunk starts (must be this log's end).
    pub at: u64,
    /// Whole records (and a segment's closing filler), CRC-checked here.
    pub bytes: bytes::Bytes,
}

/// What an [`AppendReplicated`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicatedEnd {
    /// The log's end afterwards.
    pub end: u64,
    /// The chunk held records of a topic, or a queue of it, this writer had
    /// not stored before: the slave registers again so routes list it.
    pub new_queues: bool,
}

/// A slave cuts its log at `to` (its master does not have what follows),
/// after every pending dispatch; answers what was cut, for a log line.
#[derive(Message, Debug)]
#[rtype(result = "Result<String, BrokerError>")]
pub struct TruncateLog {
    /// A record boundary at or below the log's end.
    pub to: u64,
}

/// An empty slave's log starts at `offset` (its master's start).
#[derive(Message, Debug)]
#[rtype(result = "Result<(), BrokerError>")]
pub struct StartLogAt(pub u64);

/// The writer actor.
pub struct CommitLogWriter {
    stats: Arc<ActorStats>,
    store: Arc<Store>,
    appender: Appender,
    dispatcher: Tracked<Dispatcher>,
    ack: Arc<dyn AckPolicy>,
    store_host: SocketAddr,
    /// A slave's writer: refuses [`Append`] (with `read_only`'s message),
    /// stores only what its master sends.
    read_only: Option<String>,
    /// Queues per topic seen in replicated chunks (for
    /// [`ReplicatedEnd::new_queues`]).
    replicated_queues: std::collections::HashMap<Arc<str>, u32>,
}

impl CommitLogWriter {
    /// Reports into `stats` (from the broker's actor tree).
    pub fn with_stats(mut self, stats: Arc<ActorStats>) -> Self {
        self.stats = stats;
        self
    }

    /// A writer for `store`'s commitlog, answering under `ack`.
    pub fn new(
        store: Arc<Store>,
        dispatcher: Tracked<Dispatcher>,
        ack: Arc<dyn AckPolicy>,
        store_host: SocketAddr,
    ) -> CommitLogWriter {
        let appender = Appender::new(store.log.clone());
        CommitLogWriter {
            stats: ActorStats::detached(kind::COMMITLOG_WRITER, "0"),
            store,
            appender,
            dispatcher,
            ack,
            store_host,
            read_only: None,
            replicated_queues: std::collections::HashMap::new(),
        }
    }

    /// A slave's writer: every [`Append`] is refused with `NOT_MASTER` and
    /// `why`; only [`AppendReplicated`] writes.
    pub fn read_only(mut self, why: Option<String>) -> Self {
        self.read_only = why;
        self
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
    type Result = ResponseFuture<Result<Appended, BrokerError>>;

    fn handle(&mut self, msg: Append, ctx: &mut Context<Self>) -> Self::Result {
        let _timer = self.stats.handling();
        if let Some(why) = &self.read_only {
            // A slave's log is a copy of its master's: nothing else may
            // write it (the broker core refuses client writes earlier; this
            // also stops the broker's own records, e.g. a dead letter).
            let err = BrokerError::new(ErrorKind::NotMaster, why.clone());
            return Box::pin(async move { Err(err) });
        }
        let actx = AppendContext {
            born_host: self.store_host, // unused: each group names its own
            store_host: self.store_host,
            now_ms: now_millis(),
        };
        let dests: Vec<Destination<'_>> = msg
            .groups
            .iter()
            .map(|g| Destination {
                topic: &g.topic,
                queue_id: g.queue_id,
                born_host: g.born_host,
                entries: &g.entries,
            })
            .collect();
        let batch = match append_to(&self.store, &mut self.appender, &dests, actx) {
            Ok(b) => b,
            Err(err) => {
                tracing::warn!(error = %err, "append failed");
                let kind = match &err {
                    AppendError::TooLarge { .. } => ErrorKind::InvalidArgument,
                    // Nothing was stored; the disk guard now refuses sends.
                    AppendError::Io(e) if e.is_no_space() => ErrorKind::DiskFull,
                    AppendError::Io(_) => {
                        // A failing disk: restart the actor (state is in the store).
                        ctx.stop();
                        ErrorKind::Store
                    }
                };
                let message = match err {
                    AppendError::Io(e) => e.to_string(),
                    other => other.to_string(),
                };
                return Box::pin(async move { Err(BrokerError::new(kind, message)) });
            }
        };
        let end = batch.end;
        let mut records = batch.dispatch.iter();
        for g in &msg.groups {
            let n = g.entries.len();
            let bytes: u64 = records.by_ref().take(n).map(|d| u64::from(d.size)).sum();
            let labels = [("topic", g.topic.to_string()), ("queue", g.queue_id.to_string())];
            metrics::counter!("ferromq_queue_messages_in_total", &labels).increment(n as u64);
            metrics::counter!("ferromq_queue_bytes_in_total", &labels).increment(bytes);
        }
        crate::observe::totals::add_in(batch.dispatch.len() as u64);
        self.dispatcher.do_send(Dispatch {
            entries: batch.dispatch,
            end,
        });
        let appended = Appended {
            queue_id: msg.groups.first().map_or(0, |g| g.queue_id),
            store_host: self.store_host,
            stored: batch.stored,
        };
        // The flush (and later replication) policy decides when to answer.
        let answered = self.ack.when_answered(end);
        Box::pin(async move {
            answered.await?;
            Ok(appended)
        })
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

impl Handler<AppendReplicated> for CommitLogWriter {
    type Result = Result<ReplicatedEnd, BrokerError>;

    fn handle(&mut self, msg: AppendReplicated, ctx: &mut Context<Self>) -> Self::Result {
        let _timer = self.stats.handling();
        let batch = match self
            .store
            .append_replicated_bytes(&mut self.appender, msg.at, msg.bytes, now_millis())
        {
            Ok(b) => b,
            Err(e) => {
                let kind = if e.is_no_space() {
                    ErrorKind::DiskFull
                } else if matches!(e.kind(), crate::store::StoreErrorKind::Io) {
                    // A failing disk: restart the actor (state is in the store).
                    ctx.stop();
                    ErrorKind::Store
                } else {
                    ErrorKind::InvalidArgument
                };
                return Err(BrokerError::new(
                    kind,
                    format!("storing replicated log at {}: {e}", msg.at),
                ));
            }
        };
        crate::observe::totals::add_in(batch.dispatch.len() as u64);
        let end = batch.end;
        let mut new_queues = false;
        for e in &batch.dispatch {
            let known = self.replicated_queues.entry(e.topic.clone()).or_insert_with(|| {
                new_queues = true;
                0
            });
            if e.queue_id >= *known {
                *known = e.queue_id + 1;
                new_queues = true;
            }
        }
        // Even an empty batch (a chunk of only a segment's filler) goes
        // through the Dispatcher, so the dispatched position never passes a
        // batch still waiting there.
        self.dispatcher.do_send(Dispatch {
            entries: batch.dispatch,
            end,
        });
        Ok(ReplicatedEnd { end, new_queues })
    }
}

impl Handler<TruncateLog> for CommitLogWriter {
    type Result = ResponseActFuture<Self, Result<String, BrokerError>>;

    fn handle(&mut self, TruncateLog { to }: TruncateLog, _: &mut Context<Self>) -> Self::Result {
        let _timer = self.stats.handling();
        // Dispatches queued before this must land first, or they would
        // write entries past the cut. The barrier is the dispatcher's
        // mailbox order. Nothing else writes meanwhile: on a slave only the
        // follower sends writes, and it waits for this answer.
        let barrier = self.dispatcher.send(super::dispatcher::Barrier);
        let store = self.store.clone();
        Box::pin(
            async move {
                barrier
                    .await
                    .map_err(|e| BrokerError::new(ErrorKind::Unavailable, e.to_string()))?;
                store
                    .truncate_log_to(to)
                    .map(|r| format!("{r:?}"))
                    .map_err(|e| BrokerError::store(format!("cutting the log at {to}: {e}")))
            }
            .into_actor(self),
        )
    }
}

impl Handler<StartLogAt> for CommitLogWriter {
    type Result = Result<(), BrokerError>;

    fn handle(&mut self, StartLogAt(offset): StartLogAt, _: &mut Context<Self>) -> Self::Result {
        let _timer = self.stats.handling();
        self.store
            .start_log_at(offset)
            .map_err(|e| BrokerError::store(format!("starting the log at {offset}: {e}")))
    }
}

crate::observe::failable!(CommitLogWriter);
