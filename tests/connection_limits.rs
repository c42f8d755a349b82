//! Resources belong to a session and die with it (issue #12): parked long
//! polls of closed connections are released, waits are capped, every
//! response kind counts against one per-connection byte budget, idle
//! connections and incomplete frames time out, and the connection count is
//! capped. Each test starts real broker processes on 127.0.0.1 and drives
//! misbehaving clients over raw sockets (frame format: docs/protocol.md §1).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

const PULL: u16 = 11;
const QUERY_BY_KEY: u16 = 14;
const RECEIVE: u16 = 40;
const PING: u16 = 1;

fn request(code: u16, corr: u32, header: &[u8], body: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&((12 + header.len() + body.len()) as u32).to_be_bytes());
    f.extend_from_slice(&[ferromq::wire::PROTOCOL_VERSION, 0]);
    f.extend_from_slice(&code.to_be_bytes());
    f.extend_from_slice(&corr.to_be_bytes());
    f.extend_from_slice(&(header.len() as u32).to_be_bytes());
    f.extend_from_slice(header);
    f.extend_from_slice(body);
    f
}

fn str16(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn pull_frame(corr: u32, topic: &str, offset: u64, max_wait_ms: u32) -> Vec<u8> {
    let mut body = Vec::new();
    str16(&mut body, topic);
    body.extend_from_slice(&0u32.to_be_bytes()); // queue
    body.extend_from_slice(&offset.to_be_bytes());
    body.extend_from_slice(&32u32.to_be_bytes()); // max count
    body.extend_from_slice(&max_wait_ms.to_be_bytes());
    str16(&mut body, "");
    request(PULL, corr, b"", &body)
}

fn receive_frame(corr: u32, group: &str, topic: &str, max_count: u32, max_wait_ms: u32) -> Vec<u8> {
    let mut body = Vec::new();
    str16(&mut body, group);
    str16(&mut body, topic);
    body.extend_from_slice(&0u32.to_be_bytes()); // queue
    body.extend_from_slice(&0u64.to_be_bytes()); // start offset
    body.extend_from_slice(&max_count.to_be_bytes());
    body.extend_from_slice(&max_wait_ms.to_be_bytes());
    body.extend_from_slice(&60_000u32.to_be_bytes()); // ack timeout
    body.push(0); // flags
    str16(&mut body, "");
    request(RECEIVE, corr, b"", &body)
}

fn key_query_frame(corr: u32, topic: &str, key: &str) -> Vec<u8> {
    let header = format!(r#"{{"topic":"{topic}","key":"{key}","max":64}}"#);
    request(QUERY_BY_KEY, corr, header.as_bytes(), b"")
}

/// Reads one frame: (code, correlation id); None when the server closed
/// the connection (or on a read timeout).
fn read_frame(s: &mut TcpStream) -> Option<(u16, u32)> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut rest = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut rest).ok()?;
    Some((
        u16::from_be_bytes([rest[2], rest[3]]),
        u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]),
    ))
}

/// True when the server has closed `s` (EOF or reset) within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // a response (or an error frame) before the close
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return false,
            Err(_) => return true,
        }
    }
}

fn metrics(broker: &ServerProcess) -> String {
    http_get(&broker.http_addr, "/metrics")
}

fn parked(broker: &ServerProcess, kind: &str) -> f64 {
    metric_sum(&metrics(broker), "ferromq_parked_requests", &[("kind", kind)])
}

fn env_with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut env = small_store_env();
    env.extend_from_slice(extra);
    env
}

