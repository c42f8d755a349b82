//! A full disk against a real broker whose data directory is a small tmpfs
//! mounted (and unmounted) by each test; a ballast file next to the data
//! directory fills it. Where mounting is not allowed (not root, no
//! CAP_SYS_ADMIN) each test says so and passes without running.
//!
//! * Above the refuse watermark sends get `DISK_FULL`, reads and
//!   consumption go on, and sends are accepted again by themselves once
//!   space is back.
//! * With the watermarks off, a write that finds no space (a segment or a
//!   consume-queue file that cannot be allocated) refuses the batch:
//!   nothing acknowledged is lost or unreadable; a `kill -9` while full
//!   and a restart on the still-full disk work.
//! * The clean and force-clean watermarks drive the retention cleaner, and
//!   segments holding a delayed message are kept until the disk forces
//!   them out (counted).

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// A tmpfs of a few MiB mounted on a temporary directory, unmounted on drop.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    /// Mounts `mib` MiB, or `None` (with the reason on stderr) where that
    /// is not allowed.
    fn mount(mib: u64) -> Option<SmallFs> {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0755"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallFs { dir }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a {mib} MiB tmpfs (needs root or CAP_SYS_ADMIN): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn data(&self) -> PathBuf {
        self.path().join("data")
    }

    fn ballast(&self) -> PathBuf {
        self.path().join("ballast")
    }

    /// (total, free) bytes.
    fn usage(&self) -> (u64, u64) {
        let c = std::ffi::CString::new(self.path().to_str().expect("utf-8")).expect("path");
        // SAFETY: statvfs fills the zeroed struct; the path is NUL-terminated.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        let f = st.f_frsize as u64;
        (st.f_blocks as u64 * f, st.f_bavail as u64 * f)
    }

    /// Grows the ballast file until the file system is `ratio` used.
    fn fill_to(&self, ratio: f64) {
        let (total, free) = self.usage();
        let target_used = (total as f64 * ratio) as u64;
        let used = total - free;
        if target_used > used {
            self.grow_ballast(target_used - used);
        }
    }

    /// Grows the ballast until only `left` bytes are free (or none).
    fn fill_leaving(&self, left: u64) {
        let (_, free) = self.usage();
        if free > left {
            self.grow_ballast(free - left);
        }
    }

    fn grow_ballast(&self, by: u64) {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.ballast())
            .expect("ballast");
        let at = f.metadata().expect("stat").len();
        use std::os::fd::AsRawFd;
        // SAFETY: plain system call on an open descriptor.
        let ret = unsafe { libc::posix_fallocate(f.as_raw_fd(), at as libc::off_t, by as libc::off_t) };
        // A full file system may take less than asked: fill what is left.
        if ret != 0 {
            fill_with_writes(&f);
        }
    }

    fn drop_ballast(&self) {
        std::fs::remove_file(self.ballast()).expect("remove ballast");
    }
}

/// Appends 4 KiB blocks to `f` until the file system refuses one.
fn fill_with_writes(mut f: &File) {
    use std::io::Write;
    let block = [0u8; 4096];
    while f.write_all(&block).is_ok() {}
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        // Lazy: a broker killed a moment ago may still hold a file open.
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// 1 MiB segments, 1000-entry consume-queue files, a small key index, the
/// cleaner and disk guard every 200 ms, plus `extra`.
fn env_with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut env = small_store_env();
    env.extend([
        ("FERROMQ__STORE__CLEAN_INTERVAL_MS", "200"),
        ("FERROMQ__STORE__INDEX_SLOTS", "1024"),
        ("FERROMQ__STORE__INDEX_ENTRIES", "1000"),
        ("FERROMQ__BROKER__AUTO_CREATE_TOPICS", "false"),
    ]);
    env.extend_from_slice(extra);
    env
}

fn create_topic(ns: &str, topic: &str, queues: u32) {
    cli_ok(ns, &["topic", "create", topic, "--queues", &queues.to_string()]);
}

