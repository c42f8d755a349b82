//! Retention on a cluster of real processes: one standalone name server and
//! two broker groups with 1 MiB segments and a 2 s retention checked every
//! 200 ms. A group commits on both broker groups and stops; much more is
//! produced; both brokers delete their old segments, `topic describe`
//! shows the moved minimums of both groups' queues, the newest messages
//! are intact, each broker counts what the group missed of its own queues,
//! a broker killed and restarted keeps its minimums and the group's offsets,
//! and the group continues from each queue's minimum on both groups.
//!
//! A second test fills one broker group's disk (its watermarks set below
//! its disk's usage): its sends are refused with `DISK_FULL`, producers go
//! to the other group, its stored messages stay readable, and it takes
//! sends again once its disk has room.
//!
//! Figures are printed as `figure: key=value` lines on stderr
//! (`cargo test --test cluster_retention -- --nocapture`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use serde_json::Value;

const A: &str = "broker-a";
const B: &str = "broker-b";
const TOPIC: &str = "ret";
const GROUP: &str = "keeper";
/// Queues per broker group.
const QUEUES: u32 = 2;

/// (broker group, queue id).
type QueueKey = (String, u32);

fn segment_files(data: &Path) -> Vec<String> {
    files_in(&data.join("commitlog"))
}

/// `topic describe --format json`: (broker, queue) → (min, max).
fn describe_topic(ns: &str) -> BTreeMap<QueueKey, (u64, u64)> {
    let out = cli_ok(ns, &["topic", "describe", TOPIC, "--format", "json"]);
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("bad JSON {out:?}: {e}"));
    for b in v["brokers"].as_array().expect("brokers") {
        assert_eq!(b["unreachable"], false, "{b}");
    }
    v["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .map(|q| {
            (
                (
                    q["broker"].as_str().unwrap().to_string(),
                    q["queue"].as_u64().unwrap() as u32,
                ),
                (q["min_offset"].as_u64().unwrap(), q["max_offset"].as_u64().unwrap()),
            )
        })
        .collect()
}

/// `group describe --format json`: (broker, queue) → committed offset.
fn committed(c: &Cluster) -> Result<BTreeMap<QueueKey, u64>, String> {
    let d = c.describe_group(GROUP)?;
    let mut out = BTreeMap::new();
    for q in d["queues"].as_array().cloned().unwrap_or_default() {
        if q["topic"] != TOPIC {
            continue;
        }
        if let (Some(b), Some(id), Some(off)) = (
            q["broker"].as_str(),
            q["queue"].as_u64(),
            q["committed_offset"].as_u64(),
        ) {
            out.insert((b.to_string(), id as u32), off);
        }
    }
    Ok(out)
}

/// Polls `group describe` until every queue of both broker groups has a
/// committed offset equal to `want`'s max; panics with the last view.
fn wait_committed_at_max(
    c: &Cluster,
    want: &BTreeMap<QueueKey, (u64, u64)>,
    within: Duration,
) -> BTreeMap<QueueKey, u64> {
    let mut last = Err(String::from("not asked yet"));
    let ok = wait_until(within, || {
        last = committed(c);
        last.as_ref()
            .is_ok_and(|got| want.iter().all(|(k, (_, max))| got.get(k) == Some(max)))
    });
    assert!(ok, "committed offsets {last:?}, want the max of {want:?}");
    last.unwrap()
}

/// `consume ARGS --format json` with a bounded idle timeout; the parsed
/// lines, keyed by (broker, queue), in arrival order.
fn consume(ns: &str, args: &[&str]) -> (Vec<Value>, Duration) {
    let mut all = vec!["consume", "--topic", TOPIC, "--format", "json"];
    all.extend_from_slice(args);
    let started = Instant::now();
    let out = cli(ns, &all);
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "consume {args:?} failed after {took:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let msgs = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
        .collect();
    (msgs, took)
}

fn key_of(m: &Value) -> QueueKey {
    (
        m["broker"]
            .as_str()
            .unwrap_or_else(|| panic!("no broker in {m}"))
            .to_string(),
        m["queue"].as_u64().unwrap() as u32,
    )
}

