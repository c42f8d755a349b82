//! The HTTP endpoint of a real broker: metrics that follow what was sent and
//! consumed, the live actor tree, health and readiness, and supervision that
//! really restarts failed actors without losing acknowledged messages.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use ferromq::client::{Admin, ClientConfig, GroupConsumer, GroupConsumerConfig, Producer, StartPosition};
use ferromq::message::Message;
use serde_json::Value;

fn debug_env() -> Vec<(&'static str, &'static str)> {
    let mut env = small_store_env();
    env.push(("FERROMQ__HTTP__DEBUG", "true"));
    env.push(("FERROMQ__DELIVERY__COMMIT_INTERVAL_MS", "50"));
    env
}

fn actors(http: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(&http_get(http, "/actors")).unwrap();
    v["actors"].as_array().unwrap().clone()
}

fn actor<'a>(list: &'a [Value], kind: &str, id: &str) -> Option<&'a Value> {
    list.iter().find(|a| a["kind"] == kind && a["id"] == id)
}

#[test]
fn metrics_follow_what_is_sent_and_consumed() {
    let dir = tempfile::tempdir().unwrap();
    let broker = ServerProcess::broker(dir.path(), &[], &debug_env());
    let (ns, web) = (broker.namesrv_addr.as_str(), broker.http_addr.as_str());
    assert_eq!(http_get(web, "/health").trim(), r#"{"status":"ok"}"#);
    assert!(wait_until(Duration::from_secs(10), || http(web, "GET", "/ready", None)
        .0
        == 200));

    cli_ok(ns, &["topic", "create", "m", "--queues", "4"]);
    let before = http_get(web, "/metrics");
    assert_eq!(
        metric_sum(&before, "ferromq_queue_messages_in_total", &[("topic", "m")]),
        0.0
    );
    cli_ok(
        ns,
        &[
            "produce", "--topic", "m", "--count", "400", "--size", "100", "--batch", "50",
        ],
    );
    let lines: Vec<String> = (0..100).map(|i| format!("line-{i}")).collect();
    produce(ns, "m", &[], &lines);
    let sent = http_get(web, "/metrics");
    assert_eq!(
        metric_sum(&sent, "ferromq_queue_messages_in_total", &[("topic", "m")]),
        500.0
    );
    assert_eq!(metric_sum(&sent, "ferromq_queue_max_offset", &[("topic", "m")]), 500.0);
    let bytes = metric_sum(&sent, "ferromq_queue_bytes_in_total", &[("topic", "m")]);
    assert!(bytes > 500.0 * 100.0, "records are bigger than their bodies: {bytes}");
    assert!(metric_sum(&sent, "ferromq_store_commitlog_bytes", &[]) >= bytes);
    assert!(metric_sum(&sent, "ferromq_store_segments", &[]) >= 1.0);
    assert!(metric_sum(&sent, "ferromq_store_disk_usage_bytes", &[]) > 0.0);
    let rss = metric_sum(&sent, "ferromq_process_rss_bytes", &[]);
    let anon = metric_sum(&sent, "ferromq_process_rss_anon_bytes", &[]);
    let file = metric_sum(&sent, "ferromq_process_rss_file_bytes", &[]);
    assert!(
        rss > 1e6 && anon > 1e6 && file > 0.0,
        "rss {rss} anon {anon} file {file}"
    );
    // Mapped store pages are counted apart from the broker's own memory.
    assert!(anon + file <= rss * 1.05 + 1e6, "rss {rss} anon {anon} file {file}");
    assert!(metric_sum(&sent, "ferromq_store_flush_seconds_count", &[]) > 0.0);
    assert!(
        metric_sum(
            &sent,
            "ferromq_actor_messages_handled_total",
            &[("kind", "commitlog_writer")]
        ) >= 10.0
    );
    assert!(
        metric_sum(
            &sent,
            "ferromq_actor_handler_seconds_count",
            &[("kind", "commitlog_writer")]
        ) >= 10.0
    );

    // A group consumes everything with acknowledgements: out follows in,
    // the committed offsets reach the end and the lag falls to 0.
    let got = consume_json(
        ns,
        "m",
        &[
            "--group",
            "readers",
            "--ack-timeout",
            "10s",
            "--count",
            "500",
            "--idle-timeout",
            "5",
        ],
    );
    assert_eq!(got.len(), 500);
    assert!(wait_until(Duration::from_secs(10), || {
        let m = http_get(web, "/metrics");
        metric_sum(
            &m,
            "ferromq_group_committed_offset",
            &[("group", "readers"), ("topic", "m")],
        ) == 500.0
            && metric_sum(&m, "ferromq_group_lag", &[("group", "readers"), ("topic", "m")]) == 0.0
    }));
    let done = http_get(web, "/metrics");
    assert_eq!(
        metric_sum(&done, "ferromq_queue_messages_out_total", &[("topic", "m")]),
        500.0
    );
    assert_eq!(
        metric_sum(&done, "ferromq_group_in_flight", &[("group", "readers")]),
        0.0
    );
    // The broker's own registration link is open; every CLI client has left.
    assert!(metric_sum(&done, "ferromq_connections", &[("role", "namesrv")]) >= 1.0);
    assert!(
        done.contains("ferromq_connections{role=\"broker\"} 0"),
        "closed connections are counted down"
    );

    let tree = actors(web);
    for (kind, id) in [
        ("commitlog_writer", "0"),
        ("dispatcher", "0"),
        ("heartbeat_scanner", "0"),
        ("delay_scheduler", "0"),
        ("name_server", "0"),
        ("name_server_client", "0"),
        ("group_coordinator", "readers"),
        ("queue", "m/0"),
        ("queue", "m/3"),
    ] {
        let a = actor(&tree, kind, id).unwrap_or_else(|| panic!("{kind}/{id} missing from {tree:?}"));
        assert_eq!(a["state"], "running", "{a}");
        assert_eq!(a["parent"], "broker");
        assert!(!a["thread"].as_str().unwrap().is_empty());
        assert_eq!(a["restarts"], 0);
    }
    assert!(
        actor(&tree, "commitlog_writer", "0").unwrap()["handled"]
            .as_u64()
            .unwrap()
            >= 10
    );

    // The CLI's views of the same API.
    let cluster = cli_ok(ns, &["cluster", "--http", web]);
    assert!(
        cluster.contains(&format!("DefaultCluster broker-a 0 master {}", broker.broker_addr)),
        "{cluster}"
    );
    assert!(cluster.contains(&format!("namesrv {ns}")), "{cluster}");
    let stats = cli_ok(
        ns,
        &[
            "stats",
            "--http",
            web,
            "--interval",
            "0.3",
            "--count",
            "2",
            "--format",
            "json",
        ],
    );
    let lines: Vec<Value> = stats.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{stats}");
    assert_eq!(lines[1]["lag"]["readers"], 0, "{stats}");
    assert!(lines[1]["rss_anon_bytes"].as_u64().unwrap_or(0) > 0, "{stats}");
    assert!(lines[1]["rss_file_bytes"].as_u64().is_some(), "{stats}");
    let bad = cli(ns, &["cluster", "--http", "127.0.0.1:1"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("127.0.0.1:1"));

    // Debug commands are refused unless switched on.
    let plain = ServerProcess::broker(&dir.path().join("plain"), &[], &small_store_env());
    let (status, body) = http(
        &plain.http_addr,
        "POST",
        "/api/debug/fail",
        Some(r#"{"kind":"dispatcher","id":"0"}"#),
    );
    assert_eq!(status, 403, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_actors_restart_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = ServerProcess::broker(dir.path(), &[], &debug_env());
    let ns = broker.namesrv_addr.clone();
    let http_addr = broker.http_addr.clone();
    let cfg = ClientConfig::new([ns.clone()]);
    Admin::new(cfg.clone()).create_topic("s", 2).await.unwrap();

    let mut gc = GroupConsumerConfig::new("survivors", vec!["s".to_string()]);
    gc.start = StartPosition::Earliest;
    gc.ack_timeout = Some(Duration::from_secs(3));
    gc.session_timeout = Duration::from_secs(3);
    gc.heartbeat_interval = Duration::from_millis(300);
    let mut consumer = GroupConsumer::start(cfg.clone(), gc);

    // Produce in the background while actors fail.
    let producer = Producer::new(cfg.clone());
    let mut feeding = Some(tokio::spawn(async move {
        let mut acked = BTreeSet::new();
        for i in 0..600 {
            let body = format!("m-{i}");
            if producer.send(Message::new("s", body.clone())).await.is_ok() {
                acked.insert(body);
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        acked
    }));
    let mut got = BTreeSet::new();
    let mut failed = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut acked: Option<BTreeSet<String>> = None;
    loop {
        if feeding.as_ref().is_some_and(|f| f.is_finished()) {
            acked = Some(feeding.take().unwrap().await.unwrap());
        }
        if let Some(a) = &acked {
            if a.is_subset(&got) {
                break;
            }
        }
        assert!(Instant::now() < deadline, "stalled at {} messages", got.len());
        if !failed && got.len() >= 100 {
            failed = true;
            let h = http_addr.clone();
            tokio::task::spawn_blocking(move || {
                // A handler that panics (the actor's task dies; the registry
                // re-creates it) and one that fails with an error (the
                // supervisor restarts it).
                for (kind, id, panic) in [("queue", "s/0", true), ("group_coordinator", "survivors", false)] {
                    let body = format!(r#"{{"kind":"{kind}","id":"{id}","reason":"test","panic":{panic}}}"#);
                    let (status, resp) = http(&h, "POST", "/api/debug/fail", Some(&body));
                    assert_eq!(status, 200, "{resp}");
                }
            })
            .await
            .unwrap();
        }
        if let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(500), consumer.next_delivery()).await {
            got.insert(String::from_utf8_lossy(&d.record.body).to_string());
            d.ack();
        }
    }
    let acked = acked.unwrap();
    assert!(acked.len() >= 590, "the producer kept going: {}", acked.len());
    let h = http_addr.clone();
    let tree = tokio::task::spawn_blocking(move || actors(&h)).await.unwrap();
    for (kind, id, error) in [
        ("queue", "s/0", "panicked in a handler"),
        ("group_coordinator", "survivors", "test"),
    ] {
        let a = actor(&tree, kind, id).unwrap();
        assert_eq!(a["restarts"], 1, "{a}");
        assert_eq!(a["state"], "running", "{a}");
        assert_eq!(a["last_error"], error, "{a}");
    }
    assert_eq!(actor(&tree, "queue", "s/1").unwrap()["restarts"], 0);
    let h = http_addr.clone();
    let m = tokio::task::spawn_blocking(move || http_get(&h, "/metrics"))
        .await
        .unwrap();
    assert_eq!(
        metric_sum(&m, "ferromq_actor_restarts_total", &[("kind", "queue"), ("id", "s/0")]),
        1.0
    );
    consumer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_counted_by_role_and_silent_ones_expire() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = small_store_env();
    env.push(("FERROMQ__BROKER__CLIENT_EXPIRY_MS", "400"));
    let broker = ServerProcess::broker(dir.path(), &[], &env);
    let web = broker.http_addr.clone();
    let scrape = move || {
        let web = web.clone();
        async move {
            tokio::task::spawn_blocking(move || http_get(&web, "/metrics"))
                .await
                .unwrap()
        }
    };
    let t = Duration::from_secs(5);
    let admin = ferromq::client::RemotingConnection::connect(&broker.broker_addr, t, None)
        .await
        .unwrap();
    admin
        .request(
            ferromq::wire::Command::Ping,
            bytes::Bytes::new(),
            bytes::Bytes::new(),
            t,
        )
        .await
        .unwrap();
    let producer = Producer::new(ClientConfig::new([broker.namesrv_addr.clone()]));
    producer.send(Message::new("roles", "x")).await.unwrap();
    let m = scrape().await;
    assert_eq!(
        metric_sum(&m, "ferromq_clients", &[("role", "admin")]),
        1.0,
        "the pinging connection"
    );
    assert_eq!(metric_sum(&m, "ferromq_clients", &[("role", "producer")]), 1.0);
    // Both fall silent (connections still open) and expire.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let m = scrape().await;
    assert_eq!(metric_sum(&m, "ferromq_clients", &[("role", "admin")]), 0.0, "{m}");
    assert_eq!(metric_sum(&m, "ferromq_clients", &[("role", "producer")]), 0.0);
    assert_eq!(
        metric_sum(&m, "ferromq_clients_expired_total", &[("role", "admin")]),
        1.0
    );
    assert_eq!(
        metric_sum(&m, "ferromq_clients_expired_total", &[("role", "producer")]),
        1.0
    );
    drop(admin);
}

#[test]
fn metrics_and_the_console_api_show_the_disk_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = small_store_env();
    // The harness's watermarks (97/98/99 %) leave the disk `normal`; no cleaner
    // tick before the scrape: the gauges come from the scrape.
    env.push(("FERROMQ__STORE__CLEAN_INTERVAL_MS", "3600000"));
    let broker = ServerProcess::broker(dir.path(), &[], &env);
    let (ns, web) = (broker.namesrv_addr.as_str(), broker.http_addr.as_str());

    let m = http_get(web, "/metrics");
    let total = metric_sum(&m, "ferromq_store_disk_total_bytes", &[]);
    let free = metric_sum(&m, "ferromq_store_disk_free_bytes", &[]);
    let used = metric_sum(&m, "ferromq_store_disk_used_bytes", &[]);
    assert!(total > 0.0 && free <= total && used > 0.0, "{m}");
    let ratio = metric_sum(&m, "ferromq_store_disk_used_ratio", &[]);
    assert!(ratio > 0.0 && ratio < 0.97, "{m}");
    assert_eq!(metric_sum(&m, "ferromq_store_disk_level", &[]), 0.0);
    assert!(m.lines().any(|l| l == "ferromq_store_disk_refusing_sends 0"), "{m}");
    for counter in [
        "ferromq_store_segments_deleted_total",
        "ferromq_store_bytes_reclaimed_total",
    ] {
        assert!(m.lines().any(|l| l == format!("{counter} 0")), "{counter} at 0: {m}");
    }

    // The console's overview and topic description carry the store figures.
    let o: Value = serde_json::from_str(&http_get(web, "/api/overview")).unwrap();
    let s = &o["store"];
    assert!(s["disk_total_bytes"].as_u64().unwrap() > 0, "{o}");
    assert_eq!(s["level"], "normal");
    assert_eq!(s["refusing_sends"], false);
    cli_ok(ns, &["topic", "create", "vis", "--queues", "2"]);
    produce(ns, "vis", &[], &["one".to_string(), "two".to_string()]);
    let t: Value = serde_json::from_str(&http_get(web, "/api/topics/vis")).unwrap();
    assert_eq!(t["messages"], 2);
    let brokers = t["brokers"].as_array().unwrap();
    assert_eq!(brokers.len(), 1, "{t}");
    assert!(brokers[0]["store"]["commitlog_end_offset"].as_u64().unwrap() > 0, "{t}");
    assert_eq!(brokers[0]["store"]["refusing_sends"], false);
}

#[test]
fn a_broker_refusing_sends_says_so_in_describe_metrics_and_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let topic = "full";
    {
        // Create the topic while there is room (topic creation is refused
        // on a full disk too).
        let mut broker = ServerProcess::broker(dir.path(), &[], &small_store_env());
        cli_ok(&broker.namesrv_addr, &["topic", "create", topic, "--queues", "1"]);
        assert!(broker.stop());
    }
    // Restarted with watermarks the disk is certainly above.
    let mut env = small_store_env();
    set_watermarks(&mut env, "0.000001");
    let broker = ServerProcess::broker(dir.path(), &[], &env);
    let (ns, web) = (broker.namesrv_addr.as_str(), broker.http_addr.as_str());
    let m = http_get(web, "/metrics");
    if metric_sum(&m, "ferromq_store_disk_used_bytes", &[]) == 0.0 {
        eprintln!("SKIPPED: the data directory's file system reports nothing used");
        return;
    }
    assert!(m.lines().any(|l| l == "ferromq_store_disk_refusing_sends 1"), "{m}");
    assert_eq!(metric_sum(&m, "ferromq_store_disk_level", &[]), 3.0);

    let out = cli_with_input(ns, &["produce", "--topic", topic], b"x\n");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DISK_FULL"), "{err}");

    let text = cli_ok(ns, &["topic", "describe", topic]);
    let store = text
        .lines()
        .find(|l| l.starts_with("store "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        store.contains(" watermark=refuse sends=refused: disk full: "),
        "{store}"
    );
    let described: Value =
        serde_json::from_str(cli_ok(ns, &["topic", "describe", topic, "--format", "json"]).trim()).unwrap();
    let s = &described["brokers"][0]["store"];
    assert_eq!(s["refusing_sends"], true, "{described}");
    assert_eq!(s["level"], "refuse");
    assert!(s["refusal"].as_str().unwrap().starts_with("disk full: "), "{s}");
    let o: Value = serde_json::from_str(&http_get(web, "/api/overview")).unwrap();
    assert_eq!(o["store"]["refusing_sends"], true, "{o}");
}
