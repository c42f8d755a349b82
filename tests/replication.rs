//! Master → slave replication on clusters of real processes: sync sends
//! surviving a `kill -9` of the master, async slaves catching up (also
//! from zero and after a restart), read-only slaves, group consumers
//! falling back to a slave and back, and a former master cutting its log
//! when it rejoins as a slave.
//!
//! The tests of this file run one at a time (a file-level lock).

mod common;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::cluster::*;
use common::producer::*;
use common::*;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const A: &str = "broker-a";
const B: &str = "broker-b";

/// The commitlog of a data directory: its segments' bytes in order, with
/// the zeros after the last record cut (segments are pre-allocated).
fn commitlog_bytes(data_dir: &Path) -> Vec<u8> {
    let dir = data_dir.join("commitlog");
    let mut names = files_in(&dir);
    names.sort();
    let mut out = Vec::new();
    for n in names {
        out.extend(std::fs::read(dir.join(n)).unwrap_or_default());
    }
    let end = out.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    out.truncate(end);
    out
}

/// Waits until `slave`'s commitlog is a byte copy of `master`'s (both
/// non-empty); panics with both sizes after `within`.
fn wait_identical(c: &Cluster, master: &str, slave: &str, within: Duration) {
    let (m, s) = (
        c.broker_data_dir(master).to_path_buf(),
        c.broker_data_dir(slave).to_path_buf(),
    );
    let mut sizes = (0, 0);
    let ok = wait_until(within, || {
        let (mb, sb) = (commitlog_bytes(&m), commitlog_bytes(&s));
        sizes = (mb.len(), sb.len());
        !mb.is_empty() && mb == sb
    });
    assert!(
        ok,
        "slave {slave} is not a copy of {master} after {within:?}: {} vs {} bytes\nslave stderr:\n{}",
        sizes.0,
        sizes.1,
        last_lines(&c.broker_stderr(slave), 20)
    );
}

