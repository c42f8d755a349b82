//! `ferromq produce`: stdin lines as messages, or a generated load with
//! `--count`.
//!
//! Stdin lines are sent in one of three modes (`--mode`):
//!
//! - `sync` (default): one send request at a time, each acknowledged before
//!   the next; one line per message, in input order:
//!   `<queue> <offset> <msg_id> <broker_name>`.
//! - `async`: up to `--inflight N` (default 64) send requests outstanding;
//!   the same ack lines, printed as acknowledgements arrive (so possibly
//!   out of input order). Requests of one sharding key are never
//!   outstanding together, so per-key order holds.
//! - `oneway`: no acknowledgement is asked for and nothing is printed per
//!   message; at the end one line `sent <N> messages oneway in <X> s`
//!   (`<X>` seconds with three decimals, from the start of input until
//!   every request was handed to its connection). Before exiting, produce
//!   waits (up to 10 s) until the topic's queues have grown by `<N>` — so
//!   closing the connection cannot cut off messages the broker is still
//!   storing — and warns on stderr if they do not (a broker may refuse a
//!   oneway message without saying so). Delayed messages (`--delay-level`,
//!   `--deliver-at`) are not waited for.
//!
//! `--batch N` puts N lines into one send request (one queue, stored
//! contiguously); a partial batch is sent at the end of input. With
//! `--sharding-key KEY` every message goes to the queue KEY hashes to; with
//! `--sharding-key-from-line` each line is `KEY<TAB>BODY` and its key picks
//! its queue (the first TAB splits; the body may contain more). Batches
//! are then per key: lines are collected per key and a key's batch is sent
//! when it has N lines (the rest at the end of input). A line without a TAB
//! (or with an empty key) is an error naming its line number: the lines
//! before it are sent as usual, nothing from it on, and produce exits 1.
//!
//! `--mode`, `--inflight` and the sharding flags apply to stdin lines only
//! (`--count` runs keep their pipelined batches).

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::task::JoinSet;

use super::{CliResult, NamesrvOpt};
use crate::client::{Admin, ClientResult, Producer, SendResult};
use crate::message::Message;

/// Batches of a `--count` run in flight at once.
const PIPELINE: usize = 8;

/// Lines held in partial per-key batches at most; past it, the oldest
/// partial batch is sent (`--sharding-key-from-line` with `--batch`).
const MAX_BUFFERED: usize = 4096;

/// Default `--inflight` of `--mode async`.
pub const DEFAULT_INFLIGHT: usize = 64;

/// How long `--mode oneway` waits for its messages to show on the brokers.
const ONEWAY_DRAIN: Duration = Duration::from_secs(10);

/// How `produce` sends stdin lines (`--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum SendMode {
    /// One request at a time; ack lines in input order.
    #[default]
    Sync,
    /// Up to --inflight requests outstanding; ack lines as they arrive.
    Async,
    /// No acknowledgement; one summary line at the end.
    Oneway,
}

