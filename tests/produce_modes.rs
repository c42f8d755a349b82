//! `ferromq produce` send modes (`--mode sync|async|oneway`), `--batch` on
//! stdin lines and sharding keys, against a real broker over TCP.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use common::*;
use serde_json::Value;

fn body(v: &Value) -> String {
    v["body"].as_str().expect("a text body").to_string()
}

fn input(lines: &[String]) -> Vec<u8> {
    lines.iter().map(|l| format!("{l}\n")).collect::<String>().into_bytes()
}

/// Runs `produce --topic TOPIC ARGS` with `lines` on stdin; fails unless
/// it succeeds; returns stdout.
fn produce_out(ns: &str, topic: &str, args: &[&str], lines: &[String]) -> String {
    let mut all = vec!["produce", "--topic", topic];
    all.extend_from_slice(args);
    let out = cli_with_input(ns, &all, &input(lines));
    assert!(
        out.status.success(),
        "produce {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Every message of `topic` from the start (until 1 s passes without one),
/// as msg_id → message; fails on a duplicate message id.
fn stored(ns: &str, topic: &str) -> HashMap<String, Value> {
    let all = consume_json(ns, topic, &["--idle-timeout", "1"]);
    let mut by_id = HashMap::new();
    for m in all {
        let id = m["msg_id"].as_str().expect("msg_id").to_string();
        assert!(by_id.insert(id, m).is_none(), "a message stored twice");
    }
    by_id
}

/// Asserts that `topic` holds exactly `lines`, each once.
fn assert_stored_once(ns: &str, topic: &str, lines: &[String]) -> HashMap<String, Value> {
    let by_id = stored(ns, topic);
    let mut bodies: Vec<String> = by_id.values().map(body).collect();
    bodies.sort();
    let mut want = lines.to_vec();
    want.sort();
    assert_eq!(bodies, want, "{topic}: every line stored exactly once");
    by_id
}

#[test]
fn sync_async_and_oneway_store_every_line_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = ServerProcess::broker(dir.path(), &[], &small_store_env());
    let ns = broker.namesrv_addr.as_str();
    for t in ["m-sync", "m-async", "m-oneway"] {
        cli_ok(ns, &["topic", "create", t, "--queues", "4"]);
    }
    let lines = |mode: &str| -> Vec<String> { (0..300).map(|i| format!("{mode}-{i:04} ✓")).collect() };

    // sync (the default): one ack per line, in input order.
    let sync_lines = lines("sync");
    let out = produce_out(ns, "m-sync", &[], &sync_lines);
    let acks = parse_acks(&out);
    assert_eq!(acks.len(), 300);
    assert!(
        out.lines().all(|l| l.split(' ').count() == 4),
        "queue offset msg_id broker"
    );
    let by_id = assert_stored_once(ns, "m-sync", &sync_lines);
    for (ack, line) in acks.iter().zip(&sync_lines) {
        assert_eq!(&body(&by_id[&ack.msg_id]), line, "sync acks follow the input");
        assert_eq!(by_id[&ack.msg_id]["queue"], ack.queue);
        assert_eq!(by_id[&ack.msg_id]["offset"], ack.offset);
    }

    // async: one ack per line (any order), each naming where it is stored.
    let async_lines = lines("async");
    let out = produce_out(ns, "m-async", &["--mode", "async", "--inflight", "16"], &async_lines);
    let acks = parse_acks(&out);
    assert_eq!(acks.len(), 300);
    let by_id = assert_stored_once(ns, "m-async", &async_lines);
    let acked: BTreeSet<&str> = acks.iter().map(|a| a.msg_id.as_str()).collect();
    assert_eq!(acked.len(), 300, "one ack per message");
    for ack in &acks {
        let m = &by_id[&ack.msg_id];
        assert_eq!(m["queue"], ack.queue);
        assert_eq!(m["offset"], ack.offset);
    }

    // oneway: only the summary line, and still every line stored once.
    let oneway_lines = lines("oneway");
    let out = produce_out(ns, "m-oneway", &["--mode", "oneway"], &oneway_lines);
    let summary: Vec<&str> = out.lines().collect();
    assert_eq!(summary.len(), 1, "{out}");
    let words: Vec<&str> = summary[0].split(' ').collect();
    assert_eq!(words.len(), 7, "{out}");
    assert_eq!(words[..5], ["sent", "300", "messages", "oneway", "in"], "{out}");
    assert!(words[5].parse::<f64>().is_ok() && words[6] == "s", "{out}");
    assert_stored_once(ns, "m-oneway", &oneway_lines);
}

#[test]
fn batches_of_stdin_lines_land_contiguously() {
    let dir = tempfile::tempdir().unwrap();
    let broker = ServerProcess::broker(dir.path(), &[], &small_store_env());
    let ns = broker.namesrv_addr.as_str();
    cli_ok(ns, &["topic", "create", "batched", "--queues", "4"]);
    cli_ok(ns, &["topic", "create", "batched-async", "--queues", "4"]);
    cli_ok(ns, &["topic", "create", "one-key", "--queues", "4"]);

    let lines: Vec<String> = (0..95).map(|i| format!("line-{i:03}")).collect();
    let acks = produce(ns, "batched", &["--batch", "10"], &lines);
    assert_eq!(acks.len(), 95);
    let by_id = assert_stored_once(ns, "batched", &lines);
    let mut queues = BTreeSet::new();
    for (b, chunk) in acks.chunks(10).enumerate() {
        for (i, ack) in chunk.iter().enumerate() {
            assert_eq!(body(&by_id[&ack.msg_id]), lines[b * 10 + i], "acks follow the input");
            assert_eq!(ack.queue, chunk[0].queue, "batch {b} goes to one queue: {chunk:?}");
            assert_eq!(
                ack.offset,
                chunk[0].offset + i as u64,
                "batch {b} is contiguous: {chunk:?}"
            );
        }
        queues.insert(chunk[0].queue);
    }
    assert_eq!(acks.chunks(10).last().map(|c| c.len()), Some(5), "the rest at the end");
    assert!(queues.len() > 1, "batches are spread over the queues");

    // async batches: each batch's acks are printed together.
    let out = produce_out(
        ns,
        "batched-async",
        &["--batch", "10", "--mode", "async", "--inflight", "3"],
        &lines,
    );
    let acks = parse_acks(&out);
    assert_eq!(acks.len(), 95);
    let by_id = assert_stored_once(ns, "batched-async", &lines);
    let mut start = 0;
    while start < acks.len() {
        let first = &acks[start];
        let first_line: usize = body(&by_id[&first.msg_id])[5..].parse().unwrap();
        assert_eq!(first_line % 10, 0, "a batch starts at a multiple of 10");
        let len = 10.min(95 - first_line);
        for (i, ack) in acks[start..start + len].iter().enumerate() {
            assert_eq!(body(&by_id[&ack.msg_id]), lines[first_line + i]);
            assert_eq!((ack.queue, ack.offset), (first.queue, first.offset + i as u64));
        }
        start += len;
    }

    // One sharding key: every message on one queue, in input order.
    let acks = produce(
        ns,
        "one-key",
        &["--sharding-key", "order-7", "--batch", "4"],
        &lines[..30],
    );
    assert!(acks.iter().all(|a| a.queue == acks[0].queue), "{acks:?}");
    let offsets: Vec<u64> = acks.iter().map(|a| a.offset).collect();
    assert_eq!(offsets, (0..30).collect::<Vec<u64>>());
}

#[test]
fn sharding_keys_from_lines_keep_per_key_order_for_orderly_members() {
    let dir = tempfile::tempdir().unwrap();
    let broker = ServerProcess::broker(&dir.path().join("data"), &[], &small_store_env());
    let ns = broker.namesrv_addr.as_str();
    cli_ok(ns, &["topic", "create", "ledger", "--queues", "8"]);

    let args = [
        "--topic",
        "ledger",
        "--group",
        "G",
        "--orderly",
        "--from",
        "earliest",
        "--ack-timeout",
        "10s",
    ];
    let members: Vec<Consumer> = ["c1", "c2", "c3"]
        .iter()
        .map(|name| Consumer::start(ns, dir.path(), name, &args))
        .collect();
    // The three members share the eight queues before anything is sent.
    let stable = wait_until(Duration::from_secs(20), || {
        let out = cli(ns, &["group", "describe", "G", "--format", "json"]);
        let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) else {
            return false;
        };
        let members = v["members"].as_array().cloned().unwrap_or_default();
        v["state"] == "Stable"
            && members.len() == 3
            && members
                .iter()
                .all(|m| m["assignment"].as_array().is_some_and(|a| !a.is_empty()))
    });
    assert!(stable, "the group did not settle with three members");

    // 16 keys, 30 messages each, interleaved.
    let keys: Vec<String> = (0..16).map(|k| format!("account-{k:02}")).collect();
    let mut lines = Vec::new();
    for seq in 0..30 {
        for k in &keys {
            lines.push(format!("{k}\t{k}:{seq:02}"));
        }
    }
    let bodies: Vec<String> = lines
        .iter()
        .map(|l| l.split_once('\t').unwrap().1.to_string())
        .collect();
    let out = produce_out(
        ns,
        "ledger",
        &[
            "--sharding-key-from-line",
            "--mode",
            "async",
            "--inflight",
            "8",
            "--batch",
            "3",
        ],
        &lines,
    );
    let acks = parse_acks(&out);
    assert_eq!(acks.len(), lines.len());

    // Stored: each key on one queue, in send order.
    let by_id = assert_stored_once(ns, "ledger", &bodies);
    let mut per_key: BTreeMap<String, Vec<(u64, u64, String)>> = BTreeMap::new();
    for m in by_id.values() {
        let b = body(m);
        let key = b.split(':').next().unwrap().to_string();
        per_key
            .entry(key)
            .or_default()
            .push((m["queue"].as_u64().unwrap(), m["offset"].as_u64().unwrap(), b));
    }
    let mut queues = BTreeSet::new();
    for (key, mut msgs) in per_key {
        msgs.sort();
        assert!(msgs.iter().all(|m| m.0 == msgs[0].0), "{key} on one queue: {msgs:?}");
        queues.insert(msgs[0].0);
        let in_offset_order: Vec<&String> = msgs.iter().map(|m| &m.2).collect();
        let mut in_send_order = in_offset_order.clone();
        in_send_order.sort();
        assert_eq!(in_offset_order, in_send_order, "{key} stored in send order");
    }
    assert!(queues.len() >= 4, "16 keys spread over the 8 queues: {queues:?}");

    // Consumed: all once in total, each key in order within its member.
    let total = || members.iter().map(|m| m.messages().len()).sum::<usize>();
    assert!(
        wait_until(Duration::from_secs(30), || total() >= bodies.len()),
        "consumed {} of {}",
        total(),
        bodies.len()
    );
    std::thread::sleep(Duration::from_millis(500));
    let mut consumed = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let msgs = m.messages();
        let mut seqs: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for v in &msgs {
            let b = body(v);
            seqs.entry(b.split(':').next().unwrap().to_string())
                .or_default()
                .push(b.clone());
            consumed.push(b);
        }
        for (key, seq) in seqs {
            let mut sorted = seq.clone();
            sorted.sort();
            assert_eq!(seq, sorted, "member c{}: {key} out of order", i + 1);
        }
    }
    consumed.sort();
    let mut want = bodies.clone();
    want.sort();
    assert_eq!(consumed, want, "every message consumed once in total");
    assert!(
        members.iter().filter(|m| !m.messages().is_empty()).count() >= 2,
        "the queues are shared by the members"
    );
}

