//! Consumer-group commands (`docs/protocol.md` §7): JSON headers and bodies.
//! The broker coordinating a group computes the assignment itself and hands
//! it out in the JoinGroup response.

use serde::{Deserialize, Serialize};

/// One queue of an assignment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignedQueue {
    /// Topic.
    pub topic: String,
    /// Broker group serving the queue.
    pub broker_name: String,
    /// Queue id on that broker group.
    pub queue: u32,
}

/// `JOIN_GROUP` header. Answered when the rebalance it takes part in ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinGroup {
    /// Group name.
    pub group: String,
    /// The id a previous join returned; absent for a new member.
    #[serde(default)]
    pub member_id: Option<String>,
    /// Stable client name (host/process); member ids derive from it.
    pub client_id: String,
    /// Subscribed topics.
    pub topics: Vec<String>,
    /// Silence after which the member is removed.
    pub session_timeout_ms: u64,
    /// `range` (default), `round-robin` or `sticky`; set by the first member.
    #[serde(default)]
    pub strategy: Option<String>,
    /// `clustering` (default) or `broadcasting`; set by the first member.
    #[serde(default)]
    pub mode: Option<String>,
}

/// `JOIN_GROUP` and `SYNC_GROUP` response body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupAssignment {
    /// The member's id (use it in every later request).
    pub member_id: String,
    /// Generation of the assignment.
    pub generation: u64,
    /// The queues this member owns in this generation.
    pub assignment: Vec<AssignedQueue>,
}

/// `SYNC_GROUP` and `HEARTBEAT` header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberRef {
    /// Group name.
    pub group: String,
    /// Member id.
    pub member_id: String,
    /// The generation the member works in.
    pub generation: u64,
}

/// `HEARTBEAT` response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatReply {
    /// True: a rebalance is under way; stop delivering and rejoin now.
    pub rebalance: bool,
}

/// `LEAVE_GROUP` header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaveGroup {
    /// Group name.
    pub group: String,
    /// Member id.
    pub member_id: String,
}

/// A committed (or to-be-committed) offset of one queue, named by topic,
/// broker group and queue id: the next offset to consume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueOffset {
    /// Topic.
    pub topic: String,
    /// Broker group owning the queue (offsets are kept by that group).
    pub broker_name: String,
    /// Queue id within that broker group.
    pub queue: u32,
    /// Next offset to consume.
    pub offset: u64,
}

/// `COMMIT_OFFSETS` header, sent to the broker group owning the queues.
/// While the group has live members a commit must name a current member,
/// its generation, and only queues that member owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitOffsets {
    /// Group name (broadcasting members use `<group>%<client_id>`).
    pub group: String,
    /// The committing member (absent: only accepted while the group has no
    /// live member, e.g. from an admin tool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_id: Option<String>,
    /// The member's generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// Offsets to store; every queue must belong to the receiving broker
    /// group.
    pub offsets: Vec<QueueOffset>,
}

/// `FETCH_OFFSETS` header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchOffsets {
    /// Group name.
    pub group: String,
    /// Only this topic's offsets (absent: every topic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

/// `FETCH_OFFSETS` response body: committed offsets (uncommitted queues are
/// absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommittedOffsets {
    /// One entry per committed queue.
    pub offsets: Vec<QueueOffset>,
}

/// `LIST_GROUPS` response body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupList {
    /// Groups with live members or committed offsets, sorted.
    pub groups: Vec<String>,
}

/// `DESCRIBE_GROUP` and `RESET_OFFSETS` target group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRef {
    /// Group name.
    pub group: String,
}

/// One member in a [`GroupDescription`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberInfo {
    /// Member id.
    pub member_id: String,
    /// Client id.
    pub client_id: String,
    /// Subscribed topics.
    pub topics: Vec<String>,
    /// Milliseconds since its last heartbeat.
    pub last_heartbeat_age_ms: u64,
    /// Queues it owns.
    pub assignment: Vec<AssignedQueue>,
}

/// `DESCRIBE_GROUP` response body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupDescription {
    /// Group name.
    pub group: String,
    /// `Empty`, `PreparingRebalance` or `Stable`.
    pub state: String,
    /// Current generation.
    pub generation: u64,
    /// Assignment strategy.
    pub strategy: String,
    /// `clustering` or `broadcasting`.
    pub mode: String,
    /// Live members.
    pub members: Vec<MemberInfo>,
    /// Committed offsets: from a broker, those it keeps (its own queues);
    /// from the client library's `Admin::describe_group`, those of every
    /// broker group.
    pub offsets: Vec<QueueOffset>,
    /// Broker groups whose offsets could not be read (admin only; always
    /// empty from a broker).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<String>,
}

/// Where `RESET_OFFSETS` moves a group's offsets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum ResetTarget {
    /// Each queue's smallest stored offset.
    Earliest,
    /// Each queue's end (skip everything stored).
    Latest,
    /// The first message stored at or after this time (ms since the epoch).
    Timestamp(u64),
    /// This offset, clamped into each queue's range.
    Offset(u64),
}

