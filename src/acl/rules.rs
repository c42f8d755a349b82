//! The ACL file (TOML; its format is a contract, `docs/security.md`) and
//! the decisions taken from it: who a request comes from
//! ([`AclRules::authenticate`]) and whether they may do it
//! ([`AclRules::check`]). Pure: the caller passes the time and the peer.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use serde::Deserialize;

use super::addr::AddrPattern;
use super::perm::{Perm, ResourcePerms};
use super::sign::{same_secret, SignedFields};

/// A secret key: never printed (`Debug` and `Display` show `***`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Secret {
        Secret(secret.into())
    }

    /// The secret's bytes, for signing.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Resolves `env:NAME` through `env`; any other text is the secret
    /// itself.
    pub fn resolve(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Secret, String> {
        match text.strip_prefix("env:") {
            Some(name) => env(name)
                .filter(|v| !v.is_empty())
                .map(Secret)
                .ok_or_else(|| format!("secret_key names environment variable {name}, which is not set")),
            None => Ok(Secret(text.to_string())),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// An access key with its secret: how a client, a broker or a slave signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The account's name.
    pub access_key: String,
    /// Its secret.
    pub secret_key: Secret,
}

impl Credentials {
    /// Credentials from plain strings.
    pub fn new(access_key: impl Into<String>, secret_key: impl Into<String>) -> Credentials {
        Credentials {
            access_key: access_key.into(),
            secret_key: Secret::new(secret_key),
        }
    }
}

/// The ACL file as written (field names are the contract).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AclFile {
    #[serde(default)]
    global_white_remote_addresses: Vec<String>,
    #[serde(default)]
    accounts: Vec<AccountEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountEntry {
    access_key: String,
    secret_key: String,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    default_topic_perm: Option<String>,
    #[serde(default)]
    default_group_perm: Option<String>,
    #[serde(default)]
    topic_perms: Vec<String>,
    #[serde(default)]
    group_perms: Vec<String>,
    #[serde(default)]
    white_remote_address: Option<String>,
}

/// One account.
#[derive(Debug, Clone)]
pub struct Account {
    /// Its name.
    pub access_key: String,
    secret: Secret,
    /// May run admin commands (and register brokers, replicate).
    pub admin: bool,
    topics: ResourcePerms,
    groups: ResourcePerms,
    white: Option<AddrPattern>,
}

impl Account {
    /// The account as the identity of a request from `peer`, unless its
    /// `white_remote_address` refuses that address.
    fn admit_from(&self, peer: IpAddr) -> Result<Identity, Denied> {
        match &self.white {
            Some(w) if !w.matches(peer) => Err(Denied(format!(
                "access key {} may not connect from {peer}",
                self.access_key
            ))),
            _ => Ok(Identity::Account(self.access_key.clone())),
        }
    }
}

/// Who a request comes from, once its signature was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// No signature.
    Anonymous,
    /// No signature, from a globally whitelisted address: everything is
    /// allowed (RocketMQ's global white remote addresses).
    Whitelisted,
    /// A valid signature of this account.
    Account(String),
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Anonymous => f.write_str("anonymous client"),
            Identity::Whitelisted => f.write_str("whitelisted client"),
            Identity::Account(k) => write!(f, "account {k}"),
        }
    }
}

