//! One broker per data directory.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn second_broker_on_a_data_dir_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = ServerProcess::broker(dir.path(), &[], &small_store_env());

    let started = Instant::now();
    let second = Command::new(bin())
        .args(["broker", "--data-dir", dir.path().to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--namesrv-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(started.elapsed() < Duration::from_secs(10));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("locked by another broker"), "{err}");
    assert!(err.contains("pid"), "{err}");

    // The first one is unharmed.
    let acks = produce(&first.namesrv_addr, "t", &[], &["hello".to_string()]);
    assert_eq!(acks.len(), 1);

    assert!(first.stop(), "clean stop");
    let again = ServerProcess::broker(dir.path(), &[], &small_store_env());
    let got = consume_json(&again.namesrv_addr, "t", &["--count", "1", "--idle-timeout", "5"]);
    assert_eq!(got[0]["body"], "hello");
}
