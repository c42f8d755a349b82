//! Per-message delivery against a real broker over TCP: ACK/NACK with
//! backoff, dead letters and resend, redelivery after a consumer dies, TTL
//! expiry, delayed messages (also across `kill -9`), orderly consumption and
//! tag patterns.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use ferromq::client::{Admin, ClientConfig, GroupConsumer, GroupConsumerConfig, Producer, StartPosition};
use ferromq::message::Message;
use serde_json::Value;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Small-store settings plus short retries: 300 ms, then 600 ms; two
/// redeliveries before the dead-letter topic.
fn delivery_env() -> Vec<(&'static str, &'static str)> {
    let mut env = small_store_env();
    env.extend([
        ("FERROMQ__DELIVERY__RETRY_BACKOFF_MS", "300,600"),
        ("FERROMQ__DELIVERY__MAX_RETRIES", "2"),
        ("FERROMQ__DELIVERY__COMMIT_INTERVAL_MS", "50"),
    ]);
    env
}

fn acking_consumer(ns: &str, group: &str, topic: &str, ack_timeout: Duration) -> GroupConsumer {
    let mut cfg = GroupConsumerConfig::new(group, vec![topic.to_string()]);
    cfg.start = StartPosition::Earliest;
    cfg.ack_timeout = Some(ack_timeout);
    cfg.session_timeout = Duration::from_secs(3);
    cfg.heartbeat_interval = Duration::from_millis(300);
    GroupConsumer::start(ClientConfig::new([ns.to_string()]), cfg)
}

