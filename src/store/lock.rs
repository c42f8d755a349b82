//! The data-directory lock: one broker per directory.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use super::error::{IoContext, StoreError, StoreResult};

/// Holds an exclusive `flock` on `<data_dir>/lock` for the broker's life.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock or fails naming the holder
    /// ([`StoreError::Locked`]).
    pub fn acquire(data_dir: &Path) -> StoreResult<DirLock> {
        let path = data_dir.join("lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .at("open lock file", &path)?;
        // SAFETY: plain syscall on an owned, open descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(StoreError::Locked {
                    dir: data_dir.to_path_buf(),
                    holder: holder.trim().to_string(),
                });
            }
            return Err(StoreError::io("lock", &path, err));
        }
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| write!(file, "{}", std::process::id()))
            .and_then(|()| file.sync_all());
        match written {
            Ok(()) => {}
            // The lock is held either way; the pid is for people. A full
            // disk must not stop the broker from starting.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot write the broker's pid into the lock file");
            }
            Err(e) => return Err(StoreError::io("write the broker's pid to", &path, e)),
        }
        Ok(DirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_on_a_directory_fails_with_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        let err = DirLock::acquire(dir.path()).unwrap_err();
        assert!(err.to_string().contains("locked by another broker"), "{err}");
        assert!(err.to_string().contains(&std::process::id().to_string()));
        drop(first);
        DirLock::acquire(dir.path()).unwrap();
    }
}
