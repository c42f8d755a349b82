//! `ferromq bench`: load generators printing a progress line per second and
//! a summary with throughput and latency percentiles (HdrHistogram), and
//! `bench disk`, the machine's own flush limits measured the way the broker
//! writes.

pub mod disk;
pub mod report;
pub mod runs;

use clap::{Args, Subcommand};

use super::{CliResult, NamesrvOpt};

/// `ferromq bench …`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What to measure.
    #[command(subcommand)]
    pub command: BenchCmd,
}

/// Options shared by the broker benchmarks.
#[derive(Debug, Clone, Args)]
pub struct LoadOpts {
    /// Messages to send (or receive).
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Messages per send request.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// `produce`: send requests each producer keeps in flight (1: one at a
    /// time, the shape of a single synchronous sender).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub inflight: u64,
    /// Producer tasks (each with its own connections).
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Consumer tasks (queues are split between them).
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Queues of the benchmark topic (created if missing).
    #[arg(long, default_value_t = 8)]
    pub queues: u32,
    /// Topic.
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// `produce`: spread batches over this many topics `<topic>-<i>`, each
    /// with --queues queues (e.g. 10 × 1000 = 10 000 queues).
    #[arg(long, default_value_t = 1)]
    pub topics: u32,
    /// Stop after this many seconds even if messages remain.
    #[arg(long)]
    pub duration: Option<u64>,
    /// Target rate for `e2e`, messages per second.
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    /// `produce`: first run `bench disk` in this directory (the broker's
    /// data disk) with as many MiB as the run writes, then report the
    /// produce rate as a fraction of its page-cache and fdatasync limits.
    #[arg(long)]
    pub disk_dir: Option<std::path::PathBuf>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub ns: NamesrvOpt,
}

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Batched sends, pipelined: producer throughput and batch latency.
    Produce(LoadOpts),
    /// Pull the topic from its start: consumer throughput.
    Consume(LoadOpts),
    /// Produce at --rate while consuming: produce-to-consume latency.
    E2e(LoadOpts),
    /// Single-message sync sends, one in flight: send latency.
    Latency(LoadOpts),
    /// Sequential write + fdatasync bandwidth and fdatasync latency.
    Disk(disk::DiskOpts),
}

/// Runs a benchmark.
pub async fn run(a: BenchArgs) -> CliResult {
    match a.command {
        BenchCmd::Produce(o) => runs::produce(o).await,
        BenchCmd::Consume(o) => runs::consume(o).await,
        BenchCmd::E2e(o) => runs::e2e(o).await,
        BenchCmd::Latency(o) => runs::latency(o).await,
        BenchCmd::Disk(o) => disk::run(o),
    }
}