fn dlq(ns: &str, group: &str) -> Vec<Value> {
    cli_ok(ns, &["dlq", "list", group, "--format", "json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn body(v: &Value) -> &str {
    v["body"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_backs_off_then_dead_letters_and_resend_brings_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let broker = ServerProcess::broker(dir.path(), &[], &delivery_env());
    let ns = broker.namesrv_addr.clone();
    let cfg = ClientConfig::new([ns.clone()]);
    Admin::new(cfg.clone()).create_topic("jobs", 1).await.unwrap();
    let producer = Producer::new(cfg);
    let poison = producer.send(Message::new("jobs", "poison")).await.unwrap();
    producer.send(Message::new("jobs", "good")).await.unwrap();
    producer.send(Message::new("jobs", "rejected")).await.unwrap();

    let mut c = acking_consumer(&ns, "workers", "jobs", Duration::from_secs(30));
    let mut nacked_at: Option<Instant> = None;
    let mut poison_deliveries = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen_good = false;
    let mut seen_rejected = false;
    while poison_deliveries.len() < 3 || !seen_good || !seen_rejected {
        assert!(Instant::now() < deadline, "deliveries so far: {poison_deliveries:?}");
        let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(5), c.next_delivery()).await else {
            panic!("no delivery; poison deliveries so far: {poison_deliveries:?}");
        };
        match &d.record.body[..] {
            b"poison" => {
                let waited = nacked_at.map(|t| t.elapsed());
                poison_deliveries.push((d.delivery, waited));
                nacked_at = Some(Instant::now());
                d.nack(true).unwrap();
            }
            b"good" => {
                assert_eq!(d.delivery, 1);
                seen_good = true;
                d.ack();
            }
            b"rejected" => {
                seen_rejected = true;
                d.nack(false).unwrap();
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let counts: Vec<u32> = poison_deliveries.iter().map(|p| p.0).collect();
    assert_eq!(counts, [1, 2, 3], "delivery numbers count up");
    // Redeliveries wait the configured backoff (300 ms, then 600 ms).
    let w2 = poison_deliveries[1].1.unwrap();
    let w3 = poison_deliveries[2].1.unwrap();
    assert!(
        w2 >= Duration::from_millis(280) && w2 < Duration::from_millis(2_000),
        "{w2:?}"
    );
    assert!(
        w3 >= Duration::from_millis(580) && w3 < Duration::from_millis(2_500),
        "{w3:?}"
    );
    println!("redelivery after NACK: {w2:?} (backoff 300 ms), {w3:?} (backoff 600 ms)");

    // The third NACK used up the two retries.
    assert!(wait_until(Duration::from_secs(5), || dlq(&ns, "workers").len() == 2));
    let dead = dlq(&ns, "workers");
    let by_body: BTreeMap<&str, &Value> = dead.iter().map(|v| (body(v), v)).collect();
    let p = &by_body["poison"]["properties"];
    assert_eq!(p["ORIGIN_TOPIC"], "jobs");
    assert_eq!(p["ORIGIN_QUEUE"], "0");
    assert_eq!(p["ORIGIN_OFFSET"], poison.queue_offset.to_string());
    assert_eq!(p["ORIGIN_MSG_ID"], poison.msg_id.to_string());
    assert_eq!(p["DELIVERY_COUNT"], "3");
    assert_eq!(p["DLQ_REASON"], "max-deliveries");
    let r = &by_body["rejected"]["properties"];
    assert_eq!(
        (r["DLQ_REASON"].as_str(), r["DELIVERY_COUNT"].as_str()),
        (Some("rejected"), Some("1"))
    );

    // Settled messages let the committed offset reach the end.
    assert!(wait_until(Duration::from_secs(5), || {
        let d: Value =
            serde_json::from_str(cli_ok(&ns, &["group", "describe", "workers", "--format", "json"]).trim()).unwrap();
        d["offsets"]
            .as_array()
            .is_some_and(|o| o.iter().any(|q| q["offset"] == 3))
    }));

    // Resend --all brings both back as first deliveries, once.
    let out = cli_ok(&ns, &["dlq", "resend", "workers", "--all"]);
    assert!(out.contains("resent 2 dead letters"), "{out}");
    let again = cli_ok(&ns, &["dlq", "resend", "workers", "--all"]);
    assert!(again.contains("resent 0 dead letters"), "{again}");
    let mut back = BTreeSet::new();
    while back.len() < 2 {
        let d = tokio::time::timeout(Duration::from_secs(5), c.next_delivery())
            .await
            .expect("resent messages arrive")
            .unwrap();
        assert_eq!(d.delivery, 1);
        assert!(!d.record.properties.contains_key("DLQ_REASON"));
        back.insert(String::from_utf8_lossy(&d.record.body).to_string());
        d.ack();
    }
    assert_eq!(back, BTreeSet::from(["poison".to_string(), "rejected".to_string()]));
    let listed = dlq(&ns, "workers");
    assert!(listed.iter().all(|v| v["resent"] == true));
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_of_a_dead_consumer_go_to_another_member() {
    let dir = tempfile::tempdir().unwrap();
    let broker = ServerProcess::broker(dir.path(), &[], &delivery_env());
    let ns = broker.namesrv_addr.clone();
    let cfg = ClientConfig::new([ns.clone()]);
    Admin::new(cfg.clone()).create_topic("work", 2).await.unwrap();
    let producer = Producer::new(cfg);
    let all: BTreeSet<String> = (0..40).map(|i| format!("job-{i}")).collect();
    for b in &all {
        producer.send(Message::new("work", b.clone())).await.unwrap();
    }
    let ack_timeout = Duration::from_secs(2);
    let mut a = acking_consumer(&ns, "crew", "work", ack_timeout);
    let mut acked_by_a = BTreeSet::new();
    let mut held = Vec::new();
    while acked_by_a.len() + held.len() < 20 {
        let d = tokio::time::timeout(Duration::from_secs(10), a.next_delivery())
            .await
            .expect("a gets messages")
            .unwrap();
        if held.len() < acked_by_a.len() {
            held.push(d);
        } else {
            acked_by_a.insert(String::from_utf8_lossy(&d.record.body).to_string());
            d.ack();
        }
    }
    let held_bodies: BTreeSet<String> = held
        .iter()
        .map(|d| String::from_utf8_lossy(&d.record.body).to_string())
        .collect();
    // Give the acks a moment to reach the broker, then die without a word:
    // no leave, no acks for the 10 held messages.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let died = Instant::now();
    drop(held);
    drop(a);

    let mut b = acking_consumer(&ns, "crew", "work", ack_timeout);
    let mut got_by_b: BTreeMap<String, u32> = BTreeMap::new();
    while got_by_b.len() + acked_by_a.len() < all.len() || !held_bodies.iter().all(|h| got_by_b.contains_key(h)) {
        let d = tokio::time::timeout(Duration::from_secs(15), b.next_delivery())
            .await
            .unwrap_or_else(|_| panic!("b stalled with {got_by_b:?}"))
            .unwrap();
        got_by_b.insert(String::from_utf8_lossy(&d.record.body).to_string(), d.delivery);
        d.ack();
    }
    println!(
        "all of the dead member's unacked messages redelivered {:?} after it died",
        died.elapsed()
    );
    assert!(died.elapsed() >= ack_timeout - Duration::from_millis(300));
    for h in &held_bodies {
        assert!(got_by_b[h] >= 2, "{h} is a redelivery: {got_by_b:?}");
    }
    for a_acked in &acked_by_a {
        assert!(!got_by_b.contains_key(a_acked), "{a_acked} was acknowledged by a");
    }
    let seen: BTreeSet<String> = acked_by_a.iter().chain(got_by_b.keys()).cloned().collect();
    assert_eq!(seen, all, "none lost");
    b.close().await;
}

#[test]
fn expired_messages_are_dead_lettered_with_no_consumer_and_never_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let broker = ServerProcess::broker(dir.path(), &[], &delivery_env());
    let ns = broker.namesrv_addr.as_str();
    cli_ok(ns, &["topic", "create", "fresh", "--queues", "2"]);
    cli_ok(ns, &["topic", "create", "stale", "--queues", "1", "--ttl", "700ms"]);
    // The groups subscribe once, then no consumer is attached.
    for topic in ["fresh", "stale"] {
        cli_ok(
            ns,
            &[
                "consume",
                "--topic",
                topic,
                "--group",
                "readers",
                "--ack-timeout",
                "5s",
                "--from",
                "earliest",
                "--idle-timeout",
                "1",
            ],
        );
    }
    let short: Vec<String> = (0..6).map(|i| format!("short-{i}")).collect();
    produce(ns, "fresh", &["--ttl", "500ms"], &short);
    produce(ns, "fresh", &[], &["keeper".to_string()]);
    produce(ns, "stale", &[], &["old-news".to_string()]);

    assert!(
        wait_until(Duration::from_secs(10), || dlq(ns, "readers").len() == 7),
        "dead letters: {:?}",
        dlq(ns, "readers")
    );
    for v in dlq(ns, "readers") {
        assert_eq!(v["properties"]["DLQ_REASON"], "expired", "{v}");
        assert_eq!(v["properties"]["DELIVERY_COUNT"], "0", "{v}");
        // A dead letter never expires by the TTL that sent it there.
        assert!(v["properties"].get("TTL").is_none(), "{v}");
        if body(&v).starts_with("short-") {
            assert_eq!(v["properties"]["ORIGIN_TTL"], "500", "{v}");
        }
    }
    // Well past every TTL, the dead letters are all still listed.
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(dlq(ns, "readers").len(), 7, "{:?}", dlq(ns, "readers"));
    // Neither a group member nor a plain reader ever sees them.
    let member = consume_json(
        ns,
        "fresh",
        &["--group", "readers", "--ack-timeout", "5s", "--idle-timeout", "2"],
    );
    assert_eq!(member.iter().map(body).collect::<Vec<_>>(), ["keeper"]);
    let plain = consume_json(ns, "fresh", &["--idle-timeout", "1"]);
    assert_eq!(plain.iter().map(body).collect::<Vec<_>>(), ["keeper"]);
    assert!(consume_json(ns, "stale", &["--idle-timeout", "1"]).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_arrive_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let broker = ServerProcess::broker(dir.path(), &[], &delivery_env());
    let ns = broker.namesrv_addr.clone();
    let cfg = ClientConfig::new([ns.clone()]);
    Admin::new(cfg.clone()).create_topic("later", 2).await.unwrap();
    let mut c = acking_consumer(&ns, "waiters", "later", Duration::from_secs(30));
    // Let the member join before the first message is due.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let producer = Producer::new(cfg);
    let n = 40;
    for i in 0..n {
        let m = if i % 2 == 0 {
            Message::new("later", format!("level-{i}")).with_delay_level(1)
        } else {
            let at = SystemTime::now() + Duration::from_millis(1_200 + 10 * i as u64);
            Message::new("later", format!("at-{i}")).with_deliver_at(at)
        };
        producer.send(m).await.unwrap();
    }
    producer.send(Message::new("later", "now")).await.unwrap();
    let mut lateness_ms = Vec::new();
    let mut first = None;
    while lateness_ms.len() < n {
        let d = tokio::time::timeout(Duration::from_secs(10), c.next_delivery())
            .await
            .expect("delayed messages arrive")
            .unwrap();
        let received = now_ms();
        match d.record.properties.get("DUE_AT") {
            Some(due) => {
                let due: u64 = due.parse().unwrap();
                assert!(received >= due, "delivered {} ms early", due - received);
                assert!(d.record.store_timestamp >= due);
                lateness_ms.push(received - due);
            }
            None => first = first.or(Some(lateness_ms.len())),
        }
        d.ack();
    }
    assert_eq!(first, Some(0), "the undelayed message comes first");
    lateness_ms.sort_unstable();
    let pct = |p: f64| lateness_ms[((lateness_ms.len() - 1) as f64 * p) as usize];
    println!(
        "delay lateness over {n} messages: min {} ms, p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
        lateness_ms[0],
        pct(0.5),
        pct(0.9),
        pct(0.99),
        lateness_ms[n - 1]
    );
    assert!(pct(0.99) <= 100, "p99 lateness {} ms", pct(0.99));
    assert!(lateness_ms[n - 1] < 500, "max lateness {} ms", lateness_ms[n - 1]);
    c.close().await;

    // Out-of-range requests fail clearly.
    let err = producer
        .send(Message::new("later", "x").with_property("DELAY", "19"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("delay level"), "{err}");
    let far = SystemTime::now() + Duration::from_secs(8 * 86_400);
    let err = producer
        .send(Message::new("later", "x").with_deliver_at(far))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("most this broker allows"), "{err}");
    let err = producer
        .send(Message::new("later", "x").with_property("TTL", "soon"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("INVALID_ARGUMENT") && err.to_string().contains("TTL"),
        "{err}"
    );
}

/// A batch mixing an immediate and a delayed message, sent over a raw
/// socket: both records keep the producer socket's address as born host,
/// the delayed one also after its release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_keep_the_producers_address() {
    use bytes::{Bytes, BytesMut};
    use ferromq::client::RemotingConnection;
    use ferromq::store::record::StoredRecord;
    use ferromq::wire::pull::{PullRequest, PullResponse};
    use ferromq::wire::send::{SendEntry, SendRequest, SendResponse};
    use ferromq::wire::{Command, Frame};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let broker = ServerProcess::broker(dir.path(), &[], &delivery_env());
    let cfg = ClientConfig::new([broker.namesrv_addr.clone()]);
    Admin::new(cfg).create_topic("origins", 1).await.unwrap();

    let entry = |body: &str, delay: Option<&str>| SendEntry {
        flags: 0,
        born_timestamp: now_ms(),
        properties: delay
            .map(|l| ("DELAY".to_string(), l.to_string()))
            .into_iter()
            .collect(),
        body: Bytes::from(body.to_string()),
    };
    let req = SendRequest {
        topic: "origins".into(),
        queue_id: 0,
        entries: vec![entry("later", Some("1")), entry("now", None)],
    };
    let mut socket = tokio::net::TcpStream::connect(&broker.broker_addr).await.unwrap();
    let producer = socket.local_addr().unwrap();
    let mut out = BytesMut::new();
    Frame::request(Command::SendMessage, 1, Bytes::new(), req.encode()).encode(&mut out);
    socket.write_all(&out).await.unwrap();
    let mut inb = BytesMut::new();
    let reply = loop {
        if let Some(frame) = Frame::parse(&mut inb, 1 << 20).unwrap() {
            break frame;
        }
        assert!(socket.read_buf(&mut inb).await.unwrap() > 0, "the broker answers");
    };
    assert_eq!(reply.code, 0, "{:?}", String::from_utf8_lossy(&reply.body));
    assert_eq!(SendResponse::decode(reply.body).unwrap().stored.len(), 2);

    let conn = RemotingConnection::connect(&broker.broker_addr, Duration::from_secs(5), None)
        .await
        .unwrap();
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while records.len() < 2 && Instant::now() < deadline {
        let pull = PullRequest {
            topic: "origins".into(),
            queue_id: 0,
            offset: records.len() as u64,
            max_count: 8,
            max_wait_ms: 1_000,
            tag_expression: String::new(),
        };
        let (_, body) = conn
            .request(
                Command::PullMessage,
                Bytes::new(),
                pull.encode(),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        let resp = PullResponse::decode(body).unwrap();
        records.extend(StoredRecord::decode_all(resp.records, resp.count).unwrap());
    }
    let seen: Vec<_> = records.iter().map(|r| (&r.body[..], r.born_host)).collect();
    assert_eq!(seen, [(&b"now"[..], producer), (&b"later"[..], producer)]);
    assert!(
        records[1].properties.contains_key("DUE_AT"),
        "released from the delay topic"
    );
}

#[test]
fn pending_delays_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let listen = free_addr();
    let mut broker = ServerProcess::broker_at(&data, &listen, &["--flush", "sync"], &delivery_env());
    let ns = broker.namesrv_addr.clone();
    cli_ok(&ns, &["topic", "create", "timers", "--queues", "1"]);
    let lines: Vec<String> = (0..20).map(|i| format!("timer-{i}")).collect();
    produce(&ns, "timers", &["--delay-level", "2"], &lines[..10]);
    produce(&ns, "timers", &["--deliver-at", "+4s"], &lines[10..]);
    let sent_at = now_ms();
    broker.kill9();
    let broker = ServerProcess::broker_at(&data, &listen, &[], &delivery_env());
    let ns = broker.namesrv_addr.clone();
    // Not before they are due…
    assert!(consume_json(&ns, "timers", &["--idle-timeout", "1"]).is_empty());
    // …and all of them once due.
    let mut got = Vec::new();
    assert!(wait_until(Duration::from_secs(15), || {
        got = consume_json(&ns, "timers", &["--idle-timeout", "0.5"]);
        got.len() >= 20
    }));
    assert!(now_ms() >= sent_at + 4_000);
    let bodies: BTreeSet<String> = got.iter().map(|v| body(v).to_string()).collect();
    assert_eq!(bodies, lines.iter().cloned().collect(), "every delayed message, once");
    assert_eq!(got.len(), 20);
    for v in &got {
        let due: u64 = v["properties"]["DUE_AT"].as_str().unwrap().parse().unwrap();
        assert!(v["store_timestamp"].as_u64().unwrap() >= due);
    }
}

#[test]
fn orderly_consumption_keeps_offset_order_through_nacks_and_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let broker = ServerProcess::broker(&dir.path().join("data"), &[], &delivery_env());
    let ns = broker.namesrv_addr.as_str();
    cli_ok(ns, &["topic", "create", "ledger", "--queues", "2"]);
    let lines: Vec<String> = (0..60).map(|i| format!("entry-{i}")).collect();
    let acks = produce(ns, "ledger", &[], &lines);
    let per_queue: BTreeMap<u32, u64> = acks.iter().fold(BTreeMap::new(), |mut m, a| {
        *m.entry(a.queue).or_default() += 1;
        m
    });
    let args = [
        "--topic",
        "ledger",
        "--group",
        "auditors",
        "--from",
        "earliest",
        "--orderly",
        "--ack-timeout",
        "2s",
        "--nack-every",
        "4",
        "--session-timeout-ms",
        "2000",
    ];
    let mut a = Consumer::start(ns, dir.path(), "a", &args);
    assert!(wait_until(Duration::from_secs(20), || a.messages().len() >= 20));
    a.kill9();
    let b = Consumer::start(ns, dir.path(), "b", &args);
    let done = |msgs: &[Value]| {
        let mut last: BTreeMap<u64, u64> = BTreeMap::new();
        for m in msgs {
            last.insert(m["queue"].as_u64().unwrap(), m["offset"].as_u64().unwrap());
        }
        per_queue
            .iter()
            .all(|(q, n)| last.get(&u64::from(*q)) == Some(&(n - 1)))
    };
    assert!(
        wait_until(Duration::from_secs(45), || done(&b.messages())),
        "b: {}",
        b.messages().len()
    );
    // Each queue, in processing order across both members: every step
    // repeats the offset (a NACK or the kill) or moves to the next one.
    let all: Vec<Value> = a.messages().into_iter().chain(b.messages()).collect();
    for (q, n) in &per_queue {
        let seq: Vec<u64> = all
            .iter()
            .filter(|m| m["queue"] == *q)
            .map(|m| m["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(seq.first(), Some(&0), "queue {q}: {seq:?}");
        assert_eq!(seq.last(), Some(&(n - 1)), "queue {q}: {seq:?}");
        for w in seq.windows(2) {
            assert!(w[1] == w[0] || w[1] == w[0] + 1, "queue {q} out of order: {seq:?}");
        }
    }
    let redelivered = all.iter().filter(|m| m["delivery"].as_u64() > Some(1)).count();
    assert!(redelivered >= 10, "NACKs retried in place: {redelivered}");
}

#[test]
fn tag_patterns_route_dotted_tags() {
    let dir = tempfile::tempdir().unwrap();
    let broker = ServerProcess::broker(dir.path(), &[], &delivery_env());
    let ns = broker.namesrv_addr.as_str();
    cli_ok(ns, &["topic", "create", "events", "--queues", "2"]);
    for tag in [
        "order.eu.created",
        "order.created",
        "order.eu.west.created",
        "log.error.disk",
        "log",
        "audit.log",
    ] {
        produce(ns, "events", &["--tag", tag], &[tag.to_string()]);
    }
    let expr = "order.*.created || log.#";
    let want = BTreeSet::from(["order.eu.created", "log.error.disk", "log"]);
    let plain = consume_json(ns, "events", &["--tag", expr, "--idle-timeout", "1"]);
    assert_eq!(plain.iter().map(body).collect::<BTreeSet<_>>(), want);
    let member = consume_json(
        ns,
        "events",
        &[
            "--tag",
            expr,
            "--group",
            "routers",
            "--ack-timeout",
            "5s",
            "--idle-timeout",
            "2",
        ],
    );
    assert_eq!(member.iter().map(body).collect::<BTreeSet<_>>(), want);
}

#[test]
fn ttl_expiry_resumes_after_a_broker_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let listen = free_addr();
    let mut broker = ServerProcess::broker_at(&data, &listen, &["--flush", "sync"], &delivery_env());
    let ns = broker.namesrv_addr.clone();
    cli_ok(&ns, &["topic", "create", "perishable", "--queues", "1"]);
    cli_ok(
        &ns,
        &[
            "consume",
            "--topic",
            "perishable",
            "--group",
            "eaters",
            "--ack-timeout",
            "5s",
            "--from",
            "earliest",
            "--idle-timeout",
            "0.5",
        ],
    );
    let lines: Vec<String> = (0..5).map(|i| format!("milk-{i}")).collect();
    produce(&ns, "perishable", &["--ttl", "2s"], &lines);
    broker.kill9();
    // No consumer reconnects: the restarted broker finds the backlog's TTLs.
    let broker = ServerProcess::broker_at(&data, &listen, &[], &delivery_env());
    let ns = broker.namesrv_addr.clone();
    assert!(
        wait_until(Duration::from_secs(10), || dlq(&ns, "eaters").len() == 5),
        "dead letters: {:?}",
        dlq(&ns, "eaters")
    );
    let dead: BTreeSet<String> = dlq(&ns, "eaters").iter().map(|v| body(v).to_string()).collect();
    assert_eq!(dead, lines.iter().cloned().collect());
}
