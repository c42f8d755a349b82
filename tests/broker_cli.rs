//! End-to-end through the real binary and the CLI contract.

mod common;

use std::collections::{BTreeMap, HashMap};

use common::*;

fn body(set: &str, i: usize) -> String {
    // Varied lengths (up to ~2 KiB) and non-ASCII text.
    let pad = "ünïcødé ✓ 日本 ".repeat(i % 97);
    format!("{set}-{i:05} {pad}end")
}

#[test]
fn cli_round_trip_10k_messages() {
    let dir = tempfile::tempdir().unwrap();
    let broker = ServerProcess::broker(dir.path(), &[], &small_store_env());
    let ns = broker.namesrv_addr.as_str();
    cli_ok(ns, &["topic", "create", "orders", "--queues", "4"]);

    let a: Vec<String> = (0..5000).map(|i| body("A", i)).collect();
    let b: Vec<String> = (0..5000).map(|i| body("B", i)).collect();
    let acks_a = produce(
        ns,
        "orders",
        &["--tag", "tagA", "--key", "key-A", "--property", "source=cli"],
        &a,
    );
    let acks_b = produce(ns, "orders", &["--tag", "tagB", "--key", "key-B"], &b);
    assert!(
        std::fs::read_dir(dir.path().join("commitlog")).unwrap().count() >= 3,
        "the log spans several 1 MiB segments"
    );

    let mut expected: HashMap<String, (&str, &String)> = HashMap::new();
    for (ack, line) in acks_a.iter().zip(&a) {
        expected.insert(ack.msg_id.clone(), ("tagA", line));
    }
    for (ack, line) in acks_b.iter().zip(&b) {
        expected.insert(ack.msg_id.clone(), ("tagB", line));
    }
    assert_eq!(expected.len(), 10_000, "message ids are unique");

    let all = consume_json(ns, "orders", &["--count", "10000", "--idle-timeout", "10"]);
    assert_eq!(all.len(), 10_000);
    let mut seen = HashMap::new();
    let mut per_queue: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for m in &all {
        let id = m["msg_id"].as_str().unwrap().to_string();
        let (tag, line) = expected.get(&id).unwrap_or_else(|| panic!("unexpected message {m}"));
        assert_eq!(m["body"].as_str().unwrap(), line.as_str(), "byte-identical body");
        assert_eq!(m["tags"], *tag);
        assert_eq!(m["topic"], "orders");
        if *tag == "tagA" {
            assert_eq!(m["keys"], "key-A");
            assert_eq!(m["properties"]["source"], "cli");
        } else {
            assert_eq!(m["keys"], "key-B");
            assert!(m["properties"].get("source").is_none());
        }
        assert!(seen.insert(id, ()).is_none(), "each message exactly once");
        per_queue
            .entry(m["queue"].as_u64().unwrap())
            .or_default()
            .push(m["offset"].as_u64().unwrap());
    }
    assert_eq!(per_queue.len(), 4, "round-robin used every queue");
    for (queue, offsets) in &per_queue {
        let want: Vec<u64> = (0..offsets.len() as u64).collect();
        assert_eq!(offsets, &want, "queue {queue}: in order and contiguous from 0");
    }

    let only_a = consume_json(ns, "orders", &["--tag", "tagA", "--idle-timeout", "2"]);
    assert_eq!(only_a.len(), 5000);
    assert!(only_a.iter().all(|m| m["tags"] == "tagA"));
    let both = consume_json(ns, "orders", &["--tag", "tagA || tagB", "--idle-timeout", "2"]);
    assert_eq!(both.len(), 10_000);

    let probe = &acks_b[1234];
    let got: serde_json::Value =
        serde_json::from_str(cli_ok(ns, &["message", "get", &probe.msg_id, "--format", "json"]).trim()).unwrap();
    assert_eq!(got["body"].as_str().unwrap(), b[1234]);
    assert_eq!(
        (got["queue"].as_u64(), got["offset"].as_u64()),
        (Some(probe.queue as u64), Some(probe.offset))
    );

    let found = cli_ok(
        ns,
        &[
            "message", "find", "--topic", "orders", "--key", "key-A", "--format", "json",
        ],
    );
    let found: Vec<serde_json::Value> = found.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!found.is_empty());
    assert!(found
        .iter()
        .all(|m| m["keys"] == "key-A" && m["body"].as_str().unwrap().starts_with("A-")));
    assert!(!cli(ns, &["message", "find", "--topic", "orders", "--key", "nope"])
        .status
        .success());

    assert!(cli_ok(ns, &["topic", "list"]).lines().any(|l| l == "orders"));
    let described: serde_json::Value =
        serde_json::from_str(cli_ok(ns, &["topic", "describe", "orders", "--format", "json"]).trim()).unwrap();
    let queues = described["queues"].as_array().unwrap();
    assert_eq!(queues.len(), 4);
    assert_eq!(
        queues.iter().map(|q| q["max_offset"].as_u64().unwrap()).sum::<u64>(),
        10_000
    );
}

