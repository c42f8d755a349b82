//! Crash recovery through the real binary: kill -9 mid-stream under sync
//! flush, a torn last record, garbage after the log's end.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use ferromq::store::record::{probe, Probe};

fn line(i: usize) -> String {
    format!("msg-{i:06} {}", "p".repeat(100 + i % 300))
}

/// Checks that every queue's offsets are contiguous from 0 and returns
/// body → count.
fn bodies_and_check_queues(msgs: &[serde_json::Value]) -> HashMap<String, usize> {
    let mut per_queue: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut bodies = HashMap::new();
    for m in msgs {
        per_queue
            .entry(m["queue"].as_u64().unwrap())
            .or_default()
            .push(m["offset"].as_u64().unwrap());
        *bodies.entry(m["body"].as_str().unwrap().to_string()).or_insert(0) += 1;
    }
    for (q, offs) in per_queue {
        assert_eq!(
            offs,
            (0..offs.len() as u64).collect::<Vec<_>>(),
            "queue {q} has a gap or disorder"
        );
    }
    bodies
}

#[test]
fn sync_flush_survives_kill_9_mid_stream() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = ServerProcess::broker(dir.path(), &["--flush", "sync"], &small_store_env());
    let ns = broker.namesrv_addr.clone();
    cli_ok(&ns, &["topic", "create", "stream", "--queues", "4"]);

    let mut producer = Command::new(bin())
        .args(["produce", "--topic", "stream", "-n", &ns])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = producer.stdin.take().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            for i in 0..1_000_000 {
                if stop.load(Ordering::Relaxed) || writeln!(stdin, "{}", line(i)).is_err() {
                    break;
                }
            }
        })
    };
    let acks = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let acks = acks.clone();
        let stdout = producer.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                acks.lock().unwrap().extend(parse_acks(&l));
            }
        })
    };
    assert!(
        wait_until(Duration::from_secs(60), || acks.lock().unwrap().len() >= 2000),
        "2000 acks in time"
    );
    broker.kill9();
    stop.store(true, Ordering::Relaxed);
    assert!(
        wait_until(Duration::from_secs(20), || producer.try_wait().ok().flatten().is_some()),
        "producer exits"
    );
    let _ = producer.kill();
    let _ = feeder.join();
    let _ = reader.join();
    let acked = acks.lock().unwrap().clone();
    assert!(acked.len() >= 2000);

    let broker = ServerProcess::broker(dir.path(), &["--flush", "sync"], &small_store_env());
    let ns = broker.namesrv_addr.clone();
    let msgs = consume_json(&ns, "stream", &["--idle-timeout", "3"]);
    let bodies = bodies_and_check_queues(&msgs);
    let by_id: HashMap<&str, &serde_json::Value> = msgs.iter().map(|m| (m["msg_id"].as_str().unwrap(), m)).collect();
    for (i, ack) in acked.iter().enumerate() {
        // Acks arrive in send order, one per stdin line.
        let m = by_id
            .get(ack.msg_id.as_str())
            .unwrap_or_else(|| panic!("acknowledged message {i} lost"));
        assert_eq!(m["body"].as_str().unwrap(), line(i), "intact");
        assert_eq!(
            (m["queue"].as_u64().unwrap(), m["offset"].as_u64().unwrap()),
            (ack.queue as u64, ack.offset)
        );
    }
    assert!(bodies.values().all(|n| *n == 1), "no message stored twice");
    assert!(
        msgs.len() <= acked.len() + 1,
        "at most the one in-flight send beyond the acks"
    );

    // Producing continues where the log ended.
    let more: Vec<String> = (0..100).map(|i| format!("after-{i}")).collect();
    produce(&ns, "stream", &[], &more);
    let all = consume_json(
        &ns,
        "stream",
        &["--count", &(msgs.len() + 100).to_string(), "--idle-timeout", "5"],
    );
    let bodies = bodies_and_check_queues(&all);
    assert!(more.iter().all(|b| bodies.get(b) == Some(&1)));
}

