//! Fixed-size, pre-allocated, memory-mapped files: the building block of the
//! commitlog segments, consume-queue files and key-index files.
//!
//! # Allocation
//!
//! A new file is built under a temporary name (`<name>.tmp`), its space is
//! reserved for real with `posix_fallocate` (falling back to writing zeroes
//! where the file system cannot allocate), synced, and only then renamed into
//! place. So a full disk is an error when the file is created, never a
//! `SIGBUS` on a later store into a sparse hole, and a file under its final
//! name always has its full length. An existing file of any other length is
//! refused.
//!
//! # Concurrency contract
//!
//! The mapping is a [`memmap2::MmapRaw`], which is `Send + Sync`; bytes are
//! written through raw pointers. The intended pattern is **one writer and any
//! number of readers**:
//!
//! * With exclusive access (`&mut MappedFile`), [`MappedFile::write_at`] is
//!   safe; the borrow checker keeps readers out.
//! * To share the file between a writer thread and reader threads (e.g. in an
//!   `Arc`), the writer uses [`MappedFile::write_at_shared`], which is
//!   `unsafe`: the writer must be the only one writing, and must only write
//!   ranges no reader is looking at. The writer *publishes* a range after
//!   writing it (typically by storing the new end offset into an atomic with
//!   `Release` ordering); readers load that atomic (`Acquire`) and only
//!   [`read_at`](MappedFile::read_at) below it. Published bytes are never
//!   rewritten while readers may hold them.
//!
//! The file must not be modified by other processes while it is mapped.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use memmap2::MmapRaw;

use super::error::{IoContext, StoreError, StoreResult};

/// Most buffers passed to one `pwritev` (Linux's `IOV_MAX`).
const MAX_IOVECS: usize = 1024;

/// Chunk size of the zero-filling fallback when `posix_fallocate` is not
/// supported.
const ZERO_CHUNK: usize = 1 << 20;

/// A fixed-size file, fully allocated on disk and mapped read-write.
#[derive(Debug)]
pub struct MappedFile {
    path: PathBuf,
    map: MmapRaw,
    len: usize,
    /// Kept for `pwrite_at` / `sync_data`.
    file: File,
    /// False for files mapped read-only (written with `pwrite_at`).
    writable_map: bool,
}

/// How a [`MappedFile`] is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Through the mapping (`write_at`, `write_at_shared`), flushed with
    /// msync. For small, scattered writes (consume queues, index).
    Mapped,
    /// With `pwrite_at`, flushed with `sync_data`; the mapping is read-only.
    /// For the commitlog: writeback of a read-only mapping never has to
    /// write-protect PTEs, so msync's per-page TLB-shootdown IPIs (measured:
    /// ~20% of broker CPU under load) disappear.
    Pwrite,
}

impl MappedFile {
    /// Opens the file at `path`, which must be exactly `len` bytes long, or
    /// creates it with `len` bytes reserved on disk (zero-filled).
    ///
    /// Errors: [`StoreError::InvalidArgument`] for `len == 0`,
    /// [`StoreError::Corrupt`] for an existing file of another length, and
    /// [`StoreError::Io`] (notably "no space left") from creating or
    /// allocating it. Errors name the file.
    pub fn create_or_open(path: impl AsRef<Path>, len: usize) -> StoreResult<MappedFile> {
        Self::create_or_open_with(path, len, WriteMode::Mapped)
    }

