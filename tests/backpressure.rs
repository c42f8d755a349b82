//! A consumer that stops reading its responses pins a bounded amount of
//! broker memory, and other clients are not affected.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;

fn pull_frame(corr: u32, queue: u32) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&5u16.to_be_bytes());
    body.extend_from_slice(b"stall");
    body.extend_from_slice(&queue.to_be_bytes());
    body.extend_from_slice(&0u64.to_be_bytes()); // offset
    body.extend_from_slice(&1024u32.to_be_bytes()); // max count
    body.extend_from_slice(&0u32.to_be_bytes()); // no wait
    body.extend_from_slice(&0u16.to_be_bytes()); // all tags
    let mut f = Vec::new();
    f.extend_from_slice(&((12 + body.len()) as u32).to_be_bytes());
    f.extend_from_slice(&[1, 0]);
    f.extend_from_slice(&11u16.to_be_bytes());
    f.extend_from_slice(&corr.to_be_bytes());
    f.extend_from_slice(&0u32.to_be_bytes());
    f.extend_from_slice(&body);
    f
}

#[test]
fn stalled_consumers_pin_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let broker = ServerProcess::broker(dir.path(), &[], &small_store_env());
    let ns = broker.namesrv_addr.clone();
    cli_ok(&ns, &["topic", "create", "stall", "--queues", "1"]);
    // ~1 MiB per full pull.
    cli_ok(
        &ns,
        &[
            "produce", "--topic", "stall", "--count", "3000", "--size", "1000", "--batch", "500",
        ],
    );
    let pid = broker.pid();
    let before = anon_rss_kb(pid);

    // 10 connections, 100 pipelined pulls each, never read.
    let stalled: Vec<TcpStream> = (0..10)
        .map(|_| {
            let mut s = TcpStream::connect(&broker.broker_addr).unwrap();
            let frames: Vec<u8> = (0..100).flat_map(|i| pull_frame(i + 1, 0)).collect();
            s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = s.write_all(&frames); // may block once the broker stops reading: fine
            s
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let grown_mb = anon_rss_kb(pid).saturating_sub(before) / 1024;
    eprintln!("anonymous RSS grew by {grown_mb} MiB with 10 stalled consumers");
    // Unbounded, this is 10 × 100 × ~1 MiB ≈ 1 GiB; the cap is 10 × 8 pulls.
    assert!(grown_mb < 300, "grew by {grown_mb} MiB");

    // Everyone else is served as usual.
    produce(&ns, "other", &[], &["still fine".to_string()]);
    let got = consume_json(&ns, "other", &["--count", "1", "--idle-timeout", "5"]);
    assert_eq!(got[0]["body"], "still fine");
    drop(stalled);
}
