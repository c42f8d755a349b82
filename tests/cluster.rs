//! Multi-broker clusters of real processes (standalone name servers, two
//! broker groups): group offsets per broker queue, a group remembering its
//! start, dead brokers and name servers, one broker's HTTP API acting on
//! both groups, and a seeded chaos run.
//!
//! Figures are printed as `figure: key=value` lines on stderr; collect them
//! with `cargo test --test cluster -- --nocapture`. The tests of this file
//! run one at a time (a file-level lock): their time bounds are about the
//! broker, not about two clusters sharing two cores.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Output;
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::cluster::*;
use common::producer::*;
use common::*;
use serde_json::Value;

static SERIAL: Mutex<()> = Mutex::new(());

/// One cluster test at a time (a failed test must not block the others).
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const A: &str = "broker-a";
const B: &str = "broker-b";

fn body(v: &Value) -> String {
    v["body"].as_str().unwrap_or_default().to_string()
}

/// A finished CLI run: exit status, parsed JSON lines, stderr, duration.
struct Run {
    ok: bool,
    msgs: Vec<Value>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Run {
    fn bodies(&self) -> Vec<String> {
        self.msgs.iter().map(body).collect()
    }
}

fn run(ns: &str, args: &[&str]) -> Run {
    let started = Instant::now();
    let out: Output = cli(ns, args);
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    Run {
        ok: out.status.success(),
        msgs: stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect(),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        took,
    }
}

/// `consume --topic T --from earliest --idle-timeout SECS --format json`
/// (no group).
fn plain_run(ns: &str, topic: &str, idle_secs: &str) -> Run {
    run(
        ns,
        &[
            "consume",
            "--topic",
            topic,
            "--from",
            "earliest",
            "--idle-timeout",
            idle_secs,
            "--format",
            "json",
        ],
    )
}

/// `consume --topic T --group G --idle-timeout 3 --format json ARGS`.
fn group_run(ns: &str, topic: &str, group: &str, extra: &[&str]) -> Run {
    let mut args = vec![
        "consume",
        "--topic",
        topic,
        "--group",
        group,
        "--idle-timeout",
        "3",
        "--format",
        "json",
        "--session-timeout-ms",
        "6000",
        "--heartbeat-ms",
        "500",
    ];
    args.extend_from_slice(extra);
    run(ns, &args)
}

/// Sends `lines` in one `ferromq produce` run; returns (body, broker group
/// that acknowledged it).
fn produce_on(c: &Cluster, topic: &str, args: &[&str], lines: &[String]) -> Vec<(String, String)> {
    let acks = produce(&c.ns(), topic, args, lines);
    lines
        .iter()
        .zip(&acks)
        .map(|(l, a)| {
            let broker = c
                .broker_of_msg_id(&a.msg_id)
                .unwrap_or_else(|| panic!("ack {a:?} names no broker of the cluster"))
                .to_string();
            (l.clone(), broker)
        })
        .collect()
}

/// Per-queue problems of `group describe --format json` for `topic`: rows
/// missing (want `rows`), a committed offset above the queue's max, and
/// with `exact` any committed offset other than the max.
fn offset_problems(d: &Value, topic: &str, rows: usize, exact: bool) -> Vec<String> {
    let queues: Vec<&Value> = d["queues"]
        .as_array()
        .map(|a| a.iter().filter(|q| q["topic"] == topic).collect())
        .unwrap_or_default();
    let mut problems = Vec::new();
    if queues.len() != rows {
        problems.push(format!("{} queue rows for {topic}, want {rows}", queues.len()));
    }
    for q in queues {
        let name = format!("{}/{}/{}", q["topic"], q["broker"], q["queue"]);
        let max = q["max_offset"].as_u64();
        let committed = q["committed_offset"].as_u64();
        match (committed, max) {
            (Some(c), Some(m)) if c > m => problems.push(format!("{name}: committed {c} > max {m}")),
            (Some(c), Some(m)) if exact && c != m => problems.push(format!("{name}: committed {c} != max {m}")),
            (None, Some(m)) if exact => problems.push(format!("{name}: nothing committed, max {m}")),
            (_, None) => problems.push(format!("{name}: no max_offset")),
            _ => {}
        }
    }
    problems
}

/// Polls `group describe` until [`offset_problems`] finds none; the last
/// problems (or describe error) otherwise.
fn wait_offsets(
    c: &Cluster,
    group: &str,
    topic: &str,
    rows: usize,
    exact: bool,
    within: Duration,
) -> Result<Value, String> {
    let mut last;
    let deadline = Instant::now() + within;
    loop {
        match c.describe_group(group) {
            Ok(d) => {
                let p = offset_problems(&d, topic, rows, exact);
                if p.is_empty() {
                    return Ok(d);
                }
                last = format!("{p:?} in {}", d["queues"]);
            }
            Err(e) => last = format!("group describe failed: {e}"),
        }
        if Instant::now() >= deadline {
            return Err(last);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Waits until `group` is Stable with `members` members owning `queues`
/// queues in all.
fn wait_group_stable(c: &Cluster, group: &str, members: usize, queues: usize, within: Duration) {
    let mut last = String::new();
    let ok = wait_until(within, || {
        let Ok(d) = c.describe_group(group) else { return false };
        last = d.to_string();
        let ms = d["members"].as_array().cloned().unwrap_or_default();
        let owned: usize = ms.iter().map(|m| m["assignment"].as_array().map_or(0, Vec::len)).sum();
        d["state"] == "Stable" && ms.len() == members && owned == queues
    });
    assert!(
        ok,
        "group {group} not Stable with {members} members owning {queues} queues within {within:?}: {last}"
    );
}

/// Follows several consumers' outputs: body → times seen, plus when each
/// body was first seen.
#[derive(Default)]
struct Seen {
    tails: Vec<JsonTail>,
    count: HashMap<String, usize>,
    first_at: HashMap<String, Instant>,
}

impl Seen {
    fn follow(&mut self, c: &Consumer) {
        self.tails.push(JsonTail::new(&c.out));
    }

    /// Reads what was appended; returns the bodies new in this poll.
    fn poll(&mut self) -> Vec<String> {
        let now = Instant::now();
        let mut fresh = Vec::new();
        for t in &mut self.tails {
            for v in t.poll() {
                let b = body(&v);
                let n = self.count.entry(b.clone()).or_default();
                *n += 1;
                if *n == 1 {
                    self.first_at.insert(b.clone(), now);
                    fresh.push(b);
                }
            }
        }
        fresh
    }

    fn has(&self, b: &str) -> bool {
        self.count.contains_key(b)
    }

    fn duplicates(&self) -> usize {
        self.count.values().map(|n| n - 1).sum()
    }

    fn missing<'a>(&self, want: impl IntoIterator<Item = &'a String>) -> Vec<String> {
        want.into_iter().filter(|b| !self.has(b)).cloned().collect()
    }
}

/// Polls `seen` until every body of `want` was consumed; gives up after
/// `cap`, or once nothing new was consumed for `stall` (a stuck group
/// should fail in seconds, not minutes).
fn wait_consumed(seen: &mut Seen, want: &[String], stall: Duration, cap: Duration) -> bool {
    let started = Instant::now();
    let mut progress = Instant::now();
    loop {
        if !seen.poll().is_empty() {
            progress = Instant::now();
        }
        if seen.missing(want).is_empty() {
            return true;
        }
        if started.elapsed() >= cap || progress.elapsed() >= stall {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn consumer_args<'a>(topic: &'a str, group: &'a str, session_ms: &'a str) -> Vec<&'a str> {
    vec![
        "--topic",
        topic,
        "--group",
        group,
        "--from",
        "earliest",
        "--session-timeout-ms",
        session_ms,
    ]
}

/// The last `n` lines of `s` (for error messages).
fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn contains_unreachable(r: &Run) -> bool {
    r.stdout.to_lowercase().contains("unreachable") || r.stderr.to_lowercase().contains("unreachable")
}

// ---------------------------------------------------------------------------

/// The harness itself: start, produce on both groups, kill -9 and restart a
/// broker (same address, data kept) and a name server.
#[test]
fn cluster_harness_starts_and_restarts() {
    let _s = serial();
    let mut c = Cluster::start(2, &[A, B], &[]);
    let ns = c.ns();
    assert_eq!(ns.split(',').count(), 2, "{ns}");
    for n in ns.split(',') {
        let routed = namesrv_brokers(n).unwrap_or_else(|| panic!("name server {n} answers"));
        for b in [A, B] {
            assert!(
                routed.contains(&(b.to_string(), c.broker_addr(b).to_string())),
                "{n} routes {b}: {routed:?}"
            );
        }
    }
    c.create_topic("h", 2);
    let first: Vec<String> = (0..10).map(|i| format!("h-{i}")).collect();
    let acked = produce_on(&c, "h", &[], &first);
    let by: BTreeSet<&str> = acked.iter().map(|(_, b)| b.as_str()).collect();
    assert_eq!(by, BTreeSet::from([A, B]), "round-robin reaches both groups: {acked:?}");

    let addr_before = c.broker_addr(B).to_string();
    c.kill9_broker(B);
    assert!(!c.broker_running(B));
    let t = Instant::now();
    c.restart_broker(B);
    eprintln!("figure: harness_broker_restart_ms={}", t.elapsed().as_millis());
    assert!(c.broker_running(B));
    assert_eq!(c.broker_addr(B), addr_before);

    let second: Vec<String> = (10..20).map(|i| format!("h-{i}")).collect();
    produce_on(&c, "h", &[], &second);
    let all = plain_run(&ns, "h", "2");
    assert!(all.ok, "consume failed: {}", all.stderr);
    let got: BTreeSet<String> = all.bodies().into_iter().collect();
    let want: BTreeSet<String> = first.iter().chain(&second).cloned().collect();
    assert_eq!(got, want, "every message, the killed broker's included");

    c.kill9_namesrv(0);
    let t = Instant::now();
    c.restart_namesrv(0);
    eprintln!("figure: harness_namesrv_restart_ms={}", t.elapsed().as_millis());
}

/// Defect 1: a group's offsets are per (topic, broker group, queue). Two
/// groups each have queue 0 of `col`, with different lengths; a second run
/// of the group gets exactly what was produced since, from both.
#[test]
fn group_offsets_are_kept_per_broker_queue() {
    let _s = serial();
    let mut c = Cluster::start(1, &[A, B], &[]);
    let ns = c.ns();
    c.create_topic("col", 1);
    // Short-lived producers each start their round-robin afresh, so the two
    // queue 0s get different lengths.
    let mut sent = Vec::new();
    for (run_no, n) in [3usize, 1, 1].into_iter().enumerate() {
        let lines: Vec<String> = (0..n).map(|i| format!("col-{run_no}-{i}")).collect();
        sent.extend(produce_on(&c, "col", &[], &lines));
    }
    let mut per_broker: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, b) in &sent {
        *per_broker.entry(b.as_str()).or_default() += 1;
    }
    eprintln!("col queue lengths before the first run: {per_broker:?}");
    assert_ne!(
        per_broker.get(A),
        per_broker.get(B),
        "setup: the two queue 0s should differ in length"
    );

    let first = group_run(&ns, "col", "H", &["--from", "earliest"]);
    assert!(first.ok, "first group run failed: {}", first.stderr);
    let got: BTreeSet<String> = first.bodies().into_iter().collect();
    let want: BTreeSet<String> = sent.iter().map(|(b, _)| b.clone()).collect();
    assert_eq!(got, want, "first run consumes everything");
    let d = c.describe_group("H").expect("group describe H");
    let p = offset_problems(&d, "col", 2, false);
    assert!(p.is_empty(), "after the first run: {p:?} in {}", d["queues"]);

    let more = produce_on(&c, "col", &[], &["col-new-0".to_string(), "col-new-1".to_string()]);
    eprintln!("second producer run landed on {more:?}");
    let second = group_run(&ns, "col", "H", &[]);
    assert!(second.ok, "second group run failed: {}", second.stderr);
    let got = second.bodies();
    let missing: Vec<&String> = more.iter().map(|(b, _)| b).filter(|b| !got.contains(b)).collect();
    eprintln!(
        "figure: defect1_second_run_messages={} (2 new; the rest redelivered)",
        got.len()
    );
    assert!(
        missing.is_empty(),
        "second run of group H missed {missing:?} (landed on {more:?}); it got {got:?}; offsets {}",
        c.describe_group("H")
            .map(|d| d["queues"].to_string())
            .unwrap_or_default()
    );
    if let Err(p) = wait_offsets(&c, "H", "col", 2, true, Duration::from_secs(5)) {
        panic!("after the second run every queue's committed offset must equal its max: {p}");
    }
}

/// A library producer whose route and broker connections are set up in
/// advance, so that [`WarmProducer::send_now`] stores its messages within
/// milliseconds (right after a consumer run exits).
struct WarmProducer {
    go: std::sync::mpsc::Sender<()>,
    done: JoinHandle<Result<(), String>>,
}

impl WarmProducer {
    fn start(ns: &str, topic: &str, bodies: Vec<String>, delay_level: Option<u32>) -> WarmProducer {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let (go, go_rx) = std::sync::mpsc::channel::<()>();
        let (ns, topic) = (ns.to_string(), topic.to_string());
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let cfg = ferromq::client::ClientConfig::new(ns.split(',').map(str::to_string));
            let core = ferromq::client::core::ClientCore::new(cfg);
            let setup = rt.block_on(async {
                for q in core.writable_queues(&topic).await? {
                    core.connection(&q.broker_addr).await?;
                }
                Ok::<_, ferromq::client::ClientError>(())
            });
            let _ = ready_tx.send(setup.map_err(|e| e.to_string()));
            go_rx.recv().map_err(|_| "never told to send".to_string())?;
            let producer = ferromq::client::Producer::from_core(core);
            rt.block_on(async {
                for b in bodies {
                    let mut m = ferromq::message::Message::new(topic.clone(), b.clone());
                    if let Some(level) = delay_level {
                        m = m.with_delay_level(level);
                    }
                    producer.send(m).await.map_err(|e| format!("send {b}: {e}"))?;
                }
                Ok(())
            })
        });
        match ready_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("warm producer setup failed: {e}"),
            Err(_) => panic!("warm producer setup did not finish in 20 s"),
        }
        WarmProducer { go, done }
    }