/// Lines `prefix-<i>` padded to `len` bytes.
fn lines(prefix: &str, range: std::ops::Range<usize>, len: usize) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i:06}-{}", "x".repeat(len))).collect()
}

/// `produce` of `lines` that may fail part way: the acks it printed, and
/// its stderr when it failed.
fn produce_some(ns: &str, topic: &str, lines: &[String]) -> (Vec<Ack>, Option<String>) {
    let input = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    let out = cli_with_input(ns, &["produce", "--topic", topic], input.as_bytes());
    let acks = parse_acks(&String::from_utf8_lossy(&out.stdout));
    let err = (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned());
    (acks, err)
}

/// Every message of `topic` from the start, as (queue, offset, body).
fn read_all(ns: &str, topic: &str, expect: usize) -> Vec<(u64, u64, String)> {
    let count = expect.to_string();
    let args = [
        "consume",
        "--topic",
        topic,
        "--from",
        "earliest",
        "--format",
        "json",
        "--count",
        &count,
        "--idle-timeout",
        "3",
    ];
    let out = cli(ns, &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let all: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
        .collect();
    assert!(
        out.status.success() && all.len() == expect,
        "consume read {} of {expect}: {}",
        all.len(),
        String::from_utf8_lossy(&out.stderr)
    );
    all.iter()
        .map(|m| {
            (
                m["queue"].as_u64().expect("queue"),
                m["offset"].as_u64().expect("offset"),
                m["body"].as_str().expect("body").to_string(),
            )
        })
        .collect()
}

fn assert_disk_full_message(err: &str) {
    assert!(err.contains("DISK_FULL"), "{err}");
    assert!(err.contains("disk full:") && err.contains("% used"), "{err}");
}

#[test]
fn above_the_refuse_watermark_sends_are_refused_reads_go_on_and_sends_resume_by_themselves() {
    let Some(fs) = SmallFs::mount(16) else { return };
    // RocketMQ's defaults; forced cleaning has nothing to delete here (one
    // segment).
    let env = env_with(&[
        ("FERROMQ__STORE__DISK_CLEAN_RATIO", "0.75"),
        ("FERROMQ__STORE__DISK_FORCE_CLEAN_RATIO", "0.85"),
        ("FERROMQ__STORE__DISK_REFUSE_RATIO", "0.90"),
    ]);
    let broker = ServerProcess::broker(&fs.data(), &[], &env);
    let (ns, web) = (broker.namesrv_addr.clone(), broker.http_addr.clone());
    create_topic(&ns, "w", 2);
    let sent = lines("w", 0..100, 100);
    let acks = produce(&ns, "w", &[], &sent);

    fs.fill_to(0.95);
    let mut refusal = String::new();
    // Until the guard's next reading, sends are still taken.
    let mut late = 0;
    assert!(
        wait_until(Duration::from_secs(10), || {
            match produce_some(&ns, "w", &lines("late", 0..1, 10)) {
                (_, Some(err)) => {
                    refusal = err;
                    true
                }
                (a, None) => {
                    late += a.len();
                    false
                }
            }
        }),
        "sends still accepted at 95% used"
    );
    assert_disk_full_message(&refusal);
    assert!(refusal.contains("90%"), "names the refuse ratio: {refusal}");
    assert!(broker.stderr().contains("disk full: sends are refused"));
    let metrics = http_get(&web, "/metrics");
    assert_eq!(metric_sum(&metrics, "ferromq_store_disk_refusing_sends", &[]), 1.0);

    // Reads and consumption go on.
    let read = read_all(&ns, "w", 100 + late);
    let bodies: std::collections::HashSet<_> = read.iter().map(|r| r.2.clone()).collect();
    assert!(sent.iter().all(|l| bodies.contains(l)));
    assert_eq!(acks.len(), 100);

    // Space comes back: sends are accepted without a restart.
    fs.drop_ballast();
    let mut resumed = Vec::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            let (a, err) = produce_some(&ns, "w", &lines("after", 0..1, 10));
            resumed = a;
            err.is_none()
        }),
        "sends not accepted again"
    );
    assert_eq!(resumed.len(), 1);
    assert!(broker.stderr().contains("sends are accepted again"));
}