/// A gauge's value on a broker's `/metrics` (the sum over its label sets).
fn gauge(c: &Cluster, node: &str, name: &str) -> Option<f64> {
    let text = http_get(c.broker_http(node), "/metrics");
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Waits until `slave` reports it follows its master.
fn wait_following(c: &Cluster, slave: &str) {
    let ok = wait_until(Duration::from_secs(20), || {
        gauge(c, slave, "ferromq_replication_following") == Some(1.0)
    });
    assert!(
        ok,
        "slave {slave} does not follow its master:\n{}",
        last_lines(&c.broker_stderr(slave), 20)
    );
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Every body of `topic`, read from earliest by a plain consumer.
fn consume_all(ns: &str, topic: &str) -> Vec<String> {
    consume_json(ns, topic, &["--idle-timeout", "4"])
        .iter()
        .map(|v| v["body"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Bodies appearing more than once.
fn duplicates(bodies: &[String]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    bodies.iter().filter(|b| !seen.insert(b.as_str())).cloned().collect()
}

#[test]
fn sync_replication_keeps_every_acknowledged_message_through_a_kill9_of_the_master() {
    let _g = serial();
    let mut c = Cluster::start(1, &[A], &[("FERROMQ__REPLICATION__MODE", "sync")]);
    c.create_topic("sync-t", 4);
    // No slave yet: the send is stored on the master only, and says so.
    let out = cli_with_input(&c.ns(), &["produce", "--topic", "sync-t"], b"lonely\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a sync send with no slave is not a success");
    assert!(
        stderr.contains("SLAVE_NOT_AVAILABLE") && stderr.contains("stored on the master"),
        "{stderr}"
    );
    let slave = c.add_slave(A);
    wait_following(&c, &slave);

    let producer = ProducerThread::start(&c.ns(), "sync-t", "s", Duration::from_millis(1));
    let ok = wait_until(Duration::from_secs(30), || producer.acked().len() >= 400);
    assert!(ok, "sync sends not acknowledged: {:?}", producer.failed().first());
    c.kill9_broker(A);
    let killed = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let log = producer.finish();
    let acked: Vec<String> = log.acked.iter().map(|s| s.body.clone()).collect();
    let slave_not_available = log
        .failed
        .iter()
        .filter(|(_, e)| e.contains("SLAVE_NOT_AVAILABLE"))
        .count();
    eprintln!(
        "figure: sync_acked={} failed_after_kill={} slave_not_available={slave_not_available}",
        acked.len(),
        log.failed.len()
    );
    assert_eq!(slave_not_available, 0, "the slave was there: {:?}", log.failed.first());

    // The consumer reads that broker group from the slave.
    let read = consume_all(&c.ns(), "sync-t");
    let missing: Vec<&String> = acked.iter().filter(|b| !read.contains(b)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages are not on the slave (first {:?}); read {} in {:?}",
        missing.len(),
        acked.len(),
        missing.first(),
        read.len(),
        killed.elapsed()
    );
    assert!(duplicates(&read).is_empty(), "read twice: {:?}", duplicates(&read));
    // Nothing but what was sent (a send cut off by the kill may be there);
    // the send answered SLAVE_NOT_AVAILABLE was stored once, and copied.
    assert!(read.iter().all(|b| b.starts_with("s-") || b == "lonely"), "{read:?}");
    assert!(
        read.iter().any(|b| b == "lonely"),
        "the master-only message reached the slave"
    );
}

#[test]
fn async_slaves_catch_up_from_zero_and_after_a_restart() {
    let _g = serial();
    let mut c = Cluster::start(1, &[A], &[]);
    c.create_topic("async-t", 4);
    // 100k messages before any slave exists.
    let out = cli(
        &c.ns(),
        &[
            "bench",
            "produce",
            "--topic",
            "async-t",
            "--messages",
            "100000",
            "--size",
            "200",
            "--batch",
            "500",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let late = c.add_slave(A);
    wait_identical(&c, A, &late, Duration::from_secs(60));
    wait_following(&c, &late);
    let ok = wait_until(Duration::from_secs(10), || {
        gauge(&c, &late, "ferromq_replication_lag_bytes") == Some(0.0)
            && gauge(&c, A, "ferromq_replication_slave_lag_bytes") == Some(0.0)
    });
    assert!(ok, "lag metrics did not fall to 0");

    // A slave killed mid-stream catches up after its restart.
    let producer = ProducerThread::start(&c.ns(), "async-t", "r", Duration::from_millis(1));
    assert!(wait_until(Duration::from_secs(20), || producer.acked().len() >= 200));
    c.kill9_broker(&late);
    assert!(wait_until(Duration::from_secs(20), || producer.acked().len() >= 600));
    c.restart_broker(&late);
    assert!(wait_until(Duration::from_secs(20), || producer.acked().len() >= 1000));
    let log = producer.finish();
    assert!(log.failed.is_empty(), "async sends failed: {:?}", log.failed.first());
    wait_identical(&c, A, &late, Duration::from_secs(30));

    // `ferromq cluster` shows the roles, the master and the lag.
    let out = cli_ok(&c.ns(), &["cluster"]);
    let slave_line = out
        .lines()
        .find(|l| l.contains(" slave "))
        .unwrap_or_else(|| panic!("no slave in:\n{out}"));
    assert!(slave_line.contains(c.broker_addr(A)), "names the master: {slave_line}");
}

#[test]
fn a_slave_refuses_writes_and_stores_nothing_for_them() {
    let _g = serial();
    let mut c = Cluster::start(1, &[A], &[]);
    let slave = c.add_slave(A);
    c.create_topic("ro-t", 2);
    let acks = produce(&c.ns(), "ro-t", &[], &["one".to_string(), "two".to_string()]);
    wait_identical(&c, A, &slave, Duration::from_secs(20));
    // A group receiving with per-message acks subscribes on the master;
    // the subscription reaches the slave with the topic table.
    let out = cli(
        &c.ns(),
        &[
            "consume",
            "--topic",
            "ro-t",
            "--group",
            "audit",
            "--from",
            "earliest",
            "--ack-timeout",
            "30s",
            "--idle-timeout",
            "2",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let subs = c.broker_data_dir(&slave).join("config").join("subscriptions.json");
    let ok = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&subs).is_ok_and(|t| t.contains("audit"))
    });
    assert!(ok, "the slave has the master's subscriptions");
    wait_identical(&c, A, &slave, Duration::from_secs(20));
    let before = commitlog_bytes(c.broker_data_dir(&slave));

    // Straight to the slave's address: a send, a topic creation and a
    // deletion are refused with NOT_MASTER naming the master.
    let master_addr = c.broker_addr(A).to_string();
    let slave_addr = c.broker_addr(&slave).to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let admin = ferromq::client::Admin::new(ferromq::client::ClientConfig::new([c.ns()]));
        let err = admin
            .create_topic_on(std::slice::from_ref(&slave_addr), "ro-new", 2, None)
            .await
            .expect_err("a slave creates no topic");
        let text = err.to_string();
        assert!(text.contains("NOT_MASTER") && text.contains(&master_addr), "{text}");
        let err = admin
            .delete_topic_on(std::slice::from_ref(&slave_addr), "ro-t")
            .await
            .expect_err("a slave deletes no topic");
        assert!(err.to_string().contains("NOT_MASTER"), "{err}");
    });
    let refused = raw_send(&slave_addr, "ro-t");
    assert!(
        refused.contains("NOT_MASTER") && refused.contains(&master_addr),
        "send to a slave: {refused}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        commitlog_bytes(c.broker_data_dir(&slave)),
        before,
        "the slave's log is untouched"
    );

    // A second slave told its master by `replication.master`, registered
    // only with its own embedded name server: `ferromq produce` pointed
    // there exits non-zero with NOT_MASTER naming the master.
    let lone_dir = c.dir().join("lone-slave");
    let mut env: Vec<(&str, &str)> = small_store_env();
    env.push(("FERROMQ__REPLICATION__MASTER", master_addr.as_str()));
    let mut lone = ServerProcess::broker(&lone_dir, &["--broker-name", A, "--broker-id", "2"], &env);
    let ok = wait_until(Duration::from_secs(20), || commitlog_bytes(&lone_dir) == before);
    assert!(
        ok,
        "the configured slave copies the master:\n{}",
        last_lines(&lone.stderr(), 20)
    );
    let out = cli_with_input(&lone.namesrv_addr, &["produce", "--topic", "ro-t"], b"nope\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a producer that only finds a slave fails");
    assert!(
        stderr.contains("NOT_MASTER") && stderr.contains(&master_addr),
        "says read-only slave and names the master: {stderr}"
    );
    lone.kill9();

    // Master killed, slave alive: a producer fails, naming the master as
    // unreachable and the slave as read-only.
    c.kill9_broker(A);
    let out = cli_with_input(&c.ns(), &["produce", "--topic", "ro-t"], b"three\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a group without its master takes no send");
    assert!(
        stderr.contains(&master_addr) && stderr.contains("read-only"),
        "names the unreachable master and the read-only slave: {stderr}"
    );
    // Reads go on from the slave, lookups by id too (the slave holds the
    // master's records under the master's ids).
    let read = consume_all(&c.ns(), "ro-t");
    assert_eq!(read.len(), 2, "{read:?}");
    let got = cli_ok(&c.ns(), &["message", "get", &acks[0].msg_id, "--format", "json"]);
    assert!(got.contains("\"one\""), "{got}");
}

/// Sends one message straight to `addr` with the client's raw connection;
/// returns the error text (or "ok").
fn raw_send(addr: &str, topic: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let conn = ferromq::client::RemotingConnection::connect(addr, Duration::from_secs(3), None)
            .await
            .expect("connect");
        let req = ferromq::wire::send::SendRequest {
            topic: topic.to_string(),
            queue_id: 0,
            entries: vec![ferromq::wire::send::SendEntry {
                flags: 0,
                born_timestamp: 0,
                properties: Default::default(),
                body: bytes::Bytes::from_static(b"forged"),
            }],
        };
        match conn
            .request(
                ferromq::wire::Command::SendMessage,
                bytes::Bytes::new(),
                req.encode(),
                Duration::from_secs(5),
            )
            .await
        {
            Ok(_) => "ok".to_string(),
            Err(e) => e.to_string(),
        }
    })
}

#[test]
fn group_consumers_fall_back_to_the_slave_and_back() {
    let _g = serial();
    let mut c = Cluster::start(1, &[A, B], &[]);
    let sa = c.add_slave(A);
    let _sb = c.add_slave(B);
    c.create_topic("fb-t", 2);
    let args = [
        "--topic",
        "fb-t",
        "--group",
        "fb-g",
        "--from",
        "earliest",
        "--session-timeout-ms",
        "6000",
    ];
    let bodies = |consumer: &Consumer| -> Vec<String> {
        consumer
            .messages()
            .iter()
            .map(|v| v["body"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let mut first = Consumer::start(&c.ns(), c.dir(), "fb1", &args);
    let producer = ProducerThread::start(&c.ns(), "fb-t", "f", Duration::from_millis(5));
    assert!(wait_until(Duration::from_secs(20), || producer.acked().len() >= 200));
    // The member stops (committing what it read); A keeps taking messages
    // nobody has read, then its master dies once its slave has them.
    first.terminate();
    let read_before = bodies(&first);
    let acked_then = producer.acked().len();
    assert!(wait_until(Duration::from_secs(20), || producer.acked().len() >= acked_then + 200));
    // What was acknowledged before the logs compare equal is on the slave;
    // what A acknowledges after that may not be (async replication), so
    // only the former must be read from the slave.
    let acked_before_copy = producer.acked();
    wait_identical(&c, A, &sa, Duration::from_secs(20));
    c.kill9_broker(A);
    let unread_on_a: Vec<String> = acked_before_copy
        .iter()
        .filter(|s| s.broker == A && !read_before.contains(&s.body))
        .map(|s| s.body.clone())
        .collect();
    assert!(!unread_on_a.is_empty(), "A holds messages nobody read");
    // A new member reads them from A's slave, from the committed offsets.
    let started = Instant::now();
    let mut second = Consumer::start(&c.ns(), c.dir(), "fb2", &args);
    let ok = wait_until(Duration::from_secs(15), || {
        let seen = bodies(&second);
        unread_on_a.iter().all(|b| seen.contains(b))
    });
    if !ok {
        let seen = bodies(&second);
        let missing: Vec<&String> = unread_on_a.iter().filter(|b| !seen.contains(b)).collect();
        panic!(
            "A's unread messages not read from its slave within 15 s: {} of {} missing (first {:?}), {} read; \
             read before: {}; group: {:?}\n{}",
            missing.len(),
            unread_on_a.len(),
            missing.first(),
            seen.len(),
            read_before.len(),
            c.describe_group("fb-g"),
            last_lines(&consumer_stderr(&second), 20)
        );
    }
    let fallback_ms = started.elapsed().as_millis();
    eprintln!(
        "figure: fallback_unread_on_a={} read_within_ms={fallback_ms}",
        unread_on_a.len()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "read from the slave within 5 s"
    );
    // The master returns: the member goes back to it; nothing is skipped.
    c.restart_broker(A);
    std::thread::sleep(Duration::from_secs(3));
    let log = producer.finish();
    let acked: Vec<String> = log.acked.iter().map(|s| s.body.clone()).collect();
    let all_read = |second: &Consumer| {
        let mut seen = read_before.clone();
        seen.extend(bodies(second));
        seen
    };
    let ok = wait_until(Duration::from_secs(30), || {
        let seen = all_read(&second);
        acked.iter().all(|b| seen.contains(b))
    });
    let seen = all_read(&second);
    let missing: Vec<&String> = acked.iter().filter(|b| !seen.contains(b)).collect();
    assert!(
        ok,
        "{} acknowledged messages never consumed (first {:?})\n{}",
        missing.len(),
        missing.first(),
        last_lines(&consumer_stderr(&second), 30)
    );
    // Reads went back to the restarted master: it delivered messages.
    let served = gauge(&c, A, "ferromq_queue_messages_out_total").unwrap_or(0.0);
    assert!(served > 0.0, "the restarted master served no pull");
    let after_restart = log.acked.iter().filter(|s| s.broker == A).count();
    eprintln!(
        "figure: fallback_acked={} on_a={after_restart} consumed={} duplicates={}",
        acked.len(),
        seen.len(),
        duplicates(&seen).len()
    );
    second.terminate();
}

#[test]
fn a_former_master_rejoining_as_a_slave_cuts_what_its_new_master_lacks() {
    let _g = serial();
    let mut c = Cluster::start(1, &[A], &[]);
    let slave = c.add_slave(A);
    c.create_topic("div-t", 2);
    let lines = |p: &str, n: usize| (0..n).map(|i| format!("{p}-{i}")).collect::<Vec<_>>();
    produce(&c.ns(), "div-t", &[], &lines("common", 50));
    wait_identical(&c, A, &slave, Duration::from_secs(20));
    // The slave stops; the master takes records the slave never gets.
    c.kill9_broker(&slave);
    produce(&c.ns(), "div-t", &[], &lines("lost", 30));
    c.kill9_broker(A);
    // The slave becomes the master (id 0) and takes other records.
    c.set_broker_id(&slave, 0);
    c.restart_broker(&slave);
    produce(&c.ns(), "div-t", &[], &lines("new", 40));
    // The former master comes back as a slave: it cuts its "lost" records
    // and copies the new master's log.
    c.set_broker_id(A, 1);
    c.restart_broker(A);
    wait_identical(&c, &slave, A, Duration::from_secs(30));
    let stderr = c.broker_stderr(A);
    assert!(
        stderr.contains("cutting"),
        "the cut is logged:\n{}",
        last_lines(&stderr, 20)
    );
    let read = consume_all(&c.ns(), "div-t");
    assert!(read.iter().all(|b| !b.starts_with("lost-")), "{read:?}");
    assert_eq!(read.len(), 90, "{read:?}");
}
