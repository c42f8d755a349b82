//! When a producer is answered: the step between "the batch is in the
//! page cache" and "the append is acknowledged". The `CommitLogWriter` asks
//! its [`AckPolicy`] once per batch and answers when the returned future
//! resolves; it knows no flush modes itself.
//!
//! Steps compose with [`AllOf`]. Replication plugs in here: an
//! `AfterReplica` step (resolving when enough replicas report an offset
//! at or past `end`) joins [`AfterFsync`] or [`AfterPageCache`] in an
//! `AllOf`, chosen in [`policy_for`], without touching the writer.

use std::sync::Arc;

use futures::future::{self, BoxFuture, FutureExt};

use crate::config::FlushMode;
use crate::error::{BrokerError, ErrorKind};
use crate::store::flusher::FlushHandle;

/// Decides when an appended batch may be acknowledged.
pub trait AckPolicy: Send + Sync {
    /// Resolves when the batch ending at commitlog position `end` (already
    /// written and published) may be acknowledged, or with why it may not.
    fn when_answered(&self, end: u64) -> BoxFuture<'static, Result<(), BrokerError>>;
}

/// Answer at once: the batch is in the page cache, so it survives a
/// process crash; the flusher makes it durable within `flush_interval_ms`.
#[derive(Debug, Clone, Copy, Default)]
pub struct AfterPageCache;

impl AckPolicy for AfterPageCache {
    fn when_answered(&self, _end: u64) -> BoxFuture<'static, Result<(), BrokerError>> {
        future::ready(Ok(())).boxed()
    }
}

/// Answer once the flusher has made the log durable up to the batch's end
/// (group commit: one fdatasync serves every batch waiting at the time).
#[derive(Debug, Clone)]
pub struct AfterFsync(pub FlushHandle);

impl AckPolicy for AfterFsync {
    fn when_answered(&self, end: u64) -> BoxFuture<'static, Result<(), BrokerError>> {
        let durable = self.0.durable(end);
        async move {
            match durable.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(BrokerError::new(ErrorKind::Store, format!("flush failed: {e}"))),
                Err(_) => Err(BrokerError::new(ErrorKind::Unavailable, "the flusher stopped")),
            }
        }
        .boxed()
    }
}

/// Answer once every step has resolved; the first failure fails the ack.
#[derive(Clone, Default)]
pub struct AllOf(pub Vec<Arc<dyn AckPolicy>>);

impl AckPolicy for AllOf {
    fn when_answered(&self, end: u64) -> BoxFuture<'static, Result<(), BrokerError>> {
        // Every step starts now (they wait in parallel, not in sequence).
        let steps: Vec<_> = self.0.iter().map(|s| s.when_answered(end)).collect();
        future::try_join_all(steps).map(|r| r.map(|_| ())).boxed()
    }
}

/// The policy configured by `[store] flush` (`sync` → after fsync,
/// `async` → after the page cache). Replication will add its step here.
pub fn policy_for(mode: FlushMode, flusher: FlushHandle) -> Arc<dyn AckPolicy> {
    match mode {
        FlushMode::Async => Arc::new(AfterPageCache),
        FlushMode::Sync => Arc::new(AfterFsync(flusher)),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::FutureExt;
    use tokio::sync::watch;

    use super::*;
    use crate::store::flusher::Flusher;
    use crate::store::testing::{append, entry, small_config};
    use crate::store::Store;

    /// A step that resolves when the test opens its gate.
    struct Gate(watch::Receiver<bool>);

    impl AckPolicy for Gate {
        fn when_answered(&self, _end: u64) -> BoxFuture<'static, Result<(), BrokerError>> {
            let mut open = self.0.clone();
            async move {
                open.wait_for(|o| *o)
                    .await
                    .map(|_| ())
                    .map_err(|_| BrokerError::new(ErrorKind::Unavailable, "gate dropped"))
            }
            .boxed()
        }
    }

    /// A store holding one batch, and a flusher that flushes only when
    /// asked (its periodic flush is an hour away).
    fn store_with_batch(dir: &std::path::Path) -> (Arc<Store>, Flusher, u64) {
        let (store, _) = Store::open(&small_config(dir)).unwrap();
        let store = Arc::new(store);
        append(&store, "t", 0, &[entry("a", None, None), entry("b", None, None)]);
        let flusher = Flusher::start(store.clone(), Duration::from_secs(3600)).unwrap();
        let end = store.log.write_pos();
        (store, flusher, end)
    }

    #[tokio::test]
    async fn after_page_cache_answers_before_any_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let (store, flusher, end) = store_with_batch(dir.path());
        let answered = AfterPageCache.when_answered(end).now_or_never();
        assert!(matches!(answered, Some(Ok(()))), "answered at once");
        assert!(store.log.flushed_pos() < end, "nothing was fsynced for it");
        flusher.stop();
    }

    #[tokio::test]
    async fn after_fsync_answers_once_the_batch_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let (store, flusher, end) = store_with_batch(dir.path());
        assert!(store.log.flushed_pos() < end);
        let policy = policy_for(FlushMode::Sync, flusher.handle());
        tokio::time::timeout(Duration::from_secs(5), policy.when_answered(end))
            .await
            .expect("the flusher answers")
            .unwrap();
        assert!(store.log.flushed_pos() >= end, "answered only after the fsync");
        flusher.stop();
        // A stopped flusher fails the ack instead of hanging it.
        let failed = policy.when_answered(end).await.unwrap_err();
        assert!(matches!(failed.kind(), ErrorKind::Store | ErrorKind::Unavailable));
    }

    #[tokio::test]
    async fn all_of_waits_for_every_step() {
        let (open, gate) = watch::channel(false);
        let policy = AllOf(vec![Arc::new(AfterPageCache), Arc::new(Gate(gate))]);
        let mut answer = policy.when_answered(10);
        assert!((&mut answer).now_or_never().is_none(), "the gate holds it");
        open.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), answer)
            .await
            .unwrap()
            .unwrap();
        // A failing step fails the whole ack.
        let (closed, gate) = watch::channel(false);
        drop(closed);
        let policy = AllOf(vec![Arc::new(Gate(gate)), Arc::new(AfterPageCache)]);
        assert_eq!(
            policy.when_answered(1).await.unwrap_err().kind(),
            ErrorKind::Unavailable
        );
    }
}
