//! Consumer groups with real broker and consumer processes.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn describe(ns: &str, group: &str) -> Value {
    serde_json::from_str(cli_ok(ns, &["group", "describe", group, "--format", "json"]).trim()).unwrap()
}

/// Like [`describe`], but `Null` while no broker knows the group yet
/// (before its first member joined): that is an error now.
fn try_describe(ns: &str, group: &str) -> Value {
    let out = cli(ns, &["group", "describe", group, "--format", "json"]);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("GROUP_NOT_EXIST"), "describe {group} failed: {err}");
        return Value::Null;
    }
    serde_json::from_slice(&out.stdout).unwrap()
}

/// member id → its queue ids (single-topic groups), when stable with `n` members.
fn stable_assignment(ns: &str, group: &str, n: usize) -> Option<BTreeMap<String, Vec<u64>>> {
    let d = try_describe(ns, group);
    if d["state"] != "Stable" || d["members"].as_array()?.len() != n {
        return None;
    }
    let map: BTreeMap<String, Vec<u64>> = d["members"]
        .as_array()?
        .iter()
        .map(|m| {
            let qs = m["assignment"]
                .as_array()
                .unwrap()
                .iter()
                .map(|q| q["queue"].as_u64().unwrap())
                .collect();
            (m["member_id"].as_str().unwrap().to_string(), qs)
        })
        .collect();
    // Every queue owned exactly once.
    let mut all: Vec<u64> = map.values().flatten().copied().collect();
    all.sort();
    (all == (0..8).collect::<Vec<_>>()).then_some(map)
}

fn wait_stable(ns: &str, group: &str, n: usize, within: Duration) -> BTreeMap<String, Vec<u64>> {
    let mut found = None;
    assert!(
        wait_until(within, || {
            found = stable_assignment(ns, group, n);
            found.is_some()
        }),
        "group {group} never became stable with {n} members: {}",
        try_describe(ns, group)
    );
    found.unwrap()
}

fn broker_with_topic(dir: &Path) -> ServerProcess {
    let broker = ServerProcess::broker(&dir.join("data"), &[], &small_store_env());
    cli_ok(&broker.namesrv_addr, &["topic", "create", "gt", "--queues", "8"]);
    broker
}

#[test]
fn three_members_split_eight_queues_per_strategy() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker_with_topic(dir.path());
    let ns = broker.namesrv_addr.as_str();
    for strategy in ["range", "round-robin", "sticky"] {
        let group = format!("g-{strategy}");
        let members: Vec<Consumer> = (1..=3)
            .map(|i| {
                let args = [
                    "--topic",
                    "gt",
                    "--group",
                    &group,
                    "--strategy",
                    strategy,
                    "--session-timeout-ms",
                    "3000",
                ];
                Consumer::start(ns, dir.path(), &format!("{strategy}-c{i}"), &args)
            })
            .collect();
        let a = wait_stable(ns, &group, 3, Duration::from_secs(20));
        let sizes: Vec<usize> = a.values().map(Vec::len).collect();
        let mut sorted = sizes.clone();
        sorted.sort();
        assert_eq!(sorted, [2, 3, 3], "{strategy}: {a:?}");
        let lists: Vec<Vec<u64>> = a.values().cloned().collect();
        match strategy {
            "range" => assert_eq!(lists, [vec![0, 1, 2], vec![3, 4, 5], vec![6, 7]]),
            "round-robin" => assert_eq!(lists, [vec![0, 3, 6], vec![1, 4, 7], vec![2, 5]]),
            _ => {} // sticky: balanced, history decides which
        }
        drop(members);
    }
}

#[test]
fn killed_member_is_replaced_within_the_session_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker_with_topic(dir.path());
    let ns = broker.namesrv_addr.clone();
    let args = [
        "--topic",
        "gt",
        "--group",
        "g",
        "--from",
        "earliest",
        "--session-timeout-ms",
        "2000",
    ];
    let mut members: Vec<Consumer> = (1..=3)
        .map(|i| Consumer::start(&ns, dir.path(), &format!("c{i}"), &args))
        .collect();
    wait_stable(&ns, "g", 3, Duration::from_secs(20));

    let first: Vec<String> = (0..300).map(|i| format!("before-{i}")).collect();
    let mut acked = produce(&ns, "gt", &[], &first);
    std::thread::sleep(Duration::from_millis(500));
    members[1].kill9();
    let killed_at = Instant::now();
    let second: Vec<String> = (0..300).map(|i| format!("after-{i}")).collect();
    acked.extend(produce(&ns, "gt", &[], &second));
    wait_stable(&ns, "g", 2, Duration::from_secs(10));
    let took = killed_at.elapsed();
    eprintln!("rebalance after kill -9: {took:?}");
    assert!(
        took < Duration::from_millis(3000),
        "session timeout (2 s) + 1 s, took {took:?}"
    );

    // Let the survivors catch up, then stop them gracefully (commit + leave).
    assert!(wait_until(Duration::from_secs(20), || {
        members[0].messages().len() + members[1].messages().len() + members[2].messages().len() >= acked.len()
    }));
    std::thread::sleep(Duration::from_millis(500));
    members[0].terminate();
    members[2].terminate();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for m in &members {
        for v in m.messages() {
            *counts.entry(v["msg_id"].as_str().unwrap().to_string()).or_default() += 1;
        }
    }
    for a in &acked {
        assert!(counts.contains_key(&a.msg_id), "message {a:?} never consumed");
    }
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    let killed_printed = members[1].messages().len();
    eprintln!(
        "consumed {} distinct, {duplicates} duplicates (killed member had printed {killed_printed})",
        counts.len()
    );
    assert!(
        duplicates <= killed_printed,
        "only the dead member's uncommitted messages may come twice"
    );
}

