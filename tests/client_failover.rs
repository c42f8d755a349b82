//! Clients against a cluster with a dead broker: two broker groups on one
//! standalone name server, `kill -9` on one of them. Consumers keep
//! delivering the live broker's queues, admin commands mark the dead one
//! `unreachable`, producers send without failures, and a restarted broker
//! is consumed again. Also: sends that cannot succeed fail fast, and
//! `consume` fails on unreachable name servers and missing topics.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use ferromq::store::record::MessageId;
use serde_json::Value;

/// Starts broker group `name` on `listen`, registered with `ns`, no HTTP.
fn broker(dir: &Path, listen: &str, ns: &str, name: &str, extra_env: &[(&str, &str)]) -> ServerProcess {
    let mut env = small_store_env();
    env.push(("FERROMQ__BROKER__NAME", name));
    env.extend_from_slice(extra_env);
    ServerProcess::broker_at(
        dir,
        listen,
        &["--no-embedded-namesrv", "--namesrv", ns, "--http", "0"],
        &env,
    )
}

/// The broker address a message id names.
fn store_host(msg_id: &str) -> String {
    msg_id.parse::<MessageId>().expect("message id").store_host.to_string()
}

fn ids(msgs: &[Value]) -> BTreeSet<String> {
    msgs.iter().map(|m| m["msg_id"].as_str().unwrap().to_string()).collect()
}

fn lines(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// `consume --from earliest --idle-timeout 3 --format json`, timed; must
/// exit 0.
fn consume_all(ns: &str, topic: &str) -> (Vec<Value>, Duration, String) {
    let started = Instant::now();
    let out = cli(
        ns,
        &[
            "consume",
            "--topic",
            topic,
            "--from",
            "earliest",
            "--idle-timeout",
            "3",
            "--format",
            "json",
        ],
    );
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "consume failed:\n{stderr}");
    let msgs = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
        .collect();
    (msgs, took, stderr)
}

#[test]
fn a_killed_broker_costs_seconds_and_is_consumed_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ns_proc = ServerProcess::namesrv();
    let ns = ns_proc.namesrv_addr.clone();
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let _a = broker(&dir.path().join("a"), &addr_a, &ns, "broker-a", &[]);
    let mut b = broker(&dir.path().join("b"), &addr_b, &ns, "broker-b", &[]);
    assert!(
        wait_until(Duration::from_secs(20), || {
            let out = cli(&ns, &["cluster"]);
            let text = String::from_utf8_lossy(&out.stdout);
            text.contains("broker-a") && text.contains("broker-b")
        }),
        "both brokers register"
    );
    cli_ok(&ns, &["topic", "create", "ft", "--queues", "4"]);

    let before = produce(&ns, "ft", &[], &lines("before", 40));
    let on_a: BTreeSet<String> = before
        .iter()
        .filter(|a| store_host(&a.msg_id) == addr_a)
        .map(|a| a.msg_id.clone())
        .collect();
    assert!(
        !on_a.is_empty() && on_a.len() < before.len(),
        "spread over both brokers"
    );

    b.kill9();

    // (a) A plain consume delivers all of broker-a's messages and exits 0.
    let (got, took, stderr) = consume_all(&ns, "ft");
    assert_eq!(ids(&got), on_a, "stderr:\n{stderr}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let warnings = stderr.matches("WARN").count();
    assert!(warnings <= 2, "one warning per dead broker, not per pull:\n{stderr}");

    // (b) `topic describe` answers, marking broker-b unreachable.
    let text = cli_ok(&ns, &["topic", "describe", "ft"]);
    assert!(text.lines().any(|l| l.starts_with("broker-a 0 ")), "{text}");
    let dead = text.lines().find(|l| l.starts_with("broker-b")).unwrap_or_default();
    assert!(dead.contains("unreachable") && dead.contains(&addr_b), "{text}");
    let json: Value =
        serde_json::from_str(cli_ok(&ns, &["topic", "describe", "ft", "--format", "json"]).trim()).unwrap();
    let brokers = json["brokers"].as_array().unwrap();
    let flag = |name: &str| brokers.iter().find(|g| g["broker"] == name).unwrap()["unreachable"].clone();
    assert_eq!(flag("broker-a"), Value::Bool(false), "{json}");
    assert_eq!(flag("broker-b"), Value::Bool(true), "{json}");
    assert_eq!(json["queues"].as_array().unwrap().len(), 4, "{json}");

    // (c) `cluster` answers: the name server up, broker-b unreachable.
    let cluster = cli_ok(&ns, &["cluster"]);
    assert!(cluster.contains(&format!("namesrv {ns} up")), "{cluster}");
    assert!(cluster.contains(&format!("broker-a 0 master {addr_a} up")), "{cluster}");
    assert!(
        cluster.contains(&format!("broker-b 0 master {addr_b} unreachable")),
        "{cluster}"
    );
    let json: Value = serde_json::from_str(cli_ok(&ns, &["cluster", "--format", "json"]).trim()).unwrap();
    assert_eq!(json["namesrv_status"][0]["up"], Value::Bool(true), "{json}");
    // With a dead name server listed too, it still answers.
    let two = format!("{},{ns}", free_addr());
    let cluster = cli_ok(&two, &["cluster"]);
    assert!(
        cluster.contains("unreachable") && cluster.contains(&format!("namesrv {ns} up")),
        "{cluster}"
    );
    let none = cli(&free_addr(), &["cluster"]);
    assert!(!none.status.success(), "no name server answers: exit non-zero");

    // A producer started after the kill sends everything, on broker-a.
    let started = Instant::now();
    let after = produce(&ns, "ft", &[], &lines("after", 30));
    assert!(after.iter().all(|a| store_host(&a.msg_id) == addr_a));
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());

    // (d) broker-b restarts on its address and data: everything again.
    let _b = broker(&dir.path().join("b"), &addr_b, &ns, "broker-b", &[]);
    let all: BTreeSet<String> = before.iter().chain(&after).map(|a| a.msg_id.clone()).collect();
    let mut last = BTreeSet::new();
    let complete = wait_until(Duration::from_secs(30), || {
        last = ids(&consume_all(&ns, "ft").0);
        last == all
    });
    assert!(complete, "missing {:?}", all.difference(&last).collect::<Vec<_>>());
    let text = cli_ok(&ns, &["topic", "describe", "ft"]);
    assert!(!text.contains("unreachable"), "{text}");
}

