//! Committed consumer offsets per (group, topic, queue).
//!
//! Commits are appended to the internal topic [`OFFSETS_TOPIC`] in the
//! commitlog, so they are as durable as messages (same flush policy, same
//! recovery) and will reach slaves with the log. The table in memory is
//! rebuilt at start-up from a snapshot (`config/offsets.json`, which records
//! the offsets-topic position it covers) plus the commit records after it.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::error::{StoreError, StoreResult};
use super::fsutil::write_atomic;
use crate::codec::{self as buf, DecodeError, Reader};

/// The internal topic holding offset commits.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// A commit of this offset is a tombstone: it removes the key (a deleted
/// topic takes every group's offsets with it).
pub const DELETED: u64 = u64::MAX;

/// One committed offset.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OffsetKey {
    /// Consumer group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Queue id.
    pub queue: u32,
}

/// Encodes a batch of commits as the body of one offsets-topic record:
/// u32 count, then `count` × (`str16` group, `str16` topic, u32 queue,
/// u64 offset).
pub fn encode_commits(commits: &[(OffsetKey, u64)]) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u32(commits.len() as u32);
    for (k, off) in commits {
        buf::put_str16(&mut out, &k.group);
        buf::put_str16(&mut out, &k.topic);
        out.put_u32(k.queue);
        out.put_u64(*off);
    }
    out.freeze()
}

