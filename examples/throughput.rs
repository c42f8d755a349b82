//! First throughput figures through the client library (until
//! `ferromq bench` lands): produces N messages of SIZE bytes in batches with
//! a few batches in flight, then pulls them all back from every queue.
//!
//! `cargo run --release --example throughput -- NAMESRV TOPIC N SIZE BATCH`

use std::time::{Duration, Instant};

use bytes::Bytes;
use ferromq::client::{ClientConfig, Producer, PullConsumer};
use ferromq::message::Message;
use tokio::task::JoinSet;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: &str| args.get(i).cloned().unwrap_or_else(|| d.to_string());
    let (ns, topic) = (arg(1, "127.0.0.1:9876"), arg(2, "bench"));
    let n: usize = arg(3, "500000").parse()?;
    let size: usize = arg(4, "1024").parse()?;
    let batch: usize = arg(5, "1000").parse()?;
    let cfg = ClientConfig::new([ns]);
    let producer = Producer::new(cfg.clone());
    let body = Bytes::from(vec![b'x'; size]);

    let started = Instant::now();
    let mut in_flight = JoinSet::new();
    let mut sent = 0;
    while sent < n || !in_flight.is_empty() {
        while sent < n && in_flight.len() < 4 {
            let k = batch.min(n - sent);
            let msgs: Vec<Message> = (0..k).map(|_| Message::new(topic.clone(), body.clone())).collect();
            let p = producer.clone();
            in_flight.spawn(async move { p.send_batch(msgs).await });
            sent += k;
        }
        if let Some(r) = in_flight.join_next().await {
            r??;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "produce: {n} x {size} B in {secs:.2} s = {:.0} msg/s, {:.1} MiB/s",
        n as f64 / secs,
        (n * size) as f64 / secs / 1048576.0
    );

    let consumer = PullConsumer::new(cfg);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for mq in consumer.queues(&topic).await? {
        let c = consumer.clone();
        tasks.spawn(async move {
            let mut offset = c.offsets(&mq).await?.min_offset;
            let mut got = 0usize;
            loop {
                let r = c.pull(&mq, offset, 1024, Duration::ZERO, "*").await?;
                if r.messages.is_empty() {
                    return Ok::<usize, ferromq::client::ClientError>(got);
                }
                got += r.messages.len();
                offset = r.next_offset;
            }
        });
    }
    let mut total = 0;
    while let Some(r) = tasks.join_next().await {
        total += r??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "consume: {total} msgs in {secs:.2} s = {:.0} msg/s, {:.1} MiB/s",
        total as f64 / secs,
        (total * size) as f64 / secs / 1048576.0
    );
    Ok(())
}