#[test]
fn a_follower_resumes_a_broker_that_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let ns_proc = ServerProcess::namesrv();
    let ns = ns_proc.namesrv_addr.clone();
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let _a = broker(&dir.path().join("a"), &addr_a, &ns, "broker-a", &[]);
    let mut b = broker(&dir.path().join("b"), &addr_b, &ns, "broker-b", &[]);
    assert!(wait_until(Duration::from_secs(20), || {
        String::from_utf8_lossy(&cli(&ns, &["cluster"]).stdout).contains("broker-b")
    }));
    cli_ok(&ns, &["topic", "create", "fr", "--queues", "2"]);
    let first = produce(&ns, "fr", &[], &lines("first", 20));

    // A long-running consumer; broker-b dies under it and comes back.
    let consumer = Consumer::start(&ns, dir.path(), "follower", &["--topic", "fr", "--from", "earliest"]);
    assert!(wait_until(Duration::from_secs(15), || consumer.messages().len() >= first.len()));
    b.kill9();
    let during = produce(&ns, "fr", &[], &lines("during", 10));
    assert!(during.iter().all(|a| store_host(&a.msg_id) == addr_a));
    let _b = broker(&dir.path().join("b"), &addr_b, &ns, "broker-b", &[]);
    // Only broker-b takes these once it is back (sharding keys are not
    // needed: wait until a send lands on it).
    let mut later = Vec::new();
    assert!(wait_until(Duration::from_secs(20), || {
        later.extend(produce(&ns, "fr", &[], &lines("later", 4)));
        later.iter().any(|a| store_host(&a.msg_id) == addr_b)
    }));
    let all: BTreeSet<String> = first
        .iter()
        .chain(&during)
        .chain(&later)
        .map(|a| a.msg_id.clone())
        .collect();
    assert!(
        wait_until(Duration::from_secs(20), || ids(&consumer.messages()) == all),
        "missing {:?}",
        all.difference(&ids(&consumer.messages())).collect::<Vec<_>>()
    );
}

#[test]
fn sends_that_cannot_succeed_fail_fast_with_their_cause() {
    let dir = tempfile::tempdir().unwrap();
    let broker = ServerProcess::broker(&dir.path().join("data"), &[], &small_store_env());
    let ns = broker.namesrv_addr.as_str();
    cli_ok(ns, &["topic", "create", "big", "--queues", "2"]);

    let started = Instant::now();
    let out = cli(ns, &["produce", "--topic", "big", "--count", "1", "--size", "20971520"]);
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("message of 20971520 bytes exceeds the 16 MiB frame limit"),
        "{stderr}"
    );
    assert!(!stderr.contains("attempts"), "not retried: {stderr}");
    assert!(took < Duration::from_secs(2), "took {took:?}");

    let out = cli_with_input(ns, &["produce", "--topic", "bad topic"], b"x\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("topic") && !stderr.contains("attempts"), "{stderr}");

    // The broker is fine afterwards, and producers spread from the start:
    // twenty one-message producers do not all pick the same queue.
    let queues: BTreeSet<u32> = (0..20)
        .map(|i| produce(ns, "big", &[], &[format!("m{i}")])[0].queue)
        .collect();
    assert_eq!(queues.len(), 2, "{queues:?}");
}

#[test]
fn consume_fails_on_unreachable_name_servers_and_missing_topics() {
    let dead_ns = free_addr();
    for args in [
        &["consume", "--topic", "t", "--from", "earliest", "--idle-timeout", "2"][..],
        &["consume", "--topic", "t", "--group", "g", "--idle-timeout", "2"][..],
    ] {
        let started = Instant::now();
        let out = cli(&dead_ns, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains("no name server answered"), "{stderr}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    let dir = tempfile::tempdir().unwrap();
    let mut env = small_store_env();
    env.push(("FERROMQ__BROKER__AUTO_CREATE_TOPICS", "false"));
    let broker = ServerProcess::broker(&dir.path().join("data"), &[], &env);
    let ns = broker.namesrv_addr.as_str();
    for args in [
        &[
            "consume",
            "--topic",
            "missing",
            "--from",
            "earliest",
            "--idle-timeout",
            "2",
        ][..],
        &["consume", "--topic", "missing", "--group", "g", "--idle-timeout", "2"][..],
    ] {
        let out = cli(ns, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains("cannot consume missing"), "{stderr}");
    }
    // Sending to it fails at once with the broker's reason (not retried).
    let started = Instant::now();
    let out = cli_with_input(ns, &["produce", "--topic", "missing"], b"x\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!stderr.contains("attempts"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(5));
}
