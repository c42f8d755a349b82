//! Offsets are guarded on a two-broker-group cluster: a live group's
//! commits must come from its member, in its generation, for its queues,
//! to the broker group owning them; a deleted topic takes its offsets with
//! it.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use ferromq::client::RemotingConnection;
use ferromq::wire::control::to_json;
use ferromq::wire::group::{CommitOffsets, QueueOffset};
use ferromq::wire::{Command, Status};

fn broker_env(name: &str) -> Vec<(&'static str, String)> {
    let mut env: Vec<(&'static str, String)> = small_store_env().into_iter().map(|(k, v)| (k, v.to_string())).collect();
    env.push(("FERROMQ__BROKER__NAME", name.to_string()));
    env
}

fn start_broker(dir: &std::path::Path, ns: &str, name: &str) -> ServerProcess {
    let env = broker_env(name);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ServerProcess::broker(dir, &["--no-embedded-namesrv", "--namesrv", ns, "--http", "0"], &env)
}

/// Sends one raw commit and returns its status.
fn raw_commit(addr: &str, c: &CommitOffsets) -> Status {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let conn = RemotingConnection::connect(addr, Duration::from_secs(3), None)
            .await
            .expect("connect");
        match conn
            .request(Command::CommitOffsets, to_json(c), Bytes::new(), Duration::from_secs(5))
            .await
        {
            Ok(_) => Status::Success,
            Err(e) => e
                .status()
                .unwrap_or_else(|| panic!("commit failed without a status: {e}")),
        }
    })
}

fn commit(group: &str, member: Option<(&str, u64)>, broker: &str, offset: u64) -> CommitOffsets {
    CommitOffsets {
        group: group.into(),
        member_id: member.map(|(m, _)| m.to_string()),
        generation: member.map(|(_, g)| g),
        offsets: vec![QueueOffset {
            topic: "t2".into(),
            broker_name: broker.into(),
            queue: 0,
            offset,
        }],
    }
}

fn group_json(ns: &str, group: &str) -> serde_json::Value {
    serde_json::from_str(cli_ok(ns, &["group", "describe", group, "--format", "json"]).trim()).unwrap()
}

#[test]
fn live_groups_refuse_foreign_commits_and_deleted_topics_lose_their_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let mut namesrv = ServerProcess::namesrv();
    let ns = namesrv.namesrv_addr.clone();
    let a_dir = dir.path().join("a");
    let b_dir = dir.path().join("b");
    let mut a = start_broker(&a_dir, &ns, "broker-a");
    let mut b = start_broker(&b_dir, &ns, "broker-b");
    cli_ok(&ns, &["topic", "create", "t2", "--queues", "2"]);
    let lines: Vec<String> = (0..50).map(|i| format!("old-{i}")).collect();
    assert_eq!(produce(&ns, "t2", &[], &lines).len(), 50);

    let mut member = Consumer::start(
        &ns,
        dir.path(),
        "m1",
        &["--topic", "t2", "--group", "g2", "--from", "earliest"],
    );
    assert!(
        wait_until(Duration::from_secs(20), || member.messages().len() >= 50),
        "the member consumed {} of 50",
        member.messages().len()
    );
    let d = group_json(&ns, "g2");
    let member_id = d["members"][0]["member_id"].as_str().unwrap().to_string();
    let generation = d["generation"].as_u64().unwrap();
    let owned_queue0: Vec<String> = d["members"][0]["assignment"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|q| q["queue"] == 0)
        .map(|q| q["broker_name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        owned_queue0.len(),
        2,
        "the only member owns queue 0 of both broker groups: {d}"
    );

    // Both broker groups refuse an anonymous rewind (one of them asks the
    // coordinator on the other).
    for (addr, name) in [(&a.broker_addr, "broker-a"), (&b.broker_addr, "broker-b")] {
        assert_eq!(
            raw_commit(addr, &commit("g2", None, name, 0)),
            Status::GroupNotEmpty,
            "{name}"
        );
        assert_eq!(
            raw_commit(addr, &commit("g2", Some(("intruder-1", generation)), name, 0)),
            Status::UnknownMember,
            "{name}"
        );
        assert_eq!(
            raw_commit(addr, &commit("g2", Some((&member_id, generation + 7)), name, 0)),
            Status::IllegalGeneration,
            "{name}"
        );
    }
    // A queue of broker-b committed to broker-a.
    assert_eq!(
        raw_commit(
            &a.broker_addr,
            &commit("g2", Some((&member_id, generation)), "broker-b", 0)
        ),
        Status::NotQueueOwner
    );
    // The member itself may.
    let d = group_json(&ns, "g2");
    let committed_a0 = d["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["broker_name"] == "broker-a" && o["queue"] == 0)
        .and_then(|o| o["offset"].as_u64())
        .expect("broker-a queue 0 committed");
    assert_eq!(
        raw_commit(
            &a.broker_addr,
            &commit("g2", Some((&member_id, generation)), "broker-a", committed_a0)
        ),
        Status::Success
    );
    member.terminate();

    // A stopped group takes an admin commit; offsets above the queue's max
    // are refused.
    assert_eq!(
        raw_commit(&a.broker_addr, &commit("g2", None, "broker-a", 1)),
        Status::Success
    );
    assert_eq!(
        raw_commit(&a.broker_addr, &commit("g2", None, "broker-a", 1_000_000)),
        Status::InvalidArgument
    );

    // Delete and re-create: the old offsets are gone.
    cli_ok(&ns, &["topic", "delete", "t2"]);
    cli_ok(&ns, &["topic", "create", "t2", "--queues", "2"]);
    let fresh: Vec<String> = (0..60).map(|i| format!("new-{i}")).collect();
    assert_eq!(produce(&ns, "t2", &[], &fresh).len(), 60);
    let got = consume_json(&ns, "t2", &["--group", "g2", "--idle-timeout", "3"]);
    // Each message names the queue it came from: (topic, broker, queue).
    let brokers: std::collections::BTreeSet<&str> = got.iter().filter_map(|m| m["broker"].as_str()).collect();
    assert_eq!(brokers.into_iter().collect::<Vec<_>>(), ["broker-a", "broker-b"]);
    let mut bodies: Vec<String> = got.iter().map(|m| m["body"].as_str().unwrap().to_string()).collect();
    bodies.sort();
    let mut want = fresh.clone();
    want.sort();
    assert_eq!(bodies, want, "every message of the re-created topic is delivered");
    a.stop();
    b.stop();
    namesrv.stop();
}
