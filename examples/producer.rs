//! A producer: one synchronous send, a batch, an ordered send and a oneway
//! send, printing where each message went.
//!
//! `cargo run --example producer [NAMESRV] [TOPIC]` (default:
//! 127.0.0.1:9876, `example-topic`; the topic is auto-created by a broker
//! with `broker.auto_create_topics`, or create it with `ferromq topic
//! create`).

use ferromq::client::{ClientConfig, Producer};
use ferromq::message::Message;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let namesrv = args.next().unwrap_or_else(|| "127.0.0.1:9876".into());
    let topic = args.next().unwrap_or_else(|| "example-topic".into());
    let producer = Producer::new(ClientConfig::new([namesrv]));

    // Synchronous: answered once the broker stored it (per its flush policy).
    let msg = Message::new(topic.as_str(), "hello")
        .with_tag("greeting")
        .with_key("order-1");
    let r = producer.send(msg).await?;
    println!(
        "sent {} to {}/{} offset {}",
        r.msg_id, r.broker_name, r.queue_id, r.queue_offset
    );

    // A batch goes to one queue, all stored or none.
    let batch = (0..10)
        .map(|i| Message::new(topic.as_str(), format!("batch {i}")))
        .collect();
    for r in producer.send_batch(batch).await? {
        println!(
            "batch {} -> {}/{} offset {}",
            r.msg_id, r.broker_name, r.queue_id, r.queue_offset
        );
    }

    // Ordered: one sharding key always lands on the same queue.
    for step in ["created", "paid", "shipped"] {
        let r = producer
            .send_ordered(Message::new(topic.as_str(), step), "order-1")
            .await?;
        println!("order-1 {step} -> queue {}", r.queue_id);
    }

    // Oneway: no answer awaited (fastest, no delivery guarantee).
    producer
        .send_oneway(Message::new(topic.as_str(), "fire and forget"))
        .await?;
    Ok(())
}
