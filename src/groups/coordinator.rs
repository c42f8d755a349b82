//! One consumer group's coordinator: membership, generations, rebalances.
//!
//! Pure data, no I/O and no clock: every input takes `now` (ms) and returns
//! [`Effect`]s (or a direct reply) for the actor to carry out. The
//! coordinator computes the assignment itself (like Kafka's KIP-848) and
//! delivers it in the join reply, so there is no leader and no separate
//! sync phase.
//!
//! ```text
//!          join                      all members rejoined | window timeout
//!  Empty ────────▶ PreparingRebalance ─────────────────────────────────▶ Stable
//!    ▲                 ▲      (generation + 1, JoinReply to each member)    │
//!    │                 └────────────────────────────────────────────────────┘
//!    │                    join (new member / new topics), leave, expiry,
//!    │                    queue change  (+ NotifyRebalance to the others)
//!    └──── last member gone (from any state; generation + 1)
//! ```
//!
//! The protocol is eager: a member that sends a join (or is told a
//! rebalance is in progress) stops consuming its queues first. Every member
//! of the new generation rejoined in the window (members that did not are
//! removed when it closes), so no queue is ever consumed by two members.

use std::collections::{BTreeMap, BTreeSet};

use super::assignment::{assign_by_subscription, Assignment, MemberId, MessageQueue};
use super::types::{
    ConsumeMode, Effect, GroupConfig, GroupDescription, GroupError, GroupPhase, HeartbeatOutcome, JoinRequest,
    MemberDescription, RemovalReason,
};

/// One live member.
#[derive(Debug, Clone)]
struct Member {
    client_id: String,
    topics: BTreeSet<String>,
    session_timeout_ms: u64,
    last_heartbeat_ms: u64,
    /// Request id of its join parked in the open window; `Some` exactly when
    /// it has rejoined in this round.
    pending_join: Option<u64>,
}

impl Member {
    /// When the member expires unless it heartbeats (its session timeout
    /// has fully elapsed). A member with a parked join does not expire: it
    /// is waiting on us, and the window bounds the wait.
    fn session_deadline(&self) -> Option<u64> {
        match self.pending_join {
            Some(_) => None,
            None => Some(self.last_heartbeat_ms.saturating_add(self.session_timeout_ms)),
        }
    }
}

/// The open join window.
#[derive(Debug, Clone, Copy)]
struct JoinWindow {
    /// Not closed before this even when every member rejoined (initial
    /// delay of an empty group).
    earliest_close_ms: u64,
    /// Closed at this time whoever rejoined.
    deadline_ms: u64,
}

/// State machine of one consumer group.
#[derive(Debug, Clone)]
pub struct GroupState {
    name: String,
    config: GroupConfig,
    generation: u64,
    members: BTreeMap<MemberId, Member>,
    /// Assignment of the current generation, for the members still present.
    assignment: Assignment,
    topic_queues: BTreeMap<String, Vec<MessageQueue>>,
    window: Option<JoinWindow>,
    /// Numbers new member ids (`{client_id}-{seq}`), so ids are unique in
    /// this group without randomness.
    member_seq: u64,
}

