//! `QueueActor`: one per topic-queue, a thin shell over the queue's
//! delivery state machine ([`QueueDelivery`]): it feeds it pulls, receives,
//! settles, new-message notices and timer ticks with `now` read once per
//! handler, and carries out its effects (answers through oneshots, dead
//! letters and offset commits through [`BrokerServices`], one timer armed
//! for the earliest wake-up it asks for). The store side of the queue is
//! [`StoreLog`]; the receive/settle handlers and the effects are in
//! [`super::queue_delivery`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::pull::StoreLog;
use super::queue_delivery::{RequesterGone, Waiter};
use super::services::BrokerServices;
use crate::clock::now_millis;
use crate::delivery::queue::{Answer, Effects, PullBatch, PullQuery, QueueDelivery, QueueLog};
use crate::error::{BrokerError, ErrorKind};
use crate::observe::{kind, ActorStats};
use crate::store::Store;

/// A pull's answer.
pub type PullReply = Result<PullBatch, BrokerError>;

/// Read messages (see `PULL_MESSAGE`); a long poll of a requester that is
/// gone (its connection closed) is dropped.
#[derive(Message)]
#[rtype(result = "PullReply")]
pub struct Pull(pub PullQuery, pub RequesterGone);

/// The Dispatcher's notice that the queue now ends at `max_offset`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct NewMessages {
    /// One past the newest entry.
    pub max_offset: u64,
    /// New messages with a TTL: (queue offset, expiry time in ms).
    pub expiring: Vec<(u64, u64)>,
}

/// The queue's topic was deleted: answer parked requests and stop.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Retire;

/// The actor serving one topic-queue.
pub struct QueueActor {
    pub(super) stats: Arc<ActorStats>,
    pub(super) services: Arc<BrokerServices>,
    pub(super) store: Arc<Store>,
    pub(super) topic: Arc<str>,
    pub(super) queue_id: u32,
    pub(super) delivery: QueueDelivery<Waiter>,
    /// The one timer: when it fires and its handle.
    timer: Option<(u64, SpawnHandle)>,
    /// `ferromq_parked_requests{kind}` of pulls and receives, and what this
    /// actor last added to them.
    parked_gauges: [metrics::Gauge; 2],
    reported_parked: [usize; 2],
    /// `ferromq_group_in_flight` last reported, per group.
    reported_in_flight: HashMap<String, usize>,
    /// Shared with the registry: see its `notify`.
    notice_pending: Arc<AtomicBool>,
    /// `ferromq_queue_messages_out_total` of this queue, looked up once.
    messages_out: metrics::Counter,
}

impl QueueActor {
    /// Reports into `stats` (from the broker's actor tree).
    pub fn with_stats(mut self, stats: Arc<ActorStats>) -> Self {
        self.stats = stats;
        self
    }

    /// An actor for (topic, queue).
    pub fn new(services: Arc<BrokerServices>, topic: Arc<str>, queue_id: u32) -> QueueActor {
        let messages_out = metrics::counter!(
            "ferromq_queue_messages_out_total",
            "topic" => topic.to_string(),
            "queue" => queue_id.to_string()
        );
        QueueActor {
            stats: ActorStats::detached(kind::QUEUE, format!("{topic}/{queue_id}")),
            store: services.store.clone(),
            delivery: Self::fresh_delivery(&services, &topic, queue_id),
            services,
            topic,
            queue_id,
            timer: None,
            parked_gauges: [
                metrics::gauge!("ferromq_parked_requests", "kind" => "pull"),
                metrics::gauge!("ferromq_parked_requests", "kind" => "receive"),
            ],
            reported_parked: [0, 0],
            reported_in_flight: HashMap::new(),
            notice_pending: Arc::new(AtomicBool::new(false)),
            messages_out,
        }
    }

    fn fresh_delivery(services: &BrokerServices, topic: &Arc<str>, queue_id: u32) -> QueueDelivery<Waiter> {
        QueueDelivery::new(
            topic.clone(),
            queue_id,
            services.retry.clone(),
            services.delivery.commit_interval_ms,
        )
    }

