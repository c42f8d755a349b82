//! Damage to the store on disk costs no more than the damaged bytes
//! (issue #13), through the real binary: a newest segment of the wrong
//! size is repaired at start, a flipped bit in the middle of the active
//! segment costs only that record, and readers skip a damaged record in an
//! older segment instead of stalling on it.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use ferromq::store::record::{probe, Probe};

fn line(i: usize) -> String {
    format!("msg-{i:06} {}", "p".repeat(100 + i % 300))
}

/// The commitlog's segment files, oldest first.
fn segments(data_dir: &Path) -> Vec<PathBuf> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(data_dir.join("commitlog"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    segs
}

#[test]
fn a_newest_segment_of_the_wrong_size_is_repaired_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..500).map(line).collect();
    let listen = free_addr();
    {
        let mut broker = ServerProcess::broker_at(dir.path(), &listen, &[], &small_store_env());
        cli_ok(&broker.namesrv_addr, &["topic", "create", "t", "--queues", "1"]);
        let acks = produce(&broker.namesrv_addr, "t", &[], &lines);
        assert_eq!(acks.len(), lines.len());
        broker.kill9();
    }
    for delta in [5i64, -3] {
        let newest = segments(dir.path()).pop().unwrap();
        let len = std::fs::metadata(&newest).unwrap().len();
        let wrong = (len as i64 + delta) as u64;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&newest)
            .unwrap()
            .set_len(wrong)
            .unwrap();

        let mut broker = ServerProcess::broker_at(dir.path(), &listen, &[], &small_store_env());
        assert_eq!(
            consumed_bodies(&broker.namesrv_addr, "t"),
            lines,
            "every acknowledged message"
        );
        assert_eq!(std::fs::metadata(&newest).unwrap().len(), len, "the size is repaired");
        let stderr = broker.stderr();
        assert!(
            stderr.contains("repaired the size of a commitlog segment")
                && stderr.contains(&newest.display().to_string())
                && stderr.contains(&wrong.to_string()),
            "logged with the path and the sizes:\n{stderr}"
        );
        broker.kill9();
    }
}

/// `(start, size)` of every whole record of a segment file, in order.
fn records(seg: &Path) -> Vec<(usize, usize)> {
    let data = std::fs::read(seg).unwrap();
    let (mut pos, mut out) = (0usize, Vec::new());
    while let Probe::Record(size) = probe(&data[pos..]) {
        out.push((pos, size));
        pos += size;
    }
    out
}

/// Flips one byte near the end of the body of the `n`th record of `seg`.
fn flip_body_byte(seg: &Path, n: usize) {
    let (start, size) = records(seg)[n];
    let mut data = std::fs::read(seg).unwrap();
    data[start + size - 10] ^= 0x5A;
    std::fs::write(seg, &data).unwrap();
}

fn corrupt_records_metric(http: &str) -> u64 {
    let text = http_get(http, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix("ferromq_store_corrupt_records_total "))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

#[test]
fn a_flipped_bit_mid_segment_costs_only_that_record() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..500).map(line).collect();
    let listen = free_addr();
    {
        let mut broker = ServerProcess::broker_at(dir.path(), &listen, &["--flush", "sync"], &small_store_env());
        cli_ok(&broker.namesrv_addr, &["topic", "create", "t", "--queues", "1"]);
        assert_eq!(produce(&broker.namesrv_addr, "t", &[], &lines).len(), lines.len());
        broker.kill9();
    }
    let newest = segments(dir.path()).pop().unwrap();
    let before = records(&newest);
    let victim = before.len() / 2;
    flip_body_byte(&newest, victim);

    let broker = ServerProcess::broker_at(dir.path(), &listen, &["--flush", "sync"], &small_store_env());
    let ns = broker.namesrv_addr.as_str();
    let got = consumed_bodies(ns, "t");
    // The commitlog also holds the broker's own records (offset commits…):
    // find the victim among the topic's messages by what is missing.
    let missing: Vec<&String> = lines.iter().filter(|l| !got.contains(l)).collect();
    assert_eq!(missing.len(), 1, "exactly the damaged record is lost: {missing:?}");
    assert_eq!(got.len(), lines.len() - 1);
    let (start, size) = before[victim];
    let data = std::fs::read(&newest).unwrap();
    assert_ne!(
        probe(&data[start..]),
        Probe::Record(size),
        "the damaged record stays damaged"
    );
    let mut pos = start + size;
    for (later, _) in &before[victim + 1..] {
        assert_eq!(pos, *later);
        let Probe::Record(n) = probe(&data[pos..]) else {
            panic!("a later record at {pos} was erased")
        };
        pos += n;
    }
    assert_eq!(corrupt_records_metric(&broker.http_addr), 1);
    let stderr = broker.stderr();
    assert!(
        stderr.contains("corrupt commitlog record in the middle of the log"),
        "{stderr}"
    );
    // Producing continues after the kept records.
    let acks = produce(ns, "t", &[], &["next".to_string()]);
    assert_eq!(acks[0].offset, 500);
    assert_eq!(consumed_bodies(ns, "t").last().map(String::as_str), Some("next"));
}

#[test]
fn a_flipped_bit_in_an_older_segment_is_skipped_by_readers() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..4000).map(line).collect();
    {
        let mut broker = ServerProcess::broker(dir.path(), &[], &small_store_env());
        cli_ok(&broker.namesrv_addr, &["topic", "create", "t", "--queues", "1"]);
        assert_eq!(produce(&broker.namesrv_addr, "t", &[], &lines).len(), lines.len());
        assert!(broker.stop(), "clean shutdown; stderr:\n{}", broker.stderr());
    }
    let segs = segments(dir.path());
    assert!(segs.len() >= 2, "more than one segment");
    let oldest = &segs[0];
    flip_body_byte(oldest, records(oldest).len() / 2);

    let broker = ServerProcess::broker(dir.path(), &[], &small_store_env());
    let ns = broker.namesrv_addr.as_str();
    let got = consumed_bodies(ns, "t");
    assert_eq!(got.len(), lines.len() - 1, "every other message, no stall");
    assert_eq!(lines.iter().filter(|l| !got.contains(l)).count(), 1);
    assert!(corrupt_records_metric(&broker.http_addr) >= 1);
    assert!(broker.stderr().contains("fails its CRC check"));
}
