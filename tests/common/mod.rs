//! Shared harness for integration tests: starts the real `ferromq` binary
//! on 127.0.0.1 (port 0), parses its ready line, runs CLI commands with a
//! deadline, and kills every process it started (also on panic).

#![allow(dead_code)]

pub mod cluster;
pub mod producer;
pub mod tls;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ferromq")
}

/// The names of the entries of `dir`, sorted (none if it cannot be read).
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Disk watermarks of test brokers unless a test sets its own.
pub const TEST_WATERMARKS: [(&str, &str); 3] = [
    ("FERROMQ__STORE__DISK_CLEAN_RATIO", "0.97"),
    ("FERROMQ__STORE__DISK_FORCE_CLEAN_RATIO", "0.98"),
    ("FERROMQ__STORE__DISK_REFUSE_RATIO", "0.99"),
];

/// Sets all three disk watermarks of `env` to `ratio` (e.g. a tiny one the
/// disk is certainly above).
pub fn set_watermarks(env: &mut Vec<(&'static str, &'static str)>, ratio: &'static str) {
    for (key, _) in TEST_WATERMARKS {
        env.push((key, ratio));
    }
}

/// Store settings that make tests cross segment and file boundaries.
pub fn small_store_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("FERROMQ__STORE__SEGMENT_BYTES", "1048576"),
        ("FERROMQ__STORE__CONSUME_QUEUE_FILE_ENTRIES", "1000"),
        ("FERROMQ__STORE__FLUSH_INTERVAL_MS", "50"),
        ("FERROMQ__BROKER__REGISTER_INTERVAL_MS", "1000"),
    ]
}

/// A running server process (broker or name server).
pub struct ServerProcess {
    child: Child,
    /// `broker=` of the ready line (brokers only).
    pub broker_addr: String,
    /// `namesrv=` of the ready line (`-` without one).
    pub namesrv_addr: String,
    /// `http=` of the ready line (brokers only; `-` when disabled).
    pub http_addr: String,
    /// Data directory (brokers only).
    pub data_dir: PathBuf,
    stderr: Arc<Mutex<String>>,
}

/// Starts `ferromq ARGS` and waits up to `ready_within` for its ready
/// line: the child, that line, and its stderr as it accumulates. `Err`
/// (with its stderr) if it exits or stays silent; the child is reaped then.
pub fn try_spawn_server<K: AsRef<std::ffi::OsStr>, V: AsRef<std::ffi::OsStr>>(
    args: &[&str],
    env: &[(K, V)],
    ready_within: Duration,
) -> Result<(Child, String, Arc<Mutex<String>>), String> {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if args.first() == Some(&"broker") {
        // Tests share the machine's disk, which may be fuller than the
        // default watermarks (75/85/90 %): forced cleaning would delete
        // what a test has yet to read. Tests of the watermarks set their
        // own (the caller's env comes after, so it wins).
        for (k, v) in TEST_WATERMARKS {
            cmd.env(k, v);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().map_err(|e| format!("spawn ferromq {args:?}: {e}"))?;
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut err_pipe = child.stderr.take().ok_or("no stderr pipe")?;
    let sink = stderr.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err_pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Ok(mut s) = sink.lock() {
                s.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    });
    let stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + ready_within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(" ready: ") => return Ok((child, line, stderr)),
            Ok(_) => continue,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                // Let the stderr reader catch up with the last words.
                std::thread::sleep(Duration::from_millis(50));
                let err = stderr.lock().map(|s| s.clone()).unwrap_or_default();
                return Err(format!("no ready line from ferromq {args:?}; stderr:\n{err}"));
            }
        }
    }
}

fn spawn_server(args: &[&str], env: &[(&str, &str)]) -> (Child, String, Arc<Mutex<String>>) {
    try_spawn_server(args, env, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"))
}

fn field(line: &str, name: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name))
        .unwrap_or_else(|| panic!("{name} missing in {line:?}"))
        .to_string()
}

impl ServerProcess {
    /// Starts a broker on `data_dir` with an embedded name server, both on
    /// free ports.
    pub fn broker(data_dir: &Path, extra_args: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        Self::broker_at(data_dir, "127.0.0.1:0", extra_args, env)
    }

