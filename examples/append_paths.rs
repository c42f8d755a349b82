//! Measures the two candidate commitlog append paths on this machine:
//! memcpy into an mmap'ed, pre-allocated segment versus `pwrite` into the
//! same kind of file, each without flushing (async flush) and with one
//! durability flush per 64 records (sync flush, group commit).
//!
//! `cargo run --release --example append_paths [DIR] [RECORDS]`
//! (default: a temp dir under ./target, 200_000 records of 1 KiB).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::time::Instant;

const RECORD: usize = 1024;
const GROUP: usize = 64;

fn preallocated(path: &std::path::Path, len: u64) -> std::io::Result<std::fs::File> {
    let _ = std::fs::remove_file(path);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    ferromq::store::mmap_file::reserve_space(&f, len as usize)?;
    Ok(f)
}

fn report(name: &str, n: usize, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{name:<28} {:>10.0} records/s {:>8.1} MiB/s",
        n as f64 / secs,
        (n * RECORD) as f64 / secs / (1 << 20) as f64
    );
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = args
        .get(1)
        .map_or_else(|| std::path::PathBuf::from("target/append_paths"), Into::into);
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(200_000);
    std::fs::create_dir_all(&dir)?;
    let len = (n * RECORD) as u64;
    let record = vec![0x5Au8; RECORD];

    for sync in [false, true] {
        let suffix = if sync { "+flush/64" } else { "" };
        let f = preallocated(&dir.join("mmap"), len)?;
        let map = memmap2::MmapRaw::map_raw(&f)?;
        let started = Instant::now();
        for i in 0..n {
            // SAFETY: in bounds of the mapping; only this thread touches it.
            unsafe { std::ptr::copy_nonoverlapping(record.as_ptr(), map.as_mut_ptr().add(i * RECORD), RECORD) };
            if sync && (i + 1) % GROUP == 0 {
                map.flush_range((i + 1 - GROUP) * RECORD, GROUP * RECORD)?;
            }
        }
        report(&format!("mmap memcpy{suffix}"), n, started);

        let f = preallocated(&dir.join("pwrite"), len)?;
        let started = Instant::now();
        for i in 0..n {
            f.write_all_at(&record, (i * RECORD) as u64)?;
            if sync && (i + 1) % GROUP == 0 {
                f.sync_data()?;
            }
        }
        report(&format!("pwrite{suffix}"), n, started);
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
