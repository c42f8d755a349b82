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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicStats {
    /// Topic name.
    pub topic: String,
    /// Every queue of the topic on this broker.
    pub queues: Vec<QueueStats>,
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
}
