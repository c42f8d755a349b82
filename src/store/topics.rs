//! The topic table, persisted as `<data_dir>/config/topics.json`.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use super::error::{IoContext, StoreError, StoreResult};
use super::fsutil::write_atomic;

/// One topic's settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Queues on this broker.
    pub queues: u32,
    /// Default time to live of its messages, ms (a message's own `TTL`
    /// property wins). `None`: messages do not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

impl TopicConfig {
    /// A topic with `queues` queues and no default TTL.
    pub fn with_queues(queues: u32) -> TopicConfig {
        TopicConfig { queues, ttl_ms: None }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicFile {
    topics: BTreeMap<String, TopicConfig>,
}

/// The broker's topics; reads are cheap, changes are written through.
#[derive(Debug)]
pub struct TopicTable {
    path: PathBuf,
    topics: RwLock<BTreeMap<String, TopicConfig>>,
}

fn poisoned() -> StoreError {
    StoreError::Poisoned("topic table")
}

impl TopicTable {
    /// Loads the table of a data directory (empty when there is none yet).
    pub fn open(data_dir: &Path) -> StoreResult<TopicTable> {
        let dir = data_dir.join("config");
        std::fs::create_dir_all(&dir).at("create directory", &dir)?;
        let path = dir.join("topics.json");
        let topics = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice::<TopicFile>(&bytes)
                    .map_err(|e| StoreError::corrupt("topic table", &path, e.to_string()))?
                    .topics
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(StoreError::io("read", &path, e)),
        };
        Ok(TopicTable {
            path,
            topics: RwLock::new(topics),
        })
    }

    /// A topic's settings.
    pub fn get(&self, topic: &str) -> Option<TopicConfig> {
        self.topics.read().ok()?.get(topic).copied()
    }

    /// Every topic with its settings (internal ones included).
    pub fn all(&self) -> Vec<(String, TopicConfig)> {
        self.topics
            .read()
            .map(|t| t.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default()
    }

    /// Every topic with its settings, by name (what the broker registers
    /// with the name servers).
    pub fn snapshot(&self) -> BTreeMap<String, TopicConfig> {
        self.topics.read().map(|t| t.clone()).unwrap_or_default()
    }

    /// Creates a topic or changes its queue count; returns the previous
    /// settings. Written to disk before it takes effect.
    pub fn upsert(&self, topic: &str, cfg: TopicConfig) -> StoreResult<Option<TopicConfig>> {
        let mut topics = self.topics.write().map_err(|_| poisoned())?;
        let mut next = topics.clone();
        let prev = next.insert(topic.to_string(), cfg);
        self.persist(&next)?;
        *topics = next;
        Ok(prev)
    }

    /// Creates a topic unless it exists; returns its settings.
    pub fn get_or_create(&self, topic: &str, cfg: TopicConfig) -> StoreResult<(TopicConfig, bool)> {
        if let Some(existing) = self.get(topic) {
            return Ok((existing, false));
        }
        let mut topics = self.topics.write().map_err(|_| poisoned())?;
        if let Some(existing) = topics.get(topic) {
            return Ok((*existing, false));
        }
        let mut next = topics.clone();
        next.insert(topic.to_string(), cfg);
        self.persist(&next)?;
        *topics = next;
        Ok((cfg, true))
    }

    /// Makes sure `topic` exists with at least `queues` queues: creates it
    /// (no default TTL) or raises its queue count (its other settings
    /// kept). Returns true when the table changed. A replica calls it for
    /// the records its master sends.
    pub fn ensure_queues(&self, topic: &str, queues: u32) -> StoreResult<bool> {
        if self.get(topic).is_some_and(|c| c.queues >= queues) {
            return Ok(false);
        }
        let mut topics = self.topics.write().map_err(|_| poisoned())?;
        let mut next = topics.clone();
        let cfg = next
            .entry(topic.to_string())
            .or_insert_with(|| TopicConfig::with_queues(0));
        if cfg.queues >= queues {
            return Ok(false);
        }
        cfg.queues = queues;
        self.persist(&next)?;
        *topics = next;
        Ok(true)
    }

    /// Removes a topic; returns its settings if it existed.
    pub fn remove(&self, topic: &str) -> StoreResult<Option<TopicConfig>> {
        let mut topics = self.topics.write().map_err(|_| poisoned())?;
        if !topics.contains_key(topic) {
            return Ok(None);
        }
        let mut next = topics.clone();
        let prev = next.remove(topic);
        self.persist(&next)?;
        *topics = next;
        Ok(prev)
    }

    fn persist(&self, topics: &BTreeMap<String, TopicConfig>) -> StoreResult<()> {
        let file = TopicFile { topics: topics.clone() };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|source| StoreError::Encode {
            what: "topic table",
            source,
        })?;
        write_atomic(&self.path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_persist_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let t = TopicTable::open(dir.path()).unwrap();
        assert_eq!(
            t.get_or_create("a", TopicConfig::with_queues(4)).unwrap(),
            (TopicConfig::with_queues(4), true)
        );
        assert!(!t.get_or_create("a", TopicConfig::with_queues(9)).unwrap().1);
        t.upsert("b", TopicConfig::with_queues(2)).unwrap();
        t.remove("a").unwrap();
        let t = TopicTable::open(dir.path()).unwrap();
        assert_eq!(t.get("a"), None);
        assert_eq!(t.get("b"), Some(TopicConfig::with_queues(2)));
        assert_eq!(t.snapshot().len(), 1);
    }
}
