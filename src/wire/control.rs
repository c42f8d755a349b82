//! Control commands: JSON headers and bodies (`docs/protocol.md` §4, §5.5–5.8).
//!
//! Every type rejects unknown fields so that a misspelt field is an error
//! rather than a silently ignored setting.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::buf::DecodeError;

/// Longest topic name, in bytes.
pub const MAX_TOPIC_NAME_LEN: usize = 127;

/// Checks a topic name: 1–127 bytes of `[A-Za-z0-9_.%-]`.
pub fn validate_topic_name(name: &str) -> Result<(), DecodeError> {
    if name.is_empty() || name.len() > MAX_TOPIC_NAME_LEN {
        return Err(DecodeError::invalid(
            "topic",
            format!("{name:?} must be 1 to {MAX_TOPIC_NAME_LEN} bytes long"),
        ));
    }
    if name.chars().all(|c| c == '.') {
        return Err(DecodeError::invalid("topic", format!("{name:?} is not a usable name")));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '%' | '-')))
    {
        return Err(DecodeError::invalid(
            "topic",
            format!("{name:?} contains {c:?}; allowed are A-Z a-z 0-9 _ . % -"),
        ));
    }
    Ok(())
}

/// Serializes a JSON header or body.
pub fn to_json<T: Serialize>(value: &T) -> Bytes {
    // Serializing these plain structs cannot fail; fall back to an empty
    // object rather than panicking if it ever did.
    Bytes::from(serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec()))
}

/// Parses a JSON header or body, naming `what` in the error.
pub fn from_json<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
    serde_json::from_slice(bytes).map_err(|e| DecodeError::invalid(what, e.to_string()))
}

/// `GET_OFFSETS` request header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueRef {
    /// Topic name.
    pub topic: String,
    /// Queue id.
    pub queue: u32,
}

/// `GET_OFFSETS` response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueOffsets {
    /// Smallest queue offset still stored.
    pub min_offset: u64,
    /// One past the newest queue offset.
    pub max_offset: u64,
}

/// `QUERY_MESSAGE_BY_ID` request header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryById {
    /// The message id (`docs/protocol.md` §6).
    pub msg_id: String,
}

/// `QUERY_MESSAGE_BY_KEY` request header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryByKey {
    /// Topic the message was sent to.
    pub topic: String,
    /// One of the message's keys.
    pub key: String,
    /// Most records to return.
    pub max: u32,
}

/// `CREATE_TOPIC` request header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTopic {
    /// Topic name.
    pub topic: String,
    /// Queues on this broker.
    pub queues: u32,
    /// Default message TTL, ms; absent for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

/// `DELETE_TOPIC` and `TOPIC_STATS` request header; `GET_ROUTE` too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRef {
    /// Topic name.
    pub topic: String,
}

/// One queue in a [`TopicStats`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueStats {
    /// Queue id.
    pub queue: u32,
    /// Smallest queue offset still stored.
    pub min_offset: u64,
    /// One past the newest queue offset.
    pub max_offset: u64,
}

/// `TOPIC_STATS` response body.
///
/// `store` is optional on the wire: a broker that predates it leaves it
/// out and it decodes as `None`. The other way round, a client that
/// predates it rejects the whole body (every type here denies unknown
/// fields), so `topic describe` of an older client fails against a newer
/// broker with a decode error naming the unknown field `store`; upgrade
/// clients (admin tools) with or after the brokers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicStats {
    /// Topic name.
    pub topic: String,
    /// Every queue of the topic on this broker.
    pub queues: Vec<QueueStats>,
    /// The answering broker's store: commitlog size and disk state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreUsage>,
}

