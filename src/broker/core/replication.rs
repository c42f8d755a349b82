//! The master's side of replication as core operations: a slave's
//! handshake, its log fetches and its topic-table copies. Each is refused
//! with `NOT_MASTER` on a slave (a slave does not serve other slaves).

use std::collections::BTreeMap;
use std::time::Duration;

use super::{mailbox, BrokerCore, Operation};
use crate::actors::replication::link::{FetchLog, FetchedChunk};
use crate::broker::session::Session;
use crate::error::{BrokerError, ErrorKind};
use crate::replication::handshake::{decide, Decision, MasterLog, SlaveLog};
use crate::store::topics::TopicConfig;
use crate::store::Store;

/// A slave's fetch.
#[derive(Debug, Clone)]
pub struct LogFetch {
    /// The slave's broker id.
    pub slave: u64,
    /// First offset wanted.
    pub from: u64,
    /// Everything below this is stored on the slave.
    pub confirmed: u64,
    /// Most bytes to answer.
    pub max_bytes: usize,
    /// Longest wait for new records.
    pub max_wait: Duration,
}

/// What a slave copies besides the log.
#[derive(Debug, Clone, Default)]
pub struct ReplicaConfig {
    /// The topic table.
    pub topics: BTreeMap<String, TopicConfig>,
    /// Topic → groups receiving it with per-message acknowledgements.
    pub subscriptions: BTreeMap<String, Vec<String>>,
}

/// The master's log as the handshake sees it.
struct StoreLog<'a>(&'a Store);

impl MasterLog for StoreLog<'_> {
    fn start(&self) -> u64 {
        self.0.log.start_offset()
    }

    fn end(&self) -> u64 {
        self.0.log.write_pos()
    }

    fn segment_bytes(&self) -> u64 {
        self.0.log.segment_bytes()
    }

    fn record(&self, offset: u64) -> Option<(u32, u32)> {
        let crc = self.0.record_crc_at(offset).ok()??;
        let end = self.0.record_end_at(offset).ok()??;
        Some((crc, u32::try_from(end - offset).ok()?))
    }
}

impl BrokerCore {
    fn replication_master(&self, session: &Session) -> Result<(), BrokerError> {
        self.admit(session, &Operation::Replicate)?;
        if self.replication.hub().is_none() {
            return Err(self.not_master());
        }
        Ok(())
    }

    /// Where slave `slave` (of broker group `group`, at `addr`) starts
    /// following this master. A slave of another group is refused.
    pub fn replica_handshake(
        &self,
        session: &Session,
        group: &str,
        slave: u64,
        addr: &str,
        log: &SlaveLog,
    ) -> Result<Decision, BrokerError> {
        self.replication_master(session)?;
        if group != self.cfg.name || slave == 0 {
            return Err(BrokerError::new(
                ErrorKind::InvalidArgument,
                format!(
                    "this is the master of broker group {}; a slave of {group} with id {slave} cannot follow it \
                     (a slave needs the same broker.name and an id > 0)",
                    self.cfg.name
                ),
            ));
        }
        let decision = decide(log, &StoreLog(&self.store)).map_err(|why| {
            tracing::error!(slave, %addr, reason = %why, "slave refused");
            BrokerError::new(ErrorKind::InvalidArgument, why)
        })?;
        match &decision {
            Decision::Follow { from } => tracing::info!(slave, %addr, from, "slave connected"),
            Decision::Truncate { to, reason } => {
                tracing::warn!(slave, %addr, cut_at = to, %reason, "slave must cut its log")
            }
        }
        // A slave shaking hands again (reconnected, or cut its log) starts
        // over: its confirmations may go back. The link starts now, so the
        // slave counts for sync sends from its first fetch.
        if let Some(hub) = self.replication.hub() {
            hub.hello(slave, addr);
        }
        self.replication.link(slave);
        Ok(decision)
    }

    /// The log from `f.from` for slave `f.slave` (long-polled).
    pub async fn replica_fetch(&self, session: &Session, f: LogFetch) -> Result<FetchedChunk, BrokerError> {
        self.replication_master(session)?;
        let link = self
            .replication
            .link(f.slave)
            .ok_or_else(|| BrokerError::internal("replica link registry unavailable"))?;
        link.send(FetchLog {
            addr: session.peer().to_string(),
            from: f.from,
            confirmed: f.confirmed.min(f.from),
            max_bytes: f.max_bytes,
            max_wait: f.max_wait.min(Duration::from_millis(self.cfg.max_poll_wait_ms)),
        })
        .await
        .map_err(mailbox)?
    }

    /// Slave `slave` has stored everything below `confirmed` (sent after
    /// each chunk while its next fetch is already in flight).
    pub fn replica_ack(&self, session: &Session, slave: u64, confirmed: u64) -> Result<(), BrokerError> {
        self.replication_master(session)?;
        if let Some(hub) = self.replication.hub() {
            hub.fetched(slave, &session.peer().to_string(), confirmed);
        }
        Ok(())
    }

    /// This master's topic table and receive-mode subscriptions (topic →
    /// groups), for a slave to copy.
    pub fn replica_topics(&self, session: &Session) -> Result<ReplicaConfig, BrokerError> {
        self.replication_master(session)?;
        let subscriptions = self
            .store
            .subscriptions
            .topics()
            .into_iter()
            .map(|t| {
                let groups = self.store.subscriptions.groups(&t);
                (t, groups)
            })
            .collect();
        Ok(ReplicaConfig {
            topics: self.store.topics.snapshot(),
            subscriptions,
        })
    }
}