/// What an operation touches, as the rules judge it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access<'a> {
    /// Open to everyone (a ping).
    Open,
    /// Any authenticated or whitelisted client (name-server route reads).
    Authenticated,
    /// `perm` on a topic.
    Topic(&'a str, Perm),
    /// `perm` on a group.
    Group(&'a str, Perm),
    /// `perm` on a topic and on a group (receive, settle).
    TopicAndGroup(&'a str, &'a str, Perm),
    /// An admin command (`what` names it in the refusal).
    Admin(&'a str),
}

/// A refusal: the message says `access denied` and what is missing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("access denied: {0}")]
pub struct Denied(pub String);

/// A signed request's signature and the fields it covers.
#[derive(Debug, Clone, Copy)]
pub struct Signature<'a> {
    /// What was signed.
    pub fields: SignedFields<'a>,
    /// The signature.
    pub signature: &'a [u8],
}

/// A parsed ACL file.
#[derive(Debug, Clone, Default)]
pub struct AclRules {
    global_white: Vec<AddrPattern>,
    accounts: HashMap<String, Account>,
}

impl AclRules {
    /// Parses an ACL file's text; `env` resolves `env:NAME` secrets.
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<AclRules, String> {
        let file: AclFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut rules = AclRules::default();
        for w in &file.global_white_remote_addresses {
            rules
                .global_white
                .push(AddrPattern::parse(w).map_err(|e| format!("global_white_remote_addresses: {e}"))?);
        }
        for a in file.accounts {
            let key = a.access_key.trim().to_string();
            if key.is_empty() || key.len() > 255 {
                return Err("accounts: access_key must be 1 to 255 bytes".into());
            }
            let ctx = |e: String| format!("account {key}: {e}");
            let secret = Secret::resolve(&a.secret_key, env).map_err(ctx)?;
            if secret.expose().len() < 8 {
                return Err(ctx("secret_key must be at least 8 bytes".into()));
            }
            let perm = |p: &Option<String>| p.as_deref().map_or(Ok(Perm::DENY), Perm::parse).map_err(ctx);
            let account = Account {
                access_key: key.clone(),
                secret,
                admin: a.admin,
                topics: ResourcePerms::parse(&a.topic_perms, perm(&a.default_topic_perm)?, "topic_perms")
                    .map_err(ctx)?,
                groups: ResourcePerms::parse(&a.group_perms, perm(&a.default_group_perm)?, "group_perms")
                    .map_err(ctx)?,
                white: a
                    .white_remote_address
                    .as_deref()
                    .map(AddrPattern::parse)
                    .transpose()
                    .map_err(ctx)?,
            };
            if rules.accounts.insert(key.clone(), account).is_some() {
                return Err(format!("account {key} is listed twice"));
            }
        }
        Ok(rules)
    }

    /// Number of accounts.
    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }

    /// Who sent a request: `signature` (if any) is checked against the
    /// account's secret, its timestamp against `now_ms` ± `window_ms`, and
    /// the peer against the account's whitelist. An unsigned request is
    /// [`Identity::Whitelisted`] from a globally whitelisted address, else
    /// [`Identity::Anonymous`].
    pub fn authenticate(
        &self,
        signature: Option<&Signature<'_>>,
        peer: IpAddr,
        now_ms: u64,
        window_ms: u64,
    ) -> Result<Identity, Denied> {
        let Some(sig) = signature else {
            return Ok(if self.global_white.iter().any(|w| w.matches(peer)) {
                Identity::Whitelisted
            } else {
                Identity::Anonymous
            });
        };
        let key = sig.fields.access_key;
        let account = self
            .accounts
            .get(key)
            .ok_or_else(|| Denied(format!("unknown access key {key}")))?;
        if !sig.fields.verify(account.secret.expose(), sig.signature) {
            return Err(Denied(format!(
                "the signature of access key {key} does not match (wrong secret key?)"
            )));
        }
        if sig.fields.timestamp_ms.abs_diff(now_ms) > window_ms {
            return Err(Denied(format!(
                "request signed at {} ms is outside the {} s replay window (clock skew or a replay)",
                sig.fields.timestamp_ms,
                window_ms / 1000
            )));
        }
        account.admit_from(peer)
    }

    /// Checks an access key and secret given in plain (HTTP basic
    /// authentication, over TLS or a trusted network) and the peer.
    pub fn authenticate_plain(&self, access_key: &str, secret: &str, peer: IpAddr) -> Result<Identity, Denied> {
        let account = self
            .accounts
            .get(access_key)
            .ok_or_else(|| Denied(format!("unknown access key {access_key}")))?;
        if !same_secret(secret.as_bytes(), account.secret.expose()) {
            return Err(Denied(format!("wrong secret key for access key {access_key}")));
        }
        account.admit_from(peer)
    }

    /// May `who` do what `access` says?
    pub fn check(&self, who: &Identity, access: &Access<'_>) -> Result<(), Denied> {
        if *access == Access::Open {
            return Ok(());
        }
        let key = match who {
            Identity::Whitelisted => return Ok(()),
            Identity::Anonymous => {
                return Err(Denied(format!(
                    "{} needs an account (sign requests with an access key and secret key)",
                    describe(access)
                )))
            }
            Identity::Account(k) => k,
        };
        let account = self
            .accounts
            .get(key)
            .ok_or_else(|| Denied(format!("access key {key} no longer exists")))?;
        if account.admin {
            return Ok(());
        }
        let missing = match *access {
            Access::Open | Access::Authenticated => None,
            Access::Topic(t, p) => lacks(account.topics.of(t), p).then(|| format!("{p} on topic {t}")),
            Access::Group(g, p) => lacks(account.groups.of(g), p).then(|| format!("{p} on group {g}")),
            Access::TopicAndGroup(t, g, p) => {
                if lacks(account.topics.of(t), p) {
                    Some(format!("{p} on topic {t}"))
                } else {
                    lacks(account.groups.of(g), p).then(|| format!("{p} on group {g}"))
                }
            }
            Access::Admin(what) => Some(format!("admin (to {what})")),
        };
        match missing {
            Some(m) => Err(Denied(format!("account {key} lacks {m}"))),
            None => Ok(()),
        }
    }

    /// True when `who` is an admin (or whitelisted).
    pub fn is_admin(&self, who: &Identity) -> bool {
        self.check(who, &Access::Admin("administer")).is_ok()
    }
}