    /// Shares the registry's notice flag (cleared on each `NewMessages`).
    pub fn with_notice_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.notice_pending = flag;
        self
    }

    /// Counts messages handed to consumers (pulls and receives).
    fn count_out(&self, n: u64) {
        if n > 0 {
            self.messages_out.increment(n);
            crate::observe::totals::add_out(n);
        }
    }

    /// Carries out what the state machine asked for, then reports gauges
    /// and arms the timer for its next wake-up.
    pub(super) fn carry_out(&mut self, now: u64, fx: Effects<Waiter>, ctx: &mut Context<Self>) {
        for (waiter, answer) in fx.replies {
            let _ = waiter.reply.send(answer);
        }
        for group in fx.subscribe {
            if let Err(e) = self.store.subscriptions.add(&self.topic, &group) {
                tracing::warn!(%group, topic = %self.topic, error = %e, "cannot record subscription");
            }
        }
        self.count_out(fx.delivered);
        for (group, n) in fx.redelivered {
            let labels = [
                ("group", group),
                ("topic", self.topic.to_string()),
                ("queue", self.queue_id.to_string()),
            ];
            metrics::counter!("ferromq_group_redeliveries_total", &labels).increment(n);
        }
        for append in fx.dead_letters {
            self.write_dead_letters(append, ctx);
        }
        if !fx.commits.is_empty() {
            self.write_commits(fx.commits, ctx);
        }
        self.report();
        self.arm_timer(now, ctx);
    }

    /// One timer, armed for the state machine's earliest wake-up.
    fn arm_timer(&mut self, now: u64, ctx: &mut Context<Self>) {
        let next = self.delivery.next_wakeup(now);
        if next == self.timer.as_ref().map(|(at, _)| *at) {
            return;
        }
        if let Some((_, h)) = self.timer.take() {
            ctx.cancel_future(h);
        }
        if let Some(at) = next {
            let wait = Duration::from_millis(at.saturating_sub(now));
            let handle = ctx.run_later(wait, |act, ctx| {
                act.timer = None;
                let now = now_millis();
                let mut fx = Effects::default();
                let log = StoreLog::new(&act.store, &act.topic, act.queue_id);
                act.delivery.tick(now, &log, &mut fx);
                act.carry_out(now, fx, ctx);
            });
            self.timer = Some((at, handle));
        }
    }

    /// Reports the parked counts and the groups' in-flight counts that changed.
    fn report(&mut self) {
        let (pulls, receives) = self.delivery.parked();
        let now = [pulls, receives];
        for ((gauge, was), is) in self.parked_gauges.iter().zip(self.reported_parked).zip(now) {
            if is > was {
                gauge.increment((is - was) as f64);
            } else if is < was {
                gauge.decrement((was - is) as f64);
            }
        }
        self.reported_parked = now;
        for (group, n) in self.delivery.in_flight() {
            if self.reported_in_flight.get(group) == Some(&n) {
                continue;
            }
            self.reported_in_flight.insert(group.to_string(), n);
            let labels = [
                ("group", group.to_string()),
                ("topic", self.topic.to_string()),
                ("queue", self.queue_id.to_string()),
            ];
            metrics::gauge!("ferromq_group_in_flight", &labels).set(n as f64);
        }
    }

    /// Loads the groups that receive this topic (after a start or restart)
    /// and begins the scan that finds the TTLs of their backlog.
    fn resume(&mut self, ctx: &mut Context<Self>) {
        let log = StoreLog::new(&self.store, &self.topic, self.queue_id);
        let groups: Vec<(String, u64)> = self
            .store
            .subscriptions
            .groups(&self.topic)
            .into_iter()
            .filter_map(|group| {
                let committed = log.committed(&group)?;
                Some((group, committed))
            })
            .collect();
        self.delivery.resume(groups, &log);
        self.carry_out(now_millis(), Effects::default(), ctx);
    }
}

impl Actor for QueueActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.stats.started();
        // Pulls are answered quickly; a deeper mailbox only adds latency.
        ctx.set_mailbox_capacity(1024);
        self.resume(ctx);
    }
}

