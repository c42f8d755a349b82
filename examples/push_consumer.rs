//! A push consumer: the client calls a listener for every message of a
//! group's share of the topic (up to 4 at once) and commits each offset
//! once the listener returned; stops after 30 s.
//!
//! `cargo run --example push_consumer [NAMESRV] [TOPIC] [GROUP]` (default:
//! 127.0.0.1:9876, `example-topic`, `example-group`).

use std::sync::Arc;
use std::time::Duration;

use ferromq::client::{ClientConfig, GroupConsumerConfig, Listener, PushConsumer};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let namesrv = args.next().unwrap_or_else(|| "127.0.0.1:9876".into());
    let topic = args.next().unwrap_or_else(|| "example-topic".into());
    let group = args.next().unwrap_or_else(|| "example-group".into());
    let listener: Listener = Arc::new(|record| {
        println!("{} {}", record.queue_offset, String::from_utf8_lossy(&record.body));
    });
    let consumer = PushConsumer::start(
        ClientConfig::new([namesrv]),
        GroupConsumerConfig::new(group, vec![topic]),
        4,
        listener,
    );
    tokio::time::sleep(Duration::from_secs(30)).await;
    consumer.shutdown().await;
}