    /// Like [`ServerProcess::broker`] with the broker on `listen` (to keep
    /// one address, and so valid message ids, across restarts).
    pub fn broker_at(data_dir: &Path, listen: &str, extra_args: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        let dir = data_dir.to_str().expect("utf-8 path");
        let mut args = vec!["broker", "--data-dir", dir, "--listen", listen];
        if !extra_args.contains(&"--no-embedded-namesrv") {
            args.extend(["--namesrv-listen", "127.0.0.1:0"]);
        }
        if !extra_args.contains(&"--http") {
            args.extend(["--http", "127.0.0.1:0"]);
        }
        args.extend_from_slice(extra_args);
        let (child, line, stderr) = spawn_server(&args, env);
        ServerProcess {
            child,
            broker_addr: field(&line, "broker="),
            namesrv_addr: field(&line, "namesrv="),
            http_addr: field(&line, "http="),
            data_dir: data_dir.to_path_buf(),
            stderr,
        }
    }

    /// Starts a standalone name server on a free port.
    pub fn namesrv() -> ServerProcess {
        let (child, line, stderr) = spawn_server(&["namesrv", "--listen", "127.0.0.1:0"], &[]);
        ServerProcess {
            child,
            broker_addr: String::new(),
            namesrv_addr: field(&line, "namesrv="),
            http_addr: String::new(),
            data_dir: PathBuf::new(),
            stderr,
        }
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL. Returns true on a clean exit.
    pub fn stop(&mut self) -> bool {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
        false
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Anonymous resident memory (`RssAnon`) of process `pid`, in KiB; 0 if
/// it cannot be read.
pub fn anon_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// A currently free 127.0.0.1 address, below the ephemeral port range, so
/// a server can be restarted on it.
pub fn free_addr() -> String {
    // Below the kernel's ephemeral range: a port handed out by `bind(:0)`
    // is ephemeral, and once released the kernel may give it to an
    // outgoing connection as its local port — a broker restarted on it
    // would then fail with "address in use".
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let ephemeral_low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(32768);
    let (low, high) = (10_000u32, ephemeral_low.clamp(10_001, 65_535));
    let seed = std::process::id().wrapping_mul(7919)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    for _ in 0..(high - low) {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = low + (seed.wrapping_add(n.wrapping_mul(104_729)) % (high - low));
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port as u16)) {
            return l.local_addr().expect("addr").to_string();
        }
    }
    panic!("no free port below the ephemeral range")
}

/// Runs `ferromq ARGS -n NAMESRV` with `stdin` piped in, killed after 60 s.
pub fn cli_with_input(namesrv: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(bin())
        .args(args)
        .env("FERROMQ_NAMESRV", namesrv)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferromq");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let pid = child.id();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            // SAFETY: killing our own, still-running child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    });
    let out = child.wait_with_output().expect("wait for ferromq");
    let _ = done_tx.send(());
    let _ = watchdog.join();
    let _ = writer.join();
    out
}

/// `ferromq ARGS EXTRA` against `namesrv` with `stdin` piped in: `extra`
/// carries flags a test adds to every command (an account, TLS options).
pub fn cli_with_extra(namesrv: &str, args: &[&str], extra: &[String], stdin: &[u8]) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(extra.iter().map(String::as_str));
    cli_with_input(namesrv, &all, stdin)
}

/// A command's stderr as text.
pub fn stderr_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `ferromq ARGS` against `namesrv` and returns its output.
pub fn cli(namesrv: &str, args: &[&str]) -> Output {
    cli_with_input(namesrv, args, b"")
}

