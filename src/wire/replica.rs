//! Master ↔ slave replication (`docs/protocol.md` §5.10): JSON headers;
//! commitlog bytes travel raw in the body of `REPLICA_FETCH` answers.
//!
//! A slave opens an ordinary connection to its master's client port and
//! sends `REPLICA_HANDSHAKE` (its log's end and its newest records), then
//! `REPLICA_FETCH` requests one at a time: each asks for the bytes from an
//! offset and confirms everything below it, which is what sync replication
//! waits for. `REPLICA_TOPICS` reads the master's topic configuration.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One record of the slave's log: where it starts and its CRC, so the
/// master can tell whether it holds the same record there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordMark {
    /// Commitlog offset of the record.
    pub offset: u64,
    /// The CRC the record stores.
    pub crc: u32,
}

/// `REPLICA_HANDSHAKE` request header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaHello {
    /// The slave's broker group name (must be the master's).
    pub broker_name: String,
    /// The slave's broker id (> 0).
    pub broker_id: u64,
    /// The slave's client address, for the master's views.
    pub addr: String,
    /// Start of the slave's log.
    pub start_offset: u64,
    /// End of the slave's log.
    pub max_offset: u64,
    /// The slave's `store.segment_bytes` (must equal the master's: the logs
    /// are byte-identical).
    pub segment_bytes: u64,
    /// The slave's newest records, newest first (up to 256).
    pub last_records: Vec<RecordMark>,
}

/// What the slave must do next, in a [`ReplicaWelcome`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
// No `deny_unknown_fields` here or on the welcome: serde cannot combine it
// with `flatten`.
#[serde(rename_all = "snake_case", tag = "action")]
pub enum ReplicaAction {
    /// The logs agree up to `from`: fetch from there. An empty slave whose
    /// master's log starts past 0 (retention) starts its log at `from`.
    Follow {
        /// Offset of the first fetch.
        from: u64,
    },
    /// The slave's log has records the master does not: cut it at `to` (a
    /// record boundary of the slave's log) and shake hands again.
    Truncate {
        /// Where to cut.
        to: u64,
        /// Why, for the slave's log line.
        reason: String,
    },
}

/// `REPLICA_HANDSHAKE` response header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaWelcome {
    /// What to do.
    #[serde(flatten)]
    pub action: ReplicaAction,
    /// Start of the master's log.
    pub master_start: u64,
    /// End of the master's log.
    pub master_max: u64,
}

/// `REPLICA_FETCH` request header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaFetch {
    /// The slave's broker id.
    pub broker_id: u64,
    /// First offset wanted; everything below it is confirmed stored
    /// unless `confirmed` says less.
    pub from: u64,
    /// Everything below this is stored on the slave, when less than `from`
    /// (a fetch sent before the previous chunk is written: pipelining).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed: Option<u64>,
    /// Most bytes wanted (a record larger than this comes whole).
    pub max_bytes: u32,
    /// How long the master may hold the request when it has nothing new.
    pub max_wait_ms: u32,
}

/// `REPLICA_ACK` header (a oneway frame): everything below `confirmed` is
/// stored on slave `broker_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaAck {
    /// The slave's broker id.
    pub broker_id: u64,
    /// End of what the slave has stored.
    pub confirmed: u64,
}

/// `REPLICA_FETCH` response header; the body is the commitlog bytes from
/// `from` to `next` (whole records, never across a segment end).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaChunk {
    /// Offset of the body's first byte.
    pub from: u64,
    /// Offset after the body (where the next fetch starts).
    pub next: u64,
    /// End of the master's log when the answer was made.
    pub master_max: u64,
}

/// One topic in a [`ReplicaTopics`] answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaTopic {
    /// Queue count.
    pub queues: u32,
    /// Default TTL, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

/// `REPLICA_TOPICS` response body: every topic of the master, and the
/// groups that consume each with per-message acknowledgements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaTopics {
    /// Topic name → settings.
    pub topics: BTreeMap<String, ReplicaTopic>,
    /// Topic name → groups receiving it (`RECEIVE_MESSAGE`): a slave keeps
    /// their messages for retention as its master does, and has them
    /// ready if it becomes the master.
    #[serde(default)]
    pub subscriptions: BTreeMap<String, Vec<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::control::{from_json, to_json};

    #[test]
    fn headers_round_trip_and_actions_are_tagged() {
        let w = ReplicaWelcome {
            action: ReplicaAction::Truncate {
                to: 40,
                reason: "diverged".into(),
            },
            master_start: 0,
            master_max: 100,
        };
        let json = to_json(&w);
        assert!(std::str::from_utf8(&json).unwrap().contains(r#""action":"truncate""#));
        assert_eq!(from_json::<ReplicaWelcome>(&json, "welcome").unwrap(), w);
        let f = ReplicaFetch {
            broker_id: 1,
            confirmed: Some(5),
            from: 7,
            max_bytes: 1 << 20,
            max_wait_ms: 500,
        };
        assert_eq!(from_json::<ReplicaFetch>(&to_json(&f), "fetch").unwrap(), f);
        assert!(
            from_json::<ReplicaFetch>(br#"{"broker_id":1,"from":0,"max_bytes":1,"max_wait_ms":1,"x":1}"#, "f").is_err()
        );
    }
}