#[test]
fn bad_input_and_flag_combinations_fail_clearly() {
    // Flag conflicts fail before any connection (exit code 2).
    for (args, says) in [
        (&["--mode", "sync", "--inflight", "4"][..], "--inflight"),
        (&["--mode", "oneway", "--inflight", "4"][..], "--inflight"),
        (&["--count", "5", "--size", "10", "--mode", "async"][..], "--mode"),
        (
            &["--count", "5", "--size", "10", "--sharding-key", "k"][..],
            "--sharding-key",
        ),
        (
            &["--sharding-key", "k", "--sharding-key-from-line"][..],
            "--sharding-key",
        ),
        (&["--batch", "0"][..], "--batch"),
        (&["--mode", "sometimes"][..], "--mode"),
        (&["--mode", "async", "--inflight", "0"][..], "--inflight"),
        (&["--sharding-key", ""][..], "--sharding-key"),
    ] {
        let mut all = vec!["produce", "--topic", "t"];
        all.extend_from_slice(args);
        let out = cli_with_input("127.0.0.1:1", &all, b"x\n");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }

    let dir = tempfile::tempdir().unwrap();
    let broker = ServerProcess::broker(dir.path(), &[], &small_store_env());
    let ns = broker.namesrv_addr.as_str();
    cli_ok(ns, &["topic", "create", "keyed", "--queues", "4"]);
    // A line without a TAB: the lines before it are sent, nothing from it
    // on, and the error names it.
    let lines = ["a\tfirst", "b\tsecond", "no tab here", "c\tafter"].map(String::from);
    let out = cli_with_input(
        ns,
        &[
            "produce",
            "--topic",
            "keyed",
            "--sharding-key-from-line",
            "--batch",
            "2",
        ],
        &input(&lines),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("line 3") && stderr.contains("TAB"), "{stderr}");
    assert_eq!(parse_acks(&String::from_utf8_lossy(&out.stdout)).len(), 2);
    assert_stored_once(ns, "keyed", &["first".to_string(), "second".to_string()]);
}
