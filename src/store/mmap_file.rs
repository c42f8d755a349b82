//! Fixed-size, pre-allocated, mmap'ed files (provisional; the reviewed
//! version lands with the key index).

use std::fs::OpenOptions;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use memmap2::MmapRaw;

/// A pre-allocated file mapped into memory; one writer, many readers.
#[derive(Debug)]
pub struct MappedFile {
    path: PathBuf,
    len: usize,
    map: MmapRaw,
}

impl MappedFile {
    /// Creates (reserving its blocks) or opens a file of exactly `len` bytes.
    pub fn create_or_open(path: &Path, len: u64) -> io::Result<MappedFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let current = file.metadata()?.len();
        if current == 0 {
            // SAFETY: plain syscall on an owned, open descriptor.
            let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
        } else if current != len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is {current} bytes, expected {len}", path.display()),
            ));
        }
        let map = MmapRaw::map_raw(&file)?;
        Ok(MappedFile {
            path: path.to_path_buf(),
            len: len as usize,
            map,
        })
    }

    /// File length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty file.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// File path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check(&self, pos: usize, len: usize) -> io::Result<()> {
        if pos.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "range outside the file"));
        }
        Ok(())
    }

    /// Copies `data` into the file at `pos`.
    pub fn write_at(&self, pos: usize, data: &[u8]) -> io::Result<()> {
        self.check(pos, data.len())?;
        // SAFETY: in bounds; single writer; readers only read published ranges.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.map.as_mut_ptr().add(pos), data.len()) };
        Ok(())
    }

    /// Borrows `len` bytes at `pos`.
    pub fn read_at(&self, pos: usize, len: usize) -> io::Result<&[u8]> {
        self.check(pos, len)?;
        // SAFETY: in bounds of a live mapping.
        Ok(unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(pos), len) })
    }

    /// msync(MS_SYNC) of the whole file.
    pub fn flush(&self) -> io::Result<()> {
        self.map.flush()
    }

    /// msync(MS_SYNC) of a range.
    pub fn flush_range(&self, pos: usize, len: usize) -> io::Result<()> {
        self.check(pos, len)?;
        self.map.flush_range(pos, len)
    }

    /// msync(MS_ASYNC) of the whole file.
    pub fn flush_async(&self) -> io::Result<()> {
        self.map.flush_async()
    }
}
