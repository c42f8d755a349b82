//! Inputs, outputs and configuration of the group coordinator
//! ([`super::coordinator::GroupState`]).

use std::collections::BTreeSet;

use serde::Serialize;

use super::assignment::{Assignment, MemberId, MessageQueue, Strategy};

/// How a group's members share its queues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConsumeMode {
    /// Each queue goes to exactly one member, chosen by the strategy.
    #[default]
    Clustering,
    /// Every member gets every queue of the topics it subscribes to and
    /// keeps its own progress; the strategy is not used.
    Broadcasting,
}

/// Settings of one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// Assignment strategy (clustering mode).
    pub strategy: Strategy,
    /// Clustering or broadcasting.
    pub mode: ConsumeMode,
    /// How long a join window stays open at most: members that have not
    /// rejoined when it elapses are removed.
    pub rebalance_timeout_ms: u64,
    /// When the first member joins an empty group, the window stays open at
    /// least this long so members starting together land in one generation
    /// (Kafka's `group.initial.rebalance.delay.ms`). 0 = close at once.
    pub initial_rebalance_delay_ms: u64,
    /// Smallest session timeout a member may ask for.
    pub min_session_timeout_ms: u64,
    /// Largest session timeout a member may ask for.
    pub max_session_timeout_ms: u64,
}

impl Default for GroupConfig {
    fn default() -> GroupConfig {
        GroupConfig {
            strategy: Strategy::default(),
            mode: ConsumeMode::default(),
            rebalance_timeout_ms: 3_000,
            initial_rebalance_delay_ms: 0,
            min_session_timeout_ms: 1_000,
            max_session_timeout_ms: 300_000,
        }
    }
}

/// Where a group is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum GroupPhase {
    /// No member.
    Empty,
    /// A join window is open: members are (re)joining.
    PreparingRebalance,
    /// Every member has its assignment for the current generation.
    Stable,
}

/// A member's request to join (or rejoin) the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    /// `None` for a new member (the coordinator assigns an id); the id
    /// previously given for a rejoin.
    pub member_id: Option<MemberId>,
    /// The client's own id (e.g. `ip@pid`), shown in descriptions and used
    /// as the member id's prefix.
    pub client_id: String,
    /// Topics the member consumes.
    pub topics: BTreeSet<String>,
    /// The member is removed when silent this long.
    pub session_timeout_ms: u64,
    /// Caller's id for this request, echoed in the reply effect.
    pub request_id: u64,
}

/// Answer to a heartbeat from a current member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum HeartbeatOutcome {
    /// Keep consuming the current assignment.
    Stable,
    /// A rebalance is under way: stop consuming and join again (a member
    /// whose join is already parked just keeps waiting for its reply).
    RebalanceInProgress,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// The member id is not (or no longer) in the group: join without one.
    #[error("unknown member id: join the group again without one")]
    UnknownMember,
    /// The request names another generation than the group's.
    #[error("illegal generation: the group is at generation {current}, join again")]
    IllegalGeneration {
        /// The group's current generation.
        current: u64,
    },
    /// A rebalance is under way: the member must join again.
    #[error("rebalance in progress: join the group again")]
    RebalanceInProgress,
    /// The request is malformed.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

/// Why a member left the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RemovalReason {
    /// It sent a leave request.
    Left,
    /// No heartbeat within its session timeout.
    SessionExpired,
    /// It did not rejoin before the join window closed.
    MissedRebalance,
}

/// What the actor must do after an input. Effects are listed in the order
/// they happened; all are runtime-free data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Answer the parked join `request_id`: the member's id, the generation
    /// and its queues in that generation.
    JoinReply {
        /// The join being answered.
        request_id: u64,
        /// The member's id (new members learn theirs here).
        member_id: MemberId,
        /// Generation the assignment belongs to.
        generation: u64,
        /// The member's queues, sorted.
        assignment: Vec<MessageQueue>,
    },
    /// Answer the parked join `request_id` with an error.
    JoinFailed {
        /// The join being answered.
        request_id: u64,
        /// The member that sent it.
        member_id: MemberId,
        /// Why it failed.
        error: GroupError,
    },
    /// Push a notice to the member: a rebalance started, stop consuming and
    /// join again now rather than at the next heartbeat.
    NotifyRebalance {
        /// The member to notify.
        member_id: MemberId,
    },
    /// A member is gone (for logs and for dropping the actor's routes).
    MemberRemoved {
        /// The member's id.
        member_id: MemberId,
        /// Its client id.
        client_id: String,
        /// Why it was removed.
        reason: RemovalReason,
    },
    /// A rebalance completed (for logs and metrics). An empty assignment
    /// means the group became empty.
    Rebalanced {
        /// The new generation.
        generation: u64,
        /// Every member's queues in it.
        assignment: Assignment,
    },
}

/// A snapshot of one group, for admin tools (serialised as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupDescription {
    /// Group name.
    pub group: String,
    /// Life-cycle phase.
    pub state: GroupPhase,
    /// Current generation (0 before the first rebalance).
    pub generation: u64,
    /// Assignment strategy.
    pub strategy: Strategy,
    /// Clustering or broadcasting.
    pub mode: ConsumeMode,
    /// When the open join window closes at the latest, if one is open.
    pub rebalance_deadline_ms: Option<u64>,
    /// Members, by id.
    pub members: Vec<MemberDescription>,
}

/// One member in a [`GroupDescription`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberDescription {
    /// Member id.
    pub member_id: MemberId,
    /// Client id.
    pub client_id: String,
    /// Subscribed topics.
    pub topics: BTreeSet<String>,
    /// Session timeout.
    pub session_timeout_ms: u64,
    /// Time since the last heartbeat (or join).
    pub last_heartbeat_age_ms: u64,
    /// True when its join is parked in the open window.
    pub rejoined: bool,
    /// Its queues in the current generation (empty for a member that has
    /// not been through a rebalance yet).
    pub assignment: Vec<MessageQueue>,
}
