//! Access control: accounts, permissions and IP whitelists from an ACL
//! file (RocketMQ's plain ACL model in TOML, `docs/security.md`), request
//! signatures, and the live rules a broker or name server checks.
//!
//! * [`perm`]: `DENY` / `PUB` / `SUB` and per-resource tables.
//! * [`addr`]: whitelist patterns.
//! * [`sign`]: HMAC-SHA256 request signatures.
//! * [`rules`]: the file's format and the decisions (pure; `now` and the
//!   peer come in).
//! * here: [`Acl`], the rules in force, reloaded when the file changes.

pub mod addr;
pub mod perm;
pub mod rules;
pub mod sign;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

pub use perm::Perm;
pub use rules::{Access, AclRules, Credentials, Denied, Identity, Secret, Signature};

use crate::config::AclSection;

/// The rules in force. Cheap to clone; clones share the rules. Disabled
/// (the default, the trusted-network mode) every request is allowed.
#[derive(Clone)]
pub struct Acl {
    inner: Arc<Inner>,
}

struct Inner {
    enabled: bool,
    path: PathBuf,
    window_ms: u64,
    rules: RwLock<Arc<AclRules>>,
    /// The file's bytes when last read (parsed or not), to tell a change.
    last_read: RwLock<Vec<u8>>,
}

impl std::fmt::Debug for Acl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acl")
            .field("enabled", &self.inner.enabled)
            .field("path", &self.inner.path)
            .finish()
    }
}