/// A broker's store figures, in a [`TopicStats`]: how much the commitlog
/// holds, how full the data directory's file system is, where that stands
/// against the disk watermarks and whether sends are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreUsage {
    /// Bytes the commitlog's segment files occupy: segments × segment
    /// size (every segment file is allocated at its full size when it is
    /// created, so this is the space they take on disk).
    pub commitlog_bytes: u64,
    /// Number of commitlog segment files.
    pub segments: u64,
    /// Configured segment size, bytes.
    pub segment_bytes: u64,
    /// First commitlog (physical) offset still stored.
    pub commitlog_start_offset: u64,
    /// End of the written commitlog (one past the last record's byte);
    /// `end - start` is the bytes of records held.
    pub commitlog_end_offset: u64,
    /// Size of the data directory's file system, bytes.
    pub disk_total_bytes: u64,
    /// Bytes still available to the broker on it.
    pub disk_free_bytes: u64,
    /// `total - free`.
    pub disk_used_bytes: u64,
    /// `used / total`, 0.0 to 1.0.
    pub disk_used_ratio: f64,
    /// Watermark level of that reading: `normal`, `clean`, `force_clean`
    /// or `refuse`.
    pub level: String,
    /// `store.disk_clean_ratio`.
    pub clean_ratio: f64,
    /// `store.disk_force_clean_ratio`.
    pub force_clean_ratio: f64,
    /// `store.disk_refuse_ratio`.
    pub refuse_ratio: f64,
    /// True while sends are refused (`DISK_FULL`).
    pub refusing_sends: bool,
    /// Why sends are refused (the `DISK_FULL` message); absent while they
    /// are accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
}

/// A topic as a broker registers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicInfo {
    /// Queues on the registering broker.
    pub queues: u32,
}

/// `REGISTER_BROKER` request header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterBroker {
    /// Cluster name.
    pub cluster: String,
    /// Broker group name, shared by a master and its slaves.
    pub broker_name: String,
    /// 0 for the master, > 0 for slaves.
    pub broker_id: u64,
    /// Address clients connect to.
    pub addr: String,
    /// Every topic this broker serves.
    pub topics: BTreeMap<String, TopicInfo>,
    /// Its replication state (absent from brokers before replication).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationReport>,
}

/// A broker's replication state, as it registers it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationReport {
    /// A slave's master (None: a master, or a slave that has not found it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    /// A slave: bytes of its master's log it does not have yet. A master:
    /// the largest of its slaves'.
    pub lag_bytes: u64,
    /// Like `lag_bytes`, as the age of the oldest missing append, ms.
    pub lag_ms: u64,
    /// A master: slaves connected. A slave: 1 while following, else 0.
    pub links: u32,
}

/// `UNREGISTER_BROKER` request header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnregisterBroker {
    /// Cluster name.
    pub cluster: String,
    /// Broker group name.
    pub broker_name: String,
    /// Broker id within the group.
    pub broker_id: u64,
}

/// One broker group serving a topic, in a [`TopicRoute`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerRoute {
    /// Broker group name.
    pub broker_name: String,
    /// Cluster name.
    pub cluster: String,
    /// Queues of the topic in this group.
    pub queues: u32,
    /// Broker id → address (0 is the master) of the group's live brokers.
    pub addrs: BTreeMap<u64, String>,
    /// Broker id → address of brokers whose registration connection closed
    /// (crashed or killed): not routable, listed so that admin tools can
    /// show them as unreachable until they register again or expire.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub down: BTreeMap<u64, String>,
}

/// `GET_ROUTE` response body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRoute {
    /// Topic name.
    pub topic: String,
    /// Every broker group serving it, ordered by name.
    pub brokers: Vec<BrokerRoute>,
}

/// `GET_ALL_TOPICS` response body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllTopics {
    /// Topic names, sorted.
    pub topics: Vec<String>,
}

/// One live broker in a [`ClusterInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerInfo {
    /// Cluster name.
    pub cluster: String,
    /// Broker group name.
    pub broker_name: String,
    /// Broker id within the group.
    pub broker_id: u64,
    /// Client address.
    pub addr: String,
    /// Milliseconds since its last registration.
    pub last_register_ms_ago: u64,
    /// True when its registration connection closed (crashed or killed):
    /// not routable; listed until it registers again or expires.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub down: bool,
    /// Its replication state as last registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationReport>,
}