/// The last segment holding data and the end of its valid records.
fn log_end(data_dir: &Path) -> (PathBuf, usize, usize) {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(data_dir.join("commitlog"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    let mut last = None;
    for seg in segs {
        let data = std::fs::read(&seg).unwrap();
        let (mut pos, mut prev) = (0usize, 0usize);
        while let Probe::Record(size) = probe(&data[pos..]) {
            prev = pos;
            pos += size;
        }
        if pos > 0 {
            last = Some((seg, prev, pos));
        }
    }
    last.expect("some data in the commitlog")
}

fn one_queue_broker(dir: &Path, listen: &str) -> ServerProcess {
    let broker = ServerProcess::broker_at(dir, listen, &[], &small_store_env());
    cli_ok(&broker.namesrv_addr, &["topic", "create", "t", "--queues", "1"]);
    broker
}

#[test]
fn garbage_after_the_end_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..500).map(line).collect();
    {
        let mut broker = one_queue_broker(dir.path(), "127.0.0.1:0");
        produce(&broker.namesrv_addr, "t", &[], &lines);
        assert!(broker.stop(), "clean shutdown; stderr:\n{}", broker.stderr());
    }
    let (seg, _, end) = log_end(dir.path());
    let mut data = std::fs::read(&seg).unwrap();
    let mut x = 0x1234_5678u32;
    for b in &mut data[end..end + 4096] {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8 | 1;
    }
    std::fs::write(&seg, &data).unwrap();

    let broker = ServerProcess::broker(dir.path(), &[], &small_store_env());
    let ns = broker.namesrv_addr.as_str();
    let got = consume_json(ns, "t", &["--idle-timeout", "2"]);
    assert_eq!(
        got.iter().map(|m| m["body"].as_str().unwrap()).collect::<Vec<_>>(),
        lines
    );
    let acks = produce(ns, "t", &[], &["next".to_string()]);
    assert_eq!(acks[0].offset, 500);
    assert_eq!(consume_json(ns, "t", &["--idle-timeout", "2"]).len(), 501);
}

#[test]
fn torn_last_record_is_cut_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..300).map(line).collect();
    let listen = free_addr();
    let acks = {
        let mut broker = one_queue_broker(dir.path(), &listen);
        let acks = produce(&broker.namesrv_addr, "t", &[], &lines);
        broker.kill9();
        acks
    };
    let (seg, last_start, end) = log_end(dir.path());
    let mut data = std::fs::read(&seg).unwrap();
    data[last_start + (end - last_start) / 2] ^= 0xFF;
    std::fs::write(&seg, &data).unwrap();

    let broker = ServerProcess::broker_at(dir.path(), &listen, &[], &small_store_env());
    let ns = broker.namesrv_addr.as_str();
    let got = consume_json(ns, "t", &["--idle-timeout", "2"]);
    assert_eq!(
        got.iter().map(|m| m["body"].as_str().unwrap()).collect::<Vec<_>>(),
        lines[..299].to_vec()
    );
    cli_ok(ns, &["message", "get", &acks[298].msg_id]);
    let torn = cli(ns, &["message", "get", &acks[299].msg_id]);
    assert!(
        String::from_utf8_lossy(&torn.stderr).contains("MESSAGE_NOT_FOUND"),
        "the torn record is never served: {}",
        String::from_utf8_lossy(&torn.stderr)
    );
    let again = produce(ns, "t", &[], &["replacement".to_string()]);
    assert_eq!(
        again[0].offset, 299,
        "no gap: the next message takes the torn one's offset"
    );
    let got = consume_json(ns, "t", &["--idle-timeout", "2"]);
    assert_eq!(got.len(), 300);
    assert_eq!(got[299]["body"], "replacement");
    assert!(broker.stderr().contains("store recovered"));
}