/// Reads the process environment (for `env:NAME` secrets).
fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl Acl {
    /// Access control off: everything is allowed.
    pub fn disabled() -> Acl {
        Acl::with(false, PathBuf::new(), 0, AclRules::default(), Vec::new())
    }

    fn with(enabled: bool, path: PathBuf, window_ms: u64, rules: AclRules, bytes: Vec<u8>) -> Acl {
        Acl {
            inner: Arc::new(Inner {
                enabled,
                path,
                window_ms,
                rules: RwLock::new(Arc::new(rules)),
                last_read: RwLock::new(bytes),
            }),
        }
    }

    /// The rules `section` asks for: disabled, or the parsed file (an
    /// error if it cannot be read or parsed: a broker does not start with
    /// broken access control).
    pub fn load(section: &AclSection) -> Result<Acl, String> {
        if !section.enabled {
            return Ok(Acl::disabled());
        }
        let path = section.file.clone();
        let bytes = read(&path)?;
        let rules = parse(&path, &bytes)?;
        Ok(Acl::with(true, path, section.replay_window_ms, rules, bytes))
    }

    /// [`Acl::load`], then [`Acl::watch`] every `reload_interval_ms`; logs
    /// that access control is on. What a broker and a name server start
    /// with.
    pub fn start(section: &AclSection) -> Result<Acl, String> {
        let acl = Acl::load(section)?;
        acl.watch(Duration::from_millis(section.reload_interval_ms));
        if acl.enabled() {
            tracing::info!(
                file = %section.file.display(),
                accounts = acl.rules().account_count(),
                "ACL on: every request is checked"
            );
        }
        Ok(acl)
    }

    /// Rules from text (tests, in-process users).
    pub fn from_rules(rules: AclRules, window_ms: u64) -> Acl {
        Acl::with(true, PathBuf::new(), window_ms, rules, Vec::new())
    }

    /// True when requests are checked.
    pub fn enabled(&self) -> bool {
        self.inner.enabled
    }

    /// The rules in force now.
    pub fn rules(&self) -> Arc<AclRules> {
        match self.inner.rules.read() {
            Ok(r) => r.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Who sent a request (see [`AclRules::authenticate`]); everyone is
    /// [`Identity::Whitelisted`] while access control is off.
    pub fn authenticate(&self, sig: Option<&Signature<'_>>, peer: IpAddr, now_ms: u64) -> Result<Identity, Denied> {
        if !self.enabled() {
            return Ok(Identity::Whitelisted);
        }
        self.rules().authenticate(sig, peer, now_ms, self.inner.window_ms)
    }

    /// May `who` do `access`? Always while access control is off.
    pub fn check(&self, who: &Identity, access: &Access<'_>) -> Result<(), Denied> {
        if !self.enabled() {
            return Ok(());
        }
        self.rules().check(who, access)
    }

    /// Reads the file again; new rules take effect if it changed and
    /// parses. Returns whether the rules changed; `Err` says why a changed
    /// file was not taken (the previous rules stay).
    pub fn reload(&self) -> Result<bool, String> {
        if !self.enabled() || self.inner.path.as_os_str().is_empty() {
            return Ok(false);
        }
        let bytes = read(&self.inner.path)?;
        {
            let Ok(mut last) = self.inner.last_read.write() else {
                return Ok(false);
            };
            if *last == bytes {
                return Ok(false);
            }
            *last = bytes.clone();
        }
        let rules = parse(&self.inner.path, &bytes)?;
        if let Ok(mut r) = self.inner.rules.write() {
            *r = Arc::new(rules);
        }
        Ok(true)
    }

    /// Watches the file on a thread: every `interval` it is read again
    /// ([`Acl::reload`]); changes and refusals are logged once each. The
    /// thread ends when the last clone of this `Acl` is dropped.
    pub fn watch(&self, interval: Duration) {
        if !self.enabled() || self.inner.path.as_os_str().is_empty() {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let spawned = std::thread::Builder::new()
            .name("ferromq-acl-watch".into())
            .spawn(move || {
                // One warning per distinct problem, not one per interval
                // (a file being replaced may be missing for a moment).
                let mut last_problem: Option<String> = None;
                loop {
                    std::thread::sleep(interval);
                    let Some(inner) = weak.upgrade() else { return };
                    let acl = Acl { inner };
                    match acl.reload() {
                        Ok(changed) => {
                            if changed {
                                tracing::info!(
                                    file = %acl.inner.path.display(),
                                    accounts = acl.rules().account_count(),
                                    "ACL file changed: new rules in force"
                                );
                            }
                            last_problem = None;
                        }
                        Err(e) if last_problem.as_deref() != Some(e.as_str()) => {
                            tracing::warn!("{e}; the previous ACL rules stay in force");
                            last_problem = Some(e);
                        }
                        Err(_) => {}
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot watch the ACL file {}: {e}", self.inner.path.display());
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the ACL file {}: {e}", path.display()))
}

fn parse(path: &Path, bytes: &[u8]) -> Result<AclRules, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| format!("ACL file {} is not UTF-8", path.display()))?;
    AclRules::parse(text, &process_env).map_err(|e| format!("ACL file {} does not parse: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(file: &Path) -> AclSection {
        AclSection {
            enabled: true,
            file: file.to_path_buf(),
            ..AclSection::default()
        }
    }

    #[test]
    fn a_changed_file_is_taken_and_a_broken_one_keeps_the_rules() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("acl.toml");
        let one = "[[accounts]]\naccess_key='a'\nsecret_key='aaaaaaaa'\n";
        std::fs::write(&file, one).unwrap();
        let acl = Acl::load(&section(&file)).unwrap();
        assert_eq!(acl.rules().account_count(), 1);
        assert_eq!(acl.reload(), Ok(false));
        std::fs::write(
            &file,
            format!("{one}[[accounts]]\naccess_key='b'\nsecret_key='bbbbbbbb'\n"),
        )
        .unwrap();
        assert_eq!(acl.reload(), Ok(true));
        assert_eq!(acl.rules().account_count(), 2);
        std::fs::write(&file, "[[accounts]\nbroken").unwrap();
        assert!(acl.reload().unwrap_err().contains("does not parse"));
        assert_eq!(acl.rules().account_count(), 2);
        assert!(Acl::load(&section(&dir.path().join("missing.toml"))).is_err());
        let off = Acl::disabled();
        let peer: IpAddr = "1.2.3.4".parse().unwrap();
        assert_eq!(off.authenticate(None, peer, 0), Ok(Identity::Whitelisted));
        assert!(off.check(&Identity::Anonymous, &Access::Admin("x")).is_ok());
    }
}