    /// Sends every message now; returns how long that took.
    fn send_now(self) -> Duration {
        let started = Instant::now();
        self.go.send(()).expect("warm producer thread alive");
        match self.done.join() {
            Ok(Ok(())) => started.elapsed(),
            Ok(Err(e)) => panic!("warm producer: {e}"),
            Err(_) => panic!("warm producer thread panicked"),
        }
    }
}

/// Defect 2: a group that joined (from `latest`) and committed nothing yet
/// still starts where it first started, not at the new end. The messages
/// are sent within milliseconds of the first run's exit (a warmed-up
/// producer): in ack mode a receive the departed member left parked on the
/// broker must not swallow them until the ack timeout.
fn check_group_remembers_its_start(tag: &str, group_args: &[&str], delay_level: Option<u32>) {
    let _s = serial();
    let mut c = Cluster::start(1, &[A], &[]);
    let ns = c.ns();
    let topic = format!("start-{tag}");
    c.create_topic(&topic, 2);
    let lines: Vec<String> = (0..5).map(|i| format!("{tag}-{i}")).collect();
    let producer = WarmProducer::start(&ns, &topic, lines.clone(), delay_level);

    let empty = group_run(&ns, &topic, "g1", group_args);
    assert!(empty.ok, "first (empty) run failed: {}", empty.stderr);
    assert!(empty.msgs.is_empty(), "nothing to consume yet: {:?}", empty.bodies());
    let took = producer.send_now();
    eprintln!("figure: defect2_{tag}_produce_after_first_run_ms={}", took.as_millis());
    if delay_level.is_some() {
        // Delayed: wait until they are due and stored in the topic itself.
        let ok = wait_until(Duration::from_secs(30), || {
            let r = plain_run(&ns, &topic, "1");
            r.msgs.len() >= lines.len()
        });
        assert!(ok, "delayed messages never became due in {topic}");
    }
    let second = group_run(&ns, &topic, "g1", group_args);
    assert!(second.ok, "second run failed: {}", second.stderr);
    eprintln!(
        "figure: defect2_{tag}_second_run_ms={} messages={}",
        second.took.as_millis(),
        second.msgs.len()
    );
    let got: BTreeSet<String> = second.bodies().into_iter().collect();
    let missing: Vec<&String> = lines.iter().filter(|l| !got.contains(*l)).collect();
    assert!(
        missing.is_empty(),
        "group g1 joined before these were produced, yet its second run (exits after 3 s idle) missed \
         {missing:?} (got {got:?}); offsets {}",
        c.describe_group("g1")
            .map(|d| d["queues"].to_string())
            .unwrap_or_default()
    );
    // Idle timeout 3 s after the last message; an ack-timeout hold-back (30 s)
    // would show here.
    assert!(
        second.took < Duration::from_secs(20),
        "second run took {:?}: messages held back",
        second.took
    );
}

