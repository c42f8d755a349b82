//! Damage to the store on disk costs no more than the damaged bytes
//! (issue #13), through the real binary: a newest segment of the wrong
//! size is repaired at start.

mod common;

use std::path::{Path, PathBuf};

use common::*;

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

fn bodies(ns: &str, topic: &str) -> Vec<String> {
    consume_json(ns, topic, &["--idle-timeout", "2"])
        .iter()
        .map(|m| m["body"].as_str().unwrap().to_string())
        .collect()
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
        assert_eq!(bodies(&broker.namesrv_addr, "t"), lines, "every acknowledged message");
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
