//! Messages as applications see them, and the property names the broker
//! gives meaning to.

use std::collections::BTreeMap;

use bytes::Bytes;

pub mod props;

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

    /// Expires the message `ttl` after it is stored: it is then never
    /// delivered and goes to each consuming group's dead-letter topic.
    pub fn with_ttl(self, ttl: std::time::Duration) -> Message {
        let ms = ttl.as_millis().min(u128::from(u64::MAX)) as u64;
        self.with_property(props::TTL, ms.to_string())
    }

    /// Delays delivery by one of the 18 delay levels (1 = 1 s … 18 = 2 h;
    /// see [`crate::delivery::delay::DELAY_LEVELS_MS`]).
    pub fn with_delay_level(self, level: u32) -> Message {
        self.with_property(props::DELAY_LEVEL, level.to_string())
    }

    /// Delays delivery until `at` (at most the broker's maximum delay ahead).
    pub fn with_deliver_at(self, at: std::time::SystemTime) -> Message {
        let ms = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.with_property(props::DELIVER_AT, ms.to_string())
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

/// A parsed tag expression: `*` or empty for every message, else terms
/// joined by `||`. A term is an exact tag, or a RabbitMQ-style pattern over
/// dotted tags when one of its words is `*` (exactly one word) or `#` (zero
/// or more words): `order.*.created`, `log.#`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagFilter {
    /// Every message matches.
    All,
    /// Messages whose tag matches one of these terms.
    AnyOf(Vec<TagTerm>),
}

/// One term of a tag expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagTerm {
    /// The tag must equal this.
    Exact(String),
    /// The tag's dotted words must match these.
    Pattern(Vec<PatternWord>),
}

/// A word of a tag pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatternWord {
    /// This word exactly.
    Literal(String),
    /// `*`: exactly one word.
    One,
    /// `#`: zero or more words.
    Any,
}

impl TagTerm {
    fn parse(term: &str) -> TagTerm {
        let words: Vec<&str> = term.split('.').collect();
        if !words.iter().any(|w| *w == "*" || *w == "#") {
            return TagTerm::Exact(term.to_string());
        }
        TagTerm::Pattern(
            words
                .into_iter()
                .map(|w| match w {
                    "*" => PatternWord::One,
                    "#" => PatternWord::Any,
                    w => PatternWord::Literal(w.to_string()),
                })
                .collect(),
        )
    }

    fn matches(&self, tag: Option<&str>) -> bool {
        match self {
            TagTerm::Exact(t) => tag == Some(t.as_str()),
            TagTerm::Pattern(p) => {
                // No tag is zero words: only `#` patterns match it.
                let words: Vec<&str> = tag.map_or_else(Vec::new, |t| t.split('.').collect());
                words_match(p, &words)
            }
        }
    }
}

/// Dotted-word matching with `*` and `#` (AMQP topic-exchange rules).
fn words_match(pattern: &[PatternWord], words: &[&str]) -> bool {
    match pattern.split_first() {
        None => words.is_empty(),
        Some((PatternWord::Any, rest)) => (0..=words.len()).any(|skip| words_match(rest, &words[skip..])),
        Some((PatternWord::One, rest)) => !words.is_empty() && words_match(rest, &words[1..]),
        Some((PatternWord::Literal(l), rest)) => words.first() == Some(&l.as_str()) && words_match(rest, &words[1..]),
    }
}

impl TagFilter {
    /// Parses an expression such as `"a || b"` or `"order.*.created || log.#"`.
    pub fn parse(expr: &str) -> TagFilter {
        let expr = expr.trim();
        if expr.is_empty() || expr == "*" {
            return TagFilter::All;
        }
        let terms: Vec<&str> = expr.split("||").map(str::trim).filter(|t| !t.is_empty()).collect();
        if terms.contains(&"*") || terms.is_empty() {
            return TagFilter::All;
        }
        TagFilter::AnyOf(terms.into_iter().map(TagTerm::parse).collect())
    }

    /// Tag hashes a consume-queue entry may carry to be worth reading;
    /// `None` when every entry must be read (no filter, or a pattern).
    pub fn hashes(&self) -> Option<Vec<u64>> {
        match self {
            TagFilter::All => None,
            TagFilter::AnyOf(terms) => terms
                .iter()
                .map(|t| match t {
                    TagTerm::Exact(tag) => Some(tag_hash(tag)),
                    TagTerm::Pattern(_) => None,
                })
                .collect(),
        }
    }

    /// True when the filter lets every message through.
    pub fn is_all(&self) -> bool {
        matches!(self, TagFilter::All)
    }

    /// Whether a message with this tag matches.
    pub fn matches(&self, tag: Option<&str>) -> bool {
        match self {
            TagFilter::All => true,
            TagFilter::AnyOf(terms) => terms.iter().any(|t| t.matches(tag)),
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

    /// The documented pattern cases (`docs/protocol.md` §5.3).
    #[test]
    fn dotted_patterns_match_words() {
        let cases: &[(&str, &str, bool)] = &[
            ("order.*.created", "order.eu.created", true),
            ("order.*.created", "order.created", false),
            ("order.*.created", "order.eu.west.created", false),
            ("order.*.created", "order.eu.created.late", false),
            ("log.#", "log", true),
            ("log.#", "log.error", true),
            ("log.#", "log.error.disk", true),
            ("log.#", "logs.error", false),
            ("log.#", "audit.log", false),
            ("#.error", "error", true),
            ("#.error", "log.disk.error", true),
            ("#.error", "log.errors", false),
            ("*.*", "a.b", true),
            ("*.*", "a", false),
            ("a.#.z", "a.z", true),
            ("a.#.z", "a.b.c.z", true),
            ("a.#.z", "a.b.c", false),
            ("#", "anything.at.all", true),
            ("order.created", "order.created", true),
            ("order.created", "order.deleted", false),
            ("a*b", "a*b", true),
            ("a*b", "axb", false),
            ("log.# || order.*", "order.paid", true),
            ("log.# || order.*", "order.paid.twice", false),
            ("x || log.#", "log", true),
        ];
        for (expr, tag, want) in cases {
            assert_eq!(TagFilter::parse(expr).matches(Some(tag)), *want, "{expr} vs {tag}");
        }
        assert!(TagFilter::parse("#").matches(None), "no tag is zero words");
        assert!(!TagFilter::parse("*.x").matches(None));
        assert_eq!(
            TagFilter::parse("a || log.#").hashes(),
            None,
            "patterns need every entry read"
        );
        assert!(TagFilter::parse("x || * ").is_all());
    }
}
