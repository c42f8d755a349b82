//! Permissions on topics and groups (`DENY`, `PUB`, `SUB`, `PUB|SUB`) and
//! the per-account tables that map a resource name to one.

use std::collections::HashMap;
use std::fmt;

/// A set of rights on one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Perm(u8);

impl Perm {
    /// Nothing.
    pub const DENY: Perm = Perm(0);
    /// Send (topics); unused on groups.
    pub const PUB: Perm = Perm(1);
    /// Read (topics); consume as the group (groups).
    pub const SUB: Perm = Perm(2);
    /// Both.
    pub const PUB_SUB: Perm = Perm(3);

    /// Parses `DENY`, `PUB`, `SUB`, `PUB|SUB` (or `SUB|PUB`; case and
    /// blanks around `|` ignored).
    pub fn parse(text: &str) -> Result<Perm, String> {
        let mut perm = Perm::DENY;
        for part in text.split('|').map(str::trim) {
            perm = Perm(
                perm.0
                    | match part.to_ascii_uppercase().as_str() {
                        "DENY" => 0,
                        "PUB" => Perm::PUB.0,
                        "SUB" => Perm::SUB.0,
                        _ => return Err(format!("{text:?} is not a permission; use DENY, PUB, SUB or PUB|SUB")),
                    },
            );
        }
        Ok(perm)
    }

    /// True when every right of `needed` is in `self`.
    pub fn allows(self, needed: Perm) -> bool {
        self.0 & needed.0 == needed.0
    }
}

impl fmt::Display for Perm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            0 => "DENY",
            1 => "PUB",
            2 => "SUB",
            _ => "PUB|SUB",
        })
    }
}

/// One account's permissions on one kind of resource: exact names, then
/// the longest matching `prefix*`, then the default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourcePerms {
    exact: HashMap<String, Perm>,
    /// Longest prefix first.
    prefixes: Vec<(String, Perm)>,
    default: Perm,
}

impl ResourcePerms {
    /// Parses entries such as `orders=PUB` and `logs.*=PUB|SUB` over a
    /// default. `what` names the list in errors (`topic_perms`).
    pub fn parse(entries: &[String], default: Perm, what: &str) -> Result<ResourcePerms, String> {
        let mut out = ResourcePerms {
            default,
            ..ResourcePerms::default()
        };
        for entry in entries {
            let (name, perm) = entry
                .split_once('=')
                .ok_or_else(|| format!("{what}: {entry:?} is not NAME=PERM"))?;
            let (name, perm) = (name.trim(), Perm::parse(perm).map_err(|e| format!("{what}: {e}"))?);
            match name.strip_suffix('*') {
                Some(prefix) => out.prefixes.push((prefix.to_string(), perm)),
                None if !name.is_empty() => {
                    out.exact.insert(name.to_string(), perm);
                }
                None => return Err(format!("{what}: {entry:?} names no resource")),
            }
        }
        out.prefixes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Ok(out)
    }

    /// The rights on `name`.
    pub fn of(&self, name: &str) -> Perm {
        if let Some(p) = self.exact.get(name) {
            return *p;
        }
        self.prefixes
            .iter()
            .find(|(prefix, _)| name.starts_with(prefix.as_str()))
            .map_or(self.default, |(_, p)| *p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_parse_and_combine() {
        assert_eq!(Perm::parse("DENY"), Ok(Perm::DENY));
        assert_eq!(Perm::parse("pub"), Ok(Perm::PUB));
        assert_eq!(Perm::parse("SUB | PUB"), Ok(Perm::PUB_SUB));
        assert!(Perm::parse("READ").is_err());
        assert!(Perm::PUB_SUB.allows(Perm::SUB) && !Perm::PUB.allows(Perm::SUB));
        assert!(Perm::DENY.allows(Perm::DENY));
        assert_eq!(Perm::PUB_SUB.to_string(), "PUB|SUB");
    }

    #[test]
    fn exact_names_beat_the_longest_prefix_which_beats_the_default() {
        let entries = ["orders=PUB", "logs.*=PUB|SUB", "logs.audit*=SUB", "*=SUB"].map(String::from);
        let t = ResourcePerms::parse(&entries, Perm::DENY, "topic_perms").unwrap();
        assert_eq!(t.of("orders"), Perm::PUB);
        assert_eq!(t.of("logs.app"), Perm::PUB_SUB);
        assert_eq!(t.of("logs.audit.x"), Perm::SUB);
        assert_eq!(t.of("other"), Perm::SUB);
        let none = ResourcePerms::parse(&[], Perm::PUB, "topic_perms").unwrap();
        assert_eq!(none.of("x"), Perm::PUB);
        assert!(ResourcePerms::parse(&["orders".into()], Perm::DENY, "t").is_err());
        assert!(ResourcePerms::parse(&["=PUB".into()], Perm::DENY, "t").is_err());
        assert!(ResourcePerms::parse(&["a=WRITE".into()], Perm::DENY, "t").is_err());
    }
}
