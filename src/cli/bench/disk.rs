//! `ferromq bench disk`: what this machine's disk can do when written like
//! the commitlog — sequential appends to a pre-allocated file, made durable
//! with fdatasync — so broker figures can be read as a fraction of it.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use crate::cli::CliResult;
use crate::store::mmap_file::reserve_space;

/// `bench disk` flags.
#[derive(Debug, Clone, Args)]
pub struct DiskOpts {
    /// Directory to write in (use the broker's data directory's disk).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// MiB written for each bandwidth figure: as much as the broker run it
    /// is compared with (1 000 000 × 1 KiB is about 1 GiB), because page-cache
    /// pages the machine has never touched cost more than reused ones.
    #[arg(long, default_value_t = 1024)]
    pub mib: u64,
    /// Bytes per write (each followed by fdatasync) for the bandwidth figure.
    #[arg(long, default_value_t = 1 << 20)]
    pub chunk: usize,
    /// fdatasync calls (after a 4 KiB write each) for the latency figure.
    #[arg(long, default_value_t = 500)]
    pub syncs: u64,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Runs the disk benchmark.
pub fn run(o: DiskOpts) -> CliResult {
    let v = measure_disk(&o)?;
    if o.json {
        println!("{v}");
    } else {
        println!("{}", describe(&v));
    }
    Ok(())
}

/// One line for a `bench disk` result.
pub fn describe(v: &serde_json::Value) -> String {
    format!(
        "disk {}: page-cache write {} MiB/s; sequential write+fdatasync {} MiB/s ({} KiB chunks, {} MiB each); fdatasync after 4 KiB: p50 {} µs p99 {} µs max {} µs",
        v["dir"].as_str().unwrap_or("?"),
        v["page_cache_write_mib_per_sec"],
        v["fdatasync_bandwidth_mib_per_sec"],
        v["chunk_bytes"].as_u64().unwrap_or(0) / 1024,
        v["mib"],
        v["fdatasync_latency_us"]["p50"],
        v["fdatasync_latency_us"]["p99"],
        v["fdatasync_latency_us"]["max"]
    )
}

/// Measures the limits in fresh files under `o.dir` and removes them:
/// - page-cache write: sequential `pwrite`s into a pre-allocated file, no
///   sync (what bounds an async-flush broker);
/// - write+fdatasync: the same with an `fdatasync` after every chunk (what
///   bounds a sync-flush broker);
/// - fdatasync latency after a 4 KiB write.
pub fn measure_disk(o: &DiskOpts) -> Result<serde_json::Value, Box<dyn std::error::Error + Send + Sync>> {
    let base = o.dir.join(format!(".ferromq-bench-disk-{}", std::process::id()));
    let paths = [base.with_extension("cache"), base.with_extension("sync")];
    let result = measure(o, &paths);
    for p in &paths {
        let _ = std::fs::remove_file(p);
    }
    result
}

fn fresh_file(path: &Path, len: u64) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    reserve_space(&f, len as usize)?;
    Ok(f)
}

/// Writes `total` bytes front to back in `chunk`-sized pwrites, calling
/// fdatasync after each when `sync`; returns MiB/s.
fn sequential(f: &File, total: u64, chunk: &[u8], sync: bool) -> std::io::Result<f64> {
    let started = Instant::now();
    let mut pos = 0u64;
    while pos < total {
        let n = chunk.len().min((total - pos) as usize);
        f.write_all_at(&chunk[..n], pos)?;
        if sync {
            f.sync_data()?;
        }
        pos += n as u64;
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    Ok(total as f64 / secs / (1 << 20) as f64)
}

fn measure(o: &DiskOpts, paths: &[PathBuf; 2]) -> Result<serde_json::Value, Box<dyn std::error::Error + Send + Sync>> {
    let total = o.mib.max(1) << 20;
    let chunk = vec![0xA5u8; o.chunk.max(4096)];
    // Both files stay until the end: deleting the first would hand its
    // (already touched) pages to the second and flatter it.
    let cached = fresh_file(&paths[0], total)?;
    let page_cache = sequential(&cached, total, &chunk, false)?;
    let f = fresh_file(&paths[1], total + o.syncs * 4096)?;
    let bandwidth = sequential(&f, total, &chunk, true)?;

    let mut lat = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let small = vec![0x5Au8; 4096];
    for i in 0..o.syncs {
        f.write_all_at(&small, total + i * 4096)?;
        let t = Instant::now();
        f.sync_data()?;
        lat.record((t.elapsed().max(Duration::from_micros(1)).as_micros() as u64).min(60_000_000))?;
    }
    let round = |x: f64| (x * 10.0).round() / 10.0;
    Ok(json!({
        "benchmark": "disk",
        "dir": o.dir.display().to_string(),
        "mib": o.mib.max(1),
        "page_cache_write_mib_per_sec": round(page_cache),
        "fdatasync_bandwidth_mib_per_sec": round(bandwidth),
        "chunk_bytes": chunk.len(),
        "fdatasync_latency_us": {"p50": lat.value_at_quantile(0.5), "p99": lat.value_at_quantile(0.99), "max": lat.max(), "count": lat.len()},
    }))
}