/// `GET_CLUSTER_INFO` response body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterInfo {
    /// Every registered broker, those marked `down` included.
    pub brokers: Vec<BrokerInfo>,
}

impl ClusterInfo {
    /// The brokers that are up (routable).
    pub fn up(self) -> ClusterInfo {
        ClusterInfo {
            brokers: self.brokers.into_iter().filter(|b| !b.down).collect(),
        }
    }
}

#[cfg(test)]
impl StoreUsage {
    /// Figures for unit tests: 2 GiB of commitlog on a 100 GiB disk 60 %
    /// used, sends accepted.
    pub(crate) fn example() -> StoreUsage {
        StoreUsage {
            commitlog_bytes: 2 << 30,
            segments: 2,
            segment_bytes: 1 << 30,
            commitlog_start_offset: 0,
            commitlog_end_offset: 1234,
            disk_total_bytes: 100 << 30,
            disk_free_bytes: 40 << 30,
            disk_used_bytes: 60 << 30,
            disk_used_ratio: 0.6,
            level: "normal".into(),
            clean_ratio: 0.75,
            force_clean_ratio: 0.85,
            refuse_ratio: 0.9,
            refusing_sends: false,
            refusal: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_are_checked() {
        for ok in ["a", "orders.created", "%DLQ%group-1", "A_b-9"] {
            validate_topic_name(ok).unwrap();
        }
        for bad in ["", ".", "..", "has space", "slash/", "é", &"x".repeat(128)] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn json_rejects_unknown_fields() {
        let ok: CreateTopic = from_json(br#"{"topic":"t","queues":4}"#, "header").unwrap();
        assert_eq!(ok.queues, 4);
        assert!(from_json::<CreateTopic>(br#"{"topic":"t","queues":4,"x":1}"#, "header").is_err());
        assert!(from_json::<CreateTopic>(b"not json", "header").is_err());
        let route = TopicRoute {
            topic: "t".into(),
            brokers: vec![BrokerRoute {
                broker_name: "b".into(),
                cluster: "c".into(),
                queues: 8,
                addrs: [(0, "127.0.0.1:1".to_string())].into(),
                down: BTreeMap::new(),
            }],
        };
        assert_eq!(from_json::<TopicRoute>(&to_json(&route), "body").unwrap(), route);
    }

    #[test]
    fn topic_stats_store_is_optional_both_ways() {
        // An older broker's answer (no `store`) still decodes.
        let old: TopicStats = from_json(br#"{"topic":"t","queues":[]}"#, "body").unwrap();
        assert_eq!(old.store, None);
        // Without figures nothing is written, so older clients decode it.
        assert_eq!(&to_json(&old)[..], br#"{"topic":"t","queues":[]}"#);
        let stats = TopicStats {
            topic: "t".into(),
            queues: vec![QueueStats {
                queue: 0,
                min_offset: 1,
                max_offset: 5,
            }],
            store: Some(StoreUsage::example()),
        };
        let json = to_json(&stats);
        assert_eq!(from_json::<TopicStats>(&json, "body").unwrap(), stats);
        assert!(
            !String::from_utf8_lossy(&json).contains("refusal\""),
            "absent while accepting"
        );
        // An older client (no `store` field, unknown fields denied) rejects it.
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct OldTopicStats {
            topic: String,
            queues: Vec<QueueStats>,
        }
        let err = from_json::<OldTopicStats>(&json, "body").unwrap_err();
        assert!(err.to_string().contains("store"), "{err}");
        let refusing = StoreUsage {
            refusing_sends: true,
            refusal: Some("disk full".into()),
            ..StoreUsage::example()
        };
        let back: StoreUsage = from_json(&to_json(&refusing), "body").unwrap();
        assert_eq!(back.refusal.as_deref(), Some("disk full"));
    }
}