#[test]
fn group_remembers_its_start() {
    check_group_remembers_its_start("plain", &[], None);
}

#[test]
fn group_remembers_its_start_with_acks() {
    check_group_remembers_its_start("acks", &["--ack-timeout", "30s"], None);
}

#[test]
fn group_remembers_its_start_for_delayed_messages() {
    // Delay level 1 is 1 s (src/delivery/delay.rs DELAY_LEVELS_MS).
    check_group_remembers_its_start("delayed", &[], Some(1));
}

/// Defect 3: a kill -9'd broker group costs seconds, not the command: plain
/// and group consumers keep delivering the live group's messages, and the
/// admin commands answer, marking the dead broker unreachable.
#[test]
fn dead_broker_costs_seconds() {
    let _s = serial();
    let mut c = Cluster::start(1, &[A, B], &[]);
    let ns = c.ns();
    c.create_topic("dead", 2);
    // Coordinated by the broker that stays up: this is not about
    // coordinator failover.
    let group = c.group_coordinated_by("dead-g", A);
    let mut member = Consumer::start(&ns, c.dir(), "dead-c1", &consumer_args("dead", &group, "6000"));
    let mut seen = Seen::default();
    seen.follow(&member);
    // A plain (group-less) consumer following every queue.
    let mut follower = Consumer::start(&ns, c.dir(), "dead-plain", &["--topic", "dead", "--from", "earliest"]);
    let mut seen_plain = Seen::default();
    seen_plain.follow(&follower);
    wait_group_stable(&c, &group, 1, 4, Duration::from_secs(20));

    let before: Vec<String> = (0..20).map(|i| format!("dead-pre-{i}")).collect();
    let pre = produce_on(&c, "dead", &[], &before);
    assert!(
        wait_until(Duration::from_secs(20), || {
            seen.poll();
            seen.missing(&before).is_empty()
        }),
        "setup: group member did not consume the first messages: missing {:?}",
        seen.missing(&before)
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            seen_plain.poll();
            seen_plain.missing(&before).is_empty()
        }),
        "setup: the plain consumer did not print the first messages: missing {:?}",
        seen_plain.missing(&before)
    );

    c.kill9_broker(B);
    let killed = Instant::now();
    // A member of another group joins only now, with broker-b already dead.
    let group2 = c.group_coordinated_by("dead-late-g", A);
    let mut late = Consumer::start(&ns, c.dir(), "dead-late-c1", &consumer_args("dead", &group2, "6000"));
    let mut seen_late = Seen::default();
    seen_late.follow(&late);
    let producer = ProducerThread::start(&ns, "dead", "dead-post", Duration::from_millis(100));
    // First delivery of a broker-a message whose send started after the kill,
    // by the member that was there before and by the one that joined after.
    let first_live = |seen: &Seen, acked: &[Sent]| {
        acked
            .iter()
            .filter(|s| s.broker == A && s.started >= killed)
            .filter_map(|s| seen.first_at.get(&s.body))
            .min()
            .map(|t| t.duration_since(killed))
    };
    let (mut old_first, mut late_first, mut plain_first) = (None, None, None);
    let deadline = killed + Duration::from_secs(20);
    while (old_first.is_none() || late_first.is_none() || plain_first.is_none()) && Instant::now() < deadline {
        seen.poll();
        seen_late.poll();
        seen_plain.poll();
        let acked = producer.acked();
        old_first = first_live(&seen, &acked);
        late_first = first_live(&seen_late, &acked);
        plain_first = first_live(&seen_plain, &acked);
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = producer.finish();
    let mut problems = Vec::new();
    for (who, first, m) in [
        ("member joined before the kill", old_first, &mut member),
        ("member joined after the kill", late_first, &mut late),
        ("plain consumer", plain_first, &mut follower),
    ] {
        let key = match who {
            "plain consumer" => "plain",
            w if w.contains("before") => "group",
            _ => "new_member",
        };
        match first {
            Some(d) => {
                eprintln!("figure: dead_broker_kill_to_{key}_delivery_ms={}", d.as_millis());
                if d > Duration::from_secs(5) {
                    problems.push(format!(
                        "{who}: first live message delivered {d:?} after the kill (> 5 s)"
                    ));
                }
            }
            None => {
                eprintln!("figure: dead_broker_kill_to_{key}_delivery_ms=none_within_20000");
                problems.push(format!(
                    "{who}: no broker-a message produced after the kill delivered within 20 s \
                     ({} acked, {} failed sends; member running: {}; its stderr: {})",
                    log.acked.len(),
                    log.failed.len(),
                    consumer_running(m),
                    last_lines(&consumer_stderr(m), 2)
                ))
            }
        }
    }
    eprintln!(
        "figure: dead_broker_sends acked={} failed={}",
        log.acked.len(),
        log.failed.len()
    );

    // Plain consumption from earliest: broker-a's messages, exit 0.
    let want_a: Vec<String> = pre
        .iter()
        .filter(|(_, b)| b == A)
        .map(|(m, _)| m.clone())
        .chain(log.acked.iter().filter(|s| s.broker == A).map(|s| s.body.clone()))
        .collect();
    let plain = plain_run(&ns, "dead", "3");
    eprintln!("figure: dead_broker_plain_consume_ms={}", plain.took.as_millis());
    let got: BTreeSet<String> = plain.bodies().into_iter().collect();
    let missing: Vec<&String> = want_a.iter().filter(|m| !got.contains(*m)).collect();
    if !plain.ok {
        problems.push(format!(
            "consume --from earliest exited non-zero: {}",
            plain.stderr.trim()
        ));
    }
    if !missing.is_empty() {
        problems.push(format!(
            "consume --from earliest missed {} of broker-a's {} messages, e.g. {:?}",
            missing.len(),
            want_a.len(),
            missing.iter().take(5).collect::<Vec<_>>()
        ));
    }

    // Admin commands answer and say which broker is unreachable.
    let http_a = c.broker_http(A).to_string();
    let admin: [(&str, Vec<&str>); 3] = [
        ("topic describe", vec!["topic", "describe", "dead"]),
        ("group describe", vec!["group", "describe", &group]),
        ("cluster", vec!["cluster", "--http", &http_a]),
    ];
    for (what, args) in admin {
        let r = run(&ns, &args);
        eprintln!(
            "figure: dead_broker_{}_ms={}",
            what.replace(' ', "_"),
            r.took.as_millis()
        );
        if !r.ok {
            problems.push(format!(
                "{what} exited non-zero after {:?}: {}",
                r.took,
                r.stderr.trim()
            ));
        } else if !contains_unreachable(&r) {
            problems.push(format!(
                "{what} does not mark the dead broker unreachable:\n{}",
                r.stdout
            ));
        }
        if r.took > Duration::from_secs(10) {
            problems.push(format!("{what} took {:?}", r.took));
        }
    }
    // The live broker's queues are still described (JSON contract fields).
    let live_rows = |v: &Value| {
        v["queues"]
            .as_array()
            .map_or(0, |q| q.iter().filter(|r| r["broker"] == A).count())
    };
    let topic_json = run(&ns, &["topic", "describe", "dead", "--format", "json"]);
    match serde_json::from_str::<Value>(topic_json.stdout.trim()) {
        Ok(v) if topic_json.ok && live_rows(&v) == 2 => {}
        _ => problems.push(format!(
            "topic describe --format json lacks broker-a's 2 queues (exit ok: {}): {}{}",
            topic_json.ok,
            topic_json.stdout.trim(),
            topic_json.stderr.trim()
        )),
    }
    match c.describe_group(&group) {
        Ok(v) if live_rows(&v) == 2 => {
            let p = offset_problems(&v, "dead", live_rows(&v), false);
            let p: Vec<&String> = p.iter().filter(|x| x.contains(A)).collect();
            if !p.is_empty() {
                problems.push(format!("group describe --format json, broker-a rows: {p:?}"));
            }
        }
        Ok(v) => problems.push(format!(
            "group describe --format json lacks broker-a's 2 queues: {}",
            v["queues"]
        )),
        Err(e) => problems.push(format!("group describe --format json failed: {}", e.trim())),
    }
    member.terminate();
    late.terminate();
    assert!(problems.is_empty(), "with {B} killed:\n- {}", problems.join("\n- "));
}

