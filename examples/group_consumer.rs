//! A consumer-group member printing a topic's messages until 10 s pass
//! without one.
//!
//! `cargo run --example group_consumer [NAMESRV] [TOPIC] [GROUP]`
//! (default: 127.0.0.1:9876, `example-topic`, `example-group`).
//!
//! Queues of a broker group whose master is down are read from its slave
//! (and commits kept until the master is back) without any setting.

use std::time::Duration;

use ferromq::client::{ClientConfig, GroupConsumer, GroupConsumerConfig};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let namesrv = args.next().unwrap_or_else(|| "127.0.0.1:9876".into());
    let topic = args.next().unwrap_or_else(|| "example-topic".into());
    let group = args.next().unwrap_or_else(|| "example-group".into());
    let cfg = GroupConsumerConfig::new(group, vec![topic])
        // Like RocketMQ's slaveReadEnable: read a queue from a slave while
        // more than 10 000 messages behind its end (off by default).
        .with_read_from_slave_when_behind(10_000);
    let mut consumer = GroupConsumer::start(ClientConfig::new([namesrv]), cfg);
    while let Some(Some(record)) = consumer.next_timeout(Duration::from_secs(10)).await {
        println!(
            "{} {} {}",
            consumer.last_broker_name().unwrap_or("-"),
            record.queue_offset,
            String::from_utf8_lossy(&record.body)
        );
    }
    consumer.close().await;
}
