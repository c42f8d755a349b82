//! Retention against a real broker: 1 MiB segments, a 2 s retention
//! checked every 200 ms (and a size limit), then what is left on disk, the
//! queues' minimum offsets, what groups read and `/metrics`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const MIB: u64 = 1 << 20;

fn commitlog_bytes(data: &Path) -> u64 {
    std::fs::read_dir(data.join("commitlog"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

fn queue_bounds(web: &str, topic: &str) -> (u64, u64) {
    let v: serde_json::Value = serde_json::from_str(&http_get(web, &format!("/api/topics/{topic}"))).unwrap();
    let q = &v["queues"][0];
    (q["min_offset"].as_u64().unwrap(), q["max_offset"].as_u64().unwrap())
}

fn create_topic(web: &str, topic: &str) {
    let (status, body) = http(
        web,
        "POST",
        "/api/topics",
        Some(&format!(r#"{{"topic":"{topic}","queues":1}}"#)),
    );
    assert_eq!(status, 201, "{body}");
}

fn produce_generated(ns: &str, topic: &str, count: u32) {
    cli_ok(
        ns,
        &[
            "produce",
            "--topic",
            topic,
            "--count",
            &count.to_string(),
            "--size",
            "1000",
            "--batch",
            "50",
            "--key",
            "k",
        ],
    );
}

#[test]
fn expired_segments_and_what_points_into_them_are_deleted_and_groups_continue_from_the_min() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = small_store_env();
    env.extend([
        ("FERROMQ__STORE__RETENTION_MS", "2000"),
        ("FERROMQ__STORE__CLEAN_INTERVAL_MS", "200"),
        ("FERROMQ__STORE__INDEX_SLOTS", "1024"),
        ("FERROMQ__STORE__INDEX_ENTRIES", "1000"),
    ]);
    let broker = ServerProcess::broker(dir.path(), &[], &env);
    let (ns, web) = (broker.namesrv_addr.clone(), broker.http_addr.clone());
    create_topic(&web, "r");

    // A group reads the first ten messages and commits offset 10.
    produce_generated(&ns, "r", 10);
    let first = consume_json(&ns, "r", &["--group", "g", "--count", "10", "--idle-timeout", "5"]);
    assert_eq!(first.len(), 10);
    // Then ~5 MB: five 1 MiB segments, the last one active.
    produce_generated(&ns, "r", 5000);
    let data = dir.path();
    let cq_dir = data.join("consumequeue/r/0");

    // Retention: every segment but the active one goes (it may start while
    // the 5000 are still being produced, so counts are checked afterwards).
    assert!(
        wait_until(Duration::from_secs(10), || files_in(&data.join("commitlog")).len() == 1),
        "segments left: {:?}",
        files_in(&data.join("commitlog"))
    );
    let active: u64 = files_in(&data.join("commitlog"))[0].parse().unwrap();
    let deleted = active / MIB;
    assert!(deleted >= 4, "the active segment starts at {active}");
    let (min, max) = queue_bounds(&web, "r");
    assert_eq!(max, 5010);
    assert!(min > 3000 && min < max, "min offset {min}");
    // Consume-queue files of 1000 entries: those wholly below min are gone.
    let cq_after = files_in(&cq_dir);
    let first_cq: u64 = cq_after[0].parse().unwrap();
    assert!(
        first_cq > 0 && first_cq <= min && min - first_cq < 1000,
        "{cq_after:?}, min {min}"
    );
    // Index files of 1000 entries (one per message): at least 5 were written.
    let index = files_in(&data.join("index"));
    assert!(index.len() <= 2, "index files {index:?}");
    let metrics = http_get(&web, "/metrics");
    assert_eq!(
        metric_sum(&metrics, "ferromq_store_segments_deleted_total", &[]),
        deleted as f64
    );
    assert_eq!(
        metric_sum(&metrics, "ferromq_store_bytes_reclaimed_total", &[]),
        (deleted * MIB) as f64
    );
    // The group, committed at 10, lost min - 10 messages: counted once.
    assert_eq!(
        metric_sum(
            &metrics,
            "ferromq_group_messages_skipped_total",
            &[("group", "g"), ("topic", "r")]
        ),
        (min - 10) as f64
    );

    // It continues from the min and reads every newest message intact.
    let rest = consume_json(
        &ns,
        "r",
        &[
            "--group",
            "g",
            "--count",
            &(max - min).to_string(),
            "--idle-timeout",
            "5",
        ],
    );
    assert_eq!(rest.len() as u64, max - min);
    for (i, m) in rest.iter().enumerate() {
        assert_eq!(m["offset"].as_u64().unwrap(), min + i as u64);
        assert_eq!(m["body"].as_str().map(str::len), Some(1000), "{m}");
    }
    // A restart keeps the new start.
    drop(broker);
    let broker = ServerProcess::broker(dir.path(), &[], &env);
    assert_eq!(queue_bounds(&broker.http_addr, "r"), (min, max));
}

#[test]
fn retention_by_size_holds_the_commitlog_under_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = small_store_env();
    env.extend([
        ("FERROMQ__STORE__RETENTION_BYTES", "3145728"),
        ("FERROMQ__STORE__CLEAN_INTERVAL_MS", "200"),
    ]);
    let broker = ServerProcess::broker(dir.path(), &[], &env);
    let (ns, web) = (broker.namesrv_addr.clone(), broker.http_addr.clone());
    create_topic(&web, "s");
    let limit = 3 * MIB;
    for round in 0..4 {
        produce_generated(&ns, "s", 2000);
        // ± one segment: the cleaner runs every 200 ms behind the producer.
        assert!(
            wait_until(Duration::from_secs(5), || commitlog_bytes(dir.path()) <= limit + MIB),
            "round {round}: {} bytes",
            commitlog_bytes(dir.path())
        );
    }
    assert!(
        commitlog_bytes(dir.path()) >= limit - MIB,
        "no more than needed is deleted"
    );
    let (min, max) = queue_bounds(&web, "s");
    assert_eq!(max, 8000);
    assert!(min > 0);
    let newest = consume_json(&ns, "s", &["--count", "1", "--idle-timeout", "5"]);
    assert_eq!(newest[0]["offset"].as_u64().unwrap(), min);
    let metrics = http_get(&web, "/metrics");
    assert!(metric_sum(&metrics, "ferromq_store_segments_deleted_total", &[]) >= 4.0);
}
