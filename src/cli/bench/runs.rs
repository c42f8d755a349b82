//! The broker benchmarks: produce, consume, e2e, latency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::task::JoinSet;

use serde_json::json;

use super::disk::{describe, measure_disk, DiskOpts};
use super::report::{print_summary, Meter, StallProbe};
use super::LoadOpts;
use crate::cli::CliResult;
use crate::client::{Admin, ClientConfig, MessageQueue, Producer, PullConsumer};
use crate::message::Message;
use crate::store::record::RecordFields;

/// The topics a run uses: `--topic`, or `<topic>-0 …` with `--topics N`.
fn topic_names(o: &LoadOpts) -> Vec<String> {
    if o.topics <= 1 {
        vec![o.topic.clone()]
    } else {
        (0..o.topics).map(|i| format!("{}-{i}", o.topic)).collect()
    }
}

async fn ensure_topic(o: &LoadOpts, cfg: &ClientConfig) -> CliResult {
    let admin = Admin::new(cfg.clone());
    let existing = admin.list_topics().await?;
    for t in topic_names(o) {
        if !existing.contains(&t) {
            admin.create_topic(&t, o.queues).await?;
        }
    }
    Ok(())
}

fn deadline(o: &LoadOpts) -> Option<Instant> {
    o.duration.map(|s| Instant::now() + Duration::from_secs(s))
}

fn expired(d: Option<Instant>) -> bool {
    d.is_some_and(|d| Instant::now() >= d)
}

/// Commitlog bytes of one benchmark message (IPv4 hosts, no properties),
/// as the store encodes it.
fn record_bytes(o: &LoadOpts) -> u64 {
    let topic = topic_names(o).into_iter().next().unwrap_or_default();
    let (props, body) = (std::collections::BTreeMap::new(), vec![0u8; o.size]);
    let host = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let fields = RecordFields {
        queue_id: 0,
        flags: 0,
        queue_offset: 0,
        phys_offset: 0,
        born_timestamp: 0,
        store_timestamp: 0,
        reconsume_times: 0,
        born_host: host,
        store_host: host,
        topic: &topic,
        properties: &props,
        body: &body,
    };
    fields.encoded_len() as u64
}

/// `--disk-dir`: the machine's write limits, measured over as many MiB as
/// the run wrote (at least 64).
fn disk_limits(o: &LoadOpts) -> Result<Option<serde_json::Value>, Box<dyn std::error::Error + Send + Sync>> {
    let Some(dir) = &o.disk_dir else { return Ok(None) };
    let mib = (o.messages * record_bytes(o)).div_ceil(1 << 20).max(64);
    let opts = DiskOpts {
        dir: dir.clone(),
        mib,
        chunk: 1 << 20,
        syncs: 100,
        json: true,
    };
    let v = tokio::task::block_in_place(|| measure_disk(&opts))?;
    if !o.json {
        println!("{}", describe(&v));
    }
    Ok(Some(v))
}

/// Adds the run's commitlog write rate and its fractions of the disk
/// limits to `summary`, and prints them.
fn against_limits(summary: &mut serde_json::Value, disk: serde_json::Value, o: &LoadOpts) {
    let secs = summary["seconds"].as_f64().unwrap_or(0.0).max(1e-9);
    let messages = summary["messages"].as_u64().unwrap_or(0);
    let log_mib = (messages * record_bytes(o)) as f64 / secs / (1 << 20) as f64;
    let share = |limit: &serde_json::Value| {
        limit
            .as_f64()
            .filter(|l| *l > 0.0)
            .map_or(0.0, |l| (log_mib / l * 1000.0).round() / 10.0)
    };
    let of_cache = share(&disk["page_cache_write_mib_per_sec"]);
    let of_sync = share(&disk["fdatasync_bandwidth_mib_per_sec"]);
    if !o.json {
        println!(
            "commitlog writes {:.1} MiB/s = {of_cache}% of page-cache write, {of_sync}% of write+fdatasync bandwidth",
            log_mib
        );
    }
    summary["commitlog_mib_per_sec"] = json!((log_mib * 10.0).round() / 10.0);
    summary["percent_of_page_cache_write"] = json!(of_cache);
    summary["percent_of_fdatasync_bandwidth"] = json!(of_sync);
    summary["disk"] = disk;
}

