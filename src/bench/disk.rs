//! `ferromq bench disk`: what this machine's disk can do when written like
//! the commitlog — sequential appends to a pre-allocated file, made durable
//! with fdatasync — so broker figures can be read as a fraction of it.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
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
    /// MiB written for the bandwidth figure.
    #[arg(long, default_value_t = 256)]
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
    let path = o.dir.join(format!(".ferromq-bench-disk-{}", std::process::id()));
    let result = measure(&o, &path);
    let _ = std::fs::remove_file(&path);
    let v = result?;
    if o.json {
        println!("{v}");
    } else {
        println!(
            "disk {}: sequential write+fdatasync {} MiB/s ({} KiB chunks); fdatasync after 4 KiB: p50 {} µs p99 {} µs max {} µs",
            o.dir.display(),
            v["fdatasync_bandwidth_mib_per_sec"],
            o.chunk / 1024,
            v["fdatasync_latency_us"]["p50"],
            v["fdatasync_latency_us"]["p99"],
            v["fdatasync_latency_us"]["max"]
        );
    }
    Ok(())
}

fn measure(
    o: &DiskOpts,
    path: &std::path::Path,
) -> Result<serde_json::Value, Box<dyn std::error::Error + Send + Sync>> {
    let total = o.mib << 20;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    reserve_space(&f, (total + o.syncs * 4096) as usize)?;
    let chunk = vec![0xA5u8; o.chunk.max(4096)];
    let started = Instant::now();
    let mut pos = 0u64;
    while pos < total {
        let n = chunk.len().min((total - pos) as usize);
        f.write_all_at(&chunk[..n], pos)?;
        f.sync_data()?;
        pos += n as u64;
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let bandwidth = total as f64 / secs / (1 << 20) as f64;

    let mut lat = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let small = vec![0x5Au8; 4096];
    for i in 0..o.syncs {
        f.write_all_at(&small, total + i * 4096)?;
        let t = Instant::now();
        f.sync_data()?;
        lat.record((t.elapsed().max(Duration::from_micros(1)).as_micros() as u64).min(60_000_000))?;
    }
    Ok(json!({
        "benchmark": "disk",
        "dir": o.dir.display().to_string(),
        "fdatasync_bandwidth_mib_per_sec": (bandwidth * 10.0).round() / 10.0,
        "chunk_bytes": chunk.len(),
        "fdatasync_latency_us": {"p50": lat.value_at_quantile(0.5), "p99": lat.value_at_quantile(0.99), "max": lat.max(), "count": lat.len()},
    }))
}