/// `ferromq produce` flags.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Destination topic.
    #[arg(long)]
    pub topic: String,
    /// Tag of every message.
    #[arg(long)]
    pub tag: Option<String>,
    /// Key of every message (indexed for `message find`; not a sharding key).
    #[arg(long)]
    pub key: Option<String>,
    /// User property `K=V` (repeatable).
    #[arg(long = "property", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
    /// Send this many generated messages instead of stdin lines.
    #[arg(
        long,
        requires = "size",
        conflicts_with_all = ["mode", "inflight", "sharding_key", "sharding_key_from_line"]
    )]
    pub count: Option<u64>,
    /// Body size of generated messages, in bytes.
    #[arg(long)]
    pub size: Option<usize>,
    /// Messages per send request (stdin lines or --count); a batch goes to
    /// one queue. With --sharding-key-from-line, batches are per key.
    #[arg(long, default_value_t = 1, value_parser = parse_positive)]
    pub batch: usize,
    /// Send mode of stdin lines: sync (ack lines in order), async (up to
    /// --inflight requests outstanding, ack lines as they arrive) or oneway
    /// (no acks; one summary line `sent N messages oneway in X s`).
    #[arg(long, value_enum, default_value_t = SendMode::Sync)]
    pub mode: SendMode,
    /// Send requests outstanding at once with --mode async [default: 64].
    #[arg(long, value_parser = parse_positive)]
    pub inflight: Option<usize>,
    /// Send every message to the queue this key hashes to (per-key order
    /// for `consume --orderly`); --key stays the lookup key.
    #[arg(long, conflicts_with = "sharding_key_from_line", value_parser = parse_sharding_key)]
    pub sharding_key: Option<String>,
    /// Stdin lines are `KEY<TAB>BODY` (split at the first TAB): each line's
    /// key picks its queue; a line without a TAB ends the run with an
    /// error naming it (the lines before it are sent).
    #[arg(long)]
    pub sharding_key_from_line: bool,
    /// Time to live (e.g. `30s`): an expired message is never delivered and
    /// goes to each consuming group's dead-letter topic.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ttl: Option<std::time::Duration>,
    /// Delay level 1–18 (1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m
    /// 30m 1h 2h).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=18), conflicts_with = "deliver_at")]
    pub delay_level: Option<u32>,
    /// Deliver at this time: RFC 3339 (`2026-11-23T10:00:00Z`), or `+DURATION`
    /// from now (`+90s`).
    #[arg(long, value_parser = parse_deliver_at)]
    pub deliver_at: Option<u64>,
    #[command(flatten)]
    pub ns: NamesrvOpt,
}

/// Parses a non-empty sharding key.
pub fn parse_sharding_key(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("a sharding key must not be empty".to_string());
    }
    Ok(s.to_string())
}

/// Parses a count of at least 1.
pub fn parse_positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{s:?}: {e}")),
    }
}

/// Parses an RFC 3339 time or `+DURATION` into ms since the epoch.
pub fn parse_deliver_at(s: &str) -> Result<u64, String> {
    match s.strip_prefix('+') {
        Some(d) => {
            let d = humantime::parse_duration(d).map_err(|e| format!("{s:?}: {e}"))?;
            Ok(crate::clock::now_millis() + d.as_millis() as u64)
        }
        None => super::group::parse_time_ms(s),
    }
}

/// Parses `K=V`.
pub fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("property {s:?} is not KEY=VALUE")),
    }
}

impl ProduceArgs {
    fn message(&self, body: Bytes) -> Message {
        let mut m = Message::new(self.topic.clone(), body);
        if let Some(t) = &self.tag {
            m = m.with_tag(t.clone());
        }
        if let Some(k) = &self.key {
            m = m.with_key(k);
        }
        for (k, v) in &self.properties {
            m = m.with_property(k.clone(), v.clone());
        }
        if let Some(ttl) = self.ttl {
            m = m.with_ttl(ttl);
        }
        if let Some(level) = self.delay_level {
            m = m.with_delay_level(level);
        }
        if let Some(at) = self.deliver_at {
            m = m.with_property(crate::message::props::DELIVER_AT, at.to_string());
        }
        m
    }
}

impl ProduceArgs {
    /// Why these flags make no sense together (beyond what clap checks).
    pub fn check(&self) -> Result<(), String> {
        if self.inflight.is_some() && self.mode != SendMode::Async {
            return Err(format!(
                "--inflight applies to --mode async only (this run is --mode {})",
                self.mode.name()
            ));
        }
        Ok(())
    }
}

impl SendMode {
    fn name(self) -> &'static str {
        match self {
            SendMode::Sync => "sync",
            SendMode::Async => "async",
            SendMode::Oneway => "oneway",
        }
    }
}

/// Runs `produce`.
pub async fn run(a: ProduceArgs) -> CliResult {
    if let Err(e) = a.check() {
        clap::Error::raw(clap::error::ErrorKind::ArgumentConflict, format!("{e}\n")).exit();
    }
    let producer = Producer::new(a.ns.client_config());
    match (a.count, a.size) {
        (Some(count), Some(size)) => generated(&a, &producer, count, size).await,
        _ => from_stdin(&a, producer).await,
    }
}

fn print_acks(results: &[SendResult]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    for r in results {
        writeln!(out, "{} {} {} {}", r.queue_id, r.queue_offset, r.msg_id, r.broker_name)?;
    }
    out.flush()
}