/// `RESET_OFFSETS` header; refused with `GROUP_NOT_EMPTY` while the group
/// has live members, and with `GROUP_NOT_EXIST` when the broker keeps no
/// offset of the group unless `create` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetOffsets {
    /// Group name.
    pub group: String,
    /// Topic whose queues (on this broker) are reset.
    pub topic: String,
    /// Target.
    pub to: ResetTarget,
    /// Create offsets for a group this broker does not know.
    #[serde(default)]
    pub create: bool,
}

/// `RESET_OFFSETS` response body: the new offsets.
pub type ResetResult = CommittedOffsets;

/// `SEARCH_OFFSET` header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchOffset {
    /// Topic.
    pub topic: String,
    /// Queue id.
    pub queue: u32,
    /// Time, ms since the epoch.
    pub timestamp: u64,
}

/// `SEARCH_OFFSET` response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OffsetAt {
    /// First offset stored at or after the time (the queue's end if none).
    pub offset: u64,
}

/// The master coordinating `group`: clients and brokers must agree on it,
/// so the rule is part of the protocol. `masters` are the live masters'
/// `(broker name, address)`; the one with the highest
/// `fmix64(fnv1a64(group + "@" + broker name))` is chosen (rendezvous
/// hashing: when a master dies only the groups it coordinated move, and
/// they move back when it returns; MurmurHash3's `fmix64` finaliser spreads
/// FNV's weak high bits). `None` when there is no master.
pub fn coordinator_for<'a>(group: &str, masters: &'a [(String, String)]) -> Option<&'a str> {
    let weight = |broker: &str| {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in group.bytes().chain(std::iter::once(b'@')).chain(broker.bytes()) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        hash ^ (hash >> 33)
    };
    masters
        .iter()
        .max_by(|a, b| (weight(&a.0), &a.0).cmp(&(weight(&b.0), &b.0)))
        .map(|(_, addr)| addr.as_str())
}

/// Header of a `NOTIFY_REBALANCE` push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebalanceNotice {
    /// The group that started rebalancing.
    pub group: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::control::{from_json, to_json};

    #[test]
    fn reset_targets_have_a_readable_json_form() {
        assert_eq!(&to_json(&ResetTarget::Earliest)[..], br#""earliest""#);
        assert_eq!(&to_json(&ResetTarget::Offset(5))[..], br#"{"offset":5}"#);
        let r: ResetOffsets = from_json(br#"{"group":"g","topic":"t","to":{"timestamp":17}}"#, "h").unwrap();
        assert_eq!(r.to, ResetTarget::Timestamp(17));
        let j: JoinGroup = from_json(
            br#"{"group":"g","client_id":"c","topics":["t"],"session_timeout_ms":3000}"#,
            "h",
        )
        .unwrap();
        assert_eq!((j.member_id, j.strategy, j.mode), (None, None, None));
        assert!(from_json::<JoinGroup>(
            br#"{"group":"g","client_id":"c","topics":[],"session_timeout_ms":1,"x":1}"#,
            "h"
        )
        .is_err());
    }

    #[test]
    fn a_commit_without_broker_name_is_refused_by_name() {
        let old = br#"{"group":"g","offsets":[{"topic":"t","queue":0,"offset":5}]}"#;
        let err = from_json::<CommitOffsets>(old, "header").unwrap_err().to_string();
        assert!(err.contains("broker_name"), "{err}");
        let new = br#"{"group":"g","offsets":[{"topic":"t","broker_name":"b","queue":0,"offset":5}]}"#;
        let c: CommitOffsets = from_json(new, "header").unwrap();
        assert_eq!(
            (c.member_id, c.generation, c.offsets[0].broker_name.as_str()),
            (None, None, "b")
        );
    }

    #[test]
    fn every_party_picks_the_same_coordinator_whatever_the_order() {
        let masters = |names: &[&str]| -> Vec<(String, String)> {
            names.iter().map(|n| (n.to_string(), format!("addr-{n}"))).collect()
        };
        let a = masters(&["broker-a", "broker-b", "broker-c"]);
        let b = masters(&["broker-c", "broker-a", "broker-b"]);
        for g in ["g1", "billing", "x"] {
            assert_eq!(coordinator_for(g, &a), coordinator_for(g, &b));
        }
        assert_eq!(coordinator_for("g", &[]), None);
        assert_eq!(coordinator_for("g", &masters(&["only"])), Some("addr-only"));
    }

    #[test]
    fn a_dead_master_moves_only_the_groups_it_coordinated() {
        let all: Vec<(String, String)> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| (n.to_string(), format!("addr-{n}")))
            .collect();
        let without_b: Vec<(String, String)> = all.iter().filter(|(n, _)| n != "b").cloned().collect();
        let mut moved = 0;
        for i in 0..400 {
            let g = format!("group-{i}");
            let before = coordinator_for(&g, &all).unwrap();
            let after = coordinator_for(&g, &without_b).unwrap();
            if before == "addr-b" {
                moved += 1;
                assert_ne!(after, "addr-b");
            } else {
                assert_eq!(before, after, "{g} moved although its coordinator lives");
            }
        }
        // Roughly a quarter of the groups were b's.
        assert!((50..150).contains(&moved), "{moved}");
    }
}
