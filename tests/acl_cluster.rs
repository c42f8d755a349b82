//! Access control on a real cluster: two standalone name servers, two
//! broker groups and a slave, every process with ACL on. Brokers register
//! and the slave replicates with the root account; clients sign with their
//! own; internal topics and the live master's registration are refused on
//! every group and name server; a master killed with `kill -9` leaves its
//! messages readable from its slave, still only for those allowed to read
//! them.
//!
//! The test process's `FERROMQ_ACCESS_KEY`/`FERROMQ_SECRET_KEY` are the
//! root account (the cluster harness's own CLI calls use them), so this
//! file holds only this test.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferromq::client::{ConnectOptions, Credentials, RemotingConnection};
use ferromq::wire::{Command, Status};

use common::cluster::Cluster;
use common::*;

const ACL_FILE: &str = r#"
[[accounts]]
access_key = "root"
secret_key = "root-secret-0001"
admin = true

[[accounts]]
access_key = "app"
secret_key = "app-secret-00001"
topic_perms = ["orders=PUB|SUB"]
group_perms = ["billing*=SUB"]

[[accounts]]
access_key = "reader"
secret_key = "reader-secret-01"
topic_perms = ["other=SUB"]
"#;

/// `ferromq ARGS` as account `key` with `secret`, `stdin` piped in.
fn as_account(ns: &str, key: &str, secret: &str, args: &[&str], stdin: &[u8]) -> std::process::Output {
    let extra = ["--access-key", key, "--secret-key", secret].map(String::from);
    cli_with_extra(ns, args, &extra, stdin)
}

/// Registers a fake master of broker-a with name server `addr` as root;
/// returns the refusal's message (panics if it was taken).
fn impostor_refusal(addr: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let options = ConnectOptions {
            credentials: Some(Credentials::new("root", "root-secret-0001")),
            tls: None,
        };
        let t = Duration::from_secs(5);
        let conn = RemotingConnection::connect_with(addr, t, None, Arc::new(options))
            .await
            .unwrap();
        let header = serde_json::json!({"cluster": "DefaultCluster", "broker_name": "broker-a", "broker_id": 0,
                                        "addr": "127.0.0.1:1", "topics": {"orders": {"queues": 4}}});
        let answer = conn
            .request_raw(
                Command::RegisterBroker,
                Bytes::from(header.to_string()),
                Bytes::new(),
                t,
            )
            .await
            .unwrap();
        assert_eq!(answer.status(), Status::AccessDenied, "{}", answer.error_message());
        answer.error_message()
    })
}

#[test]
fn a_cluster_with_acl_registers_replicates_and_serves_only_the_allowed_even_after_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl.toml");
    std::fs::write(&acl, ACL_FILE).unwrap();
    // SAFETY: this test binary runs this one test; nothing else reads the
    // environment concurrently.
    std::env::set_var("FERROMQ_ACCESS_KEY", "root");
    std::env::set_var("FERROMQ_SECRET_KEY", "root-secret-0001");
    let acl_path = acl.display().to_string();
    let env = [
        ("FERROMQ__ACL__ENABLED", "true"),
        ("FERROMQ__ACL__FILE", acl_path.as_str()),
        ("FERROMQ__ACL__ACCESS_KEY", "root"),
        ("FERROMQ__ACL__SECRET_KEY", "root-secret-0001"),
        ("FERROMQ__GROUP__INITIAL_REBALANCE_DELAY_MS", "200"),
    ];
    let mut cluster = Cluster::start(2, &["broker-a", "broker-b"], &env);
    cluster.add_slave("broker-a");
    cluster.create_topic("orders", 4);
    let ns = cluster.ns();

    // The application account sends through the name servers to both groups.
    let lines: String = (0..200).map(|i| format!("m{i}\n")).collect();
    let out = as_account(
        &ns,
        "app",
        "app-secret-00001",
        &["produce", "--topic", "orders"],
        lines.as_bytes(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(parse_acks(&stdout).len(), 200);
    let on_a = stdout.lines().filter(|l| l.ends_with(" broker-a")).count();
    assert!(on_a > 0 && on_a < 200, "{on_a} of 200 on broker-a");

    // Unrelated accounts and wrong secrets are refused.
    for (key, secret) in [("reader", "reader-secret-01"), ("app", "wrong-secret-001")] {
        let out = as_account(&ns, key, secret, &["produce", "--topic", "orders"], b"intruder\n");
        assert!(!out.status.success(), "{key} sent");
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(err.contains("access denied"), "{key}: {err}");
    }

    // Internal topics stay the broker's on every group, even for root.
    let out = as_account(
        &ns,
        "root",
        "root-secret-0001",
        &["produce", "--topic", "__consumer_offsets"],
        b"forged\n",
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("internal"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No name server lets a registration, even signed by root, take the
    // live master's place.
    for addr in ns.split(',') {
        let why = impostor_refusal(addr);
        assert!(why.contains("alive"), "name server {addr}: {why}");
    }

    // The slave has everything of broker-a: kill the master, then read all
    // 200 from the survivors (broker-a's queues from its slave).
    std::thread::sleep(Duration::from_secs(2));
    cluster.kill9_broker("broker-a");
    let out = as_account(
        &ns,
        "app",
        "app-secret-00001",
        &[
            "consume", "--topic", "orders", "--count", "200", "--from", "earliest", "--format", "json",
        ],
        b"",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let read = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(read, 200);
    // Still refused for a reader without SUB on orders.
    let out = as_account(
        &ns,
        "reader",
        "reader-secret-01",
        &["consume", "--topic", "orders", "--count", "1", "--from", "earliest"],
        b"",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SUB on topic orders"));
}
