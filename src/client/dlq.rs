//! Dead-letter topics: list a group's dead letters and send them back to
//! the topic they came from.
//!
//! `resend --all` remembers how far it got per dead-letter queue (as the
//! committed offset of the group `<group>%DLQ_RESEND` on the broker holding
//! the queue), so repeating it does not send the same message twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::consumer::PullConsumer;
use super::core::{ClientCore, MessageQueue};
use super::error::{ClientError, ClientResult};
use super::producer::{Producer, SendResult};
use crate::message::props::{self, dlq_topic, DEAD_LETTER_PROPERTIES};
use crate::message::Message;
use crate::record::StoredRecord;
use crate::wire::control::{from_json, to_json};
use crate::wire::group::{CommitOffsets, CommittedOffsets, FetchOffsets, QueueOffset};
use crate::wire::Command;

/// Messages read per pull while listing.
const PAGE: u32 = 256;

/// A dead letter and whether `resend --all` has already sent it back.
#[derive(Debug, Clone)]
pub struct DeadLetterEntry {
    /// The dead-letter copy (its properties say where it came from, why,
    /// and after how many deliveries).
    pub record: StoredRecord,
    /// Sent back by an earlier `resend --all`.
    pub resent: bool,
}

/// What [`dlq_resend`] should send back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResendSelection {
    /// The dead letter with this message id (its own or its original one).
    MessageId(String),
    /// Every dead letter not sent back by an earlier `--all`.
    AllNew,
}

fn resend_group(group: &str) -> String {
    format!("{group}%DLQ_RESEND")
}

async fn resend_marks(core: &ClientCore, mq: &MessageQueue, group: &str) -> ClientResult<u64> {
    let f = FetchOffsets {
        group: resend_group(group),
        topic: Some(mq.topic.clone()),
    };
    let (_, body) = core
        .request(
            &core.read_addr(mq).await,
            Command::FetchOffsets,
            to_json(&f),
            Bytes::new(),
            core.cfg.request_timeout,
        )
        .await?;
    let c: CommittedOffsets = from_json(&body, "offsets")?;
    Ok(c.offsets
        .iter()
        .find(|o| o.queue == mq.queue_id && o.broker_name == mq.broker_name)
        .map_or(0, |o| o.offset))
}

/// Every dead letter of `group`, oldest first per queue, with its queue.
pub async fn dlq_list(core: &Arc<ClientCore>, group: &str) -> ClientResult<Vec<(MessageQueue, DeadLetterEntry)>> {
    let topic = dlq_topic(group);
    let consumer = PullConsumer::from_core(core.clone());
    let queues = match consumer.queues(&topic).await {
        Ok(q) => q,
        // No dead letter was ever written for this group.
        Err(ClientError::NoRoute(_)) => return Ok(Vec::new()),
        Err(e) if e.status() == Some(crate::wire::Status::TopicNotExist) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for mq in queues {
        let mark = resend_marks(core, &mq, group).await?;
        let range = consumer.offsets(&mq).await?;
        let mut offset = range.min_offset;
        while offset < range.max_offset {
            let r = consumer.pull(&mq, offset, PAGE, Duration::ZERO, "*").await?;
            if r.next_offset <= offset {
                break;
            }
            offset = r.next_offset;
            for record in r.messages {
                let resent = record.queue_offset < mark;
                out.push((mq.clone(), DeadLetterEntry { record, resent }));
            }
        }
    }
    Ok(out)
}

/// The message a dead letter came from, ready to send back: the dead-letter
/// properties removed and the original `TTL` restored from `ORIGIN_TTL`.
pub fn original_message(dead: &StoredRecord) -> ClientResult<Message> {
    let topic = dead.properties.get(props::ORIGIN_TOPIC).ok_or_else(|| {
        ClientError::Invalid(format!(
            "message {} has no {} property; it is not a dead letter",
            dead.msg_id(),
            props::ORIGIN_TOPIC
        ))
    })?;
    let mut properties = dead.properties.clone();
    if let Some(ttl) = properties.get(props::ORIGIN_TTL).cloned() {
        properties.insert(props::TTL.to_string(), ttl);
    }
    for p in DEAD_LETTER_PROPERTIES {
        properties.remove(p);
    }
    Ok(Message {
        topic: topic.clone(),
        flags: dead.flags,
        properties,
        body: dead.body.clone(),
    })
}

/// Sends dead letters of `group` back to their original topics; returns
/// each resent dead letter with where its copy went.
pub async fn dlq_resend(
    core: &Arc<ClientCore>,
    group: &str,
    which: &ResendSelection,
) -> ClientResult<Vec<(StoredRecord, SendResult)>> {
    let producer = Producer::from_core(core.clone());
    let mut sent = Vec::new();
    let mut marks: BTreeMap<(String, u32), (MessageQueue, u64)> = BTreeMap::new();
    for (mq, entry) in dlq_list(core, group).await? {
        let wanted = match which {
            ResendSelection::MessageId(id) => {
                entry.record.msg_id().to_string() == *id
                    || entry.record.properties.get(props::ORIGIN_MSG_ID) == Some(id)
            }
            ResendSelection::AllNew => !entry.resent,
        };
        if !wanted {
            continue;
        }
        let result = producer.send(original_message(&entry.record)?).await?;
        if *which == ResendSelection::AllNew {
            let next = entry.record.queue_offset + 1;
            marks.insert((mq.broker_addr.clone(), mq.queue_id), (mq, next));
        }
        sent.push((entry.record, result));
    }
    for (mq, next) in marks.into_values() {
        let c = CommitOffsets {
            group: resend_group(group),
            member_id: None,
            generation: None,
            offsets: vec![QueueOffset {
                topic: mq.topic.clone(),
                broker_name: mq.broker_name.clone(),
                queue: mq.queue_id,
                offset: next,
            }],
        };
        core.request(
            &mq.broker_addr,
            Command::CommitOffsets,
            to_json(&c),
            Bytes::new(),
            core.cfg.request_timeout,
        )
        .await?;
    }
    if let (ResendSelection::MessageId(id), true) = (which, sent.is_empty()) {
        return Err(ClientError::Invalid(format!(
            "no dead letter of group {group} has id {id}"
        )));
    }
    Ok(sent)
}
