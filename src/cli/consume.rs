//! `ferromq consume`: print a topic's messages from every queue, in order
//! within each queue, until `--count` messages or `--idle-timeout`.

use std::io::Write;
use std::time::Duration;

use clap::{Args, ValueEnum};
use tokio::sync::mpsc;

use super::output::{format_queue_message, Format};
use super::{CliResult, NamesrvOpt};
use crate::client::core::ClientCore;
use crate::client::{ClientError, GroupConsumer, GroupConsumerConfig, MessageQueue, PullConsumer, StartPosition};
use crate::record::StoredRecord;

/// Long-poll wait of each pull.
const PULL_WAIT: Duration = Duration::from_secs(1);
/// Messages per pull.
const PULL_BATCH: u32 = 32;

/// Where consumption starts in each queue (for a group: each queue
/// without a committed offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The oldest stored message.
    Earliest,
    /// Only messages sent from now on.
    Latest,
    /// The first message stored at or after this time (ms since the epoch).
    Timestamp(u64),
}

/// Parses `earliest`, `latest` or an RFC 3339 time.
pub fn parse_start(s: &str) -> Result<StartFrom, String> {
    match s {
        "earliest" => Ok(StartFrom::Earliest),
        "latest" => Ok(StartFrom::Latest),
        other => super::group::parse_time_ms(other).map(StartFrom::Timestamp),
    }
}

/// Group consumption mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Each queue to one member.
    Clustering,
    /// Every member gets every message.
    Broadcasting,
}

/// `ferromq consume` flags.
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Topic to read.
    #[arg(long)]
    pub topic: String,
    /// Tag expression: `*`, `a`, or `a || b`.
    #[arg(long, default_value = "*")]
    pub tag: String,
    /// Start of each queue: `earliest`, `latest` or an RFC 3339 time.
    #[arg(long, value_parser = parse_start, default_value = "latest")]
    pub from: StartFrom,
    /// Join this consumer group (queues are shared, offsets committed).
    #[arg(long)]
    pub group: Option<String>,
    /// Group mode.
    #[arg(long, value_enum, default_value_t = Mode::Clustering)]
    pub mode: Mode,
    /// Assignment strategy if this member creates the group: range,
    /// round-robin or sticky.
    #[arg(long, default_value = "range")]
    pub strategy: String,
    /// Group session timeout.
    #[arg(long, default_value_t = 30_000)]
    pub session_timeout_ms: u64,
    /// Group heartbeat period.
    #[arg(long, default_value_t = 3_000)]
    pub heartbeat_ms: u64,
    /// Client id within the group (default: `client@<pid>`).
    #[arg(long)]
    pub client_id: Option<String>,
    /// Per-message acknowledgements with this ack timeout (e.g. `30s`): a
    /// message not acknowledged in time is redelivered (needs --group).
    #[arg(long, value_parser = humantime::parse_duration, requires = "group")]
    pub ack_timeout: Option<Duration>,
    /// NACK (requeue) every Nth delivered message instead of acknowledging
    /// it, to watch redelivery; implies per-message acknowledgements.
    #[arg(long, requires = "group", value_parser = clap::value_parser!(u64).range(1..))]
    pub nack_every: Option<u64>,
    /// Orderly consumption: each queue's messages one at a time, in offset
    /// order (implies per-message acknowledgements).
    #[arg(long, requires = "group")]
    pub orderly: bool,
    /// Read a queue from a slave of its broker group while more than N
    /// messages behind its end (back to the master within N/2); off by
    /// default. Queues of a group whose master is down are read from a
    /// slave either way.
    #[arg(long, value_name = "N")]
    pub read_from_slave_when_behind: Option<u64>,
    /// Exit after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// Exit after this many seconds without a new message (0: never).
    #[arg(long)]
    pub idle_timeout: Option<f64>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[command(flatten)]
    pub ns: NamesrvOpt,
}

/// Consecutive failed pulls answered with a server error before a queue
/// gives up (and `consume` fails); network failures never give up.
const MAX_SERVER_FAILURES: u32 = 5;
/// Pause after a pull that failed because its broker could not be reached
/// (the broker is marked down; the next pull resolves the address again,
/// and so reads from a slave while the master is down).
const DOWN_CHECK: Duration = Duration::from_millis(500);

/// Pulls one queue forever, sending its messages in order. Reads go to
/// the queue's master, or a slave of its group while the master is down
/// (see [`ClientCore::read_addr`]); while no broker of the group can be
/// reached the queue waits in the background (the client core logs one
/// warning per broker) and resumes where it stopped; only repeated server
/// errors end it with an error.
async fn follow(consumer: PullConsumer, mq: MessageQueue, from: StartFrom, tags: String, tx: mpsc::Sender<QueueBatch>) {
    let mut offset: Option<u64> = None;
    let mut failures = 0u32;
    loop {
        let result = match offset {
            None => consumer.offsets(&mq).await.map(|o| {
                offset = Some(match from {
                    StartFrom::Earliest | StartFrom::Timestamp(_) => o.min_offset,
                    StartFrom::Latest => o.max_offset,
                });
                None
            }),
            Some(at) => consumer.pull(&mq, at, PULL_BATCH, PULL_WAIT, &tags).await.map(Some),
        };
        match result {
            Ok(None) => failures = 0,
            Ok(Some(r)) => {
                failures = 0;
                offset = Some(r.next_offset);
                if !r.messages.is_empty() && tx.send(Ok((mq.broker_name.clone(), r.messages))).await.is_err() {
                    return;
                }
            }
            Err(e @ (ClientError::Timeout { .. } | ClientError::Io { .. } | ClientError::Closed(_))) => {
                tracing::debug!(queue = %mq, error = %e, "pull failed; retrying");
                tokio::time::sleep(DOWN_CHECK).await;
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(queue = %mq, error = %e, "pull failed");
                if failures >= MAX_SERVER_FAILURES {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200 * u64::from(failures))).await;
            }
        }
    }
}

