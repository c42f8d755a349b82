//! Finds (or starts) the `GroupCoordinator` of a group; coordinators are
//! spread over the network arbiters.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use actix::prelude::*;

use super::group_coordinator::GroupCoordinator;
use crate::config::GroupSection;
use crate::groups::types::GroupConfig;
use crate::observe::{kind, ActorTree, Tracked};

/// The live group coordinators, by group name.
pub struct GroupRegistry {
    cfg: GroupSection,
    tree: Arc<ActorTree>,
    arbiters: Vec<ArbiterHandle>,
    next: AtomicUsize,
    /// Each coordinator with the settings it was started with (to re-create
    /// it the same way).
    groups: RwLock<BTreeMap<String, (Tracked<GroupCoordinator>, GroupConfig)>>,
}

impl GroupRegistry {
    /// A registry starting coordinators on `arbiters` (current one if empty).
    pub fn new(cfg: GroupSection, arbiters: Vec<ArbiterHandle>, tree: Arc<ActorTree>) -> GroupRegistry {
        GroupRegistry {
            cfg,
            tree,
            arbiters,
            next: AtomicUsize::new(0),
            groups: RwLock::new(BTreeMap::new()),
        }
    }

    /// The coordinator of `group`, if started.
    /// A coordinator whose task died (a panic in a handler) is re-created
    /// (empty: members rejoin).
    pub fn get(&self, group: &str) -> Option<Tracked<GroupCoordinator>> {
        let (found, config) = self.groups.read().ok()?.get(group).cloned()?;
        if found.addr().connected() {
            return Some(found);
        }
        self.get_or_start(group, config)
    }

    /// The coordinator of `group`, started when missing. `strategy` and
    /// `mode` configure a new group; an existing one keeps its own.
    pub fn get_or_start(&self, group: &str, base: GroupConfig) -> Option<Tracked<GroupCoordinator>> {
        if let Some((a, _)) = self.groups.read().ok()?.get(group) {
            if a.addr().connected() {
                return Some(a.clone());
            }
        }
        let mut groups = self.groups.write().ok()?;
        let mut base = base;
        if let Some((a, config)) = groups.get(group) {
            if a.addr().connected() {
                return Some(a.clone());
            }
            // Its task died with a panic: re-create it with its settings;
            // members learn it forgot them and rejoin.
            tracing::warn!(group, "group coordinator died; re-creating it");
            a.stats().restarting();
            base = config.clone();
        }
        let config = GroupConfig {
            rebalance_timeout_ms: self.cfg.rebalance_timeout_ms,
            initial_rebalance_delay_ms: self.cfg.initial_rebalance_delay_ms,
            min_session_timeout_ms: self.cfg.min_session_timeout_ms,
            max_session_timeout_ms: self.cfg.max_session_timeout_ms,
            ..base
        };
        let name = group.to_string();
        let kept = config.clone();
        let stats = self.tree.register(kind::GROUP_COORDINATOR, group, kind::BROKER);
        let s = stats.clone();
        let make = move |_: &mut Context<GroupCoordinator>| GroupCoordinator::new(&name, config).with_stats(s.clone());
        let addr = if self.arbiters.is_empty() {
            Supervisor::start(make)
        } else {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.arbiters.len();
            Supervisor::start_in_arbiter(&self.arbiters[i], make)
        };
        self.tree
            .set_failable(kind::GROUP_COORDINATOR, group, addr.clone().recipient());
        let addr = Tracked::new(addr, stats);
        groups.insert(group.to_string(), (addr.clone(), kept));
        Some(addr)
    }

    /// Names of the groups with a coordinator here.
    pub fn names(&self) -> Vec<String> {
        self.groups
            .read()
            .map(|g| g.keys().cloned().collect())
            .unwrap_or_default()
    }
}