/// Like [`cli`], but fails the test unless it succeeds; returns stdout.
pub fn cli_ok(namesrv: &str, args: &[&str]) -> String {
    let out = cli(namesrv, args);
    assert!(
        out.status.success(),
        "ferromq {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// One acknowledgement line of `produce`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ack {
    /// Queue id.
    pub queue: u32,
    /// Queue offset.
    pub offset: u64,
    /// Message id.
    pub msg_id: String,
}

/// Parses `produce` output lines `<queue> <offset> <msg_id>`.
pub fn parse_acks(stdout: &str) -> Vec<Ack> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut it = l.split_whitespace();
            let queue = it
                .next()
                .and_then(|q| q.parse().ok())
                .unwrap_or_else(|| panic!("bad ack {l:?}"));
            let offset = it
                .next()
                .and_then(|q| q.parse().ok())
                .unwrap_or_else(|| panic!("bad ack {l:?}"));
            let msg_id = it.next().unwrap_or_else(|| panic!("bad ack {l:?}")).to_string();
            Ack { queue, offset, msg_id }
        })
        .collect()
}

/// Sends `lines` through `ferromq produce` (plus `args`) and returns the acks.
pub fn produce(namesrv: &str, topic: &str, args: &[&str], lines: &[String]) -> Vec<Ack> {
    let mut all = vec!["produce", "--topic", topic];
    all.extend_from_slice(args);
    let input = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    let out = cli_with_input(namesrv, &all, input.as_bytes());
    assert!(
        out.status.success(),
        "produce failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let acks = parse_acks(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(acks.len(), lines.len(), "one ack per line");
    acks
}

/// Consumes `topic` from earliest as JSON (plus `args`) and parses each line.
pub fn consume_json(namesrv: &str, topic: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["consume", "--topic", topic, "--from", "earliest", "--format", "json"];
    all.extend_from_slice(args);
    let out = cli_ok(namesrv, &all);
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
        .collect()
}

/// The bodies of `topic`'s messages from the start, read until 2 s pass
/// without one.
pub fn consumed_bodies(namesrv: &str, topic: &str) -> Vec<String> {
    consume_json(namesrv, topic, &["--idle-timeout", "2"])
        .iter()
        .map(|m| m["body"].as_str().expect("a text body").to_string())
        .collect()
}

/// Polls `cond` every 20 ms until true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// A `ferromq consume --format json` process writing to a file.
pub struct Consumer {
    child: Child,
    /// The file its stdout goes to.
    pub out: PathBuf,
}

impl Consumer {
    /// Starts `consume -n NS --format json --client-id NAME --heartbeat-ms 300 ARGS`.
    pub fn start(ns: &str, dir: &Path, name: &str, args: &[&str]) -> Consumer {
        let out = dir.join(format!("{name}.out"));
        let child = Command::new(bin())
            .args([
                "consume",
                "-n",
                ns,
                "--format",
                "json",
                "--client-id",
                name,
                "--heartbeat-ms",
                "300",
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(File::create(&out).unwrap()))
            .stderr(Stdio::from(File::create(dir.join(format!("{name}.err"))).unwrap()))
            .spawn()
            .unwrap();
        Consumer { child, out }
    }

    /// The JSON lines printed so far.
    pub fn messages(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub fn terminate(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One HTTP request to `addr` (through `ureq`, the CLI's HTTP client);
/// returns (status, body), or `None` when the server did not answer.
pub fn try_http(addr: &str, method: &str, path: &str, json_body: Option<&str>) -> Option<(u16, String)> {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
    let req = agent.request(method, &format!("http://{addr}{path}"));
    let res = match json_body {
        Some(body) => req.set("Content-Type", "application/json").send_string(body),
        None => req.call(),
    };
    match res {
        Ok(r) => {
            let status = r.status();
            Some((status, r.into_string().ok()?))
        }
        Err(ureq::Error::Status(code, r)) => Some((code, r.into_string().unwrap_or_default())),
        Err(_) => None,
    }
}

/// Like [`try_http`], failing the test when there is no answer.
pub fn http(addr: &str, method: &str, path: &str, json_body: Option<&str>) -> (u16, String) {
    try_http(addr, method, path, json_body).unwrap_or_else(|| panic!("no HTTP answer from {addr} to {method} {path}"))
}

/// `GET path`, which must answer 200; returns the body.
pub fn http_get(addr: &str, path: &str) -> String {
    let (status, body) = http(addr, "GET", path, None);
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// Sum of the samples of a Prometheus metric whose labels contain every
/// `k="v"` of `labels`.
pub fn metric_sum(exposition: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            if n != name {
                return None;
            }
            labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}