/// One send request: messages of one sharding key (or none), in input
/// order.
#[derive(Debug)]
struct Batch {
    key: Option<String>,
    msgs: Vec<Message>,
}

/// Splits input lines into messages with their sharding key and groups
/// them into batches (per key).
struct Batcher {
    size: usize,
    from_line: bool,
    fixed_key: Option<String>,
    /// Open batches by key, with the number of their first line.
    open: HashMap<Option<String>, (u64, Vec<Message>)>,
    /// Messages in `open`.
    buffered: usize,
}

impl Batcher {
    fn new(a: &ProduceArgs) -> Batcher {
        Batcher {
            size: a.batch.max(1),
            from_line: a.sharding_key_from_line,
            fixed_key: a.sharding_key.clone(),
            open: HashMap::new(),
            buffered: 0,
        }
    }

    /// The sharding key and body of input line `n` (1-based).
    fn split<'l>(&self, n: u64, line: &'l str) -> Result<(Option<String>, &'l str), String> {
        if !self.from_line {
            return Ok((self.fixed_key.clone(), line));
        }
        match line.split_once('\t') {
            Some(("", _)) => Err(format!(
                "line {n}: empty sharding key before the TAB (--sharding-key-from-line expects KEY<TAB>BODY)"
            )),
            Some((key, body)) => Ok((Some(key.to_string()), body)),
            None => Err(format!(
                "line {n}: no TAB between key and body (--sharding-key-from-line expects KEY<TAB>BODY)"
            )),
        }
    }

    /// Adds line `n` (without its line end); the batches ready to send.
    fn push(&mut self, a: &ProduceArgs, n: u64, line: &[u8]) -> Result<Vec<Batch>, String> {
        let line = std::str::from_utf8(line).map_err(|e| format!("line {n}: not valid UTF-8 ({e})"))?;
        let (key, body) = self.split(n, line)?;
        let msg = a.message(Bytes::from(body.to_string()));
        if self.size == 1 {
            return Ok(vec![Batch { key, msgs: vec![msg] }]);
        }
        let entry = self.open.entry(key.clone()).or_insert_with(|| (n, Vec::new()));
        entry.1.push(msg);
        self.buffered += 1;
        let mut ready = Vec::new();
        if entry.1.len() >= self.size {
            ready.extend(self.take(&key));
        }
        if self.buffered > MAX_BUFFERED {
            let oldest = self
                .open
                .iter()
                .min_by_key(|(_, (first, _))| *first)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                ready.extend(self.take(&k));
            }
        }
        Ok(ready)
    }

    /// Removes the open batch of `key`.
    fn take(&mut self, key: &Option<String>) -> Option<Batch> {
        let (_, msgs) = self.open.remove(key)?;
        self.buffered -= msgs.len();
        Some(Batch { key: key.clone(), msgs })
    }

    /// The open (partial) batches, oldest first line first.
    fn drain(&mut self) -> Vec<Batch> {
        let mut open: Vec<_> = self.open.drain().collect();
        self.buffered = 0;
        open.sort_by_key(|(_, (first, _))| *first);
        open.into_iter().map(|(key, (_, msgs))| Batch { key, msgs }).collect()
    }
}

/// Sends a batch and waits for its acknowledgements.
async fn send_acked(p: &Producer, b: Batch) -> ClientResult<Vec<SendResult>> {
    let Batch { key, mut msgs } = b;
    if msgs.len() == 1 {
        if let Some(msg) = msgs.pop() {
            return match key {
                Some(k) => p.send_ordered(msg, &k).await.map(|r| vec![r]),
                None => p.send(msg).await.map(|r| vec![r]),
            };
        }
    }
    match key {
        Some(k) => p.send_batch_ordered(msgs, &k).await,
        None => p.send_batch(msgs).await,
    }
}

/// Sends a batch without asking for an acknowledgement.
async fn send_oneway(p: &Producer, b: Batch) -> ClientResult<()> {
    let Batch { key, mut msgs } = b;
    if msgs.len() == 1 {
        if let Some(msg) = msgs.pop() {
            return match key {
                Some(k) => p.send_oneway_ordered(msg, &k).await,
                None => p.send_oneway(msg).await,
            };
        }
    }
    p.send_batch_oneway(msgs, key.as_deref()).await
}

