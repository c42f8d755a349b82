//! Small durable-file helpers.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Writes `data` to `path` atomically and durably: temp file, fsync,
/// rename, fsync of the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The 20-digit zero-padded file name of a start offset.
pub fn offset_file_name(offset: u64) -> String {
    format!("{offset:020}")
}

/// Start offsets of the files in `dir` named by [`offset_file_name`],
/// ascending. Other names are ignored (with a warning).
pub fn list_offset_files(dir: &Path) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
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
