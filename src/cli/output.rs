//! How messages are printed: `text` (for people) or `json` (one object per
//! line, for scripts; the field names are a contract).

use clap::ValueEnum;
use serde_json::Value;

use crate::record::StoredRecord;
use crate::render::message_json;

/// Output format of message-printing commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One readable line per message.
    Text,
    /// One JSON object per line.
    Json,
}

/// One line for a message in `format`.
pub fn format_message(r: &StoredRecord, format: Format) -> String {
    format_queue_message(r, None, format)
}

/// Like [`format_message`], naming the broker group the message was read
/// from (a queue is `(topic, broker, queue)`): JSON gains `broker`, text
/// starts with `broker=`.
pub fn format_queue_message(r: &StoredRecord, broker: Option<&str>, format: Format) -> String {
    match (format, broker) {
        (Format::Json, _) => {
            let mut v = message_json(r);
            if let (Value::Object(map), Some(b)) = (&mut v, broker) {
                map.insert("broker".into(), Value::String(b.to_string()));
            }
            v.to_string()
        }
        (Format::Text, Some(b)) => format!("broker={b} {}", format_queue_message(r, None, format)),
        (Format::Text, None) => format!(
            "queue={} offset={} msg_id={} tags={} keys={} body={}",
            r.queue_id,
            r.queue_offset,
            r.msg_id(),
            r.tag().unwrap_or("-"),
            r.keys().unwrap_or("-"),
            String::from_utf8_lossy(&r.body)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn record(body: &[u8]) -> StoredRecord {
        let mut properties = BTreeMap::new();
        properties.insert("TAGS".to_string(), "a".to_string());
        properties.insert("color".to_string(), "red".to_string());
        StoredRecord {
            topic: "t".into(),
            queue_id: 2,
            flags: 0,
            queue_offset: 7,
            phys_offset: 99,
            born_timestamp: 1,
            store_timestamp: 2,
            reconsume_times: 0,
            born_host: "127.0.0.1:1".parse().unwrap(),
            store_host: "127.0.0.1:10911".parse().unwrap(),
            properties,
            body: bytes::Bytes::copy_from_slice(body),
            size: 0,
        }
    }

    #[test]
    fn json_has_the_contract_fields() {
        let v: Value = serde_json::from_str(&format_message(&record("héllo".as_bytes()), Format::Json)).unwrap();
        assert_eq!(v["topic"], "t");
        assert_eq!(v["queue"], 2);
        assert_eq!(v["offset"], 7);
        assert_eq!(v["tags"], "a");
        assert_eq!(v["keys"], Value::Null);
        assert_eq!(v["properties"]["color"], "red");
        assert_eq!(v["body"], "héllo");
        assert_eq!(v["msg_id"].as_str().unwrap().len(), 28);
        assert!(v.get("body_base64").is_none());
    }

    #[test]
    fn binary_bodies_are_base64() {
        let v = message_json(&record(&[0xff, 0x00, 0xfe]));
        assert_eq!(v["body_base64"], "/wD+");
        assert!(v.get("body").is_none());
        assert!(format_message(&record(&[0xff]), Format::Text).contains("queue=2 offset=7"));
    }

    #[test]
    fn a_queue_is_named_with_its_broker_group() {
        let r = record(b"x");
        let v: Value = serde_json::from_str(&format_queue_message(&r, Some("broker-b"), Format::Json)).unwrap();
        assert_eq!((v["broker"].as_str(), v["queue"].as_u64()), (Some("broker-b"), Some(2)));
        let text = format_queue_message(&r, Some("broker-b"), Format::Text);
        assert!(text.starts_with("broker=broker-b queue=2 offset=7 "), "{text}");
        assert!(!format_message(&r, Format::Text).contains("broker="));
    }
}
