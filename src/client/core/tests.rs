use super::test_support::broker;
use super::*;

#[test]
fn writable_queues_need_a_live_master_readable_ones_a_live_broker() {
    let route = TopicRoute {
        topic: "t".into(),
        brokers: vec![
            // Master killed: its queues stay readable, at the master's
            // address.
            broker("b", 1, &[(1, "sb"), (2, "sb2")], &[(0, "mb")]),
            broker("a", 2, &[(0, "ma"), (1, "sa")], &[]),
            // Only a slave registered (no master known at all).
            broker("c", 1, &[(2, "sc")], &[]),
            // Nothing live.
            broker("d", 1, &[], &[(0, "md")]),
        ],
    };
    let show = |qs: Vec<MessageQueue>| -> Vec<String> { qs.iter().map(|q| format!("{q}@{}", q.broker_addr)).collect() };
    assert_eq!(show(route_queues(&route)), ["t/a/0@ma", "t/a/1@ma"]);
    assert_eq!(
        show(route_readable_queues(&route)),
        ["t/a/0@ma", "t/a/1@ma", "t/b/0@mb", "t/c/0@sc"]
    );
}

#[test]
fn a_queue_is_the_same_queue_whatever_address_it_carries() {
    let q = |addr: &str| MessageQueue {
        topic: "t".into(),
        broker_name: "b".into(),
        broker_addr: addr.into(),
        queue_id: 3,
    };
    assert_eq!(q("master"), q("slave"));
    let set: std::collections::HashSet<MessageQueue> = [q("master"), q("slave")].into_iter().collect();
    assert_eq!(set.len(), 1);
    assert_eq!(q("x").cmp(&q("a")), std::cmp::Ordering::Equal);
}

#[test]
fn reads_go_to_the_master_else_the_lowest_live_slave() {
    let b = broker("b", 1, &[(0, "m"), (2, "s2"), (1, "s1")], &[]);
    let none = |_: &str| false;
    assert_eq!(pick_read_addr(Some(&b), "fb", false, &none), "m", "master up");
    let m_down = |a: &str| a == "m";
    assert_eq!(pick_read_addr(Some(&b), "fb", false, &m_down), "s1", "master down");
    let m_s1_down = |a: &str| a == "m" || a == "s1";
    assert_eq!(
        pick_read_addr(Some(&b), "fb", false, &m_s1_down),
        "s2",
        "that slave down too"
    );
    let all_down = |_: &str| true;
    assert_eq!(
        pick_read_addr(Some(&b), "fb", false, &all_down),
        "m",
        "nothing up: the master"
    );
    assert_eq!(
        pick_read_addr(Some(&b), "fb", true, &none),
        "s1",
        "a consumer far behind"
    );
    assert_eq!(pick_read_addr(Some(&b), "fb", true, &|a: &str| a.starts_with('s')), "m");
    // The name servers moved the master to `down`.
    let killed = broker("b", 1, &[(1, "s1")], &[(0, "m")]);
    assert_eq!(pick_read_addr(Some(&killed), "m", false, &none), "s1");
    let nothing = broker("b", 1, &[], &[(0, "m")]);
    assert_eq!(pick_read_addr(Some(&nothing), "m", false, &none), "m");
    assert_eq!(
        pick_read_addr(None, "fb", false, &none),
        "fb",
        "no route: the queue's address"
    );
}

#[tokio::test]
async fn without_name_servers_reads_use_the_last_route() {
    use super::test_support::free_addr;
    let core = ClientCore::new(ClientConfig::new([free_addr()]));
    let route = TopicRoute {
        topic: "t".into(),
        brokers: vec![broker("b", 1, &[(0, "m"), (1, "s")], &[])],
    };
    core.last_routes.lock().unwrap().insert("t".into(), Arc::new(route));
    let mq = MessageQueue {
        topic: "t".into(),
        broker_name: "b".into(),
        broker_addr: "m".into(),
        queue_id: 0,
    };
    assert_eq!(core.read_addr(&mq).await, "m");
    core.mark_down("m");
    assert_eq!(core.read_addr(&mq).await, "s");
}

