//! `ferromq store verify --data-dir DIR [--repair]` through the real
//! binary: a clean store verifies, a flipped byte in a segment and a
//! consume-queue entry pointing at the wrong record are reported (with
//! their file and position), `--repair` applies recovery's fixes, and a
//! data directory a broker holds is refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use ferromq::store::record::{probe, Probe};
use serde_json::Value;

fn line(i: usize) -> String {
    format!("msg-{i:06} {}", "v".repeat(100 + i % 200))
}

/// Starts a broker with a small store, creates topic `t` (one queue),
/// produces `n` keyed messages and stops the broker cleanly.
fn store_with(dir: &Path, n: usize) -> Vec<String> {
    let lines: Vec<String> = (0..n).map(line).collect();
    let mut broker = ServerProcess::broker(dir, &[], &small_store_env());
    cli_ok(&broker.namesrv_addr, &["topic", "create", "t", "--queues", "1"]);
    assert_eq!(produce(&broker.namesrv_addr, "t", &["--key", "k"], &lines).len(), n);
    assert!(broker.stop(), "clean shutdown; stderr:\n{}", broker.stderr());
    lines
}

/// Runs `ferromq store verify --data-dir DIR EXTRA…` (killed after 60 s).
fn verify(dir: &Path, extra: &[&str]) -> Output {
    let d = dir.to_str().expect("utf-8 path");
    let mut args = vec!["store", "verify", "--data-dir", d];
    args.extend_from_slice(extra);
    cli("127.0.0.1:1", &args)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn verify_json(dir: &Path, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["--format", "json"];
    args.extend_from_slice(extra);
    let out = verify(dir, &args);
    let text = stdout(&out);
    let v = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "bad JSON {text:?}: {e}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
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

#[test]
fn a_clean_store_verifies_with_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    store_with(dir.path(), 400);

    let out = verify(dir.path(), &[]);
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = text.lines().last().unwrap_or_default();
    assert!(
        summary.starts_with("checked 1 segments (400 records), ") && summary.ends_with(": 0 problems"),
        "{text}"
    );

    let (code, v) = verify_json(dir.path(), &[]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["clean"], true);
    assert_eq!(v["summary"]["records"], 400);
    assert_eq!(v["summary"]["consume_queue_entries"], 400);
    assert!(v["summary"]["index_entries"].as_u64().unwrap() >= 400, "{v}");
    assert_eq!(v["problems"].as_array().map(Vec::len), Some(0));
    assert_eq!(v["segment_bytes"], 1_048_576);
}

#[test]
fn a_flipped_byte_mid_segment_is_reported_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let lines = store_with(dir.path(), 500);
    let seg = segments(dir.path()).pop().unwrap();
    let seg_start: u64 = seg.file_name().unwrap().to_str().unwrap().parse().unwrap();
    let recs = records(&seg);
    let (start, size) = recs[recs.len() / 2];
    let mut data = std::fs::read(&seg).unwrap();
    data[start + size - 10] ^= 0x5A;
    std::fs::write(&seg, &data).unwrap();
    let offset = seg_start + start as u64;

    let out = verify(dir.path(), &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let problem = text
        .lines()
        .find(|l| l.starts_with("problem: ") && l.contains(&seg.display().to_string()))
        .unwrap_or_else(|| panic!("the segment is named:\n{text}"));
    assert!(
        problem.contains(&format!("commitlog offset {offset}")) && problem.contains("quarantine"),
        "{problem}"
    );
    assert!(text.lines().last().unwrap().ends_with(": 1 problems"), "{text}");

    let (code, v) = verify_json(dir.path(), &[]);
    assert_eq!(code, 1);
    let p = &v["problems"][0];
    assert_eq!(p["kind"], "corrupt_record", "{v}");
    assert_eq!(p["file"], seg.display().to_string());
    assert_eq!(p["commitlog_offset"], offset);
    assert_eq!(p["length"], size as u64);
    assert_eq!(
        v["summary"]["quarantined_slots"], 1,
        "its queue entry is a quarantined slot"
    );

    let out = verify(dir.path(), &["--repair"]);
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("after repair:"), "{text}");
    assert!(text.lines().last().unwrap().ends_with(": 0 problems"), "{text}");
    assert!(text.contains(&format!("quarantined: {} (commitlog offset {offset}", seg.display())));

    // A restarted broker serves every other message, the later ones too.
    let mut broker = ServerProcess::broker(dir.path(), &[], &small_store_env());
    let got = consumed_bodies(&broker.namesrv_addr, "t");
    let missing: Vec<&String> = lines.iter().filter(|l| !got.contains(l)).collect();
    assert_eq!(missing.len(), 1, "only the damaged record is lost: {missing:?}");
    assert_eq!(got.last(), lines.last(), "the records after the damage are served");
    assert!(broker.stop(), "clean shutdown; stderr:\n{}", broker.stderr());
}

#[test]
fn a_consume_queue_entry_pointing_at_a_wrong_offset_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    store_with(dir.path(), 100);
    let cq = dir.path().join("consumequeue/t/0/00000000000000000000");
    let mut data = std::fs::read(&cq).unwrap();
    // Entry 5 takes entry 6's physical offset (the size stays).
    let six: Vec<u8> = data[6 * 20..6 * 20 + 8].to_vec();
    data[5 * 20..5 * 20 + 8].copy_from_slice(&six);
    std::fs::write(&cq, &data).unwrap();
    let phys = u64::from_be_bytes(six.try_into().unwrap());

    let out = verify(dir.path(), &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!("problem: {}", cq.display()))
                && l.contains("queue offset 5")
                && l.contains(&format!("commitlog offset {phys}"))),
        "{text}"
    );

    let (code, v) = verify_json(dir.path(), &[]);
    assert_eq!(code, 1);
    let problems = v["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{v}");
    assert_eq!(problems[0]["kind"], "consume_queue_entry_mismatch");
    assert_eq!(problems[0]["file"], cq.display().to_string());
    assert_eq!(problems[0]["queue_offset"], 5);
    assert_eq!(problems[0]["commitlog_offset"], phys);
}

#[test]
fn verify_refuses_a_directory_a_broker_holds() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = ServerProcess::broker(dir.path(), &[], &small_store_env());
    let out = verify(dir.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("locked by another broker") && stderr.contains(&format!("pid {}", broker.pid())),
        "{stderr}"
    );
    assert!(stdout(&out).is_empty(), "no report from a live store");
    assert!(broker.is_running(), "the broker is untouched");
    assert!(broker.stop(), "clean shutdown; stderr:\n{}", broker.stderr());

    // Stopped, the same directory verifies.
    let out = verify(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));

    // No data directory at all: a usage error.
    let out = verify(&dir.path().join("missing"), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a FerroMQ data directory"));
}
