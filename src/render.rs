//! JSON renderings of messages, dead letters, queue offsets and store
//! figures, shared by the CLI (`--format json`, `src/cli/output.rs`) and
//! the HTTP API (`/api/…`): one place for field names that both promise.

use base64::Engine;
use serde_json::{json, Map, Value};

use crate::codec::human_bytes;
use crate::message::{PROPERTY_KEYS, PROPERTY_TAGS};
use crate::record::StoredRecord;
use crate::wire::control::{StoreUsage, TopicStats};

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
pub fn topic_queues_json(per_broker: &[(String, TopicStats)]) -> Vec<Value> {
    per_broker
        .iter()
        .flat_map(|(broker, s)| {
            s.queues.iter().map(move |q| {
                json!({"broker": broker, "queue": q.queue, "min_offset": q.min_offset, "max_offset": q.max_offset})
            })
        })
        .collect()
}

/// A broker's store figures as a JSON object: the fields of
/// [`StoreUsage`] (`docs/protocol.md`, `TOPIC_STATS`), `refusal` only
/// while sends are refused.
pub fn store_json(s: &StoreUsage) -> Value {
    serde_json::to_value(s).unwrap_or(Value::Null)
}

/// Per broker group that sent store figures, `{"broker", "store"}`
/// ([`store_json`]); groups whose broker predates them are left out.
pub fn topic_stores_json(per_broker: &[(String, TopicStats)]) -> Vec<Value> {
    per_broker
        .iter()
        .filter_map(|(broker, s)| {
            s.store
                .as_ref()
                .map(|st| json!({"broker": broker, "store": store_json(st)}))
        })
        .collect()
}

/// The `topic describe` text line of a broker group's store:
/// `store <broker> commitlog=<size> (<n> segments) disk=<used>% used,
/// <free> free of <total> watermark=<level> sends=accepted` (or
/// `sends=refused: <reason>`).
pub fn store_line(broker: &str, s: &StoreUsage) -> String {
    let sends = match (&s.refusal, s.refusing_sends) {
        (Some(why), _) => format!("refused: {why}"),
        (None, true) => "refused".to_string(),
        (None, false) => "accepted".to_string(),
    };
    format!(
        "store {broker} commitlog={} ({} segments) disk={:.1}% used, {} free of {} watermark={} sends={sends}",
        human_bytes(s.commitlog_bytes),
        s.segments,
        s.disk_used_ratio * 100.0,
        human_bytes(s.disk_free_bytes),
        human_bytes(s.disk_total_bytes),
        s.level,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_line_reads_as_documented() {
        let mut s = StoreUsage::example();
        assert_eq!(
            store_line("b1", &s),
            "store b1 commitlog=2.0 GiB (2 segments) disk=60.0% used, 40.0 GiB free of 100.0 GiB watermark=normal sends=accepted"
        );
        s.refusing_sends = true;
        s.refusal = Some("disk full: /d is 95.0% used".into());
        assert!(store_line("b1", &s).ends_with("sends=refused: disk full: /d is 95.0% used"));
        let v = store_json(&s);
        assert_eq!(v["refusing_sends"], true);
        assert_eq!(v["disk_total_bytes"], 100u64 << 30);
    }
}
