//! Small durable-file helpers.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use super::error::{IoContext, StoreResult};

/// Writes `data` to `path` atomically and durably: temp file, fsync,
/// rename, fsync of the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> StoreResult<()> {
    let tmp = path.with_extension("tmp");
    File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(data)?;
            f.sync_all()
        })
        .at("write", &tmp)?;
    fs::rename(&tmp, path).at("rename into place", &tmp)?;
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|d| d.sync_all()).at("sync directory", dir)?;
    }
    Ok(())
}

/// The 20-digit zero-padded file name of a start offset.
pub fn offset_file_name(offset: u64) -> String {
    format!("{offset:020}")
}

/// Start offsets of the files in `dir` named by [`offset_file_name`],
/// ascending. Other names are ignored (with a warning).
pub fn list_offset_files(dir: &Path) -> StoreResult<Vec<u64>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).at("list directory", dir)? {
        let entry = entry.at("list directory", dir)?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        match name.parse::<u64>() {
            Ok(off) if name.len() == 20 => out.push(off),
            _ => tracing::warn!(file = %entry.path().display(), "ignoring unexpected file"),
        }
    }
    out.sort_unstable();
    Ok(out)
}