    /// [`create_or_open`](Self::create_or_open) with a choice of write mode.
    pub fn create_or_open_with(path: impl AsRef<Path>, len: usize, mode: WriteMode) -> StoreResult<MappedFile> {
        let path = path.as_ref();
        if len == 0 {
            return Err(StoreError::InvalidArgument(format!(
                "{}: a mapped file cannot be empty",
                path.display()
            )));
        }
        match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => {
                let actual = file.metadata().at("stat", path)?.len();
                if actual != len as u64 {
                    return Err(StoreError::corrupt(
                        "mapped file",
                        path,
                        format!("file is {actual} bytes, expected {len}"),
                    ));
                }
                Self::map(path, file, len, mode)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let file = create_allocated(path, len)?;
                Self::map(path, file, len, mode)
            }
            Err(e) => Err(StoreError::io("open", path, e)),
        }
    }

    /// Opens an existing file and maps it at whatever (non-zero) length it
    /// has; for callers that learn the expected size from the file itself.
    pub fn open_existing(path: impl AsRef<Path>) -> StoreResult<MappedFile> {
        let path = path.as_ref();
        let file = OpenOptions::new().read(true).write(true).open(path).at("open", path)?;
        let actual = file.metadata().at("stat", path)?.len();
        let len = usize::try_from(actual)
            .ok()
            .filter(|&l| l > 0)
            .ok_or_else(|| StoreError::corrupt("mapped file", path, format!("cannot map a file of {actual} bytes")))?;
        Self::map(path, file, len, WriteMode::Mapped)
    }

    fn map(path: &Path, file: File, len: usize, mode: WriteMode) -> StoreResult<MappedFile> {
        let map = match mode {
            WriteMode::Mapped => MmapRaw::map_raw(&file),
            WriteMode::Pwrite => memmap2::MmapOptions::new().map_raw_read_only(&file),
        }
        .at("map", path)?;
        // Pre-allocated files are written front to back through the map;
        // readahead would make every write fault zero-fill large folios of
        // unwritten extents ahead of it (measured: 63% of broker CPU under
        // load). Faulting one page at a time is far cheaper.
        if let Err(e) = map.advise(memmap2::Advice::Random) {
            tracing::debug!(path = %path.display(), error = %e, "madvise(MADV_RANDOM) failed");
        }
        if map.len() != len {
            return Err(StoreError::corrupt(
                "mapped file",
                path,
                "file changed length while being mapped",
            ));
        }
        Ok(MappedFile {
            path: path.to_path_buf(),
            map,
            len,
            file,
            writable_map: mode == WriteMode::Mapped,
        })
    }

    /// Size of the file and of the mapping, in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: empty files are refused at creation.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the file lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Copies `data` into the file at `pos`; an error if it does not fit.
    pub fn write_at(&mut self, pos: usize, data: &[u8]) -> StoreResult<()> {
        // SAFETY: `&mut self` excludes every other reader and writer of this
        // mapping in this process.
        unsafe { self.write_at_shared(pos, data) }
    }

    /// Copies `data` into the file at `pos` through a shared reference; an
    /// error if it does not fit.
    ///
    /// # Safety
    ///
    /// The caller must ensure that, for the duration of the call, no other
    /// thread writes to this mapping and nothing reads or holds a slice
    /// (from [`read_at`](Self::read_at)) overlapping `pos..pos + data.len()`.
    /// In practice: only the single writer calls this, and only on ranges it
    /// has not yet published to readers (see the module documentation).
    pub unsafe fn write_at_shared(&self, pos: usize, data: &[u8]) -> StoreResult<()> {
        self.check_range(pos, data.len())?;
        if !self.writable_map {
            return Err(StoreError::InvalidArgument(format!(
                "{}: read-only mapping: write with pwrite_at",
                self.path.display()
            )));
        }
        // SAFETY: the range lies inside the mapping (checked above), the
        // source is a distinct Rust slice, and the caller guarantees nobody
        // else accesses the destination range concurrently.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.map.as_mut_ptr().add(pos), data.len());
        }
        Ok(())
    }

    /// The `len` bytes at `pos`; an error if they are not all inside the
    /// file. Only read ranges the writer has published.
    pub fn read_at(&self, pos: usize, len: usize) -> StoreResult<&[u8]> {
        self.check_range(pos, len)?;
        // SAFETY: the range lies inside the mapping, which lives as long as
        // `self`. Writes go through `&mut self` (excluded by this borrow) or
        // through `write_at_shared`, whose contract forbids writing ranges
        // that may be read concurrently.
        Ok(unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(pos), len) })
    }

    /// Writes `data` at `pos` with `pwrite`; readers of the mapping see it
    /// (one page cache). Safe through `&self`: no Rust reference to the
    /// mapped bytes is created.
    pub fn pwrite_at(&self, pos: usize, data: &[u8]) -> StoreResult<()> {
        use std::os::unix::fs::FileExt;
        self.check_range(pos, data.len())?;
        self.file.write_all_at(data, pos as u64).at("write", &self.path)
    }

    /// Writes `parts` back to back at `pos` with `pwritev` (as many calls
    /// as partial writes and the iovec limit need). Like
    /// [`pwrite_at`](Self::pwrite_at), safe through `&self`.
    pub fn pwritev_at(&self, pos: usize, parts: &[&[u8]]) -> StoreResult<()> {
        use std::os::fd::AsRawFd;
        let total: usize = parts.iter().map(|p| p.len()).sum();
        self.check_range(pos, total)?;
        let (mut at, mut first, mut skip) = (pos, 0usize, 0usize);
        loop {
            // Nothing to write for empty parts (a kernel call with only
            // empty buffers would return 0, read as a failed write).
            while first < parts.len() && parts[first].len() == skip {
                first += 1;
                skip = 0;
            }
            if first >= parts.len() {
                break;
            }
            let iov: Vec<libc::iovec> = parts[first..]
                .iter()
                .take(MAX_IOVECS)
                .enumerate()
                .map(|(i, p)| {
                    let p = if i == 0 { &p[skip..] } else { p };
                    libc::iovec {
                        iov_base: p.as_ptr() as *mut libc::c_void,
                        iov_len: p.len(),
                    }
                })
                .collect();
            // SAFETY: every iovec points into a live slice of `parts` for
            // the duration of the call; the kernel only reads them.
            let n = unsafe {
                libc::pwritev(
                    self.file.as_raw_fd(),
                    iov.as_ptr(),
                    iov.len() as libc::c_int,
                    at as libc::off_t,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(StoreError::io("write", &self.path, e));
            }
            if n == 0 {
                return Err(StoreError::io("write", &self.path, io::ErrorKind::WriteZero.into()));
            }
            let mut written = n as usize;
            at += written;
            while written > 0 && first < parts.len() {
                let left = parts[first].len() - skip;
                if written >= left {
                    written -= left;
                    first += 1;
                    skip = 0;
                } else {
                    skip += written;
                    written = 0;
                }
            }
        }
        Ok(())
    }

    /// Starts writing `pos..pos + len` back to disk without waiting
    /// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`); durability still needs
    /// [`sync_data`](Self::sync_data).
    pub fn start_writeback(&self, pos: usize, len: usize) -> StoreResult<()> {
        use std::os::fd::AsRawFd;
        self.check_range(pos, len)?;
        // SAFETY: plain system call on a valid, open descriptor; in range.
        let rc = unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                pos as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        if rc != 0 {
            return Err(StoreError::io(
                "start writeback of",
                &self.path,
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Makes every written byte durable (`fdatasync`).
    pub fn sync_data(&self) -> StoreResult<()> {
        self.file.sync_data().at("sync", &self.path)
    }

    /// Writes all modified pages back to disk and waits (`msync(MS_SYNC)`).
    pub fn flush(&self) -> StoreResult<()> {
        self.map.flush().at("flush", &self.path)
    }

    /// Writes the pages covering `pos..pos + len` back to disk and waits.
    pub fn flush_range(&self, pos: usize, len: usize) -> StoreResult<()> {
        self.check_range(pos, len)?;
        if len == 0 {
            return Ok(());
        }
        self.map.flush_range(pos, len).at("flush", &self.path)
    }

    /// Starts writing all modified pages back to disk without waiting
    /// (`msync(MS_ASYNC)`).
    pub fn flush_async(&self) -> StoreResult<()> {
        self.map.flush_async().at("flush", &self.path)
    }

    fn check_range(&self, pos: usize, len: usize) -> StoreResult<()> {
        match pos.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(StoreError::InvalidArgument(format!(
                "{}: range {pos}+{len} is outside the file's {} bytes",
                self.path.display(),
                self.len
            ))),
        }
    }
}

/// Builds `path` with `len` allocated zero bytes: under a temporary name,
/// then synced and renamed, so a crash never leaves a short file under the
/// final name.
fn create_allocated(path: &Path, len: usize) -> StoreResult<File> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let result = (|| {
        // A leftover temporary file from a crash is simply started over.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .at("create", &tmp)?;
        reserve_space(&file, len).map_err(|e| match e {
            StoreError::Io { op, path: None, source } => StoreError::io(op, &tmp, source),
            other => other,
        })?;
        file.sync_all().at("sync", &tmp)?;
        fs::rename(&tmp, path).at("rename into place", &tmp)?;
        sync_parent_dir(path)?;
        Ok(file)
    })();
    result.inspect_err(|_| {
        // Best effort: do not leave a half-allocated file taking up space.
        let _ = fs::remove_file(&tmp);
    })
}

/// Reserves `len` bytes for the (empty) `file` for real: `posix_fallocate`,
/// or written zeroes where the file system cannot preallocate. A full disk
/// is an error here rather than a SIGBUS on a later write to a mapping.
pub fn reserve_space(file: &File, len: usize) -> StoreResult<()> {
    use std::os::fd::AsRawFd;
    let off_len = libc::off_t::try_from(len)
        .map_err(|_| StoreError::InvalidArgument(format!("{len} bytes is too large to reserve")))?;
    // SAFETY: plain system call on a valid, open descriptor.
    let ret = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, off_len) };
    match ret {
        0 => Ok(()),
        // The file system cannot preallocate: write the zeroes ourselves.
        libc::EOPNOTSUPP | libc::EINVAL => fill_zeroes(file, len).during("reserve space by writing zeroes"),
        // posix_fallocate returns the error number instead of setting errno.
        err => Err(io::Error::from_raw_os_error(err)).during("reserve space"),
    }
}