/// Every queue of `bounds` read exactly once from its min to its max, in
/// order, with intact bodies: the generated 1000-byte pattern, or one of
/// `marked` (each exactly once).
fn assert_exactly_min_to_max(what: &str, msgs: &[Value], bounds: &BTreeMap<QueueKey, (u64, u64)>, marked: &[String]) {
    let generated: String = (0..1000).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let mut per_queue: BTreeMap<QueueKey, Vec<u64>> = BTreeMap::new();
    let mut marked_seen: Vec<String> = Vec::new();
    for m in msgs {
        assert_eq!(m["topic"], TOPIC, "{what}: {m}");
        per_queue
            .entry(key_of(m))
            .or_default()
            .push(m["offset"].as_u64().unwrap());
        let body = m["body"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no text body in {m}"));
        if body.starts_with("new-") {
            marked_seen.push(body.to_string());
        } else {
            assert!(
                body == generated,
                "{what}: damaged body at {}: {body:.60}…",
                m["offset"]
            );
        }
    }
    for (k, (min, max)) in bounds {
        let got = per_queue.remove(k).unwrap_or_default();
        let want: Vec<u64> = (*min..*max).collect();
        assert!(
            got == want,
            "{what}: {k:?} read {} offsets {:?}…{:?}, want {min}..{max}",
            got.len(),
            got.first(),
            got.last()
        );
    }
    assert!(per_queue.is_empty(), "{what}: queues not in the topic: {per_queue:?}");
    marked_seen.sort();
    let mut want_marked = marked.to_vec();
    want_marked.sort();
    assert_eq!(
        marked_seen, want_marked,
        "{what}: the newest, marked messages exactly once"
    );
}

#[test]
fn both_broker_groups_delete_old_segments_and_a_group_continues_from_each_queues_min() {
    let t0 = Instant::now();
    let mut c = Cluster::start(
        1,
        &[A, B],
        &[
            ("FERROMQ__STORE__RETENTION_MS", "2000"),
            ("FERROMQ__STORE__CLEAN_INTERVAL_MS", "200"),
            ("FERROMQ__STORE__INDEX_SLOTS", "1024"),
            ("FERROMQ__STORE__INDEX_ENTRIES", "1000"),
        ],
    );
    let ns = c.ns();
    c.create_topic(TOPIC, QUEUES);
    eprintln!("figure: cluster_up_ms={}", t0.elapsed().as_millis());

    // 1. A few messages on every queue of both groups; the group reads them
    //    all and commits (on the broker group owning each queue), then stops.
    let old: Vec<String> = (0..40).map(|i| format!("old-{i}")).collect();
    let acks = produce(&ns, TOPIC, &[], &old);
    let by_broker: BTreeSet<&str> = acks
        .iter()
        .map(|a| c.broker_of_msg_id(&a.msg_id).expect("ack from a cluster broker"))
        .collect();
    assert_eq!(
        by_broker,
        BTreeSet::from([A, B]),
        "the first messages reach both groups"
    );
    let first_bounds = describe_topic(&ns);
    assert_eq!(first_bounds.len(), 2 * QUEUES as usize, "{first_bounds:?}");
    assert!(
        first_bounds.values().all(|(min, max)| *min == 0 && *max > 0),
        "every queue of both groups has messages: {first_bounds:?}"
    );
    let (first, took) = consume(
        &ns,
        &[
            "--group",
            GROUP,
            "--from",
            "earliest",
            "--count",
            "40",
            "--idle-timeout",
            "5",
            "--session-timeout-ms",
            "6000",
            "--heartbeat-ms",
            "500",
        ],
    );
    assert_eq!(first.len(), 40, "the group read the first messages in {took:?}");
    let committed_before = wait_committed_at_max(&c, &first_bounds, Duration::from_secs(10));
    eprintln!("committed before retention: {committed_before:?}");

    // 2. Much more on both groups: ~4.4 MB per broker, four 1 MiB segments
    //    and more; then forty marked messages, the newest.
    let t = Instant::now();
    cli_ok(
        &ns,
        &[
            "produce", "--topic", TOPIC, "--count", "8000", "--size", "1000", "--batch", "50",
        ],
    );
    let newest: Vec<String> = (0..40).map(|i| format!("new-{i}")).collect();
    produce(&ns, TOPIC, &[], &newest);
    eprintln!("figure: produce_ms={}", t.elapsed().as_millis());

    // 3. Both brokers delete every segment but the active one.
    let t = Instant::now();
    let data: Vec<(String, std::path::PathBuf)> =
        c.brokers.iter().map(|b| (b.name.clone(), b.data_dir.clone())).collect();
    for (name, dir) in &data {
        assert!(
            wait_until(Duration::from_secs(15), || segment_files(dir).len() == 1),
            "{name}: segments left {:?}",
            segment_files(dir)
        );
    }
    eprintln!("figure: segments_gone_ms={}", t.elapsed().as_millis());
    let mut deleted_per_broker = BTreeMap::new();
    for (name, dir) in &data {
        let active: u64 = segment_files(dir)[0].parse().expect("segment named by its start");
        let deleted = active / (1 << 20);
        assert!(deleted >= 3, "{name}: the active segment starts at {active}");
        deleted_per_broker.insert(name.clone(), deleted);
    }
    eprintln!("figure: segments_deleted={deleted_per_broker:?}");

    // 4. `topic describe` shows the moved minimums of both groups' queues,
    //    past what the group committed.
    let bounds = describe_topic(&ns);
    eprintln!("after retention: {bounds:?}");
    assert_eq!(bounds.len(), 2 * QUEUES as usize, "{bounds:?}");
    for (k, (min, max)) in &bounds {
        let done = committed_before[k];
        assert!(*min > 0 && min < max, "{k:?}: min {min}, max {max}");
        assert!(*min > done, "{k:?}: min {min} should be past the committed {done}");
    }
    for b in [A, B] {
        assert!(
            bounds.iter().any(|((broker, _), (min, _))| broker == b && *min > 0),
            "{b}: no queue with a moved minimum"
        );
    }

    // 5. Each broker counted, for its own queues, what the group missed:
    //    from its committed offset up to the queue's new minimum.
    let missed: BTreeMap<QueueKey, u64> = bounds
        .iter()
        .map(|(k, (min, _))| (k.clone(), min - committed_before[k]))
        .collect();
    for b in [A, B] {
        // The counters move right after the files are unlinked.
        let want_deleted = deleted_per_broker[b] as f64;
        let mut metrics = String::new();
        wait_until(Duration::from_secs(5), || {
            metrics = http_get(c.broker_http(b), "/metrics");
            metric_sum(&metrics, "ferromq_store_segments_deleted_total", &[]) >= want_deleted
        });
        let labels = [("group", GROUP), ("topic", TOPIC)];
        let own: u64 = missed.iter().filter(|((br, _), _)| br == b).map(|(_, n)| n).sum();
        assert_eq!(
            metric_sum(&metrics, "ferromq_group_messages_skipped_total", &labels),
            own as f64,
            "{b}: skipped messages of its queues {missed:?}"
        );
        for ((br, q), n) in missed.iter().filter(|((br, _), _)| br == b) {
            let q = q.to_string();
            let mut per_queue = labels.to_vec();
            per_queue.push(("queue", q.as_str()));
            assert_eq!(
                metric_sum(&metrics, "ferromq_group_messages_skipped_total", &per_queue),
                *n as f64,
                "{br}/{q}"
            );
        }
        assert_eq!(
            metric_sum(&metrics, "ferromq_store_segments_deleted_total", &[]),
            want_deleted,
            "{b}: deleted segments"
        );
    }
    eprintln!("figure: group_missed={}", missed.values().sum::<u64>());

    // 6. The newest messages are intact: a plain read from each queue's min
    //    gets every offset up to its max, the marked ones included.
    let (plain, took) = consume(&ns, &["--from", "earliest", "--idle-timeout", "2"]);
    eprintln!("figure: plain_read_ms={} messages={}", took.as_millis(), plain.len());
    assert_exactly_min_to_max("plain read", &plain, &bounds, &newest);

    // 7. Broker B dies (SIGKILL) and restarts on its data: it keeps its
    //    queues' minimums, and the group's offsets on it although their
    //    commit records were in the deleted segments.
    let t = Instant::now();
    c.kill9_broker(B);
    c.restart_broker(B);
    eprintln!("figure: broker_restart_ms={}", t.elapsed().as_millis());
    assert_eq!(segment_files(&data[1].1).len(), 1, "{B} after the restart");
    assert_eq!(describe_topic(&ns), bounds, "minimums after {B}'s restart");
    // An offset below its queue's minimum reads as the minimum (the broker
    // counted the skip when it deleted): still there, on both groups.
    let want: BTreeMap<QueueKey, u64> = bounds.iter().map(|(k, (min, _))| (k.clone(), *min)).collect();
    let mut last = Err(String::from("not asked yet"));
    let ok = wait_until(Duration::from_secs(10), || {
        last = committed(&c);
        last.as_ref().is_ok_and(|got| *got == want)
    });
    assert!(ok, "committed offsets after {B}'s restart: {last:?}, want {want:?}");

    // 8. The group restarts: it continues from each queue's min on both
    //    broker groups, gets exactly what is left, and commits the max.
    let (rest, took) = consume(
        &ns,
        &[
            "--group",
            GROUP,
            "--idle-timeout",
            "3",
            "--session-timeout-ms",
            "6000",
            "--heartbeat-ms",
            "500",
        ],
    );
    eprintln!("figure: group_resume_ms={} messages={}", took.as_millis(), rest.len());
    assert_exactly_min_to_max("group after retention", &rest, &bounds, &newest);
    wait_committed_at_max(&c, &bounds, Duration::from_secs(10));
    // Nothing more was deleted meanwhile (the counts above still hold).
    assert_eq!(describe_topic(&ns), bounds);
    eprintln!("figure: total_ms={}", t0.elapsed().as_millis());
}

#[test]
fn a_full_broker_group_refuses_sends_producers_use_the_other_and_reads_go_on() {
    let mut c = Cluster::start(1, &[A, B], &[]);
    c.create_topic("full-t", 2);
    let before: Vec<String> = (0..40).map(|i| format!("before-{i}")).collect();
    let acks = produce(&c.ns(), "full-t", &[], &before);
    let on_a = acks.iter().filter(|a| c.broker_of_msg_id(&a.msg_id) == Some(A)).count();
    assert!(on_a > 0, "round-robin stored some on {A}");

    // A's disk "fills": every watermark below what its disk already uses.
    let full = [
        ("FERROMQ__STORE__DISK_CLEAN_RATIO", "0.001"),
        ("FERROMQ__STORE__DISK_FORCE_CLEAN_RATIO", "0.001"),
        ("FERROMQ__STORE__DISK_REFUSE_RATIO", "0.001"),
    ];
    c.set_broker_env(A, &full);
    c.restart_broker(A);
    // Straight to A: refused, saying whose disk is full and how full.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let refused = rt.block_on(async {
        let admin = ferromq::client::Admin::new(ferromq::client::ClientConfig::new([c.ns()]));
        admin
            .create_topic_on(&[c.broker_addr(A).to_string()], "full-new", 1, None)
            .await
            .expect_err("a full broker creates no topic")
            .to_string()
    });
    assert!(
        refused.contains("DISK_FULL") && refused.contains(A) && refused.contains("% used"),
        "{refused}"
    );
    // Through the name servers: every send lands on B, none fails.
    let during: Vec<String> = (0..60).map(|i| format!("during-{i}")).collect();
    let acks = produce(&c.ns(), "full-t", &[], &during);
    let brokers: BTreeSet<&str> = acks.iter().filter_map(|a| c.broker_of_msg_id(&a.msg_id)).collect();
    assert_eq!(brokers, BTreeSet::from([B]), "sends moved to the group with room");
    // Reads go on: everything, A's included.
    let read: BTreeSet<String> = consumed_bodies(&c.ns(), "full-t").into_iter().collect();
    let missing: Vec<&String> = before.iter().chain(&during).filter(|b| !read.contains(*b)).collect();
    assert!(missing.is_empty(), "unread: {missing:?}");

    // Room again (watermarks back): A takes sends again.
    c.set_broker_env(A, &[]);
    c.restart_broker(A);
    let after: Vec<String> = (0..40).map(|i| format!("after-{i}")).collect();
    let acks = produce(&c.ns(), "full-t", &[], &after);
    assert!(
        acks.iter().any(|a| c.broker_of_msg_id(&a.msg_id) == Some(A)),
        "{A} takes sends again"
    );
    eprintln!(
        "figure: full_group_stored_before={on_a} moved_to_other_group={}",
        during.len()
    );
}