/// Decodes an offsets-topic record body.
pub fn decode_commits(body: Bytes) -> Result<Vec<(OffsetKey, u64)>, DecodeError> {
    let mut r = Reader::new(body);
    let count = r.u32("commit count")? as usize;
    let mut out = Vec::with_capacity(count.min(r.remaining() / 16));
    for _ in 0..count {
        let key = OffsetKey {
            group: r.str16("group")?,
            topic: r.str16("topic")?,
            queue: r.u32("queue")?,
        };
        out.push((key, r.u64("offset")?));
    }
    r.finish("offset commits")?;
    Ok(out)
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Snapshot {
    /// Offsets-topic queue offset the snapshot includes everything below.
    covers: u64,
    offsets: Vec<(OffsetKey, u64)>,
}

/// The committed-offset table.
#[derive(Debug)]
pub struct OffsetTable {
    path: PathBuf,
    offsets: RwLock<BTreeMap<OffsetKey, u64>>,
    covers: RwLock<u64>,
}

impl OffsetTable {
    /// Loads the snapshot of a data directory; returns the table and the
    /// offsets-topic queue offset from which commits must be replayed.
    pub fn open(data_dir: &Path) -> StoreResult<(OffsetTable, u64)> {
        let path = data_dir.join("config").join("offsets.json");
        let snap = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice::<Snapshot>(&b)
                .map_err(|e| StoreError::corrupt("offset snapshot", &path, e.to_string()))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Snapshot::default(),
            Err(e) => return Err(StoreError::io("read", &path, e)),
        };
        let covers = snap.covers;
        let table = OffsetTable {
            path,
            offsets: RwLock::new(snap.offsets.into_iter().collect()),
            covers: RwLock::new(covers),
        };
        Ok((table, covers))
    }

    /// Applies commits (from a live commit or from replay); a [`DELETED`]
    /// offset removes its key.
    pub fn apply(&self, commits: &[(OffsetKey, u64)]) {
        if let Ok(mut t) = self.offsets.write() {
            for (k, v) in commits {
                if *v == DELETED {
                    t.remove(k);
                } else {
                    t.insert(k.clone(), *v);
                }
            }
        }
    }

    /// Applies `commits` and returns what they replaced, for
    /// [`revert`](Self::revert).
    pub fn apply_returning_previous(&self, commits: &[(OffsetKey, u64)]) -> Vec<(OffsetKey, u64, Option<u64>)> {
        let Ok(mut t) = self.offsets.write() else {
            return Vec::new();
        };
        commits
            .iter()
            .map(|(k, v)| {
                let previous = if *v == DELETED {
                    t.remove(k)
                } else {
                    t.insert(k.clone(), *v)
                };
                (k.clone(), *v, previous)
            })
            .collect()
    }

    /// Undoes [`apply_returning_previous`](Self::apply_returning_previous)
    /// for commits that were not stored after all: each key still holding
    /// the applied value gets its previous one back (a key committed again
    /// since keeps the newer value).
    pub fn revert(&self, applied: &[(OffsetKey, u64, Option<u64>)]) {
        let Ok(mut t) = self.offsets.write() else { return };
        for (k, v, previous) in applied.iter().rev() {
            let current = t.get(k).copied();
            let still_ours = if *v == DELETED {
                current.is_none()
            } else {
                current == Some(*v)
            };
            if !still_ours {
                continue;
            }
            match previous {
                Some(p) => t.insert(k.clone(), *p),
                None => t.remove(k),
            };
        }
    }

    /// Tombstones for every committed offset of `topic` (to commit when
    /// the topic is deleted).
    pub fn tombstones_of_topic(&self, topic: &str) -> Vec<(OffsetKey, u64)> {
        self.offsets
            .read()
            .map(|t| {
                t.keys()
                    .filter(|k| k.topic == topic)
                    .map(|k| (k.clone(), DELETED))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The committed offset, if any.
    pub fn get(&self, key: &OffsetKey) -> Option<u64> {
        self.offsets.read().ok()?.get(key).copied()
    }

    /// Every committed offset of a group.
    pub fn group(&self, group: &str) -> Vec<(OffsetKey, u64)> {
        self.offsets
            .read()
            .map(|t| {
                t.iter()
                    .filter(|(k, _)| k.group == group)
                    .map(|(k, v)| (k.clone(), *v))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every committed offset.
    pub fn all(&self) -> Vec<(OffsetKey, u64)> {
        self.offsets
            .read()
            .map(|t| t.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default()
    }

    /// Every group with a committed offset.
    pub fn groups(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .offsets
            .read()
            .map(|t| t.keys().map(|k| k.group.clone()).collect())
            .unwrap_or_default();
        out.dedup();
        out
    }

    /// Writes a snapshot covering commits below offsets-topic offset
    /// `covers`, so start-up replays only what follows.
    pub fn snapshot(&self, covers: u64) -> StoreResult<()> {
        let offsets: Vec<(OffsetKey, u64)> = self
            .offsets
            .read()
            .map_err(|_| StoreError::Poisoned("offset table"))?
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let bytes = serde_json::to_vec(&Snapshot { covers, offsets }).map_err(|source| StoreError::Encode {
            what: "offset snapshot",
            source,
        })?;
        write_atomic(&self.path, &bytes)?;
        if let Ok(mut c) = self.covers.write() {
            *c = covers;
        }
        Ok(())
    }

    /// Offsets-topic offset the last snapshot covers.
    pub fn snapshot_covers(&self) -> u64 {
        self.covers.read().map(|c| *c).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(g: &str, q: u32) -> OffsetKey {
        OffsetKey {
            group: g.into(),
            topic: "t".into(),
            queue: q,
        }
    }

    #[test]
    fn commits_round_trip_and_reject_garbage() {
        let commits = vec![(key("g", 0), 5), (key("h", 3), u64::MAX)];
        let enc = encode_commits(&commits);
        assert_eq!(decode_commits(enc.clone()).unwrap(), commits);
        for cut in 0..enc.len() {
            assert!(decode_commits(enc.slice(..cut)).is_err());
        }
    }

    #[test]
    fn snapshot_and_replay_position_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("config")).unwrap();
        let (t, from) = OffsetTable::open(dir.path()).unwrap();
        assert_eq!(from, 0);
        t.apply(&[(key("g", 0), 10), (key("g", 1), 20), (key("h", 0), 1)]);
        t.apply(&[(key("g", 0), 11)]);
        t.snapshot(7).unwrap();
        let (t, from) = OffsetTable::open(dir.path()).unwrap();
        assert_eq!(from, 7);
        assert_eq!(t.get(&key("g", 0)), Some(11));
        assert_eq!(t.group("g").len(), 2);
        assert_eq!(t.groups(), ["g", "h"]);
    }

    #[test]
    fn tombstones_remove_a_topics_offsets_and_survive_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("config")).unwrap();
        let (t, _) = OffsetTable::open(dir.path()).unwrap();
        let other = OffsetKey {
            group: "g".into(),
            topic: "u".into(),
            queue: 0,
        };
        t.apply(&[(key("g", 0), 10), (key("h", 1), 20), (other.clone(), 3)]);
        let tombs = t.tombstones_of_topic("t");
        assert_eq!(tombs.len(), 2);
        assert!(tombs.iter().all(|(_, o)| *o == DELETED));
        let enc = encode_commits(&tombs);
        t.apply(&decode_commits(enc).unwrap());
        assert_eq!(t.all(), vec![(other.clone(), 3)]);
        t.snapshot(1).unwrap();
        let (t, _) = OffsetTable::open(dir.path()).unwrap();
        assert_eq!(t.get(&key("g", 0)), None);
        assert_eq!(t.get(&other), Some(3));
    }
}
