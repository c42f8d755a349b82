//! `ferromq store verify --data-dir DIR [--repair] [--format text|json]`:
//! the offline store checker (see [`crate::store::verify`]).
//!
//! Exit codes: 0 when the store is clean (after `--repair`: when the
//! second report is clean), 1 when problems were found and not repaired,
//! 2 on a usage or I/O error (including a data directory a broker holds).

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::output::Format;
use super::CliResult;
use crate::config::StoreSection;
use crate::store::commitlog::RecoveryReport;
use crate::store::verify::{verify, VerifyOptions, VerifyReport};
use crate::store::{StoreError, StoreErrorKind};

/// Exit code: nothing wrong.
pub const EXIT_CLEAN: i32 = 0;
/// Exit code: problems found (and not repaired).
pub const EXIT_PROBLEMS: i32 = 1;
/// Exit code: usage or I/O error; nothing was checked.
pub const EXIT_ERROR: i32 = 2;

const EXIT_CODES: &str = "Exit codes: 0 the store is clean (with --repair: clean after the repair); \
1 problems were found (and not repaired); 2 usage or I/O error, or a broker holds the data directory \
(nothing was checked).";

/// `ferromq store …`.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The store operation.
    #[command(subcommand)]
    pub command: StoreCmd,
}

/// Store operations (offline: the broker must be stopped).
#[derive(Debug, Subcommand)]
pub enum StoreCmd {
    /// Check every commitlog segment, consume queue and index file of a
    /// stopped broker's data directory and report what was found; with
    /// --repair, apply the fixes recovery applies at start and check again.
    #[command(after_help = EXIT_CODES)]
    Verify {
        /// The broker's data directory (store.data_dir).
        #[arg(long)]
        data_dir: PathBuf,
        /// Apply recovery's fixes (as a broker start does: erase a torn
        /// tail, quarantine damaged records, drop entries past the log's
        /// end…), then check again and print the second report.
        #[arg(long)]
        repair: bool,
        /// Output format: text (one line per problem, then a summary) or
        /// json (one object).
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

/// Runs a store command; returns the process exit code.
pub fn run(a: StoreArgs) -> i32 {
    match a.command {
        StoreCmd::Verify {
            data_dir,
            repair,
            format,
        } => run_verify(&data_dir, repair, format),
    }
}

fn report_error(e: &StoreError) -> i32 {
    match e.kind() {
        StoreErrorKind::Locked => eprintln!("error: {e}: stop the broker before verifying its data directory"),
        _ => eprintln!("error: {e}"),
    }
    EXIT_ERROR
}

fn print(text: &str) -> CliResult {
    outln!("{text}");
    Ok(())
}

/// Prints, failing with [`EXIT_ERROR`] when stdout is gone.
fn emit(text: &str) -> Result<(), i32> {
    print(text).map_err(|e| {
        eprintln!("error: cannot write the report: {e}");
        EXIT_ERROR
    })
}

fn report_json(r: &VerifyReport) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or_else(|e| json!({ "error": e.to_string() }));
    if let Value::Object(map) = &mut v {
        map.insert("clean".into(), Value::Bool(r.is_clean()));
    }
    v
}

fn recovery_json(r: &RecoveryReport) -> Value {
    json!({
        "records_walked": r.records,
        "log_end": r.end,
        "torn_bytes_erased": r.zeroed_bytes,
        "segments_deleted": r.deleted_segments,
        "corrupt_records_quarantined": r.corrupt_records,
    })
}

fn exit_code(r: &VerifyReport) -> i32 {
    if r.is_clean() {
        EXIT_CLEAN
    } else {
        EXIT_PROBLEMS
    }
}

fn run_verify(data_dir: &Path, repair: bool, format: Format) -> i32 {
    match verify_and_repair(data_dir, repair, format) {
        Ok(code) | Err(code) => code,
    }
}

fn verify_and_repair(data_dir: &Path, repair: bool, format: Format) -> Result<i32, i32> {
    let before = verify(data_dir, &VerifyOptions::default()).map_err(|e| report_error(&e))?;
    if !repair || before.is_clean() {
        match format {
            Format::Text => emit(before.text().trim_end())?,
            Format::Json => emit(&report_json(&before).to_string())?,
        }
        return Ok(exit_code(&before));
    }
    if format == Format::Text {
        emit(before.text().trim_end())?;
    }
    let recovery = match recover(data_dir, before.segment_bytes) {
        Ok(r) => r,
        Err(e) => {
            let code = if e.kind() == StoreErrorKind::Corrupt {
                EXIT_PROBLEMS
            } else {
                EXIT_ERROR
            };
            eprintln!("error: recovery could not repair the store: {e}");
            if format == Format::Json {
                emit(
                    &json!({"before": report_json(&before), "repair_error": e.to_string(), "clean": false}).to_string(),
                )?;
            }
            return Err(code);
        }
    };
    // What recovery quarantined stays on disk: the second check lists it
    // as quarantined rather than as a problem.
    let opts = VerifyOptions {
        quarantined: before.damaged(),
    };
    let after = verify(data_dir, &opts).map_err(|e| report_error(&e))?;
    match format {
        Format::Text => {
            emit(&format!(
                "repair: recovery walked {} records to the log's end at {}, erased {} torn bytes, deleted {} \
                 segments, quarantined {} damaged records\nafter repair:",
                recovery.records,
                recovery.end,
                recovery.zeroed_bytes,
                recovery.deleted_segments,
                recovery.corrupt_records
            ))?;
            emit(after.text().trim_end())?;
        }
        Format::Json => emit(
            &json!({
                "before": report_json(&before),
                "repair": recovery_json(&recovery),
                "after": report_json(&after),
                "clean": after.is_clean(),
            })
            .to_string(),
        )?,
    }
    Ok(exit_code(&after))
}

/// Opens the store as the broker does (same internal topics and TTL
/// function, so replay indexes the same records), which runs recovery,
/// then shuts it down cleanly.
fn recover(data_dir: &Path, segment_bytes: u64) -> Result<RecoveryReport, StoreError> {
    let defaults = StoreSection::default();
    let cfg = StoreSection {
        data_dir: data_dir.to_path_buf(),
        segment_bytes: if segment_bytes > 0 {
            segment_bytes
        } else {
            defaults.segment_bytes
        },
        ..defaults
    };
    let (store, report) = crate::launch::open_store(&cfg)?;
    store.shutdown()?;
    drop(store);
    Ok(report)
}
