//! The Rust client library against real brokers.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use ferromq::client::{Admin, ClientConfig, Producer, PullConsumer};
use ferromq::message::Message;
use ferromq::wire::pull::PullStatus;

async fn drain(consumer: &PullConsumer, topic: &str, tags: &str) -> BTreeMap<u32, Vec<(u64, Bytes)>> {
    let mut out = BTreeMap::new();
    for mq in consumer.queues(topic).await.unwrap() {
        let mut offset = 0;
        let list: &mut Vec<(u64, Bytes)> = out.entry(mq.queue_id).or_default();
        loop {
            let r = consumer.pull(&mq, offset, 64, Duration::ZERO, tags).await.unwrap();
            list.extend(r.messages.iter().map(|m| (m.queue_offset, m.body.clone())));
            offset = r.next_offset;
            if matches!(r.status, PullStatus::NoNewMessage) {
                break;
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_send_mode_round_trips_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let broker = ServerProcess::broker(dir.path(), &[], &small_store_env());
    let cfg = ClientConfig::new([broker.namesrv_addr.clone()]);
    Admin::new(cfg.clone()).create_topic("lib", 3).await.unwrap();
    let producer = Producer::new(cfg.clone());

    let mut sent = Vec::new();
    for i in 0..300u32 {
        // Every byte value, including invalid UTF-8.
        let body: Vec<u8> = (0..(i % 50 + 1)).map(|j| (i * 7 + j) as u8).collect();
        let r = producer
            .send(
                Message::new("lib", body.clone())
                    .with_tag("sync")
                    .with_key(format!("k{i}")),
            )
            .await
            .unwrap();
        sent.push((r.queue_id, r.queue_offset, Bytes::from(body)));
    }
    let handles: Vec<_> = (0..100)
        .map(|i| producer.send_async(Message::new("lib", format!("async {i}")).with_tag("async")))
        .collect();
    for h in handles {
        let r = h.await.unwrap().unwrap();
        assert!(r.queue_id < 3);
    }
    let batch: Vec<Message> = (0..200)
        .map(|i| Message::new("lib", format!("batch {i}")).with_tag("batch"))
        .collect();
    let results = producer.send_batch(batch).await.unwrap();
    assert_eq!(results.len(), 200);
    assert!(results
        .windows(2)
        .all(|w| w[0].queue_id == w[1].queue_id && w[1].queue_offset == w[0].queue_offset + 1));
    let mut ordered_queue = None;
    for i in 0..50 {
        let r = producer
            .send_ordered(
                Message::new("lib", format!("order-7 step {i}")).with_tag("ordered"),
                "order-7",
            )
            .await
            .unwrap();
        assert_eq!(
            *ordered_queue.get_or_insert(r.queue_id),
            r.queue_id,
            "one sharding key, one queue"
        );
    }
    producer
        .send_oneway(Message::new("lib", "oneway").with_tag("oneway"))
        .await
        .unwrap();
    assert!(producer
        .send_batch(vec![Message::new("lib", "x"), Message::new("other", "y")])
        .await
        .is_err());
    assert!(producer.send(Message::new("bad topic", "x")).await.is_err());

    let consumer = PullConsumer::new(cfg.clone());
    // The oneway send has no acknowledgement: wait until it is visible.
    let mut total = 0;
    for _ in 0..100 {
        total = drain(&consumer, "lib", "*").await.values().map(Vec::len).sum::<usize>();
        if total == 651 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(total, 651);
    let all = drain(&consumer, "lib", "*").await;
    for (queue, msgs) in &all {
        assert!(
            msgs.iter().enumerate().all(|(i, (off, _))| *off == i as u64),
            "queue {queue} contiguous"
        );
    }
    for (queue, offset, body) in &sent {
        assert_eq!(&all[queue][*offset as usize].1, body, "byte-identical");
    }
    let ordered = drain(&consumer, "lib", "ordered").await;
    let steps: Vec<String> = ordered
        .values()
        .flatten()
        .map(|(_, b)| String::from_utf8(b.to_vec()).unwrap())
        .collect();
    assert_eq!(
        steps,
        (0..50).map(|i| format!("order-7 step {i}")).collect::<Vec<_>>(),
        "sharding key keeps order"
    );
    assert_eq!(
        drain(&consumer, "lib", "async || batch")
            .await
            .values()
            .map(Vec::len)
            .sum::<usize>(),
        300
    );

    // The CLI prints non-UTF-8 bodies as base64.
    let json = consume_json(&broker.namesrv_addr, "lib", &["--tag", "sync", "--idle-timeout", "2"]);
    assert_eq!(json.len(), 300);
    assert!(json.iter().any(|m| m.get("body_base64").is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_fail_over_to_another_broker_then_fail_clearly() {
    let namesrv = ServerProcess::namesrv();
    let ns = namesrv.namesrv_addr.clone();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let args = ["--no-embedded-namesrv", "--namesrv", ns.as_str()];
    let mut env_a = small_store_env();
    env_a.push(("FERROMQ__BROKER__NAME", "broker-a"));
    let mut env_b = small_store_env();
    env_b.push(("FERROMQ__BROKER__NAME", "broker-b"));
    let mut a = ServerProcess::broker(da.path(), &args, &env_a);
    let mut b = ServerProcess::broker(db.path(), &args, &env_b);

    let cfg = ClientConfig::new([ns.clone()]);
    Admin::new(cfg.clone()).create_topic("ha", 2).await.unwrap();
    let producer = Producer::new(cfg);
    let mut brokers = std::collections::BTreeSet::new();
    for i in 0..8 {
        brokers.insert(
            producer
                .send(Message::new("ha", format!("m{i}")))
                .await
                .unwrap()
                .broker_name,
        );
    }
    assert_eq!(brokers.len(), 2, "round-robin spans both brokers");

    // broker-a dies; its routes are still cached and still in the name
    // server, yet every send lands on broker-b.
    a.kill9();
    for i in 0..10 {
        let r = producer.send(Message::new("ha", format!("after {i}"))).await.unwrap();
        assert_eq!(r.broker_name, "broker-b");
    }
    b.kill9();
    let err = producer
        .send(Message::new("ha", "nowhere"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("after 3 attempts"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_consumer_processes_each_message_once_and_commits() {
    use ferromq::client::{GroupConsumerConfig, PushConsumer, StartPosition};
    use std::sync::{Arc, Mutex};

    let dir = tempfile::tempdir().unwrap();
    let broker = ServerProcess::broker(dir.path(), &[], &small_store_env());
    let cfg = ClientConfig::new([broker.namesrv_addr.clone()]);
    Admin::new(cfg.clone()).create_topic("push", 8).await.unwrap();
    let producer = Producer::new(cfg.clone());
    for i in 0..200 {
        producer.send(Message::new("push", format!("p{i}"))).await.unwrap();
    }
    let group_cfg = || {
        let mut g = GroupConsumerConfig::new("pg", vec!["push".to_string()]);
        g.session_timeout = Duration::from_secs(3);
        g.start = StartPosition::Earliest;
        g
    };
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let listener: ferromq::client::Listener = Arc::new(move |r| {
        std::thread::sleep(Duration::from_millis(2));
        sink.lock().unwrap().push(String::from_utf8(r.body.to_vec()).unwrap());
    });
    let push = PushConsumer::start(cfg.clone(), group_cfg(), 4, listener);
    assert!(wait_until(Duration::from_secs(20), || seen.lock().unwrap().len() >= 200));
    push.shutdown().await;
    let mut got = seen.lock().unwrap().clone();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 200, "every message, once");
    assert_eq!(seen.lock().unwrap().len(), 200, "no duplicates");

    // Offsets were committed: a new member of the group sees only new messages.
    for i in 0..10 {
        producer.send(Message::new("push", format!("late{i}"))).await.unwrap();
    }
    let later = Arc::new(Mutex::new(Vec::new()));
    let sink = later.clone();
    let push = PushConsumer::start(
        cfg,
        group_cfg(),
        2,
        Arc::new(move |r| sink.lock().unwrap().push(String::from_utf8(r.body.to_vec()).unwrap())),
    );
    assert!(wait_until(Duration::from_secs(20), || later.lock().unwrap().len() >= 10));
    tokio::time::sleep(Duration::from_millis(500)).await;
    push.shutdown().await;
    let mut late = later.lock().unwrap().clone();
    late.sort();
    assert_eq!(late, (0..10).map(|i| format!("late{i}")).collect::<Vec<_>>());
}