/// Appends `len` zero bytes to the (empty) `file`, 1 MiB at a time.
fn fill_zeroes(mut file: &File, len: usize) -> io::Result<()> {
    let zeroes = vec![0u8; ZERO_CHUNK.min(len)];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeroes.len());
        file.write_all(&zeroes[..n])?;
        left -= n;
    }
    Ok(())
}

/// Makes a rename or removal in the directory holding `path` durable.
pub(crate) fn sync_parent_dir(path: &Path) -> StoreResult<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir).and_then(|d| d.sync_all()).at("sync directory", dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_zeroed_file_of_full_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let f = MappedFile::create_or_open(&path, 10_000).unwrap();
        assert_eq!(f.len(), 10_000);
        assert!(!f.is_empty());
        assert_eq!(f.path(), path);
        assert_eq!(fs::metadata(&path).unwrap().len(), 10_000);
        assert!(f.read_at(0, 10_000).unwrap().iter().all(|&b| b == 0));
        assert!(!dir.path().join("f.tmp").exists());
        // Really allocated, not sparse.
        use std::os::unix::fs::MetadataExt;
        assert!(fs::metadata(&path).unwrap().blocks() * 512 >= 10_000);
    }

    #[test]
    fn vectored_writes_land_back_to_back_past_the_iovec_limit() {
        let dir = tempfile::tempdir().unwrap();
        let f = MappedFile::create_or_open_with(dir.path().join("v"), 64 * 1024, WriteMode::Pwrite).unwrap();
        // 3000 parts (three pwritev calls), some empty, of varying sizes.
        let owned: Vec<Vec<u8>> = (0..3000u32)
            .map(|i| vec![(i % 251) as u8; (i % 7) as usize * 3])
            .collect();
        let parts: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        let expected = owned.concat();
        f.pwritev_at(100, &parts).unwrap();
        assert_eq!(f.read_at(100, expected.len()).unwrap(), &expected[..]);
        assert!(f.read_at(0, 100).unwrap().iter().all(|&b| b == 0));
        assert!(f.pwritev_at(64 * 1024 - 2, &[b"abc"]).is_err(), "past the end");
        f.pwritev_at(0, &[]).unwrap();
        f.pwritev_at(0, &[b"", b""]).unwrap();
    }

    #[test]
    fn data_persists_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        {
            let mut f = MappedFile::create_or_open(&path, 4096).unwrap();
            f.write_at(100, b"hello").unwrap();
            f.write_at(4091, b"world").unwrap();
            f.flush_range(100, 5).unwrap();
            f.flush_async().unwrap();
            f.flush().unwrap();
        }
        let f = MappedFile::create_or_open(&path, 4096).unwrap();
        assert_eq!(f.read_at(100, 5).unwrap(), b"hello");
        assert_eq!(f.read_at(4091, 5).unwrap(), b"world");
        let g = MappedFile::open_existing(&path).unwrap();
        assert_eq!(g.len(), 4096);
        assert_eq!(g.read_at(100, 5).unwrap(), b"hello");
        // Also visible through a second mapping of the same file.
        assert_eq!(f.read_at(4091, 5).unwrap(), g.read_at(4091, 5).unwrap());
    }

    #[test]
    fn shared_writes_are_visible_to_readers() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::sync::Arc::new(MappedFile::create_or_open(dir.path().join("f"), 64).unwrap());
        // SAFETY: single thread, nothing reads the range while writing.
        unsafe { f.write_at_shared(8, b"abc").unwrap() };
        let reader = std::sync::Arc::clone(&f);
        let got = std::thread::spawn(move || reader.read_at(8, 3).unwrap().to_vec())
            .join()
            .unwrap();
        assert_eq!(got, b"abc");
    }

    #[test]
    fn wrong_length_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        drop(MappedFile::create_or_open(&path, 4096).unwrap());
        let err = MappedFile::create_or_open(&path, 8192).unwrap_err();
        assert_eq!(err.io_kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
        assert_eq!(fs::metadata(&path).unwrap().len(), 4096, "left untouched");

        let empty = dir.path().join("empty");
        File::create(&empty).unwrap();
        assert_eq!(
            MappedFile::create_or_open(&empty, 10).unwrap_err().io_kind(),
            io::ErrorKind::InvalidData
        );
        assert_eq!(
            MappedFile::open_existing(&empty).unwrap_err().io_kind(),
            io::ErrorKind::InvalidData
        );
        assert_eq!(
            MappedFile::create_or_open(dir.path().join("zero"), 0)
                .unwrap_err()
                .io_kind(),
            io::ErrorKind::InvalidInput
        );
        assert!(MappedFile::open_existing(dir.path().join("missing")).is_err());
    }

    #[test]
    fn out_of_range_access_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = MappedFile::create_or_open(dir.path().join("f"), 100).unwrap();
        assert!(f.write_at(96, b"1234").is_ok());
        assert!(f.write_at(97, b"1234").is_err());
        assert!(f.write_at(100, b"").is_ok());
        assert!(f.write_at(101, b"").is_err());
        assert!(f.write_at(usize::MAX, b"x").is_err());
        assert!(f.read_at(0, 100).is_ok());
        assert!(f.read_at(1, 100).is_err());
        assert!(f.read_at(usize::MAX, 2).is_err());
        assert!(f.flush_range(50, 51).is_err());
        assert!(f.flush_range(100, 0).is_ok());
    }

    #[test]
    fn stale_temporary_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(dir.path().join("f.tmp"), b"junk from a crash").unwrap();
        let f = MappedFile::create_or_open(&path, 32).unwrap();
        assert_eq!(f.read_at(0, 32).unwrap(), &[0u8; 32]);
        assert!(!dir.path().join("f.tmp").exists());
    }

    #[test]
    fn creation_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/dir/f");
        let err = MappedFile::create_or_open(&path, 32).unwrap_err();
        assert!(err.to_string().contains("no/such/dir/f"), "{err}");
    }

    #[test]
    fn zero_fill_fallback_writes_whole_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("z");
        let file = File::create(&path).unwrap();
        fill_zeroes(&file, ZERO_CHUNK * 2 + 123).unwrap();
        let data = fs::read(&path).unwrap();
        assert_eq!(data.len(), ZERO_CHUNK * 2 + 123);
        assert!(data.iter().all(|&b| b == 0));
    }

    #[test]
    fn pwrite_mode_maps_read_only_and_writes_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        let f = MappedFile::create_or_open_with(&path, 8192, WriteMode::Pwrite).unwrap();
        f.pwrite_at(4000, b"hello").unwrap();
        assert_eq!(
            f.read_at(4000, 5).unwrap(),
            b"hello",
            "one page cache: the map sees pwrite"
        );
        assert!(f.pwrite_at(8190, b"xyz").is_err(), "bounds are checked");
        // SAFETY: nothing else touches the file; the call must refuse anyway.
        assert!(
            unsafe { f.write_at_shared(0, b"x") }.is_err(),
            "the mapping is read-only"
        );
        f.sync_data().unwrap();
        drop(f);
        assert_eq!(&std::fs::read(&path).unwrap()[4000..4005], b"hello");
    }
}
