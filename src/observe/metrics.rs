//! The Prometheus exposition (`/metrics`), through the `metrics` facade and
//! `metrics-exporter-prometheus`. Counters and histograms are recorded
//! where things happen (appends, flushes, deliveries, handlers); gauges that
//! are cheaper to read than to maintain (offsets, lag, actor figures, RSS,
//! disk usage) are set from their sources at scrape time. Every name is
//! documented in `docs/http.md`.

use std::path::Path;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use super::ActorTree;
use crate::store::disk::DiskStatus;
use crate::store::offsets::OffsetKey;
use crate::store::Store;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (once); `None` when another recorder
/// was installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
                ])
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .clone()
}

/// Resident set size of this process, bytes (Linux).
pub fn process_rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

/// The process's resident memory split by kind (Linux,
/// `/proc/self/status`): what the broker holds itself (`anon`: heap,
/// stacks, buffers) apart from pages of mapped files (`file`: the
/// commitlog, consume queues and indexes the kernel keeps cached and can
/// drop at any time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessMemory {
    /// Resident set size, bytes.
    pub rss: u64,
    /// Anonymous resident memory, bytes.
    pub anon: u64,
    /// Resident pages of mapped files, bytes.
    pub file: u64,
}

/// This process's [`ProcessMemory`] (zeros where `/proc` is unavailable).
pub fn process_memory() -> ProcessMemory {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    parse_status(&status, process_rss_bytes())
}

/// The `RssAnon` and `RssFile` lines (kB) of a `/proc/PID/status`.
fn parse_status(status: &str, rss: u64) -> ProcessMemory {
    let kb = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |v| v * 1024)
    };
    ProcessMemory {
        rss,
        anon: kb("RssAnon:"),
        file: kb("RssFile:"),
    }
}

/// Bytes the files under `dir` occupy on disk.
pub fn disk_usage_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_usage_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// Publishes a disk reading: `ferromq_store_disk_total_bytes`,
/// `_free_bytes`, `_used_bytes`, `_used_ratio`, `_level` (0 normal,
/// 1 clean, 2 force_clean, 3 refuse) and `_refusing_sends` (0 or 1). The
/// retention cleaner calls it every clean interval and [`refresh`] at
/// every scrape.
pub fn record_disk(status: &DiskStatus) {
    metrics::gauge!("ferromq_store_disk_total_bytes").set(status.usage.total_bytes as f64);
    metrics::gauge!("ferromq_store_disk_free_bytes").set(status.usage.free_bytes as f64);
    metrics::gauge!("ferromq_store_disk_used_bytes").set(status.usage.used_bytes() as f64);
    metrics::gauge!("ferromq_store_disk_used_ratio").set(status.usage.used_ratio());
    metrics::gauge!("ferromq_store_disk_level").set(status.level as u8 as f64);
    metrics::gauge!("ferromq_store_disk_refusing_sends").set(if status.refusing.is_some() { 1.0 } else { 0.0 });
}

/// Sets the scrape-time gauges from the actor tree and the store, with a
/// fresh disk reading ([`record_disk`]; the last reading if it fails).
pub fn refresh(tree: &ActorTree, store: &Store) {
    for a in tree.snapshot() {
        let labels = [("kind", a.kind.to_string()), ("id", a.id.clone())];
        metrics::gauge!("ferromq_actor_mailbox_depth", &labels).set(a.mailbox_depth as f64);
        metrics::counter!("ferromq_actor_messages_handled_total", &labels).absolute(a.handled);
        metrics::counter!("ferromq_actor_restarts_total", &labels).absolute(a.restarts);
    }
    metrics::counter!("ferromq_store_corrupt_records_total").absolute(store.log.corrupt_records());
    for (topic, cfg) in store.topics.all() {
        for queue in 0..cfg.queues {
            let max = store.queues.get(&topic, queue).map_or(0, |q| q.max_offset());
            metrics::gauge!("ferromq_queue_max_offset", "topic" => topic.clone(), "queue" => queue.to_string())
                .set(max as f64);
        }
    }
    for (OffsetKey { group, topic, queue }, committed) in store.offsets.all() {
        let max = store.queues.get(&topic, queue).map_or(0, |q| q.max_offset());
        let labels = [("group", group), ("topic", topic), ("queue", queue.to_string())];
        metrics::gauge!("ferromq_group_committed_offset", &labels).set(committed as f64);
        metrics::gauge!("ferromq_group_lag", &labels).set(max.saturating_sub(committed) as f64);
    }
    metrics::gauge!("ferromq_store_commitlog_bytes").set(store.log.write_pos() as f64);
    metrics::gauge!("ferromq_store_segments").set(store.log.segment_count() as f64);
    metrics::gauge!("ferromq_store_disk_usage_bytes").set(disk_usage_bytes(&store.data_dir()) as f64);
    record_disk(&store.disk.refresh().unwrap_or_else(|_| store.disk.status()));
    // The retention counters appear (at 0) before the first deletion.
    metrics::counter!("ferromq_store_segments_deleted_total").increment(0);
    metrics::counter!("ferromq_store_bytes_reclaimed_total").increment(0);
    let mem = process_memory();
    metrics::gauge!("ferromq_process_rss_bytes").set(mem.rss as f64);
    metrics::gauge!("ferromq_process_rss_anon_bytes").set(mem.anon as f64);
    metrics::gauge!("ferromq_process_rss_file_bytes").set(mem.file as f64);
    let (_, _, broker_conns, namesrv_conns) = super::totals::snapshot();
    metrics::gauge!("ferromq_connections", "role" => "broker").set(broker_conns as f64);
    metrics::gauge!("ferromq_connections", "role" => "namesrv").set(namesrv_conns as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_is_split_into_anonymous_and_file_pages() {
        let status =
            "Name:\tferromq\nVmRSS:\t  2100000 kB\nRssAnon:\t   20480 kB\nRssFile:\t 2079000 kB\nRssShmem:\t 0 kB\n";
        let m = parse_status(status, 7);
        assert_eq!((m.rss, m.anon, m.file), (7, 20480 * 1024, 2_079_000 * 1024));
        assert_eq!(parse_status("", 0), ProcessMemory::default());
        let live = process_memory();
        assert!(live.anon > 0 && live.rss >= live.anon, "{live:?}");
    }
}