impl GroupState {
    /// An empty group at generation 0 that knows no topic's queues yet.
    pub fn new(name: impl Into<String>, config: GroupConfig) -> GroupState {
        GroupState {
            name: name.into(),
            config,
            generation: 0,
            members: BTreeMap::new(),
            assignment: Assignment::new(),
            topic_queues: BTreeMap::new(),
            window: None,
            member_seq: 0,
        }
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The group's settings.
    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    /// The current generation (0 before the first rebalance).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Where the group is in its life cycle.
    pub fn phase(&self) -> GroupPhase {
        if self.window.is_some() {
            GroupPhase::PreparingRebalance
        } else if self.members.is_empty() {
            GroupPhase::Empty
        } else {
            GroupPhase::Stable
        }
    }

    /// True when the group has no member (the actor may drop it).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The current generation's assignment.
    pub fn assignment(&self) -> &Assignment {
        &self.assignment
    }

    /// Every topic some member subscribes to: the topics whose queues the
    /// actor must keep up to date with [`GroupState::set_topic_queues`].
    pub fn subscribed_topics(&self) -> BTreeSet<String> {
        self.members.values().flat_map(|m| m.topics.iter().cloned()).collect()
    }

    /// A member joins or rejoins.
    ///
    /// `Err` refuses the request at once (unknown member id, bad session
    /// timeout, empty client id). `Ok` means the join is parked: its answer,
    /// [`Effect::JoinReply`] or [`Effect::JoinFailed`] with the same
    /// `request_id`, is in the returned effects or in those of a later
    /// input. A new member, or a known one with changed topics, starts a
    /// rebalance if none is open (the others get [`Effect::NotifyRebalance`]);
    /// any join during a rebalance counts as that member's rejoin, and the
    /// window closes as soon as every member has rejoined. A known member
    /// rejoining a stable group with the same topics is answered at once
    /// with its current assignment (a lost reply or a retry must not
    /// disturb the whole group).
    ///
    /// The actor should [`set_topic_queues`](GroupState::set_topic_queues)
    /// for the request's topics before the join, so the assignment covers
    /// them.
    pub fn join(&mut self, req: JoinRequest, now: u64) -> Result<Vec<Effect>, GroupError> {
        self.validate_join(&req)?;
        let mut effects = Vec::new();
        let was_empty = self.members.is_empty();
        let member_id = match req.member_id {
            None => {
                self.member_seq += 1;
                let id = format!("{}-{}", req.client_id, self.member_seq);
                let member = Member {
                    client_id: req.client_id,
                    topics: req.topics,
                    session_timeout_ms: req.session_timeout_ms,
                    last_heartbeat_ms: now,
                    pending_join: Some(req.request_id),
                };
                self.members.insert(id.clone(), member);
                id
            }
            Some(id) => {
                let Some(member) = self.members.get_mut(&id) else {
                    return Err(GroupError::UnknownMember);
                };
                let unchanged = member.topics == req.topics;
                member.client_id = req.client_id;
                member.topics = req.topics;
                member.session_timeout_ms = req.session_timeout_ms;
                member.last_heartbeat_ms = now;
                if self.window.is_none() && unchanged {
                    effects.push(Effect::JoinReply {
                        request_id: req.request_id,
                        assignment: self.assignment.get(&id).cloned().unwrap_or_default(),
                        member_id: id,
                        generation: self.generation,
                    });
                    return Ok(effects);
                }
                // A retry replaces the parked join; the older one is answered now.
                if let Some(older) = member.pending_join.replace(req.request_id) {
                    effects.push(Effect::JoinFailed {
                        request_id: older,
                        member_id: id.clone(),
                        error: GroupError::InvalidRequest("superseded by a later join of the same member".into()),
                    });
                }
                id
            }
        };
        tracing::debug!(group = %self.name, member = %member_id, "join");
        self.request_rebalance(now, was_empty, &mut effects);
        Ok(effects)
    }

    /// The member's queues in `generation`, which must be the current one
    /// and complete. Lets a member re-read its assignment; does not count
    /// as a heartbeat.
    pub fn sync(&self, member_id: &str, generation: u64) -> Result<Vec<MessageQueue>, GroupError> {
        if !self.members.contains_key(member_id) {
            return Err(GroupError::UnknownMember);
        }
        if self.window.is_some() {
            return Err(GroupError::RebalanceInProgress);
        }
        if generation != self.generation {
            return Err(GroupError::IllegalGeneration {
                current: self.generation,
            });
        }
        Ok(self.assignment.get(member_id).cloned().unwrap_or_default())
    }

    /// A member's heartbeat for `generation`: refreshes its session unless
    /// refused. A member whose join is parked may send any generation.
    pub fn heartbeat(&mut self, member_id: &str, generation: u64, now: u64) -> Result<HeartbeatOutcome, GroupError> {
        let current = self.generation;
        let rebalancing = self.window.is_some();
        let member = self.members.get_mut(member_id).ok_or(GroupError::UnknownMember)?;
        // A stale member must not keep itself alive: it holds queues it does not know of.
        if member.pending_join.is_none() && generation != current {
            return Err(GroupError::IllegalGeneration { current });
        }
        member.last_heartbeat_ms = now;
        Ok(if rebalancing {
            HeartbeatOutcome::RebalanceInProgress
        } else {
            HeartbeatOutcome::Stable
        })
    }

    /// A member leaves: it is removed at once and the others rebalance
    /// without waiting for its session to expire.
    pub fn leave(&mut self, member_id: &str, now: u64) -> Result<Vec<Effect>, GroupError> {
        if !self.members.contains_key(member_id) {
            return Err(GroupError::UnknownMember);
        }
        let mut effects = Vec::new();
        self.remove_member(member_id, RemovalReason::Left, &mut effects);
        self.after_removal(now, &mut effects);
        Ok(effects)
    }

    /// Sets the queues of `topic` (an empty list forgets the topic). When
    /// this changes a stable group's assignment, a rebalance starts; during
    /// a rebalance the new queues are used when the window closes.
    pub fn set_topic_queues(&mut self, topic: impl Into<String>, queues: Vec<MessageQueue>, now: u64) -> Vec<Effect> {
        let topic = topic.into();
        let queues: Vec<MessageQueue> = queues.into_iter().collect::<BTreeSet<_>>().into_iter().collect();
        let changed = if queues.is_empty() {
            self.topic_queues.remove(&topic).is_some()
        } else {
            self.topic_queues.get(&topic) != Some(&queues) && {
                self.topic_queues.insert(topic, queues);
                true
            }
        };
        let mut effects = Vec::new();
        let stable = self.phase() == GroupPhase::Stable;
        if changed && stable && self.compute_assignment() != self.assignment {
            self.request_rebalance(now, false, &mut effects);
        }
        effects
    }

    /// Advances time: expires members silent for their whole session
    /// timeout (and rebalances), then closes the join window if it is due,
    /// removing members that did not rejoin.
    pub fn tick(&mut self, now: u64) -> Vec<Effect> {
        let mut effects = Vec::new();
        let expired: Vec<MemberId> = self
            .members
            .iter()
            .filter(|(_, m)| m.session_deadline().is_some_and(|d| d <= now))
            .map(|(id, _)| id.clone())
            .collect();
        if !expired.is_empty() {
            for id in &expired {
                self.remove_member(id, RemovalReason::SessionExpired, &mut effects);
            }
            self.after_removal(now, &mut effects);
        }
        if let Some(window) = self.window {
            if now >= window.deadline_ms {
                let missing: Vec<MemberId> = self
                    .members
                    .iter()
                    .filter(|(_, m)| m.pending_join.is_none())
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in &missing {
                    self.remove_member(id, RemovalReason::MissedRebalance, &mut effects);
                }
                self.complete_rebalance(now, &mut effects);
            } else {
                self.maybe_complete(now, &mut effects);
            }
        }
        effects
    }

    /// The earliest `now` at which [`tick`](GroupState::tick) has work: a
    /// session expiry or the join window's close. The actor arms one timer
    /// for it after every input; `None` means no timer is needed.
    pub fn next_deadline(&self) -> Option<u64> {
        let sessions = self.members.values().filter_map(Member::session_deadline).min();
        let window = self.window.map(|w| {
            if self.all_rejoined() {
                w.earliest_close_ms
            } else {
                w.deadline_ms
            }
        });
        sessions.into_iter().chain(window).min()
    }

    /// A snapshot for admin tools.
    pub fn describe(&self, now: u64) -> GroupDescription {
        let members = self
            .members
            .iter()
            .map(|(id, m)| MemberDescription {
                member_id: id.clone(),
                client_id: m.client_id.clone(),
                topics: m.topics.clone(),
                session_timeout_ms: m.session_timeout_ms,
                last_heartbeat_age_ms: now.saturating_sub(m.last_heartbeat_ms),
                rejoined: m.pending_join.is_some(),
                assignment: self.assignment.get(id).cloned().unwrap_or_default(),
            })
            .collect();
        GroupDescription {
            group: self.name.clone(),
            state: self.phase(),
            generation: self.generation,
            strategy: self.config.strategy,
            mode: self.config.mode,
            rebalance_deadline_ms: self.window.map(|w| w.deadline_ms),
            members,
        }
    }

    fn validate_join(&self, req: &JoinRequest) -> Result<(), GroupError> {
        if req.client_id.is_empty() {
            return Err(GroupError::InvalidRequest("empty client id".into()));
        }
        let (min, max) = (self.config.min_session_timeout_ms, self.config.max_session_timeout_ms);
        if !(min..=max).contains(&req.session_timeout_ms) {
            return Err(GroupError::InvalidRequest(format!(
                "session timeout {} ms is outside {min}..={max} ms",
                req.session_timeout_ms
            )));
        }
        Ok(())
    }

    fn all_rejoined(&self) -> bool {
        self.members.values().all(|m| m.pending_join.is_some())
    }

    /// Opens the join window if none is open (notifying the members that
    /// have not rejoined), then closes it if it can close already.
    fn request_rebalance(&mut self, now: u64, initial: bool, effects: &mut Vec<Effect>) {
        if self.window.is_none() {
            let deadline_ms = now.saturating_add(self.config.rebalance_timeout_ms);
            let delay = if initial {
                self.config.initial_rebalance_delay_ms
            } else {
                0
            };
            self.window = Some(JoinWindow {
                earliest_close_ms: now.saturating_add(delay).min(deadline_ms),
                deadline_ms,
            });
            tracing::debug!(group = %self.name, generation = self.generation, "rebalance started");
            for (id, member) in &self.members {
                if member.pending_join.is_none() {
                    effects.push(Effect::NotifyRebalance { member_id: id.clone() });
                }
            }
        }
        self.maybe_complete(now, effects);
    }

    fn maybe_complete(&mut self, now: u64, effects: &mut Vec<Effect>) {
        if let Some(window) = self.window {
            if now >= window.earliest_close_ms && self.all_rejoined() {
                self.complete_rebalance(now, effects);
            }
        }
    }

    /// After members were removed: the last one leaving empties the group,
    /// otherwise the rest rebalance.
    fn after_removal(&mut self, now: u64, effects: &mut Vec<Effect>) {
        if self.members.is_empty() {
            self.complete_rebalance(now, effects);
        } else {
            self.request_rebalance(now, false, effects);
        }
    }

    fn remove_member(&mut self, member_id: &str, reason: RemovalReason, effects: &mut Vec<Effect>) {
        let Some(member) = self.members.remove(member_id) else {
            return;
        };
        self.assignment.remove(member_id);
        tracing::debug!(group = %self.name, member = %member_id, ?reason, "member removed");
        if let Some(request_id) = member.pending_join {
            effects.push(Effect::JoinFailed {
                request_id,
                member_id: member_id.to_string(),
                error: GroupError::UnknownMember,
            });
        }
        effects.push(Effect::MemberRemoved {
            member_id: member_id.to_string(),
            client_id: member.client_id,
            reason,
        });
    }

    /// Closes the window: next generation, new assignment, every parked
    /// join answered. Every remaining member has rejoined (or there is none).
    fn complete_rebalance(&mut self, now: u64, effects: &mut Vec<Effect>) {
        self.window = None;
        self.generation += 1;
        self.assignment = self.compute_assignment();
        for (id, member) in &mut self.members {
            // The reply is a sign of life: the session restarts now.
            member.last_heartbeat_ms = now;
            if let Some(request_id) = member.pending_join.take() {
                effects.push(Effect::JoinReply {
                    request_id,
                    member_id: id.clone(),
                    generation: self.generation,
                    assignment: self.assignment.get(id).cloned().unwrap_or_default(),
                });
            }
        }
        tracing::debug!(group = %self.name, generation = self.generation, members = self.members.len(), "rebalanced");
        effects.push(Effect::Rebalanced {
            generation: self.generation,
            assignment: self.assignment.clone(),
        });
    }

    /// The assignment for the current members and queues; sticky builds on
    /// the current one.
    fn compute_assignment(&self) -> Assignment {
        match self.config.mode {
            ConsumeMode::Clustering => {
                let subscriptions: BTreeMap<MemberId, BTreeSet<String>> = self
                    .members
                    .iter()
                    .map(|(id, m)| (id.clone(), m.topics.clone()))
                    .collect();
                assign_by_subscription(
                    self.config.strategy,
                    &subscriptions,
                    &self.topic_queues,
                    &self.assignment,
                )
            }
            ConsumeMode::Broadcasting => self
                .members
                .iter()
                .map(|(id, m)| {
                    let queues = m.topics.iter().filter_map(|t| self.topic_queues.get(t)).flatten();
                    let queues: BTreeSet<&MessageQueue> = queues.collect();
                    (id.clone(), queues.into_iter().cloned().collect())
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests;
