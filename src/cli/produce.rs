//! `ferromq produce`: stdin lines as messages, acknowledged one by one, or
//! a generated load with `--count`.

use std::io::Write;
use std::time::Instant;

use bytes::Bytes;
use clap::Args;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::task::JoinSet;

use super::{CliResult, NamesrvOpt};
use crate::client::{Producer, SendResult};
use crate::message::Message;

/// Batches of a `--count` run in flight at once.
const PIPELINE: usize = 8;

/// `ferromq produce` flags.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Destination topic.
    #[arg(long)]
    pub topic: String,
    /// Tag of every message.
    #[arg(long)]
    pub tag: Option<String>,
    /// Key of every message (indexed for `message find`).
    #[arg(long)]
    pub key: Option<String>,
    /// User property `K=V` (repeatable).
    #[arg(long = "property", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
    /// Send this many generated messages instead of stdin lines.
    #[arg(long, requires = "size")]
    pub count: Option<u64>,
    /// Body size of generated messages, in bytes.
    #[arg(long)]
    pub size: Option<usize>,
    /// Messages per send request with --count.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
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

/// Runs `produce`.
pub async fn run(a: ProduceArgs) -> CliResult {
    let producer = Producer::new(a.ns.client_config());
    match (a.count, a.size) {
        (Some(count), Some(size)) => generated(&a, &producer, count, size).await,
        _ => from_stdin(&a, &producer).await,
    }
}

fn print_ack(r: &SendResult) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{} {} {} {}", r.queue_id, r.queue_offset, r.msg_id, r.broker_name)?;
    out.flush()
}

async fn from_stdin(a: &ProduceArgs, producer: &Producer) -> CliResult {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let line = line.strip_suffix('\r').unwrap_or(&line).to_string();
        let result = producer.send(a.message(Bytes::from(line))).await?;
        print_ack(&result)?;
    }
    Ok(())
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
}
