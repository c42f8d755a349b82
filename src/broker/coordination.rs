//! Which broker coordinates a group, seen from this broker, and the rule a
//! commit must pass.
//!
//! Committed offsets live with the broker group owning each queue
//! (RocketMQ's model), while membership lives with the group's coordinator,
//! which may be another broker. So a broker answers `JOIN_GROUP` and
//! `HEARTBEAT` only for the groups it coordinates (`NOT_COORDINATOR`
//! otherwise: the member looks the coordinator up again), and checks every
//! commit for its queues against the coordinator's view of the group
//! (Kafka's rule: a live group's commits come from a current member, in its
//! generation, for queues it owns).
//!
//! The coordinator is [`coordinator_for`] over the live masters the name
//! servers list; the list is cached for [`VIEW_TTL`], and a remote
//! coordinator's membership answer for as long, so a commit costs a
//! round trip at most once a second per group.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::core::GroupOffset;
use crate::client::core::ClientCore;
use crate::error::{BrokerError, ErrorKind};
use crate::groups::types::GroupDescription as GroupState;
use crate::wire::control::{from_json, to_json};
use crate::wire::group::{coordinator_for, AssignedQueue, GroupDescription, GroupRef, MemberInfo, QueueOffset};
use crate::wire::Command;

/// How long a cluster view or a remote membership answer is trusted.
pub const VIEW_TTL: Duration = Duration::from_secs(1);

/// Where a group is coordinated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Coordinator {
    /// Here (also when no name server answers: a lone broker serves its
    /// own groups).
    Local,
    /// At this broker address.
    Remote(String),
}

type Masters = Arc<Vec<(String, String)>>;

/// The cached cluster view and remote membership answers.
pub struct Coordination {
    routes: Arc<ClientCore>,
    self_addr: String,
    masters: Mutex<Option<(Instant, Masters)>>,
    remote: Mutex<HashMap<String, (Instant, GroupDescription)>>,
}

impl Coordination {
    /// A view for the broker advertised as `self_addr`, asking the name
    /// servers of `routes`.
    pub fn new(routes: Arc<ClientCore>, self_addr: String) -> Coordination {
        Coordination {
            routes,
            self_addr,
            masters: Mutex::new(None),
            remote: Mutex::new(HashMap::new()),
        }
    }

    async fn masters(&self) -> Option<Masters> {
        if let Some((at, m)) = self.masters.lock().ok().and_then(|g| g.clone()) {
            if at.elapsed() < VIEW_TTL {
                return Some(m);
            }
        }
        let info = match self.routes.cluster_info().await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "no cluster view; coordinating groups here");
                return None;
            }
        };
        let masters: Masters = Arc::new(
            info.brokers
                .into_iter()
                .filter(|b| b.broker_id == 0)
                .map(|b| (b.broker_name, b.addr))
                .collect(),
        );
        if let Ok(mut g) = self.masters.lock() {
            *g = Some((Instant::now(), masters.clone()));
        }
        Some(masters)
    }

    /// Where `group` is coordinated now.
    pub async fn coordinator(&self, group: &str) -> Coordinator {
        let Some(masters) = self.masters().await else {
            return Coordinator::Local;
        };
        match coordinator_for(group, &masters) {
            Some(addr) if addr != self.self_addr => Coordinator::Remote(addr.to_string()),
            _ => Coordinator::Local,
        }
    }

    /// The remote coordinator's description of `group` (cached unless
    /// `fresh`); `None` when it cannot be asked.
    pub async fn remote_membership(&self, addr: &str, group: &str, fresh: bool) -> Option<GroupDescription> {
        if !fresh {
            let cached = self.remote.lock().ok().and_then(|m| m.get(group).cloned());
            if let Some((at, d)) = cached {
                if at.elapsed() < VIEW_TTL {
                    return Some(d);
                }
            }
        }
        let header = to_json(&GroupRef {
            group: group.to_string(),
        });
        let timeout = self.routes.cfg.request_timeout;
        let answer = self
            .routes
            .request(addr, Command::DescribeGroup, header, Bytes::new(), timeout)
            .await;
        let desc: GroupDescription = match answer.map(|(_, body)| from_json(&body, "group")) {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                tracing::warn!(%addr, group, error = %e, "bad group description from the coordinator");
                return None;
            }
            Err(e) => {
                tracing::debug!(%addr, group, error = %e, "group coordinator unreachable");
                return None;
            }
        };
        if let Ok(mut m) = self.remote.lock() {
            // Bounded: one entry per group that committed here lately.
            if m.len() > 10_000 {
                m.retain(|_, (at, _)| at.elapsed() < VIEW_TTL);
            }
            m.insert(group.to_string(), (Instant::now(), desc.clone()));
        }
        Some(desc)
    }
}

/// A broker's description of a group in the shape brokers exchange (and
/// `DESCRIBE_GROUP` answers): membership from the coordinator's state
/// A queue of an assignment in the shape brokers and clients exchange.
pub fn assigned_queue(q: crate::groups::assignment::MessageQueue) -> AssignedQueue {
    AssignedQueue {
        topic: q.topic,
        broker_name: q.broker_name,
        queue: q.queue_id,
    }
}