type Outcome = (Option<String>, ClientResult<Vec<SendResult>>);

/// Sends batches in the chosen mode.
struct Sender {
    producer: Producer,
    mode: SendMode,
    inflight: usize,
    /// Async requests outstanding, each with its key.
    tasks: JoinSet<Outcome>,
    /// Keys with a request outstanding (async).
    busy: HashSet<String>,
    /// Batches waiting for their key's outstanding request (async).
    waiting: HashMap<String, VecDeque<Batch>>,
    waiting_count: usize,
    /// Messages sent oneway.
    sent: u64,
    /// Whether the oneway baseline was looked up.
    baseline_taken: bool,
    /// The topic's queue offsets (summed) before the first oneway send;
    /// `None` when they could not be read (then nothing is waited for).
    baseline: Option<u64>,
    /// Reads queue offsets (oneway).
    admin: Admin,
}

impl Sender {
    async fn submit(&mut self, a: &ProduceArgs, b: Batch) -> CliResult {
        match self.mode {
            SendMode::Sync => print_acks(&send_acked(&self.producer, b).await?)?,
            SendMode::Oneway => {
                if !self.baseline_taken {
                    self.baseline_taken = true;
                    self.baseline = total_offsets(&self.admin, &a.topic).await.ok();
                }
                let n = b.msgs.len() as u64;
                send_oneway(&self.producer, b).await?;
                self.sent += n;
            }
            SendMode::Async => {
                while self.tasks.len() + self.waiting_count >= self.inflight {
                    if !self.complete_one().await? {
                        break;
                    }
                }
                match &b.key {
                    Some(k) if self.busy.contains(k) => {
                        self.waiting.entry(k.clone()).or_default().push_back(b);
                        self.waiting_count += 1;
                    }
                    _ => self.spawn(b),
                }
            }
        }
        Ok(())
    }

    fn spawn(&mut self, b: Batch) {
        if let Some(k) = &b.key {
            self.busy.insert(k.clone());
        }
        let p = self.producer.clone();
        self.tasks.spawn(async move {
            let key = b.key.clone();
            (key, send_acked(&p, b).await)
        });
    }

    /// Waits for one outstanding request and prints its acks; false when
    /// none was outstanding.
    async fn complete_one(&mut self) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
        let Some(done) = self.tasks.join_next().await else {
            return Ok(false);
        };
        let (key, result) = done?;
        print_acks(&result?)?;
        if let Some(k) = key {
            match self.waiting.get_mut(&k).and_then(VecDeque::pop_front) {
                Some(next) => {
                    self.waiting_count -= 1;
                    self.spawn(next);
                }
                None => {
                    self.waiting.remove(&k);
                    self.busy.remove(&k);
                }
            }
        }
        Ok(true)
    }

    /// Waits for everything outstanding (async) or for the oneway messages
    /// to show on the brokers.
    async fn finish(&mut self, a: &ProduceArgs) -> CliResult {
        while self.complete_one().await? {}
        let delayed = a.delay_level.is_some() || a.deliver_at.is_some();
        if let (SendMode::Oneway, Some(baseline), false) = (self.mode, self.baseline, delayed) {
            let want = baseline + self.sent;
            let deadline = Instant::now() + ONEWAY_DRAIN;
            let mut seen = total_offsets(&self.admin, &a.topic).await.unwrap_or(0);
            while seen < want && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
                seen = total_offsets(&self.admin, &a.topic).await.unwrap_or(seen);
            }
            if seen < want {
                eprintln!(
                    "warning: only {} of {} oneway messages showed on {}'s queues within {} s \
                     (a broker may have refused some without saying so)",
                    seen.saturating_sub(baseline),
                    self.sent,
                    a.topic,
                    ONEWAY_DRAIN.as_secs()
                );
            }
        }
        Ok(())
    }
}

/// The sum of the next offsets of `topic`'s queues.
async fn total_offsets(admin: &Admin, topic: &str) -> ClientResult<u64> {
    Ok(admin
        .queue_offsets(topic)
        .await?
        .iter()
        .map(|(_, o)| o.max_offset)
        .sum())
}

