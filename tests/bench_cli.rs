//! `ferromq bench` against a real broker: every benchmark counts what it
//! sent or received, prints the documented summary (text and `--json`),
//! and `--disk-dir` reports the run against `bench disk`'s limits.

mod common;

use common::*;
use serde_json::Value;

fn bench_json(ns: &str, args: &[&str]) -> Value {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = cli_ok(ns, &all);
    let line = out.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bench {args:?}: {e}: {out}"))
}

fn assert_latency_summary(v: &Value, count: u64) {
    let l = &v["latency_us"];
    assert_eq!(l["count"], count, "{v}");
    let p = |k: &str| l[k].as_u64().unwrap_or_else(|| panic!("{k} missing: {v}"));
    assert!(p("p50") <= p("p90") && p("p90") <= p("p99") && p("p99") <= p("p999") && p("p999") <= p("max"));
    assert!(v["msgs_per_sec"].as_f64().unwrap() > 0.0);
}

#[test]
fn benchmarks_count_what_they_move_and_report_against_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let disk_dir = tempfile::tempdir().unwrap();
    // 1 MiB segments: the consume run reads across segment ends.
    let broker = ServerProcess::broker(dir.path(), &[], &small_store_env());
    let ns = broker.namesrv_addr.as_str();
    let disk = disk_dir.path().to_str().unwrap();

    let produce = bench_json(
        ns,
        &[
            "produce",
            "--messages",
            "3000",
            "--batch",
            "100",
            "--inflight",
            "2",
            "--queues",
            "4",
            "--topic",
            "bt",
            "--disk-dir",
            disk,
        ],
    );
    assert_eq!(produce["benchmark"], "produce");
    assert_eq!(produce["messages"], 3000);
    assert_eq!(produce["bytes"], 3000 * 1024);
    assert_latency_summary(&produce, 30);
    assert!(produce["disk"]["page_cache_write_mib_per_sec"].as_f64().unwrap() > 0.0);
    assert!(produce["disk"]["fdatasync_bandwidth_mib_per_sec"].as_f64().unwrap() > 0.0);
    assert!(produce["commitlog_mib_per_sec"].as_f64().unwrap() > produce["mib_per_sec"].as_f64().unwrap());
    assert!(produce["percent_of_page_cache_write"].as_f64().unwrap() > 0.0);
    assert!(produce["percent_of_fdatasync_bandwidth"].as_f64().unwrap() > 0.0);
    assert_eq!(
        std::fs::read_dir(disk_dir.path()).unwrap().count(),
        0,
        "bench disk removes its files"
    );

    let consume = bench_json(ns, &["consume", "--messages", "3000", "--topic", "bt"]);
    assert_eq!(consume["messages"], 3000);
    assert_eq!(consume["bytes"], 3000 * 1024);
    let pulls = consume["latency_us"]["count"].as_u64().unwrap();
    assert!((3..=3000).contains(&pulls), "{consume}");

    let latency = bench_json(ns, &["latency", "--messages", "200", "--topic", "lat", "--size", "100"]);
    assert_eq!(latency["messages"], 200);
    assert_latency_summary(&latency, 200);

    let e2e = bench_json(ns, &["e2e", "--messages", "500", "--rate", "2000", "--topic", "e2e"]);
    assert_eq!(e2e["messages"], 500, "every message sent is received: {e2e}");
    assert_latency_summary(&e2e, 500);
    for v in [&latency, &e2e] {
        assert!(
            v["stalls"]["over_2ms"].is_u64() && v["stalls"]["longest_us"].is_u64(),
            "{v}"
        );
    }

    let disk_only = bench_json(ns, &["disk", "--dir", disk, "--mib", "8", "--syncs", "20"]);
    assert_eq!(disk_only["mib"], 8);
    assert_eq!(disk_only["fdatasync_latency_us"]["count"], 20);

    // Text mode: the summary lines and the comparison with the disk.
    let text = cli_ok(
        ns,
        &[
            "bench",
            "produce",
            "--messages",
            "500",
            "--batch",
            "50",
            "--topic",
            "bt",
            "--disk-dir",
            disk,
        ],
    );
    assert!(text.contains("produce: 500 messages"), "{text}");
    assert!(text.contains("p99.9"), "{text}");
    assert!(
        text.contains("page-cache write") && text.contains("% of write+fdatasync bandwidth"),
        "{text}"
    );
}