/// Batched, pipelined sends from `--producers` producers.
pub async fn produce(o: LoadOpts) -> CliResult {
    let cfg = o.ns.client_config();
    ensure_topic(&o, &cfg).await?;
    let meter = Meter::new();
    let progress = meter.spawn_progress("produce");
    let until = deadline(&o);
    let body = Bytes::from(vec![b'x'; o.size]);
    let remaining = Arc::new(AtomicU64::new(o.messages));
    let topics = Arc::new(topic_names(&o));
    let mut workers = JoinSet::new();
    for p in 0..o.producers.max(1) {
        let (producer, meter, body, remaining, topics) = (
            Producer::new(cfg.clone()),
            meter.clone(),
            body.clone(),
            remaining.clone(),
            topics.clone(),
        );
        let mut next_topic = p;
        let batch = o.batch.max(1) as u64;
        let size = o.size as u64;
        workers.spawn(async move {
            let mut in_flight = JoinSet::new();
            loop {
                while in_flight.len() < o.inflight as usize && !expired(until) {
                    let take = remaining.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                        r.checked_sub(r.min(batch)).filter(|_| r > 0)
                    });
                    let Ok(before) = take else { break };
                    let n = before.min(batch);
                    let topic = &topics[next_topic % topics.len()];
                    next_topic += 1;
                    let msgs: Vec<Message> = (0..n).map(|_| Message::new(topic.clone(), body.clone())).collect();
                    let (p, m) = (producer.clone(), meter.clone());
                    in_flight.spawn(async move {
                        let t = Instant::now();
                        let sent = p.send_batch(msgs).await?;
                        m.record(t.elapsed());
                        m.add(sent.len() as u64, sent.len() as u64 * size);
                        Ok::<usize, crate::client::ClientError>(sent.len())
                    });
                }
                match in_flight.join_next().await {
                    Some(r) => {
                        r??;
                    }
                    None => return Ok::<(), Box<dyn std::error::Error + Send + Sync>>(()),
                }
            }
        });
    }
    while let Some(r) = workers.join_next().await {
        r??;
    }
    progress.abort();
    let mut summary = meter.summary("produce", "one batch send");
    // Measured after the run, while the broker's log still holds its pages:
    // the files it deletes would otherwise hand already-touched memory to
    // the broker (several times faster to write on a virtual machine).
    let disk = disk_limits(&o)?;
    if !(o.json && disk.is_some()) {
        print_summary(&summary, o.json);
    }
    if let Some(disk) = disk {
        against_limits(&mut summary, disk, &o);
        if o.json {
            println!("{summary}");
        }
    }
    Ok(())
}

/// Splits the topic's queues between `--consumers` tasks.
fn split(queues: Vec<MessageQueue>, n: usize) -> Vec<Vec<MessageQueue>> {
    let mut out = vec![Vec::new(); n.max(1)];
    let len = out.len();
    for (i, q) in queues.into_iter().enumerate() {
        out[i % len].push(q);
    }
    out
}

/// Pulls the topic from its start until `--messages` or 2 s without data.
/// Like a RocketMQ push consumer, each consumer keeps one pull in flight
/// per queue it owns, all over its one connection.
pub async fn consume(o: LoadOpts) -> CliResult {
    let cfg = o.ns.client_config();
    let probe = PullConsumer::new(cfg.clone());
    let queues = probe.queues(&o.topic).await?;
    let meter = Meter::new();
    let progress = meter.spawn_progress("consume");
    let until = deadline(&o);
    let target = o.messages;
    let mut workers = JoinSet::new();
    for share in split(queues, o.consumers) {
        let (c, m) = (PullConsumer::new(cfg.clone()), meter.clone());
        workers.spawn(async move {
            let mut pulls = FuturesUnordered::new();
            for q in share {
                let offset = c.offsets(&q).await?.min_offset;
                pulls.push(pull_from(&c, q, offset));
            }
            let mut idle_since = Instant::now();
            while let Some((q, t, r)) = pulls.next().await {
                let r = r?;
                if !r.messages.is_empty() {
                    m.record(t.elapsed());
                    idle_since = Instant::now();
                    let bytes: u64 = r.messages.iter().map(|x| x.body.len() as u64).sum();
                    m.add(r.messages.len() as u64, bytes);
                }
                if m.messages() >= target || expired(until) || idle_since.elapsed() > Duration::from_secs(2) {
                    break;
                }
                pulls.push(pull_from(&c, q, r.next_offset));
            }
            Ok::<(), crate::client::ClientError>(())
        });
    }
    while let Some(r) = workers.join_next().await {
        r??;
    }
    progress.abort();
    print_summary(&meter.summary("consume", "one pull of up to 1024"), o.json);
    Ok(())
}

