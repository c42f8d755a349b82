//! JSON renderings of messages, dead letters and queue offsets, shared by
//! the CLI (`--format json`, `src/cli/output.rs`) and the HTTP API
//! (`/api/…`): one place for field names that both promise.

use base64::Engine;
use serde_json::{json, Map, Value};

use crate::message::{PROPERTY_KEYS, PROPERTY_TAGS};
use crate::record::StoredRecord;

/// The JSON object of a message: `topic`, `queue`, `offset`, `msg_id`,
/// `tags`, `keys` (strings or null), `properties` (all of them), `body`
/// (UTF-8) or `body_base64` (when the body is not UTF-8), plus timestamps and
/// the reconsume count.
pub fn message_json(r: &StoredRecord) -> Value {
    let props: Map<String, Value> = r
        .properties
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let mut obj = json!({
        "topic": r.topic,
        "queue": r.queue_id,
        "offset": r.queue_offset,
        "msg_id": r.msg_id().to_string(),
        "tags": r.properties.get(PROPERTY_TAGS),
        "keys": r.properties.get(PROPERTY_KEYS),
        "properties": props,
        "born_timestamp": r.born_timestamp,
        "store_timestamp": r.store_timestamp,
        "reconsume_times": r.reconsume_times,
        "delivery": r.reconsume_times + 1,
    });
    if let Value::Object(map) = &mut obj {
        match std::str::from_utf8(&r.body) {
            Ok(text) => map.insert("body".into(), Value::String(text.to_string())),
            Err(_) => map.insert(
                "body_base64".into(),
                Value::String(base64::engine::general_purpose::STANDARD.encode(&r.body)),
            ),
        };
    }
    obj
}

/// A dead letter as [`message_json`] plus `resent`.
pub fn dead_letter_json(entry: &crate::client::dlq::DeadLetterEntry) -> Value {
    let mut v = message_json(&entry.record);
    if let Value::Object(map) = &mut v {
        map.insert("resent".into(), entry.resent.into());
    }
    v
}

/// Per-queue offsets of a topic, per broker, as JSON objects
/// (`broker`, `queue`, `min_offset`, `max_offset`).
pub fn topic_queues_json(per_broker: &[(String, crate::wire::control::TopicStats)]) -> Vec<Value> {
    per_broker
        .iter()
        .flat_map(|(broker, s)| {
            s.queues.iter().map(move |q| {
                json!({"broker": broker, "queue": q.queue, "min_offset": q.min_offset, "max_offset": q.max_offset})
            })
        })
        .collect()
}