/// machine and the offsets this broker keeps.
pub fn group_description(d: GroupState, offsets: Vec<GroupOffset>) -> GroupDescription {
    let text = |v: serde_json::Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    GroupDescription {
        group: d.group,
        state: text(serde_json::to_value(d.state).unwrap_or_default()),
        generation: d.generation,
        strategy: d.strategy.as_str().to_string(),
        mode: text(serde_json::to_value(d.mode).unwrap_or_default()),
        members: d
            .members
            .into_iter()
            .map(|m| MemberInfo {
                member_id: m.member_id,
                client_id: m.client_id,
                topics: m.topics.into_iter().collect(),
                last_heartbeat_age_ms: m.last_heartbeat_age_ms,
                assignment: m.assignment.into_iter().map(assigned_queue).collect(),
            })
            .collect(),
        offsets: offsets.into_iter().map(QueueOffset::from).collect(),
        unreachable: Vec::new(),
    }
}

/// Checks a commit against the coordinator's view of the group: a group
/// with live members accepts commits only from a current member, in its
/// generation, for queues that member owns. A group without live members
/// (stopped, or an admin tool) accepts any commit.
pub fn check_commit(
    desc: &GroupDescription,
    member_id: Option<&str>,
    generation: Option<u64>,
    offsets: &[GroupOffset],
) -> Result<(), BrokerError> {
    if desc.members.is_empty() {
        return Ok(());
    }
    let group = &desc.group;
    let (Some(member_id), Some(generation)) = (member_id, generation) else {
        return Err(BrokerError::new(
            ErrorKind::GroupNotEmpty,
            format!(
                "group {group} has {} live members: a commit must carry a member id and generation",
                desc.members.len()
            ),
        ));
    };
    let Some(member) = desc.members.iter().find(|m| m.member_id == member_id) else {
        return Err(BrokerError::new(
            ErrorKind::UnknownMember,
            format!("{member_id} is not a member of group {group}: rejoin"),
        ));
    };
    if generation != desc.generation {
        return Err(BrokerError::new(
            ErrorKind::IllegalGeneration,
            format!(
                "generation {generation} of group {group} is over (now {}): rejoin",
                desc.generation
            ),
        ));
    }
    for o in offsets {
        let owned = member
            .assignment
            .iter()
            .any(|q| q.topic == o.topic && q.broker_name == o.broker_name && q.queue == o.queue);
        if !owned {
            return Err(BrokerError::new(
                ErrorKind::NotQueueOwner,
                format!(
                    "member {member_id} does not own {}/{}/{} in generation {generation} of group {group}",
                    o.topic, o.broker_name, o.queue
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offset(broker: &str, queue: u32) -> GroupOffset {
        GroupOffset {
            topic: "t".into(),
            broker_name: broker.into(),
            queue,
            offset: 5,
        }
    }

    fn group(members: &[(&str, &[(&str, u32)])]) -> GroupDescription {
        GroupDescription {
            group: "g".into(),
            state: "Stable".into(),
            generation: 4,
            strategy: "range".into(),
            mode: "clustering".into(),
            members: members
                .iter()
                .map(|(id, queues)| MemberInfo {
                    member_id: id.to_string(),
                    client_id: "c".into(),
                    topics: vec!["t".into()],
                    last_heartbeat_age_ms: 0,
                    assignment: queues
                        .iter()
                        .map(|(b, q)| AssignedQueue {
                            topic: "t".into(),
                            broker_name: b.to_string(),
                            queue: *q,
                        })
                        .collect(),
                })
                .collect(),
            offsets: Vec::new(),
            unreachable: Vec::new(),
        }
    }

    #[test]
    fn a_live_group_takes_commits_only_from_the_owner_in_its_generation() {
        let g = group(&[("m1", &[("a", 0), ("b", 0)]), ("m2", &[("a", 1)])]);
        let status = |r: Result<(), BrokerError>| r.err().map(|e| e.kind());
        assert_eq!(
            status(check_commit(&g, Some("m1"), Some(4), &[offset("a", 0), offset("b", 0)])),
            None
        );
        assert_eq!(
            status(check_commit(&g, None, None, &[offset("a", 0)])),
            Some(ErrorKind::GroupNotEmpty)
        );
        assert_eq!(
            status(check_commit(&g, Some("m9"), Some(4), &[offset("a", 0)])),
            Some(ErrorKind::UnknownMember)
        );
        assert_eq!(
            status(check_commit(&g, Some("m1"), Some(3), &[offset("a", 0)])),
            Some(ErrorKind::IllegalGeneration)
        );
        // Queue 0 of broker a is not queue 0 of broker b.
        assert_eq!(
            status(check_commit(&g, Some("m2"), Some(4), &[offset("b", 1)])),
            Some(ErrorKind::NotQueueOwner)
        );
        assert_eq!(
            status(check_commit(&g, Some("m2"), Some(4), &[offset("a", 0)])),
            Some(ErrorKind::NotQueueOwner)
        );
    }

    #[test]
    fn a_group_without_members_takes_any_commit() {
        assert!(check_commit(&group(&[]), None, None, &[offset("a", 0)]).is_ok());
    }
}