/// Finding 1: 2,000 long-polling pulls and 400 receives parked by
/// connections that then close are dropped within seconds, not at their
/// deadline.
#[test]
fn parked_polls_of_closed_connections_are_released() {
    let dir = tempfile::tempdir().unwrap();
    let broker = ServerProcess::broker(dir.path(), &[], &env_with(&[]));
    let ns = broker.namesrv_addr.clone();
    cli_ok(&ns, &["topic", "create", "idle", "--queues", "1"]);
    let pid = broker.pid();
    let baseline = anon_rss_kb(pid);

    // 250 connections × 8 pulls (the per-connection pull limit), each
    // waiting a minute for a message that never comes.
    let mut conns: Vec<TcpStream> = (0..250u32)
        .map(|c| {
            let mut s = TcpStream::connect(&broker.broker_addr).unwrap();
            let frames: Vec<u8> = (0..8).flat_map(|i| pull_frame(c * 8 + i, "idle", 0, 60_000)).collect();
            s.write_all(&frames).unwrap();
            s
        })
        .collect();
    // And 50 × 8 receives of one group.
    conns.extend((0..50u32).map(|c| {
        let mut s = TcpStream::connect(&broker.broker_addr).unwrap();
        let frames: Vec<u8> = (0..8)
            .flat_map(|i| receive_frame(c * 8 + i, "g", "idle", 32, 60_000))
            .collect();
        s.write_all(&frames).unwrap();
        s
    }));
    assert!(
        wait_until(Duration::from_secs(20), || parked(&broker, "pull") >= 2000.0
            && parked(&broker, "receive") >= 400.0),
        "pulls parked: {}, receives: {}",
        parked(&broker, "pull"),
        parked(&broker, "receive")
    );
    let peak = anon_rss_kb(pid);
    let closed_at = Instant::now();
    conns.clear();
    assert!(
        wait_until(Duration::from_secs(5), || parked(&broker, "pull") == 0.0
            && parked(&broker, "receive") == 0.0),
        "left 5 s after their connections closed: {} pulls, {} receives",
        parked(&broker, "pull"),
        parked(&broker, "receive")
    );
    let released_in = closed_at.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let after = anon_rss_kb(pid);
    eprintln!(
        "RssAnon: baseline {baseline} KiB, 2400 parked {peak} KiB, after close {after} KiB; released in {released_in:?}"
    );
    // The broker still serves.
    produce(&ns, "idle", &[], &["wake".to_string()]);
    let got = consume_json(&ns, "idle", &["--count", "1", "--idle-timeout", "5"]);
    assert_eq!(got[0]["body"], "wake");
}

