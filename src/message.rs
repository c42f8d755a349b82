//! Messages as applications see them, and the property names the broker
//! gives meaning to.

use std::collections::BTreeMap;

use bytes::Bytes;

/// Property holding the message's tag (one word; filters match on it).
pub const PROPERTY_TAGS: &str = "TAGS";
/// Property holding the message's keys, separated by spaces (indexed).
pub const PROPERTY_KEYS: &str = "KEYS";

/// A message a producer sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Destination topic.
    pub topic: String,
    /// Application flags, stored as given.
    pub flags: u32,
    /// Tags, keys and user properties.
    pub properties: BTreeMap<String, String>,
    /// The payload.
    pub body: Bytes,
}

impl Message {
    /// A message with a body and no properties.
    pub fn new(topic: impl Into<String>, body: impl Into<Bytes>) -> Message {
        Message {
            topic: topic.into(),
            flags: 0,
            properties: BTreeMap::new(),
            body: body.into(),
        }
    }

    /// Sets the tag.
    pub fn with_tag(mut self, tag: impl Into<String>) -> Message {
        self.properties.insert(PROPERTY_TAGS.to_string(), tag.into());
        self
    }

    /// Adds a key (messages can be looked up by key).
    pub fn with_key(mut self, key: impl AsRef<str>) -> Message {
        let entry = self.properties.entry(PROPERTY_KEYS.to_string()).or_default();
        if !entry.is_empty() {
            entry.push(' ');
        }
        entry.push_str(key.as_ref());
        self
    }

    /// Sets a user property.
    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Message {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.properties.get(PROPERTY_TAGS).map(String::as_str)
    }
}

/// The keys in a `KEYS` property value.
pub fn split_keys(keys: &str) -> impl Iterator<Item = &str> {
    keys.split(' ').filter(|k| !k.is_empty())
}

/// Stable 64-bit hash of a tag (FNV-1a), stored in consume-queue entries so
/// tag filters can skip records without reading them.
pub fn tag_hash(tag: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in tag.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A parsed tag expression: `*`/empty for all, else tags joined by `||`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagFilter {
    /// Every message matches.
    All,
    /// Messages whose tag is one of these.
    AnyOf(Vec<String>),
}

impl TagFilter {
    /// Parses an expression such as `"a || b"`.
    pub fn parse(expr: &str) -> TagFilter {
        let expr = expr.trim();
        if expr.is_empty() || expr == "*" {
            return TagFilter::All;
        }
        let tags: Vec<String> = expr
            .split("||")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect();
        if tags.iter().any(|t| t == "*") || tags.is_empty() {
            TagFilter::All
        } else {
            TagFilter::AnyOf(tags)
        }
    }

    /// Tag hashes a consume-queue entry may carry to be worth reading.
    pub fn hashes(&self) -> Option<Vec<u64>> {
        match self {
            TagFilter::All => None,
            TagFilter::AnyOf(tags) => Some(tags.iter().map(|t| tag_hash(t)).collect()),
        }
    }

    /// Whether a message with this tag matches.
    pub fn matches(&self, tag: Option<&str>) -> bool {
        match self {
            TagFilter::All => true,
            TagFilter::AnyOf(tags) => tag.is_some_and(|t| tags.iter().any(|x| x == t)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_sets_tag_keys_and_properties() {
        let m = Message::new("t", "b")
            .with_tag("x")
            .with_key("k1")
            .with_key("k2")
            .with_property("p", "v");
        assert_eq!(m.tag(), Some("x"));
        assert_eq!(m.properties[PROPERTY_KEYS], "k1 k2");
        assert_eq!(split_keys("k1  k2").collect::<Vec<_>>(), ["k1", "k2"]);
        assert_eq!(m.properties["p"], "v");
    }

    #[test]
    fn tag_filters_match_exactly() {
        assert!(TagFilter::parse("").matches(None));
        assert!(TagFilter::parse(" * ").matches(Some("a")));
        let f = TagFilter::parse("a || b");
        assert!(f.matches(Some("a")) && f.matches(Some("b")));
        assert!(!f.matches(Some("ab")) && !f.matches(None));
        assert_eq!(f.hashes().unwrap(), vec![tag_hash("a"), tag_hash("b")]);
        assert_ne!(tag_hash("a"), tag_hash("b"));
    }
}
