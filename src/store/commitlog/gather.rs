//! Gathering records for a response without copying them: runs of
//! neighbouring records become [`Bytes`] that borrow a segment's mapping.

use std::sync::Arc;

use bytes::Bytes;

use super::{CommitLog, Segment};
use crate::store::error::{StoreError, StoreResult};

/// A range of a segment's mapping, owned: keeps the segment mapped while a
/// response built from it waits to be written.
struct MappedRange {
    segment: Arc<Segment>,
    pos: usize,
    len: usize,
}

impl AsRef<[u8]> for MappedRange {
    fn as_ref(&self) -> &[u8] {
        // The range was checked when the gatherer built it; an empty slice
        // is the harmless answer should that ever not hold.
        self.segment.file.read_at(self.pos, self.len).unwrap_or(&[])
    }
}

/// Collects records for a response without copying them: consecutive
/// records of one segment become one [`Bytes`] that borrows the mapping.
pub struct Gather<'a> {
    log: &'a CommitLog,
    run: Option<MappedRange>,
    chunks: Vec<Bytes>,
    len: usize,
}

impl<'a> Gather<'a> {
    /// An empty gather over `log`.
    pub fn new(log: &'a CommitLog) -> Gather<'a> {
        Gather {
            log,
            run: None,
            chunks: Vec::new(),
            len: 0,
        }
    }

    /// Adds the `size` bytes at `offset` (below the write position, within
    /// one segment) and returns them for inspection.
    pub fn push(&mut self, offset: u64, size: usize) -> StoreResult<&[u8]> {
        let end = self.log.check_published(offset, size)?;
        let contiguous = self.run.as_ref().is_some_and(|r| {
            r.segment.start + (r.pos + r.len) as u64 == offset && end <= r.segment.start + self.log.segment_bytes
        });
        if !contiguous {
            let (segment, pos) = self.log.locate(offset)?;
            segment.file.read_at(pos, size)?;
            self.close_run();
            self.run = Some(MappedRange { segment, pos, len: 0 });
        }
        let run = match self.run.as_mut() {
            Some(run) => run,
            // Just set above unless contiguous, which needs a run.
            None => return Err(StoreError::InvalidArgument("gather has no open run".into())),
        };
        run.len += size;
        self.len += size;
        run.segment.file.read_at(run.pos + run.len - size, size)
    }

    /// Takes back the record [`Gather::push`] just added (`size` bytes).
    pub fn pop(&mut self, size: usize) {
        if let Some(run) = self.run.as_mut() {
            let size = size.min(run.len);
            run.len -= size;
            self.len -= size;
        }
    }

    /// Bytes gathered so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is gathered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn close_run(&mut self) {
        if let Some(run) = self.run.take() {
            if run.len > 0 {
                self.chunks.push(Bytes::from_owner(run));
            }
        }
    }

    /// The gathered bytes, in order, as chunks of the mappings.
    pub fn finish(mut self) -> Vec<Bytes> {
        self.close_run();
        self.chunks
    }
}