/// Finding 1: a client may not make the broker wait 2^32 ms: waits are
/// clamped to `max_poll_wait_ms`, for pulls and receives.
#[test]
fn long_poll_waits_are_clamped() {
    let dir = tempfile::tempdir().unwrap();
    let broker = ServerProcess::broker(
        dir.path(),
        &[],
        &env_with(&[("FERROMQ__BROKER__MAX_POLL_WAIT_MS", "500")]),
    );
    cli_ok(&broker.namesrv_addr, &["topic", "create", "wait", "--queues", "1"]);
    let mut s = TcpStream::connect(&broker.broker_addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for (i, frame) in [
        pull_frame(7, "wait", 0, u32::MAX),
        receive_frame(8, "g", "wait", 1, u32::MAX),
    ]
    .into_iter()
    .enumerate()
    {
        let started = Instant::now();
        s.write_all(&frame).unwrap();
        let (code, corr) = read_frame(&mut s).expect("an answer within the clamped wait");
        let took = started.elapsed();
        eprintln!("request {i} with max_wait 2^32-1 ms answered in {took:?}");
        assert_eq!((code, corr), (0, 7 + i as u32));
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }
}

/// Finding 2: connections pipelining RECEIVE and key queries without
/// reading their socket hold at most their response budget each.
#[test]
fn stalled_receives_and_key_queries_pin_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let before_fix = std::env::var_os("CONNECTION_LIMITS_BEFORE").is_some();
    let budget = [("FERROMQ__BROKER__MAX_PENDING_RESPONSE_BYTES_PER_CONNECTION", "16777216")];
    let env = env_with(if before_fix { &[] } else { &budget });
    let env: Vec<_> = env
        .into_iter()
        .filter(|(k, _)| *k != "FERROMQ__STORE__SEGMENT_BYTES")
        .chain([("FERROMQ__STORE__SEGMENT_BYTES", "67108864")])
        .collect();
    let broker = ServerProcess::broker(dir.path(), &[], &env);
    let ns = broker.namesrv_addr.clone();
    cli_ok(&ns, &["topic", "create", "big", "--queues", "1"]);
    // 400 × 128 KiB with one key: a 32-message receive is 4 MiB, a key
    // query (64 records) 8 MiB.
    cli_ok(
        &ns,
        &[
            "produce", "--topic", "big", "--key", "k", "--count", "400", "--size", "131072", "--batch", "8",
        ],
    );
    let pid = broker.pid();
    let before = anon_rss_kb(pid);

    // 4 connections, each pipelining 30 receives (every one for its own
    // group, so each claims 32 fresh messages) and 30 key queries, never
    // reading a byte.
    let stalled: Vec<TcpStream> = (0..4u32)
        .map(|c| {
            let mut s = TcpStream::connect(&broker.broker_addr).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut frames = Vec::new();
            for i in 0..30u32 {
                frames.extend(receive_frame(i, &format!("g{c}x{i}"), "big", 32, 0));
                frames.extend(key_query_frame(1000 + i, "big", "k"));
            }
            let _ = s.write_all(&frames); // may block once the broker stops reading: fine
            s
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let grown_mb = anon_rss_kb(pid).saturating_sub(before) / 1024;
    eprintln!("RssAnon grew by {grown_mb} MiB with 4 stalled receive/key-query connections");

    // Everyone else is served as usual.
    produce(&ns, "other", &[], &["still fine".to_string()]);
    let got = consume_json(&ns, "other", &["--count", "1", "--idle-timeout", "5"]);
    assert_eq!(got[0]["body"], "still fine");
    if !before_fix {
        // Unbounded this measured ~1.4 GiB; the budget is 4 × 16 MiB (plus
        // one response over budget per connection and allocator slack).
        assert!(grown_mb < 200, "grew by {grown_mb} MiB");
    }
    drop(stalled);
}

/// Finding 3: half a frame, a slowloris trickle and an idle connection
/// are closed after their timeouts.
#[test]
fn incomplete_frames_and_idle_connections_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let broker = ServerProcess::broker(
        dir.path(),
        &[],
        &env_with(&[
            ("FERROMQ__BROKER__FRAME_READ_TIMEOUT_MS", "500"),
            ("FERROMQ__BROKER__IDLE_TIMEOUT_MS", "1500"),
        ]),
    );
    let ping = request(PING, 1, b"", b"");

    // Half a frame, then nothing.
    let mut half = TcpStream::connect(&broker.broker_addr).unwrap();
    let started = Instant::now();
    half.write_all(&ping[..10]).unwrap();
    assert!(
        closed_within(&mut half, Duration::from_secs(5)),
        "half frame not dropped"
    );
    let took = started.elapsed();
    eprintln!("half frame dropped after {took:?}");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "{took:?}"
    );

    // A byte every 200 ms: never a complete frame within the timeout.
    let mut slow = TcpStream::connect(&broker.broker_addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let started = Instant::now();
    let mut closed = false;
    for b in ping.iter().cycle().take(40) {
        if slow.write_all(&[*b]).is_err() || closed_within(&mut slow, Duration::from_millis(200)) {
            closed = true;
            break;
        }
    }
    let took = started.elapsed();
    eprintln!("slowloris dropped after {took:?}");
    assert!(
        closed && took < Duration::from_secs(3),
        "slowloris still open after {took:?}"
    );

    // A connection that did one request and then went quiet.
    let mut idle = TcpStream::connect(&broker.broker_addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    idle.write_all(&ping).unwrap();
    assert_eq!(read_frame(&mut idle), Some((0, 1)));
    let started = Instant::now();
    assert!(
        closed_within(&mut idle, Duration::from_secs(6)),
        "idle connection not closed"
    );
    let took = started.elapsed();
    eprintln!("idle connection closed after {took:?}");
    assert!(
        took >= Duration::from_millis(1300) && took < Duration::from_secs(4),
        "{took:?}"
    );

    // A connection that keeps talking is not idle.
    let mut busy = TcpStream::connect(&broker.broker_addr).unwrap();
    busy.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for corr in 0..6 {
        busy.write_all(&request(PING, corr, b"", b"")).unwrap();
        assert_eq!(read_frame(&mut busy), Some((0, corr)), "busy connection closed");
        std::thread::sleep(Duration::from_millis(500));
    }

    // Real clients are unaffected.
    let ns = broker.namesrv_addr.clone();
    produce(&ns, "t", &[], &["hello".to_string()]);
    let got = consume_json(&ns, "t", &["--count", "1", "--idle-timeout", "5"]);
    assert_eq!(got[0]["body"], "hello");
}

/// Finding 4: past `max_connections` new connections are closed at once,
/// with a few warnings rather than one per connection; the broker keeps
/// serving, and once the flood's connections have been idle for a second a
/// real client takes the place of one of them.
#[test]
fn connections_beyond_the_cap_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let broker = ServerProcess::broker(
        dir.path(),
        &[],
        &env_with(&[("FERROMQ__BROKER__MAX_CONNECTIONS", "50")]),
    );
    let ns = broker.namesrv_addr.clone();
    produce(&ns, "capped", &[], &["before".to_string()]);

    let opened = Instant::now();
    let mut flood: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(&broker.broker_addr).unwrap())
        .collect();
    // Refused connections are closed at once; admitted ones stay open.
    std::thread::sleep(Duration::from_millis(300));
    let refused = flood
        .iter_mut()
        .map(|s| closed_within(s, Duration::from_millis(10)))
        .filter(|&closed| closed)
        .count();
    eprintln!("{refused} of 200 connections refused ({:?})", opened.elapsed());
    // The cap counts the broker's own registration with its embedded name
    // server, too.
    assert!((145..=155).contains(&refused), "{refused} of 200 refused");
    // HTTP is not a broker connection: it answers.
    assert_eq!(http(&broker.http_addr, "GET", "/health", None).0, 200);
    let m = metrics(&broker);
    // Every flood connection closed is counted: refused, or — when the
    // flood took over a second to open, so its first connections were
    // already idle — admitted by evicting an idle one (measured: 130 + 21
    // of 151 when opening took 2.1 s on a loaded machine).
    let counted = metric_sum(&m, "ferromq_connections_refused_total", &[])
        + metric_sum(&m, "ferromq_connections_evicted_total", &[]);
    assert!(counted >= 150.0, "refusals and evictions counted: {counted}");

    // While the flood holds every slot, real clients get in: each new
    // connection closes the flood connection idle longest.
    std::thread::sleep(Duration::from_millis(1200));
    produce(&ns, "capped", &[], &["after".to_string()]);
    let got = consume_json(&ns, "capped", &["--count", "2", "--idle-timeout", "5"]);
    assert_eq!(got.len(), 2);
    let evicted = metric_sum(&metrics(&broker), "ferromq_connections_evicted_total", &[]);
    let closed_now = flood
        .iter_mut()
        .map(|s| closed_within(s, Duration::from_millis(10)))
        .filter(|&closed| closed)
        .count();
    eprintln!("{evicted} idle connections evicted; {closed_now} of the flood closed now");
    assert!(
        evicted >= 1.0 && closed_now > refused,
        "evicted {evicted}, closed {closed_now}"
    );
    let warnings = broker
        .stderr()
        .lines()
        .filter(|l| l.contains("accept") || l.contains("max_connections"))
        .count();
    eprintln!("{warnings} accept/cap log lines:");
    for l in broker
        .stderr()
        .lines()
        .filter(|l| l.contains("accept") || l.contains("max_connections"))
    {
        eprintln!("  {l}");
    }
    assert!(warnings <= 5, "{}", broker.stderr());
    drop(flood);
}