/// Three members of one group on 8 queues (4 on each of two broker groups):
/// every message consumed, and once the members have left every queue's
/// committed offset is its max.
#[test]
fn three_members_consume_two_broker_groups_completely() {
    let _s = serial();
    let mut c = Cluster::start(1, &[A, B], &[]);
    let ns = c.ns();
    c.create_topic("wide", 4);
    let group = "wide-g";
    let mut members: Vec<Consumer> = (1..=3)
        .map(|i| {
            Consumer::start(
                &ns,
                c.dir(),
                &format!("wide-c{i}"),
                &consumer_args("wide", group, "6000"),
            )
        })
        .collect();
    let mut seen = Seen::default();
    for m in &members {
        seen.follow(m);
    }
    wait_group_stable(&c, group, 3, 8, Duration::from_secs(30));

    // Three producer runs of uneven sizes: each starts its round-robin at
    // the first queue, so queue N of broker-a and of broker-b end up with
    // different lengths.
    let started = Instant::now();
    let runs: Vec<JoinHandle<Vec<String>>> = [(0usize, 1003usize), (1, 1001), (2, 996)]
        .into_iter()
        .map(|(r, n)| {
            let ns = ns.clone();
            std::thread::spawn(move || {
                let lines: Vec<String> = (0..n).map(|i| format!("wide-{r}-{i}")).collect();
                produce(&ns, "wide", &[], &lines);
                lines
            })
        })
        .collect();
    let produced: Vec<String> = runs.into_iter().flat_map(|h| h.join().expect("producer run")).collect();
    eprintln!(
        "figure: wide_produce_ms={} messages={}",
        started.elapsed().as_millis(),
        produced.len()
    );
    let ok = wait_consumed(&mut seen, &produced, Duration::from_secs(20), Duration::from_secs(90));
    let missing = seen.missing(&produced);
    assert!(
        ok,
        "{} of {} messages never consumed, e.g. {:?}; members running: {:?}",
        missing.len(),
        produced.len(),
        &missing[..missing.len().min(5)],
        members.iter_mut().map(consumer_running).collect::<Vec<_>>()
    );
    eprintln!(
        "figure: wide_consume_all_ms={} duplicates={}",
        started.elapsed().as_millis(),
        seen.duplicates()
    );
    for m in &mut members {
        m.terminate();
    }
    match wait_offsets(&c, group, "wide", 8, true, Duration::from_secs(10)) {
        Ok(d) => eprintln!("final offsets: {}", d["queues"]),
        Err(p) => panic!("after the members left, every queue's committed offset must equal its max: {p}"),
    }
}

