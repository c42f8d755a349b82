//! Access control on a real cluster: two standalone name servers, two
//! broker groups and a slave, every process with ACL on. Brokers register
//! and the slave replicates with the root account; clients sign with their
//! own; a master killed with `kill -9` leaves its messages readable from
//! its slave, still only for those allowed to read them.
//!
//! The test process's `FERROMQ_ACCESS_KEY`/`FERROMQ_SECRET_KEY` are the
//! root account (the cluster harness's own CLI calls use them), so this
//! file holds only this test.

mod common;

use std::time::Duration;

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

fn as_account(args: &[&str], key: &str, secret: &str) -> Vec<String> {
    let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    v.extend(["--access-key".into(), key.into(), "--secret-key".into(), secret.into()]);
    v
}

fn run(ns: &str, args: &[String], stdin: &[u8]) -> std::process::Output {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    cli_with_input(ns, &refs, stdin)
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
    let out = run(
        &ns,
        &as_account(&["produce", "--topic", "orders"], "app", "app-secret-00001"),
        lines.as_bytes(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(parse_acks(&stdout).len(), 200);
    let on_a = stdout.lines().filter(|l| l.ends_with(" broker-a")).count();
    assert!(on_a > 0 && on_a < 200, "{on_a} of 200 on broker-a");

    // Unrelated accounts and wrong secrets are refused.
    for (key, secret) in [("reader", "reader-secret-01"), ("app", "wrong-secret-001")] {
        let out = run(
            &ns,
            &as_account(&["produce", "--topic", "orders"], key, secret),
            b"intruder\n",
        );
        assert!(!out.status.success(), "{key} sent");
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(err.contains("access denied"), "{key}: {err}");
    }

    // The slave has everything of broker-a: kill the master, then read all
    // 200 from the survivors (broker-a's queues from its slave).
    std::thread::sleep(Duration::from_secs(2));
    cluster.kill9_broker("broker-a");
    let out = run(
        &ns,
        &as_account(
            &[
                "consume", "--topic", "orders", "--count", "200", "--from", "earliest", "--format", "json",
            ],
            "app",
            "app-secret-00001",
        ),
        b"",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let read = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(read, 200);
    // Still refused for a reader without SUB on orders.
    let out = run(
        &ns,
        &as_account(
            &["consume", "--topic", "orders", "--count", "1", "--from", "earliest"],
            "reader",
            "reader-secret-01",
        ),
        b"",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SUB on topic orders"));
}