/// One pull of up to 1024 from `offset`, returning the queue and the time
/// it was issued along with the result.
async fn pull_from(
    c: &PullConsumer,
    q: MessageQueue,
    offset: u64,
) -> (
    MessageQueue,
    Instant,
    crate::client::ClientResult<crate::client::PullResult>,
) {
    let t = Instant::now();
    let r = c.pull(&q, offset, 1024, Duration::ZERO, "*").await;
    (q, t, r)
}

/// Single-message sync sends, one in flight.
pub async fn latency(o: LoadOpts) -> CliResult {
    let cfg = o.ns.client_config();
    ensure_topic(&o, &cfg).await?;
    let producer = Producer::new(cfg);
    let body = Bytes::from(vec![b'x'; o.size]);
    // Warm up connections and routes outside the measurement.
    producer.send(Message::new(o.topic.clone(), body.clone())).await?;
    let meter = Meter::new();
    let progress = meter.spawn_progress("latency");
    let probe = StallProbe::start();
    let until = deadline(&o);
    for _ in 0..o.messages {
        if expired(until) {
            break;
        }
        let t = Instant::now();
        producer.send(Message::new(o.topic.clone(), body.clone())).await?;
        meter.record(t.elapsed());
        meter.add(1, o.size as u64);
    }
    progress.abort();
    let mut summary = meter.summary("latency", "one sync send");
    probe.finish(&mut summary);
    print_summary(&summary, o.json);
    Ok(())
}

/// Produces at `--rate` while long-polling every queue; measures the time
/// from send to receipt (the body carries the send time).
pub async fn e2e(o: LoadOpts) -> CliResult {
    let cfg = o.ns.client_config();
    ensure_topic(&o, &cfg).await?;
    let epoch = Instant::now();
    let consumer = PullConsumer::new(cfg.clone());
    let queues = consumer.queues(&o.topic).await?;
    // Warm up outside the measurement, as `latency` does: the producer's
    // route lookup and connection, and a first message in every queue.
    // The pollers start after these.
    let producer = Producer::new(cfg);
    for _ in 0..queues.len() {
        producer
            .send(Message::new(o.topic.clone(), Bytes::from_static(b"warm-up")))
            .await?;
    }
    let meter = Meter::new();
    let mut pollers = JoinSet::new();
    for q in queues {
        let (c, m) = (consumer.clone(), meter.clone());
        pollers.spawn(async move {
            let mut off = c.offsets(&q).await?.max_offset;
            loop {
                let r = c.pull(&q, off, 1024, Duration::from_secs(1), "*").await?;
                let now = epoch.elapsed().as_nanos() as u64;
                for msg in &r.messages {
                    if let Some(sent) = msg
                        .body
                        .get(..8)
                        .and_then(|b| b.try_into().ok())
                        .map(u64::from_be_bytes)
                    {
                        m.record(Duration::from_nanos(now.saturating_sub(sent)));
                        m.add(1, msg.body.len() as u64);
                    }
                }
                off = r.next_offset;
            }
            #[allow(unreachable_code)]
            Ok::<(), crate::client::ClientError>(())
        });
    }
    // Let every poller start waiting before the clock starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let progress = meter.spawn_progress("e2e");
    let probe = StallProbe::start();
    let until = deadline(&o);
    let per_ms = (o.rate as f64 / 1000.0).max(0.001);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let (mut sent, mut credit) = (0u64, 0.0f64);
    let mut in_flight = JoinSet::new();
    while sent < o.messages && !expired(until) {
        tick.tick().await;
        credit += per_ms;
        while credit >= 1.0 && sent < o.messages {
            credit -= 1.0;
            sent += 1;
            let mut body = BytesMut::with_capacity(o.size.max(8));
            body.put_u64(epoch.elapsed().as_nanos() as u64);
            body.resize(o.size.max(8), b'x');
            let p = producer.clone();
            let topic = o.topic.clone();
            in_flight.spawn(async move { p.send(Message::new(topic, body.freeze())).await });
            while in_flight.len() > 256 {
                if let Some(r) = in_flight.join_next().await {
                    r??;
                }
            }
        }
    }
    while let Some(r) = in_flight.join_next().await {
        r??;
    }
    let wait = Instant::now();
    while meter.messages() < sent && wait.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pollers.abort_all();
    progress.abort();
    let mut summary = meter.summary("e2e", "send to receipt");
    probe.finish(&mut summary);
    print_summary(&summary, o.json);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_are_split_evenly() {
        let q = |i| MessageQueue {
            topic: "t".into(),
            broker_name: "b".into(),
            broker_addr: "a".into(),
            queue_id: i,
        };
        let parts = split((0..8).map(q).collect(), 3);
        assert_eq!(parts.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 2]);
        assert_eq!(split(vec![q(0)], 0).len(), 1);
    }
}