fn lacks(have: Perm, need: Perm) -> bool {
    !have.allows(need)
}

fn describe(access: &Access<'_>) -> String {
    match access {
        Access::Open | Access::Authenticated => "this request".into(),
        Access::Topic(t, p) => format!("{p} on topic {t}"),
        Access::Group(g, p) => format!("{p} on group {g}"),
        Access::TopicAndGroup(t, g, p) => format!("{p} on topic {t} and group {g}"),
        Access::Admin(what) => format!("admin (to {what})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::sign::body_crc;

    const FILE: &str = r#"
global_white_remote_addresses = ["10.0.0.0/8"]
[[accounts]]
access_key = "root"
secret_key = "root-secret-0001"
admin = true
[[accounts]]
access_key = "writer"
secret_key = "env:WRITER_SECRET"
default_topic_perm = "DENY"
default_group_perm = "DENY"
topic_perms = ["orders=PUB", "logs.*=PUB|SUB"]
group_perms = ["billing=SUB"]
white_remote_address = "192.168.1.*"
"#;

    fn env(name: &str) -> Option<String> {
        (name == "WRITER_SECRET").then(|| "writer-secret-01".to_string())
    }

    fn rules() -> AclRules {
        AclRules::parse(FILE, &env).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_documented_example_parses_and_bad_files_say_why() {
        assert_eq!(rules().account_count(), 2);
        let no_env = AclRules::parse(FILE, &|_| None).unwrap_err();
        assert!(no_env.contains("WRITER_SECRET"), "{no_env}");
        assert!(AclRules::parse("accounts = 3", &env).is_err());
        assert!(
            AclRules::parse("[[accounts]]\naccess_key='a'\nsecret_key='short'", &env)
                .unwrap_err()
                .contains("8 bytes")
        );
        assert!(AclRules::parse("[[accounts]]\naccess_key='a'\nsecret_key='12345678'\nsurprise=1", &env).is_err());
        let twice =
            "[[accounts]]\naccess_key='a'\nsecret_key='12345678'\n[[accounts]]\naccess_key='a'\nsecret_key='12345678'";
        assert!(AclRules::parse(twice, &env).unwrap_err().contains("twice"));
        assert!(!format!("{:?}", rules()).contains("root-secret"));
    }

    fn signed<'a>(key: &'a str, header: &'a [u8], at: u64) -> SignedFields<'a> {
        SignedFields {
            code: 10,
            kind: 0,
            timestamp_ms: at,
            access_key: key,
            header,
            body_len: 0,
            body_crc: body_crc([]),
        }
    }

    #[test]
    fn signatures_timestamps_and_whitelists_decide_who_is_asking() {
        let r = rules();
        let lan = ip("192.168.1.5");
        assert_eq!(r.authenticate(None, ip("10.1.1.1"), 0, 1000), Ok(Identity::Whitelisted));
        assert_eq!(r.authenticate(None, lan, 0, 1000), Ok(Identity::Anonymous));
        let f = signed("writer", b"h", 50_000);
        let sig = f.sign(b"writer-secret-01");
        let s = Signature {
            fields: f,
            signature: &sig,
        };
        assert_eq!(
            r.authenticate(Some(&s), lan, 50_500, 1000),
            Ok(Identity::Account("writer".into()))
        );
        let late = r.authenticate(Some(&s), lan, 52_000, 1000).unwrap_err();
        assert!(late.0.contains("replay window"), "{late}");
        let far = r.authenticate(Some(&s), ip("192.168.2.5"), 50_000, 1000).unwrap_err();
        assert!(far.0.contains("may not connect from 192.168.2.5"), "{far}");
        let wrong = f.sign(b"writer-secret-02");
        let bad = Signature {
            fields: f,
            signature: &wrong,
        };
        assert!(r
            .authenticate(Some(&bad), lan, 50_000, 1000)
            .unwrap_err()
            .0
            .contains("does not match"));
        let nobody = signed("nobody", b"h", 50_000);
        let s = nobody.sign(b"whatever-secret");
        let unknown = Signature {
            fields: nobody,
            signature: &s,
        };
        assert!(r
            .authenticate(Some(&unknown), lan, 50_000, 1000)
            .unwrap_err()
            .0
            .contains("unknown access key"));
        assert!(r.authenticate_plain("root", "root-secret-0001", lan).is_ok());
        assert!(r.authenticate_plain("root", "root-secret-0002", lan).is_err());
        assert!(r
            .authenticate_plain("writer", "writer-secret-01", ip("1.1.1.1"))
            .is_err());
    }

    #[test]
    fn permissions_follow_the_file_and_refusals_name_what_is_missing() {
        let r = rules();
        let writer = Identity::Account("writer".into());
        let root = Identity::Account("root".into());
        assert!(r.check(&writer, &Access::Topic("orders", Perm::PUB)).is_ok());
        let e = r.check(&writer, &Access::Topic("orders", Perm::SUB)).unwrap_err();
        assert_eq!(e.to_string(), "access denied: account writer lacks SUB on topic orders");
        assert!(r.check(&writer, &Access::Topic("logs.app", Perm::SUB)).is_ok());
        assert!(r
            .check(&writer, &Access::TopicAndGroup("logs.app", "billing", Perm::SUB))
            .is_ok());
        let e = r
            .check(&writer, &Access::TopicAndGroup("logs.app", "other", Perm::SUB))
            .unwrap_err();
        assert!(e.0.ends_with("lacks SUB on group other"), "{e}");
        let e = r.check(&writer, &Access::Admin("delete topics")).unwrap_err();
        assert!(e.0.contains("lacks admin (to delete topics)"), "{e}");
        assert!(r.check(&writer, &Access::Authenticated).is_ok());
        assert!(r.check(&root, &Access::Admin("delete topics")).is_ok());
        assert!(r.is_admin(&root) && !r.is_admin(&writer) && r.is_admin(&Identity::Whitelisted));
        let anon = r
            .check(&Identity::Anonymous, &Access::Topic("orders", Perm::PUB))
            .unwrap_err();
        assert!(anon.0.contains("PUB on topic orders needs an account"), "{anon}");
        assert!(r.check(&Identity::Anonymous, &Access::Open).is_ok());
        assert!(r.check(&Identity::Anonymous, &Access::Authenticated).is_err());
    }
}