impl Supervised for QueueActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.stats.restarting();
        // Parked requests are dropped; their senders see a closed reply and
        // answer SERVICE_UNAVAILABLE, and the clients simply ask again.
        let mut fx = Effects::default();
        self.delivery.retire(None, &mut fx);
        self.timer = None;
        self.report();
    }
}

/// The answer a parked request gets when the actor restarts under it.
fn restarted(what: &str) -> BrokerError {
    BrokerError::new(ErrorKind::Unavailable, format!("queue actor restarted; {what} again"))
}

/// Waits for the answer of a request handed to the state machine.
pub(super) async fn answer_of(rx: oneshot::Receiver<Answer>, what: &'static str) -> Result<Answer, BrokerError> {
    rx.await.map_err(|_| restarted(what))
}

impl Handler<Pull> for QueueActor {
    type Result = ResponseFuture<PullReply>;

    fn handle(&mut self, Pull(query, gone): Pull, ctx: &mut Context<Self>) -> Self::Result {
        let _timer = self.stats.handling();
        let now = now_millis();
        let (reply, rx) = oneshot::channel();
        let mut fx = Effects::default();
        let log = StoreLog::new(&self.store, &self.topic, self.queue_id);
        self.delivery.pull(now, query, Waiter { reply, gone }, &log, &mut fx);
        self.carry_out(now, fx, ctx);
        Box::pin(async move {
            match answer_of(rx, "pull").await? {
                Answer::Pull(r) => r,
                Answer::Receive(_) => Err(BrokerError::new(ErrorKind::Internal, "a pull got a receive's answer")),
            }
        })
    }
}

impl Handler<NewMessages> for QueueActor {
    type Result = ();

    fn handle(&mut self, msg: NewMessages, ctx: &mut Context<Self>) {
        let _timer = self.stats.handling();
        // Cleared before the queue's end is read: a batch dispatched after
        // this point sends a new notice. An acquiring swap: it reads the
        // dispatcher's (releasing) swap, so the end read below includes
        // every batch whose notice was skipped.
        self.notice_pending.swap(false, Ordering::AcqRel);
        let now = now_millis();
        let log = StoreLog::new(&self.store, &self.topic, self.queue_id);
        let end = log.bounds().map_or(0, |(_, max)| max).max(msg.max_offset);
        let mut fx = Effects::default();
        self.delivery.new_messages(now, end, &msg.expiring, &log, &mut fx);
        self.carry_out(now, fx, ctx);
    }
}

impl Handler<Retire> for QueueActor {
    type Result = ();

    fn handle(&mut self, _: Retire, ctx: &mut Context<Self>) {
        let _timer = self.stats.handling();
        let mut fx = Effects::default();
        let error = BrokerError::new(ErrorKind::TopicNotExist, format!("topic {} was deleted", self.topic));
        self.delivery.retire(Some(error), &mut fx);
        for (waiter, answer) in fx.replies {
            let _ = waiter.reply.send(answer);
        }
        self.report();
        ctx.stop();
    }
}