#[tokio::test]
async fn reads_turn_to_the_slave_while_the_master_is_down_and_back_once_it_answers() {
    use super::test_support::{free_addr, namesrv, start};
    let ok: super::test_support::Handler =
        Arc::new(|f: &crate::wire::Frame| crate::wire::Frame::ok(f.correlation_id, Bytes::new(), Bytes::new()));
    let slave = start(ok.clone()).await;
    let master = free_addr();
    let route = Arc::new(Mutex::new(TopicRoute {
        topic: "t".into(),
        brokers: vec![broker("b", 1, &[(0, &master), (1, &slave)], &[])],
    }));
    let ns = namesrv(route.clone()).await;
    let core = ClientCore::new(ClientConfig::new([ns]));
    let mq = core.queues("t").await.unwrap().remove(0);
    assert_eq!(mq.broker_addr, master);
    assert_eq!(
        core.read_target(&mq, false).await,
        ReadTarget {
            addr: master.clone(),
            slave: false
        }
    );
    // The master is killed: the first read fails and marks it down.
    let ping = |a: String| {
        let core = core.clone();
        async move {
            core.request(&a, Command::Ping, Bytes::new(), Bytes::new(), Duration::from_secs(1))
                .await
        }
    };
    assert!(ping(master.clone()).await.is_err());
    assert_eq!(
        core.read_target(&mq, false).await,
        ReadTarget {
            addr: slave.clone(),
            slave: true
        }
    );
    assert_eq!(core.down_reason(&master).as_deref(), Some("connection refused"));
    // The name servers notice too: the master moves to `down`.
    route.lock().unwrap().brokers[0] = broker("b", 1, &[(1, &slave)], &[(0, &master)]);
    core.invalidate("t");
    assert_eq!(core.read_addr(&mq).await, slave);
    assert_eq!(
        core.queues("t").await.unwrap(),
        std::slice::from_ref(&mq),
        "the queue stays"
    );
    assert!(core
        .writable_queues("t")
        .await
        .unwrap_err()
        .to_string()
        .contains(&format!(
            "no queue on a live master: b (master {master} down, slave {slave} read-only)"
        )));
    // The master comes back on its address and registers again.
    let listener = tokio::net::TcpListener::bind(&master).await.unwrap();
    tokio::spawn(super::test_support::serve(listener, ok));
    route.lock().unwrap().brokers[0] = broker("b", 1, &[(0, &master), (1, &slave)], &[]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while core.read_addr(&mq).await != master && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(core.read_addr(&mq).await, master, "back to the master");
    assert_eq!(core.master_addr("t", "b").await.as_deref(), Some(master.as_str()));
    // With the slave marked down too, and the master down, the master
    // is still named (the read fails fast).
    core.mark_down(&slave);
    core.mark_down(&master);
    assert_eq!(core.read_addr(&mq).await, master);
}

#[test]
fn down_set_backs_off_and_lets_one_attempt_through() {
    let t0 = Instant::now();
    let mut d = DownSet::default();
    assert!(d.claim_attempt("a", t0), "a server not marked down is tried");
    assert!(d.mark("a", t0), "first failure marks it down");
    assert!(!d.mark("a", t0), "second failure is not a new transition");
    assert!(d.contains("a") && !d.contains("b"));
    // Within the backoff nobody may connect.
    assert!(!d.claim_attempt("a", t0 + Duration::from_millis(100)));
    // After it, one attempt goes through and pushes the next one out.
    let later = t0 + DOWN_RETRY_MAX;
    assert!(d.claim_attempt("a", later));
    assert!(!d.claim_attempt("a", later));
    assert!(d.start_probe("a"));
    assert!(!d.start_probe("a"), "one probe per server");
    assert!(!d.start_probe("b"), "no probe for a server that is up");
    assert!(d.clear("a"));
    assert!(!d.clear("a"));
    assert!(d.next_probe("a").is_none());
    assert!(d.claim_attempt("a", later));
}

#[test]
fn down_backoff_doubles_up_to_the_cap() {
    assert_eq!(down_backoff(1), DOWN_RETRY_MIN);
    assert_eq!(down_backoff(2), DOWN_RETRY_MIN * 2);
    assert_eq!(down_backoff(3), DOWN_RETRY_MAX);
    assert_eq!(down_backoff(u32::MAX), DOWN_RETRY_MAX);
}

/// Answers every request frame on `listener` with an empty success.
async fn ping_server(listener: tokio::net::TcpListener) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    while let Ok((mut sock, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut buf = bytes::BytesMut::new();
            loop {
                while let Ok(Some(f)) = crate::wire::Frame::parse(&mut buf, 1 << 20) {
                    let mut out = bytes::BytesMut::new();
                    crate::wire::Frame::ok(f.correlation_id, Bytes::new(), Bytes::new()).encode(&mut out);
                    if sock.write_all(&out).await.is_err() {
                        return;
                    }
                }
                match sock.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        });
    }
}

#[tokio::test]
async fn an_unreachable_server_is_marked_down_fails_fast_and_is_probed_back() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let core = ClientCore::new(ClientConfig::new([addr.clone()]));
    let route = TopicRoute {
        topic: "t".into(),
        brokers: vec![crate::wire::control::BrokerRoute {
            broker_name: "b".into(),
            cluster: "c".into(),
            queues: 1,
            addrs: [(0, addr.clone())].into_iter().collect(),
            down: Default::default(),
        }],
    };
    core.routes
        .lock()
        .unwrap()
        .insert("t".into(), (Instant::now(), Arc::new(route)));
    let ping = || core.request(&addr, Command::Ping, Bytes::new(), Bytes::new(), Duration::from_secs(1));
    assert!(matches!(ping().await, Err(ClientError::Io { .. })));
    assert!(core.is_down(&addr));
    assert!(
        core.routes.lock().unwrap().get("t").is_none(),
        "routes naming it are dropped"
    );
    assert_eq!(core.down_servers().len(), 1);
    let started = Instant::now();
    let err = ping().await.unwrap_err().to_string();
    assert!(err.contains("marked down"), "{err}");
    assert!(started.elapsed() < Duration::from_millis(100));

    // The server comes back on the same address: the probe finds it.
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    tokio::spawn(ping_server(listener));
    let deadline = Instant::now() + Duration::from_secs(5);
    while core.is_down(&addr) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!core.is_down(&addr), "probed back within the backoff");
    ping().await.unwrap();

    core.mark_down(&addr);
    assert!(core.is_down(&addr));
    core.ping(&addr).await.unwrap();
    assert!(!core.is_down(&addr), "a successful ping clears the mark");
}
