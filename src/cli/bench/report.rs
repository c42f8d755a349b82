//! Live progress lines and the final summary of a benchmark.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

/// Counters shared by the workers of one run, read by the progress printer.
#[derive(Debug)]
pub struct Meter {
    started: Instant,
    messages: AtomicU64,
    bytes: AtomicU64,
    latencies: Mutex<Histogram<u64>>,
}

impl Meter {
    /// A meter starting now. Latencies are recorded in microseconds.
    pub fn new() -> Arc<Meter> {
        // Constant, valid bounds: 1 µs to 60 s, 3 significant figures.
        let hist = Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
        Arc::new(Meter {
            started: Instant::now(),
            messages: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            latencies: Mutex::new(hist),
        })
    }

    /// Counts `n` messages of `bytes` total.
    pub fn add(&self, n: u64, bytes: u64) {
        self.messages.fetch_add(n, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Records one latency.
    pub fn record(&self, latency: Duration) {
        if let Ok(mut h) = self.latencies.lock() {
            let _ = h.record((latency.as_micros() as u64).clamp(1, 60_000_000));
        }
    }

    /// Messages counted so far.
    pub fn messages(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }

    /// Prints `[Ns] rate msg/s, MiB/s` to stderr every second until `done`.
    pub fn spawn_progress(self: &Arc<Self>, label: &'static str) -> tokio::task::JoinHandle<()> {
        let m = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let (mut last_n, mut last_b) = (0u64, 0u64);
            loop {
                tick.tick().await;
                let (n, b) = (m.messages.load(Ordering::Relaxed), m.bytes.load(Ordering::Relaxed));
                eprintln!(
                    "[{:>3}s] {label}: {:>10} msg/s {:>8.1} MiB/s  (total {n})",
                    m.started.elapsed().as_secs(),
                    n - last_n,
                    (b - last_b) as f64 / (1 << 20) as f64
                );
                (last_n, last_b) = (n, b);
            }
        })
    }

    /// The summary: totals, rates and latency percentiles.
    pub fn summary(&self, label: &str, latency_of: &str) -> serde_json::Value {
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let (n, b) = (
            self.messages.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        );
        let Ok(h) = self.latencies.lock().map(|h| h.clone()) else {
            return json!({"benchmark": label, "error": "latency histogram unavailable"});
        };
        let p = |q: f64| h.value_at_quantile(q);
        json!({
            "benchmark": label,
            "messages": n,
            "bytes": b,
            "seconds": (secs * 1000.0).round() / 1000.0,
            "msgs_per_sec": (n as f64 / secs).round(),
            "mib_per_sec": ((b as f64 / secs / (1 << 20) as f64) * 10.0).round() / 10.0,
            "latency_of": latency_of,
            "latency_us": {"count": h.len(), "p50": p(0.5), "p90": p(0.9), "p99": p(0.99), "p999": p(0.999), "max": h.max()},
        })
    }
}

/// A thread that sleeps 1 ms at a time and notes how late it wakes: on a
/// virtual machine both vCPUs can be paused for tens of milliseconds, which
/// no broker can hide from a latency percentile. Reported beside latency
/// figures so that a tail can be told apart from the broker's own delays.
#[derive(Debug)]
pub struct StallProbe {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<(u64, Duration)>>,
}

/// A wake-up this much later than asked for counts as a stall.
const STALL: Duration = Duration::from_millis(2);

impl StallProbe {
    /// Starts probing.
    pub fn start() -> StallProbe {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bench-stall-probe".into())
            .spawn(move || {
                let (mut stalls, mut longest) = (0u64, Duration::ZERO);
                let tick = Duration::from_millis(1);
                while !flag.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    std::thread::sleep(tick);
                    let late = t.elapsed().saturating_sub(tick);
                    if late > STALL {
                        stalls += 1;
                    }
                    longest = longest.max(late);
                }
                (stalls, longest)
            })
            .ok();
        StallProbe { stop, thread }
    }

    /// Stops probing and adds `stalls` to `summary`: wake-ups later than
    /// 2 ms and the latest one.
    pub fn finish(mut self, summary: &mut serde_json::Value) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some((count, longest)) = self.thread.take().and_then(|t| t.join().ok()) {
            summary["stalls"] = json!({
                "over_2ms": count,
                "longest_us": longest.as_micros() as u64,
            });
        }
    }
}

/// Prints a summary as text or JSON.
pub fn print_summary(v: &serde_json::Value, json: bool) {
    if json {
        println!("{v}");
        return;
    }
    let l = &v["latency_us"];
    println!(
        "{}: {} messages, {} bytes in {} s: {} msg/s, {} MiB/s",
        v["benchmark"].as_str().unwrap_or("?"),
        v["messages"],
        v["bytes"],
        v["seconds"],
        v["msgs_per_sec"],
        v["mib_per_sec"]
    );
    println!(
        "latency of {} (µs): p50 {} p90 {} p99 {} p99.9 {} max {} (n={})",
        v["latency_of"].as_str().unwrap_or("?"),
        l["p50"],
        l["p90"],
        l["p99"],
        l["p999"],
        l["max"],
        l["count"]
    );
    if let Some(stalls) = v.get("stalls") {
        println!(
            "stalls seen by a thread sleeping 1 ms at a time: {} wake-ups over 2 ms late, the latest {} µs late",
            stalls["over_2ms"], stalls["longest_us"]
        );
    }
}