/// kill -9 of one broker group under continuous produce and group
/// consumption: the live group's new messages keep flowing within 5 s, and
/// after the restart every acknowledged message is consumed. The group is
/// coordinated by the broker that stays up.
#[test]
fn broker_kill9_under_load_loses_nothing() {
    kill9_under_load(A);
}

/// The same with the group's coordinator on the killed broker: the group
/// moves to the live one (rebalance time measured) and keeps delivering
/// within 5 s.
#[test]
fn coordinator_kill9_under_load_moves_the_group_and_loses_nothing() {
    kill9_under_load(B);
}

fn kill9_under_load(coordinator: &str) {
    let _s = serial();
    let mut c = Cluster::start(1, &[A, B], &[]);
    let ns = c.ns();
    c.create_topic("load", 4);
    let group = c.group_coordinated_by("load-g", coordinator);
    let members: Vec<Consumer> = (1..=2)
        .map(|i| {
            Consumer::start(
                &ns,
                c.dir(),
                &format!("load-c{i}"),
                &consumer_args("load", &group, "6000"),
            )
        })
        .collect();
    let mut seen = Seen::default();
    for m in &members {
        seen.follow(m);
    }
    wait_group_stable(&c, &group, 2, 8, Duration::from_secs(30));

    let producer = ProducerThread::start(&ns, "load", "load", Duration::from_millis(5));
    let warm = wait_until(Duration::from_secs(30), || {
        seen.poll();
        producer.acked().len() >= 300 && seen.count.len() >= 200
    });
    assert!(
        warm,
        "setup: {} acked, {} consumed before the kill",
        producer.acked().len(),
        seen.count.len()
    );

    c.kill9_broker(B);
    let killed = Instant::now();
    let mut first_live: Option<Duration> = None;
    let mut stable_again: Option<Duration> = None;
    while Instant::now() < killed + Duration::from_secs(20) {
        seen.poll();
        if stable_again.is_none() {
            // Stable with both members on broker-a's 4 queues only: the
            // rebalance after the kill (and the coordinator move) is over.
            let settled = c.describe_group(&group).is_ok_and(|d| {
                let members = d["members"].as_array().cloned().unwrap_or_default();
                d["state"] == "Stable"
                    && members.len() == 2
                    && members
                        .iter()
                        .flat_map(|m| m["assignment"].as_array().cloned().unwrap_or_default())
                        .all(|q| q["broker_name"] == A)
            });
            if settled {
                stable_again = Some(killed.elapsed());
            }
        }
        first_live = producer
            .acked()
            .iter()
            .filter(|s| s.broker == A && s.started >= killed)
            .filter_map(|s| seen.first_at.get(&s.body))
            .min()
            .map(|t| t.duration_since(killed));
        if first_live.is_some() && stable_again.is_some() && killed.elapsed() >= Duration::from_secs(3) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut problems = Vec::new();
    let moved = if coordinator == B { "moved" } else { "stayed" };
    match stable_again {
        Some(d) => eprintln!("figure: coordinator_{moved} kill_to_rebalanced_ms={}", d.as_millis()),
        None => problems.push(format!(
            "the group never settled on {A}'s queues within 20 s of the kill"
        )),
    }
    match first_live {
        Some(d) => {
            eprintln!("figure: coordinator_{moved} kill_to_live_delivery_ms={}", d.as_millis());
            if d > Duration::from_secs(5) {
                problems.push(format!("first live delivery {d:?} after the kill (> 5 s)"));
            }
        }
        None => {
            eprintln!("figure: kill_to_live_delivery_ms=none_within_20000");
            problems.push("no broker-a message produced after the kill was delivered within 20 s".into());
        }
    }
    let restarting = Instant::now();
    c.restart_broker(B);
    let restarted = Instant::now();
    eprintln!(
        "figure: broker_restart_ms={}",
        restarted.duration_since(restarting).as_millis()
    );
    let during: Vec<(Instant, String)> = producer
        .failed()
        .into_iter()
        .filter(|(t, _)| *t >= killed && *t <= restarted)
        .collect();
    eprintln!(
        "figure: failed_sends_during_kill={} (e.g. {:?})",
        during.len(),
        during.first().map(|f| &f.1)
    );
    // Informational: how soon the restarted group's new messages flow again.
    let mut back: Option<Duration> = None;
    while back.is_none() && restarted.elapsed() < Duration::from_secs(15) {
        seen.poll();
        back = producer
            .acked()
            .iter()
            .filter(|s| s.broker == B && s.started >= restarted)
            .filter_map(|s| seen.first_at.get(&s.body))
            .min()
            .map(|t| t.duration_since(restarted));
        std::thread::sleep(Duration::from_millis(20));
    }
    match back {
        Some(d) => eprintln!("figure: restart_to_restarted_broker_delivery_ms={}", d.as_millis()),
        None => eprintln!("figure: restart_to_restarted_broker_delivery_ms=none_within_15000"),
    }
    std::thread::sleep(Duration::from_secs(1));
    let log = producer.finish();
    let per_broker = |b: &str| log.acked.iter().filter(|s| s.broker == b).count();
    eprintln!(
        "figure: load_acked={} on_a={} on_b={} failed_total={}",
        log.acked.len(),
        per_broker(A),
        per_broker(B),
        log.failed.len()
    );

    let want: Vec<String> = log.acked.iter().map(|s| s.body.clone()).collect();
    let done = wait_consumed(&mut seen, &want, Duration::from_secs(20), Duration::from_secs(60));
    let missing = seen.missing(&want);
    let brokers_of_missing: BTreeMap<String, usize> =
        log.acked
            .iter()
            .filter(|s| !seen.has(&s.body))
            .fold(BTreeMap::new(), |mut m, s| {
                *m.entry(s.broker.clone()).or_default() += 1;
                m
            });
    eprintln!(
        "figure: load_redelivered={} load_missing={}",
        seen.duplicates(),
        missing.len()
    );
    if !done {
        problems.push(format!(
            "{} of {} acknowledged messages never consumed (per broker {brokers_of_missing:?}), e.g. {:?}",
            missing.len(),
            want.len(),
            &missing[..missing.len().min(5)]
        ));
    }
    drop(members);
    assert!(
        problems.is_empty(),
        "kill -9 of {B} under load:\n- {}",
        problems.join("\n- ")
    );
}

/// kill -9 of the first of two name servers: producing, consuming (group
/// and plain) and the admin commands keep working through the second.
#[test]
fn namesrv_kill9_keeps_clients_working() {
    let _s = serial();
    let mut c = Cluster::start(2, &[A, B], &[]);
    let ns = c.ns();
    c.create_topic("nsk", 2);
    let group = "nsk-g";
    let _member = Consumer::start(&ns, c.dir(), "nsk-c1", &consumer_args("nsk", group, "6000"));
    let mut seen = Seen::default();
    seen.follow(&_member);
    wait_group_stable(&c, group, 1, 4, Duration::from_secs(20));
    let first: Vec<String> = (0..50).map(|i| format!("nsk-a-{i}")).collect();
    produce(&ns, "nsk", &[], &first);
    assert!(wait_until(Duration::from_secs(20), || {
        seen.poll();
        seen.missing(&first).is_empty()
    }));

    c.kill9_namesrv(0);
    let killed = Instant::now();
    let second: Vec<String> = (0..50).map(|i| format!("nsk-b-{i}")).collect();
    let acked = produce_on(&c, "nsk", &[], &second);
    eprintln!("figure: namesrv_kill_produce_ms={}", killed.elapsed().as_millis());
    let brokers: BTreeSet<&str> = acked.iter().map(|(_, b)| b.as_str()).collect();
    assert_eq!(brokers, BTreeSet::from([A, B]), "both broker groups still take sends");
    assert!(
        wait_until(Duration::from_secs(20), || {
            seen.poll();
            seen.missing(&second).is_empty()
        }),
        "group member missed {:?} after the name server died",
        seen.missing(&second)
    );
    // A new member joins through the surviving name server.
    let _late = Consumer::start(&ns, c.dir(), "nsk-c2", &consumer_args("nsk", group, "6000"));
    wait_group_stable(&c, group, 2, 4, Duration::from_secs(20));

    let plain = plain_run(&ns, "nsk", "2");
    assert!(plain.ok, "consume failed: {}", plain.stderr);
    let got: BTreeSet<String> = plain.bodies().into_iter().collect();
    let want: BTreeSet<String> = first.iter().chain(&second).cloned().collect();
    assert_eq!(got, want, "plain consume sees every message");
    let http_a = c.broker_http(A).to_string();
    for args in [
        vec!["topic", "describe", "nsk"],
        vec!["group", "describe", group],
        vec!["cluster", "--http", &http_a],
    ] {
        let r = run(&ns, &args);
        assert!(r.ok, "{args:?} failed after {:?}: {}", r.took, r.stderr);
        eprintln!("figure: namesrv_kill_{}_ms={}", args[0], r.took.as_millis());
    }
    c.restart_namesrv(0);
}

fn now_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

/// A seeded random run: continuous produce, a two-member group, and kill -9
/// (then restart) of a random broker or member at random moments. Then:
/// every acknowledged message was consumed by the group at least once, no
/// committed offset is above its queue's max, and no send failed (one
/// broker group is always up). ~20 s by default;
/// `FERROMQ_CHAOS_SECS` for longer, `FERROMQ_CHAOS_SEED` to replay.
#[test]
fn seeded_chaos_loses_no_acknowledged_message() {
    let _s = serial();
    let seed = std::env::var("FERROMQ_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(now_seed);
    let secs: u64 = std::env::var("FERROMQ_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    eprintln!("figure: chaos_seed={seed} chaos_secs={secs} (replay with FERROMQ_CHAOS_SEED={seed})");
    let mut rng = XorShift::new(seed);

    let mut c = Cluster::start(1, &[A, B], &[]);
    let ns = c.ns();
    c.create_topic("chaos", 2);
    let group = "chaos-g";
    let args = consumer_args("chaos", group, "4000");
    let mut generation = [0u32; 2];
    let mut members: Vec<Consumer> = (0..2)
        .map(|i| Consumer::start(&ns, c.dir(), &format!("chaos-c{i}-0"), &args))
        .collect();
    let mut retired: Vec<Consumer> = Vec::new();
    let mut seen = Seen::default();
    for m in &members {
        seen.follow(m);
    }
    wait_group_stable(&c, group, 2, 4, Duration::from_secs(30));

    let producer = ProducerThread::start(&ns, "chaos", "chaos", Duration::from_millis(10));
    let started = Instant::now();
    let mut actions = Vec::new();
    let mut self_exits = Vec::new();
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(rng.millis(1000, 3000));
        seen.poll();
        for (i, m) in members.iter_mut().enumerate() {
            if !consumer_running(m) {
                self_exits.push(format!(
                    "member slot {i} exited on its own at {:?}: {}",
                    started.elapsed(),
                    consumer_stderr(m).lines().last().unwrap_or("")
                ));
            }
        }
        let at = started.elapsed().as_millis();
        if rng.below(3) < 2 {
            let b = if rng.below(2) == 0 { A } else { B };
            let down = rng.millis(500, 3000);
            c.kill9_broker(b);
            std::thread::sleep(down);
            seen.poll();
            c.restart_broker(b);
            actions.push(format!("{at}ms kill9 {b}, down {}ms", down.as_millis()));
        } else {
            let slot = rng.below(2) as usize;
            let pause = rng.millis(0, 1500);
            members[slot].kill9();
            std::thread::sleep(pause);
            generation[slot] += 1;
            let fresh = Consumer::start(&ns, c.dir(), &format!("chaos-c{slot}-{}", generation[slot]), &args);
            seen.follow(&fresh);
            retired.push(std::mem::replace(&mut members[slot], fresh));
            actions.push(format!(
                "{at}ms kill9 member {slot}, back after {}ms",
                pause.as_millis()
            ));
        }
    }
    // Members that exited on their own are replaced, so the checker can
    // still look for lost messages.
    for (slot, m) in members.iter_mut().enumerate() {
        if !consumer_running(m) {
            self_exits.push(format!(
                "member slot {slot} had exited by the end: {}",
                consumer_stderr(m).lines().last().unwrap_or("")
            ));
            generation[slot] += 1;
            let fresh = Consumer::start(&ns, c.dir(), &format!("chaos-c{slot}-{}", generation[slot]), &args);
            seen.follow(&fresh);
            retired.push(std::mem::replace(m, fresh));
        }
    }
    let log = producer.finish();
    eprintln!("chaos actions: {actions:#?}");
    eprintln!(
        "figure: chaos_actions={} acked={} failed_sends={}",
        actions.len(),
        log.acked.len(),
        log.failed.len()
    );
    if let (Some(first), Some(last)) = (log.failed.first(), log.failed.last()) {
        eprintln!(
            "failed sends over {} ms, first: {}",
            last.0.duration_since(first.0).as_millis(),
            first.1
        );
    }
    let want: Vec<String> = log.acked.iter().map(|s| s.body.clone()).collect();
    let drained = Instant::now();
    let done = wait_consumed(&mut seen, &want, Duration::from_secs(20), Duration::from_secs(90));
    eprintln!(
        "figure: chaos_drain_ms={} redelivered={}",
        drained.elapsed().as_millis(),
        seen.duplicates()
    );
    let mut problems = Vec::new();
    // The run never kills both broker groups at once, so every send has a
    // live broker to go to.
    if let Some((_, why)) = log.failed.first() {
        problems.push(format!(
            "{} sends failed although a broker group was always up, e.g. {why}",
            log.failed.len()
        ));
    }
    if !done {
        let missing = seen.missing(&want);
        problems.push(format!(
            "{} of {} acknowledged messages never consumed by the group, e.g. {:?}",
            missing.len(),
            want.len(),
            &missing[..missing.len().min(5)]
        ));
    }
    for m in &mut members {
        m.terminate();
    }
    if let Err(p) = wait_offsets(&c, group, "chaos", 4, false, Duration::from_secs(10)) {
        problems.push(format!("committed offsets: {p}"));
    }
    problems.extend(self_exits);
    drop(retired);
    assert!(
        problems.is_empty(),
        "chaos seed {seed} ({} actions: {actions:?}):\n- {}",
        actions.len(),
        problems.join("\n- ")
    );
}

/// The HTTP API of one broker acts on the whole cluster: what is its own
/// it does in-process through the core, the other broker group's share
/// through the client library. A topic created through broker A's console
/// lands on both groups, a message stored by broker B is found through A
/// by id and by key, and a delete through A removes the topic from both.
#[test]
fn one_brokers_http_api_spans_both_broker_groups() {
    let _s = serial();
    let c = Cluster::start(1, &[A, B], &[]);
    let ns = c.ns();
    let web = c.broker_http(A).to_string();
    let json = |s: &str| serde_json::from_str::<Value>(s).unwrap_or_else(|e| panic!("{e}: {s}"));
    let brokers_of = |web: &str| -> BTreeSet<String> {
        let d = json(&http_get(web, "/api/topics/web"));
        d["queues"]
            .as_array()
            .map(|qs| {
                qs.iter()
                    .filter_map(|q| q["broker"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };

    let (status, resp) = http(&web, "POST", "/api/topics", Some(r#"{"topic":"web","queues":2}"#));
    assert_eq!(status, 201, "{resp}");
    let both = BTreeSet::from([A.to_string(), B.to_string()]);
    assert!(
        wait_until(Duration::from_secs(10), || brokers_of(&web) == both),
        "both groups serve the topic: {:?}",
        brokers_of(&web)
    );

    let lines: Vec<String> = (0..12).map(|i| format!("w-{i}")).collect();
    let acks = produce(&ns, "web", &["--key", "shared"], &lines);
    let on_b: Vec<&str> = acks
        .iter()
        .map(|a| a.msg_id.as_str())
        .filter(|id| c.broker_of_msg_id(id) == Some(B))
        .collect();
    assert!(!on_b.is_empty(), "round-robin reaches broker B: {acks:?}");
    for id in &on_b {
        let (status, resp) = http(&web, "GET", &format!("/api/messages/{id}"), None);
        assert_eq!(status, 200, "B's message {id} through A: {resp}");
        assert_eq!(json(&resp)["msg_id"], *id);
    }
    let found = json(&http_get(&web, "/api/messages?topic=web&key=shared"));
    let found: BTreeSet<String> = found["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|m| m["msg_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let sent: BTreeSet<String> = acks.iter().map(|a| a.msg_id.clone()).collect();
    assert_eq!(found, sent, "a key lookup through A finds the messages of both groups");

    let (status, resp) = http(&web, "DELETE", "/api/topics/web", None);
    assert_eq!(status, 200, "{resp}");
    for b in [A, B] {
        let (status, resp) = http(c.broker_http(b), "GET", "/api/topics/web", None);
        assert_eq!(status, 404, "{b} no longer serves the topic: {resp}");
    }
    assert!(wait_until(Duration::from_secs(10), || !cli_ok(&ns, &["topic", "list"])
        .contains("web")));
}
