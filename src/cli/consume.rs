//! `ferromq consume`: print a topic's messages from every queue, in order
//! within each queue, until `--count` messages or `--idle-timeout`.

use std::io::Write;
use std::time::Duration;

use clap::{Args, ValueEnum};
use tokio::sync::mpsc;

use super::output::{format_message, Format};
use super::{CliResult, NamesrvOpt};
use crate::client::{ClientError, MessageQueue, PullConsumer};
use crate::store::record::StoredRecord;

/// Long-poll wait of each pull.
const PULL_WAIT: Duration = Duration::from_secs(1);
/// Messages per pull.
const PULL_BATCH: u32 = 32;

/// Where consumption starts in each queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StartFrom {
    /// The oldest stored message.
    Earliest,
    /// Only messages sent from now on.
    Latest,
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
    /// Start of each queue.
    #[arg(long, value_enum, default_value_t = StartFrom::Latest)]
    pub from: StartFrom,
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

/// Pulls one queue forever, sending its messages in order.
async fn follow(
    consumer: PullConsumer,
    mq: MessageQueue,
    from: StartFrom,
    tags: String,
    tx: mpsc::Sender<Result<Vec<StoredRecord>, ClientError>>,
) {
    let start = match consumer.offsets(&mq).await {
        Ok(o) => match from {
            StartFrom::Earliest => o.min_offset,
            StartFrom::Latest => o.max_offset,
        },
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            return;
        }
    };
    let mut offset = start;
    let mut failures = 0u32;
    loop {
        match consumer.pull(&mq, offset, PULL_BATCH, PULL_WAIT, &tags).await {
            Ok(r) => {
                failures = 0;
                offset = r.next_offset;
                if !r.messages.is_empty() && tx.send(Ok(r.messages)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(queue = %mq, error = %e, "pull failed");
                if failures >= 5 {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200 * u64::from(failures))).await;
            }
        }
    }
}

/// Runs `consume`.
pub async fn run(a: ConsumeArgs) -> CliResult {
    let consumer = PullConsumer::new(a.ns.client_config());
    let queues = consumer.queues(&a.topic).await?;
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
        let batch = match next {
            Some(Ok(b)) => b,
            Some(Err(e)) => break Err(e.into()),
            None => break Ok(()),
        };
        let mut out = std::io::stdout().lock();
        for rec in &batch {
            if a.count.is_some_and(|c| printed >= c) {
                break;
            }
            writeln!(out, "{}", format_message(rec, a.format))?;
            printed += 1;
        }
        out.flush()?;
    };
    for t in tasks {
        t.abort();
    }
    result
}
