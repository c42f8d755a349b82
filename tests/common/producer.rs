//! A library `Producer` sending in a loop on its own thread, recording
//! acknowledgements and failures (for tests that kill brokers mid-stream).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One acknowledged send of a [`ProducerThread`].
#[derive(Debug, Clone)]
pub struct Sent {
    /// The body sent.
    pub body: String,
    /// The broker group that acknowledged it.
    pub broker: String,
    /// When the send started.
    pub started: Instant,
}

#[derive(Debug, Default)]
/// What a [`ProducerThread`] recorded.
pub struct ProduceLog {
    /// Acknowledged sends, in order.
    pub acked: Vec<Sent>,
    /// (when the send started, error)
    pub failed: Vec<(Instant, String)>,
}

fn record(
    log: &Mutex<ProduceLog>,
    r: Result<ferromq::client::ClientResult<ferromq::client::SendResult>, tokio::time::error::Elapsed>,
    body: String,
    started: Instant,
) {
    let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
    match r {
        Ok(Ok(res)) => l.acked.push(Sent {
            body,
            broker: res.broker_name,
            started,
        }),
        Ok(Err(e)) => l.failed.push((started, e.to_string())),
        Err(_) => l.failed.push((started, "no answer in 15 s".into())),
    }
}

/// A library `Producer` sending `<prefix>-<n>` to a topic in a loop on its
/// own thread and runtime, recording acknowledgements and failures.
pub struct ProducerThread {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<ProduceLog>>,
    handle: Option<JoinHandle<()>>,
}

impl ProducerThread {
    /// Starts sending at once, pausing `pause` between sends.
    pub fn start(ns: &str, topic: &str, prefix: &str, pause: Duration) -> ProducerThread {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(ProduceLog::default()));
        let (ns, topic, prefix) = (ns.to_string(), topic.to_string(), prefix.to_string());
        let (stop2, log2) = (stop.clone(), log.clone());
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("producer runtime");
            rt.block_on(async move {
                let cfg = ferromq::client::ClientConfig::new(ns.split(',').map(str::to_string));
                let producer = ferromq::client::Producer::new(cfg);
                let mut n = 0u64;
                while !stop2.load(Ordering::Relaxed) {
                    n += 1;
                    let b = format!("{prefix}-{n}");
                    let started = Instant::now();
                    let msg = ferromq::message::Message::new(topic.clone(), b.clone());
                    let r = tokio::time::timeout(Duration::from_secs(15), producer.send(msg)).await;
                    record(&log2, r, b, started);
                    tokio::time::sleep(pause).await;
                }
            });
        });
        ProducerThread {
            stop,
            log,
            handle: Some(handle),
        }
    }

    /// Acknowledged so far.
    pub fn acked(&self) -> Vec<Sent> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).acked.clone()
    }

    /// Failed so far.
    pub fn failed(&self) -> Vec<(Instant, String)> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).failed.clone()
    }

    /// Stops after the send in progress; returns everything recorded.
    pub fn finish(mut self) -> ProduceLog {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        std::mem::take(&mut *self.log.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for ProducerThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
