//! Which groups consume a topic with per-message acknowledgements,
//! persisted as `<data_dir>/config/subscriptions.json`. After a restart the
//! broker restarts those queues' actors so TTL expiry dead-letters messages
//! for these groups even before any consumer reconnects.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use super::error::{StoreError, StoreResult};
use super::fsutil::write_atomic;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscriptionFile {
    /// Topic → groups.
    topics: BTreeMap<String, BTreeSet<String>>,
}

/// Topic → groups receiving it with per-message acknowledgements.
#[derive(Debug)]
pub struct SubscriptionTable {
    path: PathBuf,
    topics: RwLock<BTreeMap<String, BTreeSet<String>>>,
}

impl SubscriptionTable {
    /// Loads the table of a data directory (empty when there is none).
    pub fn open(data_dir: &Path) -> StoreResult<SubscriptionTable> {
        let path = data_dir.join("config").join("subscriptions.json");
        let topics = match std::fs::read(&path) {
            Ok(b) => {
                serde_json::from_slice::<SubscriptionFile>(&b)
                    .map_err(|e| StoreError::corrupt("subscription table", &path, e.to_string()))?
                    .topics
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(StoreError::io("read", &path, e)),
        };
        Ok(SubscriptionTable {
            path,
            topics: RwLock::new(topics),
        })
    }

    /// Records that `group` receives `topic`; writes through when new.
    pub fn add(&self, topic: &str, group: &str) -> StoreResult<bool> {
        if self.groups(topic).iter().any(|g| g == group) {
            return Ok(false);
        }
        let mut t = self
            .topics
            .write()
            .map_err(|_| StoreError::Poisoned("subscription table"))?;
        if !t.entry(topic.to_string()).or_default().insert(group.to_string()) {
            return Ok(false);
        }
        self.persist(&t)?;
        Ok(true)
    }

    /// Forgets a deleted topic.
    pub fn remove_topic(&self, topic: &str) -> StoreResult<()> {
        let mut t = self
            .topics
            .write()
            .map_err(|_| StoreError::Poisoned("subscription table"))?;
        if t.remove(topic).is_some() {
            self.persist(&t)?;
        }
        Ok(())
    }

    /// Groups receiving `topic`.
    pub fn groups(&self, topic: &str) -> Vec<String> {
        self.topics
            .read()
            .map(|t| t.get(topic).map(|g| g.iter().cloned().collect()).unwrap_or_default())
            .unwrap_or_default()
    }

    /// Every subscribed topic.
    pub fn topics(&self) -> Vec<String> {
        self.topics
            .read()
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn persist(&self, t: &BTreeMap<String, BTreeSet<String>>) -> StoreResult<()> {
        let file = SubscriptionFile { topics: t.clone() };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|source| StoreError::Encode {
            what: "subscription table",
            source,
        })?;
        write_atomic(&self.path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("config")).unwrap();
        let t = SubscriptionTable::open(dir.path()).unwrap();
        assert!(t.add("orders", "billing").unwrap());
        assert!(!t.add("orders", "billing").unwrap());
        t.add("orders", "audit").unwrap();
        t.add("logs", "audit").unwrap();
        let t = SubscriptionTable::open(dir.path()).unwrap();
        assert_eq!(t.groups("orders"), ["audit", "billing"]);
        t.remove_topic("orders").unwrap();
        assert_eq!(SubscriptionTable::open(dir.path()).unwrap().topics(), ["logs"]);
    }
}