#[test]
fn a_write_that_finds_no_space_is_refused_whole_and_nothing_acknowledged_is_lost_even_across_kill_9() {
    let Some(fs) = SmallFs::mount(12) else { return };
    // Watermarks off: only a write that truly finds no space refuses.
    let env = env_with(&[
        ("FERROMQ__STORE__DISK_CLEAN_RATIO", "1.0"),
        ("FERROMQ__STORE__DISK_FORCE_CLEAN_RATIO", "1.0"),
        ("FERROMQ__STORE__DISK_REFUSE_RATIO", "1.0"),
    ]);
    let listen = free_addr();
    let mut broker = ServerProcess::broker_at(&fs.data(), &listen, &[], &env);
    let ns = broker.namesrv_addr.clone();
    // One queue, consume-queue files of 1000 entries (20 KB), each created
    // when the previous one is half used: after 1900 messages the files
    // for entries up to 3000 exist.
    create_topic(&ns, "n", 1);
    let mut acked = produce(&ns, "n", &[], &lines("a", 0..1900, 200));

    // All but 8 KiB of the disk used (the original finding): the file for
    // entries from 3000 on cannot be created, so the send of message 3000
    // is refused; nothing after it is taken either.
    fs.fill_leaving(8 * 1024);
    let (more, err) = produce_some(&ns, "n", &lines("b", 0..3000, 200));
    let err = err.expect("a send was refused");
    assert_disk_full_message(&err);
    assert!(
        !more.is_empty() && more.len() <= 1100,
        "what fits the allocated files is taken, nothing more: {}",
        more.len()
    );
    acked.extend(more);
    // Every acknowledged message is readable, nothing else is.
    let read = read_all(&ns, "n", acked.len());
    assert_eq!(read.len(), acked.len());
    for (i, (q, off, _)) in read.iter().enumerate() {
        assert_eq!((*q, *off), (0, i as u64), "no gap, no extra");
    }
    // Sends stay refused while the disk is full.
    assert_disk_full_message(&produce_some(&ns, "n", &lines("c", 0..1, 10)).1.expect("refused"));

    // kill -9 on the full disk, then a restart on the still-full disk.
    fs.fill_leaving(0);
    broker.kill9();
    let broker = ServerProcess::broker_at(&fs.data(), &listen, &[], &env);
    let ns = broker.namesrv_addr.clone();
    assert!(
        broker.stderr().contains("disk full: sends are refused"),
        "{}",
        broker.stderr()
    );
    let read = read_all(&ns, "n", acked.len());
    assert_eq!(read.len(), acked.len(), "everything acknowledged survives");
    assert_disk_full_message(&produce_some(&ns, "n", &lines("d", 0..1, 10)).1.expect("refused"));

    // Space comes back: sends resume, the queue continues without a gap.
    fs.drop_ballast();
    let mut after = Vec::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            let (a, err) = produce_some(&ns, "n", &lines("e", 0..300, 200));
            after.extend(a);
            err.is_none()
        }),
        "sends not accepted again"
    );
    let total = acked.len() + after.len();
    let read = read_all(&ns, "n", total);
    assert_eq!(read.len(), total);
    assert!(read.iter().enumerate().all(|(i, r)| r.1 == i as u64));
}

/// Segment files in the broker's commitlog directory.
fn segments(data: &Path) -> usize {
    files_in(&data.join("commitlog")).len()
}

/// An hour of day that is not the current local one, as `delete_when`
/// takes it.
fn another_hour() -> String {
    let out = Command::new("date").arg("+%H").output().expect("date");
    let now: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("hour");
    format!("{:02}", (now + 12) % 24)
}