/// Messages pulled from one queue, with the broker group serving it, or
/// the error that ended its follower.
type QueueBatch = Result<(String, Vec<StoredRecord>), ClientError>;

/// The queues of every topic, or an error naming the topic that has no
/// route (missing topic, no live broker) or the name servers that did not
/// answer; checked before consuming so that such a consume fails at once.
async fn check_routes(core: &ClientCore, topics: &[String]) -> Result<Vec<MessageQueue>, String> {
    let mut all = Vec::new();
    for topic in topics {
        match core.queues(topic).await {
            Ok(q) => all.extend(q),
            Err(e) => return Err(format!("cannot consume {topic}: {e}")),
        }
    }
    Ok(all)
}

/// Runs `consume`.
pub async fn run(a: ConsumeArgs) -> CliResult {
    if a.group.is_some() {
        return run_group(a).await;
    }
    if let StartFrom::Timestamp(_) = a.from {
        return Err("--from <time> needs --group (it resolves per-queue offsets on the broker)".into());
    }
    let consumer = PullConsumer::new(a.ns.client_config())
        .with_read_from_slave_when_behind(a.read_from_slave_when_behind.unwrap_or(0));
    let queues = check_routes(consumer.core(), std::slice::from_ref(&a.topic)).await?;
    let (tx, mut rx) = mpsc::channel(queues.len() * 2);
    let mut tasks = Vec::new();
    for mq in queues {
        tasks.push(tokio::spawn(follow(
            consumer.clone(),
            mq,
            a.from,
            a.tag.clone(),
            tx.clone(),
        )));
    }
    drop(tx);
    let idle = a.idle_timeout.filter(|s| *s > 0.0).map(Duration::from_secs_f64);
    let mut printed = 0u64;
    let result = loop {
        if a.count.is_some_and(|c| printed >= c) {
            break Ok(());
        }
        let next = match idle {
            Some(d) => match tokio::time::timeout(d, rx.recv()).await {
                Ok(n) => n,
                Err(_) => break Ok(()),
            },
            None => rx.recv().await,
        };
        let (broker, batch) = match next {
            Some(Ok(b)) => b,
            Some(Err(e)) => break Err(e.into()),
            None => break Ok(()),
        };
        let mut out = std::io::stdout().lock();
        for rec in &batch {
            if a.count.is_some_and(|c| printed >= c) {
                break;
            }
            writeln!(out, "{}", format_queue_message(rec, Some(&broker), a.format))?;
            printed += 1;
        }
        out.flush()?;
    };
    for t in tasks {
        t.abort();
    }
    result
}

/// `consume --group`: a group member; leaves the group (after committing)
/// on exit, SIGINT or SIGTERM.
async fn run_group(a: ConsumeArgs) -> CliResult {
    use tokio::signal::unix::{signal, SignalKind};
    let group = a.group.clone().unwrap_or_default();
    let mut cfg = GroupConsumerConfig::new(group, vec![a.topic.clone()]);
    cfg.tag_expression = a.tag.clone();
    cfg.strategy = a.strategy.clone();
    cfg.mode = match a.mode {
        Mode::Clustering => "clustering".into(),
        Mode::Broadcasting => "broadcasting".into(),
    };
    cfg.session_timeout = Duration::from_millis(a.session_timeout_ms);
    cfg.heartbeat_interval = Duration::from_millis(a.heartbeat_ms);
    if let Some(id) = &a.client_id {
        cfg.client_id = id.clone();
    }
    cfg.orderly = a.orderly;
    cfg.read_from_slave_when_behind = a.read_from_slave_when_behind.filter(|n| *n > 0);
    cfg.ack_timeout = a
        .ack_timeout
        .or_else(|| a.nack_every.map(|_| crate::client::group::DEFAULT_ACK_TIMEOUT));
    cfg.start = match a.from {
        StartFrom::Earliest => StartPosition::Earliest,
        StartFrom::Latest => StartPosition::Latest,
        StartFrom::Timestamp(t) => StartPosition::Timestamp(t),
    };
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    // Up front: a missing topic or unreachable name servers fail the
    // command instead of a member waiting for ever.
    check_routes(&ClientCore::new(a.ns.client_config()), std::slice::from_ref(&a.topic)).await?;
    let mut consumer = GroupConsumer::start(a.ns.client_config(), cfg);
    let idle = a.idle_timeout.filter(|s| *s > 0.0).map(Duration::from_secs_f64);
    let mut printed = 0u64;
    let result: CliResult = loop {
        if a.count.is_some_and(|c| printed >= c) {
            break Ok(());
        }
        let next = async {
            match idle {
                Some(d) => consumer.next_timeout(d).await,
                None => Some(consumer.next().await),
            }
        };
        let rec = tokio::select! {
            r = next => r,
            _ = interrupt.recv() => break Ok(()),
            _ = terminate.recv() => break Ok(()),
        };
        match rec {
            None => break Ok(()),       // idle timeout
            Some(None) => break Ok(()), // consumer stopped
            Some(Some(rec)) => {
                let mut out = std::io::stdout().lock();
                writeln!(
                    out,
                    "{}",
                    format_queue_message(&rec, consumer.last_broker_name(), a.format)
                )?;
                out.flush()?;
                printed += 1;
                if a.nack_every.is_some_and(|n| printed % n == 0) {
                    consumer.nack_last(true)?;
                }
            }
        }
    };
    consumer.close().await;
    result
}