#[test]
fn graceful_leave_moves_queues_at_once_and_sticky_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker_with_topic(dir.path());
    let ns = broker.namesrv_addr.clone();
    // A 30 s session: only the leave request can explain a fast move.
    let args = [
        "--topic",
        "gt",
        "--group",
        "gs",
        "--strategy",
        "sticky",
        "--session-timeout-ms",
        "30000",
    ];
    let mut members: Vec<Consumer> = (1..=3)
        .map(|i| Consumer::start(&ns, dir.path(), &format!("s{i}"), &args))
        .collect();
    let before = wait_stable(&ns, "gs", 3, Duration::from_secs(20));
    let leaving = before.keys().find(|m| m.starts_with("s2")).unwrap().clone();
    let started = Instant::now();
    members[1].terminate();
    let after = wait_stable(&ns, "gs", 2, Duration::from_secs(10));
    let took = started.elapsed();
    eprintln!("rebalance after graceful leave: {took:?}");
    assert!(
        took < Duration::from_secs(3),
        "well under the 30 s session timeout: {took:?}"
    );
    for (member, queues) in &after {
        let had: BTreeSet<u64> = before[member].iter().copied().collect();
        let has: BTreeSet<u64> = queues.iter().copied().collect();
        assert!(
            had.is_subset(&has),
            "sticky: {member} kept {had:?}, now {has:?} (leaver {leaving})"
        );
    }
}

#[test]
fn broadcasting_gives_every_member_every_message() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker_with_topic(dir.path());
    let ns = broker.namesrv_addr.clone();
    let args = [
        "--topic",
        "gt",
        "--group",
        "gb",
        "--mode",
        "broadcasting",
        "--session-timeout-ms",
        "3000",
        // Each member resolves its start after joining; from the (empty)
        // beginning, none can miss a message produced meanwhile.
        "--from",
        "earliest",
    ];
    let members: Vec<Consumer> = (1..=3)
        .map(|i| Consumer::start(&ns, dir.path(), &format!("b{i}"), &args))
        .collect();
    assert!(wait_until(Duration::from_secs(20), || {
        let d = try_describe(&ns, "gb");
        d["state"] == "Stable"
            && d["members"]
                .as_array()
                .is_some_and(|m| m.len() == 3 && m.iter().all(|x| x["assignment"].as_array().unwrap().len() == 8))
    }));
    let lines: Vec<String> = (0..60).map(|i| format!("b-{i}")).collect();
    produce(&ns, "gt", &[], &lines);
    for m in &members {
        assert!(
            wait_until(Duration::from_secs(15), || m.messages().len() >= 60),
            "{} got {}",
            m.out.display(),
            m.messages().len()
        );
        let mut got: Vec<String> = m
            .messages()
            .iter()
            .map(|v| v["body"].as_str().unwrap().to_string())
            .collect();
        got.sort();
        let mut want = lines.clone();
        want.sort();
        assert_eq!(got, want);
    }
}

#[test]
fn group_resumes_from_committed_offsets_after_kill_9_and_reset_works() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut broker = ServerProcess::broker(&data, &[], &small_store_env());
    let ns = broker.namesrv_addr.clone();
    cli_ok(&ns, &["topic", "create", "gt", "--queues", "8"]);
    let lines: Vec<String> = (0..100).map(|i| format!("r-{i:03}")).collect();
    produce(&ns, "gt", &[], &lines);
    let args = [
        "consume",
        "--topic",
        "gt",
        "--group",
        "gr",
        "--from",
        "earliest",
        "--format",
        "json",
        "--session-timeout-ms",
        "3000",
    ];
    let first: Vec<String> = {
        let mut a = args.to_vec();
        a.extend(["--count", "40", "--idle-timeout", "10"]);
        cli_ok(&ns, &a)
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["body"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(first.len(), 40);
    broker.kill9();

    let broker = ServerProcess::broker(&data, &[], &small_store_env());
    let ns = broker.namesrv_addr.clone();
    let more: Vec<String> = (100..120).map(|i| format!("r-{i:03}")).collect();
    produce(&ns, "gt", &[], &more);
    let mut a = args.to_vec();
    a.extend(["--idle-timeout", "3"]);
    let out = cli(&ns, &a);
    let rest: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["body"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut all: Vec<String> = first.iter().chain(&rest).cloned().collect();
    all.sort();
    let mut want: Vec<String> = lines.iter().chain(&more).cloned().collect();
    want.sort();
    let missing: Vec<&String> = want.iter().filter(|w| !all.contains(w)).collect();
    let mut dup = all.clone();
    dup.dedup();
    assert_eq!(
        all,
        want,
        "nothing skipped, nothing repeated across the restart; first {} rest {} missing {missing:?} dups {}",
        first.len(),
        rest.len(),
        all.len() - dup.len()
    );

    // With the group stopped, reset it to the start of the topic.
    let reset = cli(
        &ns,
        &["group", "reset-offsets", "gr", "--topic", "gt", "--to", "earliest"],
    );
    if !reset.status.success() {
        for l in broker.stderr().lines().filter(|l| l.contains("group")) {
            eprintln!("BROKER {l}");
        }
        panic!("reset failed: {}", String::from_utf8_lossy(&reset.stderr));
    }
    let out = String::from_utf8_lossy(&reset.stdout).to_string();
    assert_eq!(out.lines().count(), 8);
    let again = cli_ok(&ns, &a).lines().count();
    assert_eq!(again, 120);
    let d = describe(&ns, "gr");
    let lag: u64 = d["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["lag"].as_u64().unwrap())
        .sum();
    assert_eq!(lag, 0);
}