#[test]
fn the_clean_watermark_overrides_delete_when_and_the_force_watermark_deletes_unexpired_and_held_segments() {
    let Some(fs) = SmallFs::mount(16) else { return };
    let hour = another_hour();
    let hour: &'static str = Box::leak(hour.into_boxed_str());
    let env = env_with(&[
        ("FERROMQ__STORE__RETENTION_MS", "1000"),
        ("FERROMQ__STORE__DELETE_WHEN", hour),
        ("FERROMQ__STORE__DISK_CLEAN_RATIO", "0.55"),
        ("FERROMQ__STORE__DISK_FORCE_CLEAN_RATIO", "0.75"),
        ("FERROMQ__STORE__DISK_REFUSE_RATIO", "0.97"),
    ]);
    let broker = ServerProcess::broker(&fs.data(), &[], &env);
    let (ns, web) = (broker.namesrv_addr.clone(), broker.http_addr.clone());
    create_topic(&ns, "c", 1);
    // ~4 MiB: five segments, four of them expired a second later.
    let _ = produce(&ns, "c", &[], &lines("c", 0..4000, 1000));
    std::thread::sleep(Duration::from_millis(1500));
    let before = segments(&fs.data());
    assert!(before >= 5, "{before} segments");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        segments(&fs.data()),
        before,
        "delete_when={hour} keeps expired segments"
    );

    // Above the clean watermark: expired segments go at once.
    fs.fill_to(0.60);
    assert!(
        wait_until(Duration::from_secs(10), || segments(&fs.data()) == 1),
        "{} segments left",
        segments(&fs.data())
    );
    // (The files are unlinked just before the cleaner logs it.)
    assert!(wait_until(Duration::from_secs(5), || broker
        .stderr()
        .contains("retention: deleted commitlog segments")));
    fs.drop_ballast();

    // A delayed message (two hours) now sits at the start of the log: it
    // holds every segment from its own on, expired or not.
    let delayed = cli_with_input(&ns, &["produce", "--topic", "c", "--delay-level", "18"], b"delayed\n");
    assert!(delayed.status.success(), "{}", String::from_utf8_lossy(&delayed.stderr));
    let _ = produce(&ns, "c", &[], &lines("h", 0..4000, 1000));
    std::thread::sleep(Duration::from_millis(1500));
    fs.fill_to(0.60);
    std::thread::sleep(Duration::from_millis(1000));
    let held = segments(&fs.data());
    assert!(held >= 5, "held segments were deleted: {held} left");

    // Above the force watermark the oldest go, held or not, until the disk
    // is back under it; what that dropped is counted.
    fs.fill_to(0.80);
    assert!(
        wait_until(Duration::from_secs(10), || segments(&fs.data()) < held),
        "{} segments left",
        segments(&fs.data())
    );
    assert!(
        wait_until(Duration::from_secs(5), || broker
            .stderr()
            .contains("messages still needed")),
        "{}",
        broker.stderr()
    );
    assert!(broker.stderr().contains("force-clean watermark"));
    let metrics = http_get(&web, "/metrics");
    assert!(
        metric_sum(
            &metrics,
            "ferromq_store_held_messages_dropped_total",
            &[("topic", "__delay")]
        ) >= 1.0
    );
    // With the hold gone, age retention takes every expired segment; the
    // newest messages are intact, from the new minimum on.
    assert!(
        wait_until(Duration::from_secs(10), || segments(&fs.data()) == 1),
        "{} segments left",
        segments(&fs.data())
    );
    let v: serde_json::Value = serde_json::from_str(&http_get(&web, "/api/topics/c")).expect("topic JSON");
    let (min, max) = (
        v["queues"][0]["min_offset"].as_u64().expect("min"),
        v["queues"][0]["max_offset"].as_u64().expect("max"),
    );
    assert_eq!(max, 8000);
    assert!(min > 0, "nothing was deleted from the queue");
    let rest = read_all(&ns, "c", (max - min) as usize);
    assert_eq!(rest.len() as u64, max - min);
    assert_eq!(rest.first().map(|r| r.1), Some(min));
    assert!(rest.last().is_some_and(|r| r.2.starts_with("h-003999-")));
}