crate::observe::failable!(QueueActor);
#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::queue::{PullOutcome, SWEEP_EVERY_MS};
    use crate::message::TagFilter;
    use crate::store::testing::{append, entry, small_config};
    use std::time::Instant;

    const SWEEP_EVERY: Duration = Duration::from_millis(SWEEP_EVERY_MS);

    fn pull_req(offset: u64, wait: u64) -> PullQuery {
        PullQuery {
            offset,
            max_count: 8,
            max_wait_ms: wait,
            filter: TagFilter::parse(""),
        }
    }

    fn not_gone() -> RequesterGone {
        Arc::new(AtomicBool::new(false))
    }

    /// A store whose queue t/0 holds one message, and services over it.
    fn store_with_first_message(dir: &std::path::Path) -> (Arc<Store>, Arc<BrokerServices>) {
        let (store, _) = Store::open(&small_config(dir)).unwrap();
        let store = Arc::new(store);
        append(&store, "t", 0, &[entry("first", None, None)]);
        let services = Arc::new(crate::actors::services::testing::services(
            store.clone(),
            "127.0.0.1:1".parse().unwrap(),
        ));
        (store, services)
    }

    fn status(reply: PullReply) -> PullOutcome {
        reply.unwrap().status
    }

    #[actix_rt::test]
    async fn one_notice_stands_for_every_batch_before_it_is_handled() {
        let dir = tempfile::tempdir().unwrap();
        let (store, services) = store_with_first_message(dir.path());
        let flag = Arc::new(AtomicBool::new(false));
        let shared = flag.clone();
        let addr = QueueActor::new(services, Arc::from("t"), 0)
            .with_notice_flag(shared)
            .start();
        let parked = actix_rt::spawn(addr.send(Pull(pull_req(1, 10_000), not_gone())));
        actix_rt::time::sleep(Duration::from_millis(50)).await;
        // Two batches land; the registry sent one notice (for the first) and
        // skipped the second because one was pending.
        append(&store, "t", 0, &[entry("second", None, None)]);
        append(&store, "t", 0, &[entry("third", None, None)]);
        flag.store(true, Ordering::SeqCst);
        addr.send(NewMessages {
            max_offset: 1, // stale: the actor reads the queue's real end
            expiring: vec![],
        })
        .await
        .unwrap();
        assert!(!flag.load(Ordering::SeqCst), "the notice clears the flag");
        let woken = tokio::time::timeout(Duration::from_secs(2), parked)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let resp = woken.unwrap();
        assert_eq!((resp.status, resp.count, resp.next_offset), (PullOutcome::Found, 2, 3));
    }

    #[actix_rt::test]
    async fn parked_pulls_of_a_closed_connection_are_dropped_by_the_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, services) = store_with_first_message(dir.path());
        let addr = QueueActor::new(services, Arc::from("t"), 0).start();
        let gone = not_gone();
        let parked = actix_rt::spawn(addr.send(Pull(pull_req(1, 60_000), gone.clone())));
        actix_rt::time::sleep(Duration::from_millis(50)).await;
        gone.store(true, Ordering::Release);
        // Dropped within a sweep period, long before its deadline: the
        // waiter's answer channel closes.
        let answer = tokio::time::timeout(SWEEP_EVERY * 3, parked)
            .await
            .expect("dropped by the sweep")
            .unwrap()
            .unwrap();
        assert_eq!(answer.unwrap_err().kind(), ErrorKind::Unavailable);
    }

    #[actix_rt::test]
    async fn parked_pull_is_woken_by_new_messages_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (store, services) = store_with_first_message(dir.path());
        let addr = Supervisor::start(move |_| QueueActor::new(services.clone(), Arc::from("t"), 0));

        // Nothing at offset 1 yet: the pull parks until NewMessages.
        let parked = addr.send(Pull(pull_req(1, 10_000), not_gone()));
        let parked = actix_rt::spawn(parked);
        actix_rt::time::sleep(Duration::from_millis(50)).await;
        append(&store, "t", 0, &[entry("second", None, None)]);
        addr.send(NewMessages {
            max_offset: 2,
            expiring: vec![],
        })
        .await
        .unwrap();
        let woken = tokio::time::timeout(Duration::from_secs(2), parked)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(status(woken), PullOutcome::Found);

        // A short wait with nothing new ends at its deadline.
        let started = Instant::now();
        assert_eq!(
            status(addr.send(Pull(pull_req(2, 100), not_gone())).await.unwrap()),
            PullOutcome::NoNewMessage
        );
        assert!(started.elapsed() >= Duration::from_millis(90));

        // Stopping the actor (what a failing handler does) restarts it behind
        // the same address; it serves from disk as before.
        let waiting = actix_rt::spawn(addr.send(Pull(pull_req(2, 10_000), not_gone())));
        actix_rt::time::sleep(Duration::from_millis(20)).await;
        addr.send(Retire).await.unwrap();
        let answered = waiting.await.unwrap().unwrap();
        assert!(answered.is_err(), "parked pulls are answered, not lost");
        assert_eq!(
            status(addr.send(Pull(pull_req(0, 0), not_gone())).await.unwrap()),
            PullOutcome::Found
        );
    }
}