async fn from_stdin(a: &ProduceArgs, producer: Producer) -> CliResult {
    let mut sender = Sender {
        producer,
        mode: a.mode,
        inflight: a.inflight.unwrap_or(DEFAULT_INFLIGHT).max(1),
        tasks: JoinSet::new(),
        busy: HashSet::new(),
        waiting: HashMap::new(),
        waiting_count: 0,
        sent: 0,
        baseline_taken: false,
        baseline: None,
        admin: Admin::new(a.ns.client_config()),
    };
    let mut batcher = Batcher::new(a);
    let started = Instant::now();
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut line = Vec::new();
    let mut n = 0u64;
    let mut bad_line = None;
    loop {
        line.clear();
        if stdin.read_until(b'\n', &mut line).await? == 0 {
            break;
        }
        n += 1;
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        match batcher.push(a, n, text) {
            Ok(ready) => {
                for batch in ready {
                    sender.submit(a, batch).await?;
                }
            }
            Err(e) => {
                bad_line = Some(e);
                break;
            }
        }
    }
    for batch in batcher.drain() {
        sender.submit(a, batch).await?;
    }
    let handed_over = started.elapsed();
    sender.finish(a).await?;
    if a.mode == SendMode::Oneway {
        outln!(
            "sent {} messages oneway in {:.3} s",
            sender.sent,
            handed_over.as_secs_f64()
        );
    }
    match bad_line {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

async fn generated(a: &ProduceArgs, producer: &Producer, count: u64, size: usize) -> CliResult {
    let batch = a.batch.max(1) as u64;
    let body = Bytes::from((0..size).map(|i| b'a' + (i % 26) as u8).collect::<Vec<u8>>());
    let started = Instant::now();
    let mut in_flight = JoinSet::new();
    let mut sent = 0u64;
    let mut acked = 0u64;
    while sent < count || !in_flight.is_empty() {
        while sent < count && in_flight.len() < PIPELINE {
            let n = batch.min(count - sent);
            let msgs: Vec<Message> = (0..n).map(|_| a.message(body.clone())).collect();
            let p = producer.clone();
            in_flight.spawn(async move { p.send_batch(msgs).await });
            sent += n;
        }
        if let Some(done) = in_flight.join_next().await {
            acked += done??.len() as u64;
        }
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let bytes = acked * size as u64;
    outln!(
        "sent {acked} messages ({bytes} bytes) in {secs:.3} s: {:.0} msg/s, {:.1} MiB/s",
        acked as f64 / secs,
        bytes as f64 / secs / (1u64 << 20) as f64
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_need_a_key_and_an_equals_sign() {
        assert_eq!(parse_property("a=b=c").unwrap(), ("a".to_string(), "b=c".to_string()));
        assert_eq!(parse_property("a=").unwrap(), ("a".to_string(), String::new()));
        assert!(parse_property("=x").is_err());
        assert!(parse_property("novalue").is_err());
        let soon = parse_deliver_at("+2s").unwrap();
        let now = crate::clock::now_millis();
        assert!(soon > now && soon <= now + 2_000);
        assert_eq!(parse_deliver_at("2026-01-01T00:00:00Z").unwrap(), 1_767_225_600_000);
        assert!(parse_deliver_at("+soon").is_err());
    }

    fn args(line: &str) -> ProduceArgs {
        use clap::Parser;
        match crate::cli::Cli::try_parse_from(line.split(' ')) {
            Ok(crate::cli::Cli {
                command: crate::cli::Cmd::Produce(a),
            }) => a,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn bodies(b: &Batch) -> Vec<String> {
        b.msgs
            .iter()
            .map(|m| String::from_utf8_lossy(&m.body).into_owned())
            .collect()
    }

    #[test]
    fn send_mode_flags_parse_and_conflict() {
        use clap::Parser;
        let a = args("ferromq produce --topic t");
        assert_eq!((a.mode, a.batch, a.inflight), (SendMode::Sync, 1, None));
        assert!(a.check().is_ok());
        let a = args("ferromq produce --topic t --mode async --inflight 8 --batch 5 --sharding-key-from-line");
        assert_eq!((a.mode, a.batch, a.inflight), (SendMode::Async, 5, Some(8)));
        assert!(a.check().is_ok());
        let a = args("ferromq produce --topic t --mode oneway --sharding-key k --key lookup");
        assert_eq!(
            (a.sharding_key.as_deref(), a.key.as_deref()),
            (Some("k"), Some("lookup"))
        );
        assert!(args("ferromq produce --topic t --count 9 --size 3 --batch 4")
            .check()
            .is_ok());
        assert!(args("ferromq produce --topic t --inflight 2").check().is_err());
        assert!(args("ferromq produce --topic t --mode oneway --inflight 2")
            .check()
            .is_err());
        for bad in [
            "ferromq produce --topic t --mode maybe",
            "ferromq produce --topic t --batch 0",
            "ferromq produce --topic t --mode async --inflight 0",
            "ferromq produce --topic t --sharding-key=",
            "ferromq produce --topic t --sharding-key k --sharding-key-from-line",
            "ferromq produce --topic t --count 9 --size 3 --mode sync",
            "ferromq produce --topic t --count 9 --size 3 --inflight 3",
            "ferromq produce --topic t --count 9 --size 3 --sharding-key k",
            "ferromq produce --topic t --count 9 --size 3 --sharding-key-from-line",
        ] {
            assert!(crate::cli::Cli::try_parse_from(bad.split(' ')).is_err(), "{bad}");
        }
    }

    #[test]
    fn lines_batch_per_key_and_bad_lines_name_their_number() {
        let a = args("ferromq produce --topic t --batch 2 --sharding-key-from-line");
        let mut b = Batcher::new(&a);
        assert!(b.push(&a, 1, b"x\tx1").unwrap().is_empty());
        assert!(b.push(&a, 2, b"y\ty1\twith a tab").unwrap().is_empty());
        let ready = b.push(&a, 3, b"x\tx2").unwrap();
        assert_eq!(ready.len(), 1);
        assert_eq!(
            (ready[0].key.as_deref(), bodies(&ready[0])),
            (Some("x"), vec!["x1".into(), "x2".into()])
        );
        assert!(b.push(&a, 4, b"z\tz1").unwrap().is_empty());
        let e = b.push(&a, 5, b"no tab").unwrap_err();
        assert!(e.starts_with("line 5: no TAB"), "{e}");
        assert!(b
            .push(&a, 6, b"\tbody")
            .unwrap_err()
            .starts_with("line 6: empty sharding key"));
        assert!(b
            .push(&a, 7, b"k\t\xff")
            .unwrap_err()
            .starts_with("line 7: not valid UTF-8"));
        let rest = b.drain();
        let rest: Vec<_> = rest.iter().map(|r| (r.key.clone(), bodies(r))).collect();
        assert_eq!(
            rest,
            [
                (Some("y".to_string()), vec!["y1\twith a tab".to_string()]),
                (Some("z".to_string()), vec!["z1".to_string()])
            ]
        );

        let a = args("ferromq produce --topic t --batch 3 --sharding-key k");
        let mut b = Batcher::new(&a);
        let mut sent = Vec::new();
        for n in 1..=7u64 {
            sent.extend(b.push(&a, n, format!("{n}\tline").as_bytes()).unwrap());
        }
        sent.extend(b.drain());
        let sizes: Vec<usize> = sent.iter().map(|s| s.msgs.len()).collect();
        assert_eq!(sizes, [3, 3, 1]);
        assert!(sent.iter().all(|s| s.key.as_deref() == Some("k")));
        assert_eq!(bodies(&sent[0])[0], "1\tline", "with a fixed key, the line is the body");
    }

    #[test]
    fn partial_key_batches_are_bounded() {
        let a = args("ferromq produce --topic t --batch 1000 --sharding-key-from-line");
        let mut b = Batcher::new(&a);
        let mut sent = Vec::new();
        for n in 1..=(MAX_BUFFERED as u64 + 10) {
            sent.extend(b.push(&a, n, format!("key-{n}\tbody").as_bytes()).unwrap());
        }
        assert_eq!(sent.len(), 10, "the oldest partial batches go out");
        assert_eq!(sent[0].key.as_deref(), Some("key-1"));
        assert_eq!(b.buffered, MAX_BUFFERED);
    }
}
