//! Message properties with a meaning to the broker (delivery, delay, dead
//! letters): shared by the client, the delivery state machines and the
//! actors.

/// Time to live in milliseconds from the store time (producer-set).
pub const TTL: &str = "TTL";
/// Delay level 1–18 (producer-set); see `delivery::delay::DELAY_LEVELS_MS`.
pub const DELAY_LEVEL: &str = "DELAY";
/// Deliver-at time, ms since the Unix epoch (producer-set).
pub const DELIVER_AT: &str = "DELIVER_AT";
/// On a delayed message held by the scheduler: its real topic.
pub const REAL_TOPIC: &str = "REAL_TOPIC";
/// On a delayed message held by the scheduler: its real queue.
pub const REAL_QUEUE: &str = "REAL_QUEUE";
/// On a delayed message: when it is due, ms since the Unix epoch.
pub const DUE_AT: &str = "DUE_AT";
/// On a dead letter: the topic it was consumed from.
pub const ORIGIN_TOPIC: &str = "ORIGIN_TOPIC";
/// On a dead letter: the queue it was consumed from.
pub const ORIGIN_QUEUE: &str = "ORIGIN_QUEUE";
/// On a dead letter: its offset in that queue.
pub const ORIGIN_OFFSET: &str = "ORIGIN_OFFSET";
/// On a dead letter: its original message id.
pub const ORIGIN_MSG_ID: &str = "ORIGIN_MSG_ID";
/// On a dead letter: how often it was delivered.
pub const DELIVERY_COUNT: &str = "DELIVERY_COUNT";
/// On a dead letter: `rejected`, `max-deliveries` or `expired`.
pub const DLQ_REASON: &str = "DLQ_REASON";
/// On a dead letter: the group whose dead-letter topic holds it.
pub const DLQ_GROUP: &str = "DLQ_GROUP";
/// On a dead letter: the original message's [`TTL`]. A dead letter carries
/// no `TTL` of its own (it must never expire by the TTL that may have sent
/// it there); a resend restores the `TTL` from this property.
pub const ORIGIN_TTL: &str = "ORIGIN_TTL";

/// Prefix of dead-letter topics: `%DLQ%<group>`.
pub const DLQ_PREFIX: &str = "%DLQ%";

/// Prefix of retry topics (reserved: `%RETRY%<group>`).
pub const RETRY_PREFIX: &str = "%RETRY%";

/// True for the broker's own topics: `__consumer_offsets`, `__delay`,
/// transaction topics and any other `__…` name, dead-letter (`%DLQ%…`) and
/// retry (`%RETRY%…`) topics and any other `%…` name. Clients may read
/// them; only the broker writes them.
pub fn is_internal_topic(topic: &str) -> bool {
    topic.starts_with("__") || topic.starts_with('%')
}

/// The dead-letter topic of a group.
pub fn dlq_topic(group: &str) -> String {
    format!("{DLQ_PREFIX}{group}")
}

/// Properties a dead letter adds; a resend strips them again.
pub const DEAD_LETTER_PROPERTIES: [&str; 8] = [
    ORIGIN_TOPIC,
    ORIGIN_QUEUE,
    ORIGIN_OFFSET,
    ORIGIN_MSG_ID,
    DELIVERY_COUNT,
    DLQ_REASON,
    DLQ_GROUP,
    ORIGIN_TTL,
];