#[test]
fn standalone_namesrv_with_broker() {
    let namesrv = ServerProcess::namesrv();
    let ns = namesrv.namesrv_addr.as_str();
    let dir = tempfile::tempdir().unwrap();
    let broker = ServerProcess::broker(
        dir.path(),
        &["--no-embedded-namesrv", "--namesrv", ns],
        &small_store_env(),
    );
    assert_eq!(broker.namesrv_addr, "-");
    cli_ok(ns, &["topic", "create", "events", "--queues", "2"]);
    let lines: Vec<String> = (0..10).map(|i| format!("event {i}")).collect();
    let acks = produce(ns, "events", &[], &lines);
    let got = consume_json(ns, "events", &["--count", "10", "--idle-timeout", "5"]);
    let mut bodies: Vec<&str> = got.iter().map(|m| m["body"].as_str().unwrap()).collect();
    bodies.sort();
    assert_eq!(bodies, lines.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(acks.iter().all(|a| a.queue < 2));
}

#[test]
fn unknown_topics_and_bad_input_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = small_store_env();
    env.push(("FERROMQ__BROKER__AUTO_CREATE_TOPICS", "false"));
    let broker = ServerProcess::broker(dir.path(), &[], &env);
    let ns = broker.namesrv_addr.as_str();
    let out = cli_with_input(ns, &["produce", "--topic", "nowhere"], b"x\n");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TOPIC_NOT_EXIST"), "{err}");
    let out = cli(ns, &["topic", "create", "bad topic"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("INVALID_ARGUMENT"));
    let out = cli(ns, &["message", "get", "not-an-id"]);
    assert!(!out.status.success());
    // A config file with a mistyped key is refused before anything starts.
    let conf = dir.path().join("bad.toml");
    std::fs::write(&conf, "[store]\nflush_mode = \"sync\"\n").unwrap();
    let out = std::process::Command::new(bin())
        .args(["broker", "--config", conf.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("flush_mode"));
}

#[test]
fn topic_describe_shows_each_brokers_store() {
    let dir = tempfile::tempdir().unwrap();
    let broker = ServerProcess::broker(dir.path(), &[], &small_store_env());
    let ns = broker.namesrv_addr.as_str();
    cli_ok(ns, &["topic", "create", "sized", "--queues", "2"]);
    let lines: Vec<String> = (0..20).map(|i| format!("sized {i}")).collect();
    produce(ns, "sized", &[], &lines);

    // Text: the header and one row per queue, as before; then the store line.
    let text = cli_ok(ns, &["topic", "describe", "sized"]);
    let out: Vec<&str> = text.lines().collect();
    assert_eq!(out[0], "broker queue min_offset max_offset", "{text}");
    let rows: Vec<Vec<&str>> = out[1..3].iter().map(|l| l.split(' ').collect()).collect();
    assert!(rows.iter().all(|r| r.len() == 4), "{text}");
    assert_eq!(
        rows.iter().map(|r| r[3].parse::<u64>().unwrap()).sum::<u64>(),
        20,
        "{text}"
    );
    let broker_name = rows[0][0];
    assert_eq!(out.len(), 4, "one store line per broker group: {text}");
    let store = out[3];
    assert!(store.starts_with(&format!("store {broker_name} commitlog=")), "{store}");
    assert!(
        store.contains(" segments) disk=") && store.contains("% used, "),
        "{store}"
    );
    assert!(store.contains(" free of "), "{store}");
    assert!(store.ends_with(" watermark=normal sends=accepted"), "{store}");

    // JSON: a `store` object in the broker's entry.
    let described: serde_json::Value =
        serde_json::from_str(cli_ok(ns, &["topic", "describe", "sized", "--format", "json"]).trim()).unwrap();
    assert_eq!(described["queues"].as_array().unwrap().len(), 2);
    let b = &described["brokers"][0];
    assert_eq!(b["broker"], broker_name);
    assert_eq!(b["unreachable"], false);
    let s = &b["store"];
    let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{k} in {s}"));
    let (total, free, used) = (n("disk_total_bytes"), n("disk_free_bytes"), n("disk_used_bytes"));
    assert!(total > 0 && free <= total && used == total - free, "{s}");
    let ratio = s["disk_used_ratio"].as_f64().unwrap();
    assert!((ratio - used as f64 / total as f64).abs() < 0.01, "{s}");
    assert_eq!(n("segment_bytes"), 1_048_576);
    assert!(n("segments") >= 1);
    assert_eq!(n("commitlog_bytes"), n("segments") * n("segment_bytes"));
    assert!(
        n("commitlog_end_offset") > n("commitlog_start_offset"),
        "20 records: {s}"
    );
    assert_eq!(s["level"], "normal");
    assert_eq!(
        (
            s["clean_ratio"].as_f64(),
            s["force_clean_ratio"].as_f64(),
            s["refuse_ratio"].as_f64()
        ),
        (Some(0.97), Some(0.98), Some(0.99)),
        "the harness's watermarks (tests/common TEST_WATERMARKS)"
    );
    assert_eq!(s["refusing_sends"], false);
    assert!(s.get("refusal").is_none(), "{s}");
}
