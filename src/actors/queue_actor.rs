//! `QueueActor`: one per topic-queue. Serves pulls from the consume queue and
//! parks long-polling pulls until the Dispatcher reports new messages or
//! their wait expires. A thin shell over [`serve_pull`] and [`LongPolls`].
//! It also tracks per-message delivery for groups that receive with
//! acknowledgements (in-flight table, retries, dead letters, TTL expiry):
//! see [`super::queue_delivery`].

use crate::error::{BrokerError, ErrorKind};
use crate::observe::{kind, ActorStats};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use tokio::sync::oneshot;

use super::long_poll::LongPolls;
use super::pull::{serve_pull, PullPayload};
use super::queue_delivery::{Deliveries, RequesterGone};
use super::services::BrokerServices;
use crate::message::TagFilter;
use crate::store::Store;
use crate::wire::pull::{PullRequest, PullResponse, PullStatus};

/// A pull's answer: the encoded response body, or an error status.
pub type PullReply = Result<PullPayload, BrokerError>;

/// Read messages (see `PULL_MESSAGE`); a long poll of a requester that is
/// gone (its connection closed) is dropped.
#[derive(Message)]
#[rtype(result = "PullReply")]
pub struct Pull(pub PullRequest, pub RequesterGone);

/// How often a queue actor with parked pulls or receives drops those whose
/// connection closed (they are also dropped on every wake-up).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The Dispatcher's notice that the queue now ends at `max_offset`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct NewMessages {
    /// One past the newest entry.
    pub max_offset: u64,
    /// New messages with a TTL: (queue offset, expiry time in ms).
    pub expiring: Vec<(u64, u64)>,
}

/// The queue's topic was deleted: answer parked pulls and stop.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Retire;

struct Waiter {
    max_count: u32,
    filter: TagFilter,
    reply: oneshot::Sender<PullReply>,
    gone: RequesterGone,
}

impl Waiter {
    /// Nobody waits for the answer any more.
    fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire) || self.reply.is_closed()
    }
}

/// The actor serving one topic-queue.
pub struct QueueActor {
    pub(super) stats: Arc<ActorStats>,
    pub(super) services: Arc<BrokerServices>,
    pub(super) store: Arc<Store>,
    pub(super) topic: Arc<str>,
    pub(super) queue_id: u32,
    pub(super) deliveries: Deliveries,
    polls: LongPolls<Waiter>,
    epoch: Instant,
    timer: Option<SpawnHandle>,
    /// The sweep for parked requests of closed connections, while any are parked.
    sweep: Option<SpawnHandle>,
    /// `ferromq_parked_requests{kind}` of pulls and receives, and what this
    /// actor last added to them.
    parked_gauges: [metrics::Gauge; 2],
    reported_parked: [usize; 2],
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
            services,
            topic,
            queue_id,
            deliveries: Deliveries::default(),
            polls: LongPolls::default(),
            epoch: Instant::now(),
            timer: None,
            sweep: None,
            parked_gauges: [
                metrics::gauge!("ferromq_parked_requests", "kind" => "pull"),
                metrics::gauge!("ferromq_parked_requests", "kind" => "receive"),
            ],
            reported_parked: [0, 0],
            notice_pending: Arc::new(AtomicBool::new(false)),
            messages_out,
        }
    }

    /// Shares the registry's notice flag (cleared on each `NewMessages`).
    pub fn with_notice_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.notice_pending = flag;
        self
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn serve(&self, offset: u64, max_count: u32, filter: &TagFilter) -> Result<super::pull::PullServed, BrokerError> {
        let served = serve_pull(&self.store, &self.topic, self.queue_id, offset, max_count, filter)?;
        self.count_out(u64::from(served.count));
        Ok(served)
    }

    /// Counts messages handed to consumers (pulls and receives).
    pub(super) fn count_out(&self, n: u64) {
        if n > 0 {
            self.messages_out.increment(n);
            crate::observe::totals::add_out(n);
        }
    }

    /// One timer, armed for the earliest deadline (not a periodic scan).
    fn arm_timer(&mut self, ctx: &mut Context<Self>) {
        if let Some(h) = self.timer.take() {
            ctx.cancel_future(h);
        }
        if let Some(deadline) = self.polls.next_deadline() {
            let wait = Duration::from_millis(deadline.saturating_sub(self.now_ms()));
            self.timer = Some(ctx.run_later(wait, |act, ctx| {
                act.timer = None;
                let now = act.now_ms();
                for p in act.polls.take_expired(now) {
                    let reply = act.empty_reply(p.offset);
                    let _ = p.waiter.reply.send(reply);
                }
                act.arm_timer(ctx);
                act.parked_changed(ctx);
            }));
        }
    }

    /// Drops parked pulls and receives whose connection closed.
    fn sweep_gone(&mut self) {
        self.polls.take_matching(|p| p.waiter.is_gone());
        self.sweep_gone_receives();
    }

    /// Reports the parked counts and keeps a sweep armed while anything is
    /// parked: called after every change to the parked tables.
    pub(super) fn parked_changed(&mut self, ctx: &mut Context<Self>) {
        let now = [self.polls.len(), self.parked_receives()];
        for ((gauge, was), is) in self.parked_gauges.iter().zip(self.reported_parked).zip(now) {
            if is > was {
                gauge.increment((is - was) as f64);
            } else if is < was {
                gauge.decrement((was - is) as f64);
            }
        }
        self.reported_parked = now;
        if self.sweep.is_none() && now != [0, 0] {
            self.sweep = Some(ctx.run_later(SWEEP_EVERY, |act, ctx| {
                act.sweep = None;
                act.sweep_gone();
                act.parked_changed(ctx);
            }));
        }
    }

    fn empty_reply(&self, offset: u64) -> PullReply {
        let (min, max) = self
            .store
            .queues
            .get(&self.topic, self.queue_id)
            .map_or((0, 0), |q| (q.min_offset(), q.max_offset()));
        let resp = PullResponse {
            status: PullStatus::NoNewMessage,
            next_offset: offset,
            min_offset: min,
            max_offset: max,
            count: 0,
            records: Bytes::new(),
        };
        Ok(PullPayload {
            head: resp.encode(),
            records: Vec::new(),
        })
    }
}

impl Actor for QueueActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.stats.started();
        // Pulls are answered quickly; a deeper mailbox only adds latency.
        ctx.set_mailbox_capacity(1024);
        self.resume_deliveries(ctx);
    }
}

impl Supervised for QueueActor {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        self.stats.restarting();
        // Parked pulls are dropped; their senders see a closed reply and
        // answer SERVICE_UNAVAILABLE, and the clients simply pull again.
        self.polls.take_all();
        self.timer = None;
        self.sweep = None;
        self.drop_deliveries(None);
        self.parked_changed(ctx);
    }
}

impl Handler<Pull> for QueueActor {
    type Result = ResponseFuture<PullReply>;

    fn handle(&mut self, Pull(req, gone): Pull, ctx: &mut Context<Self>) -> Self::Result {
        let _timer = self.stats.handling();
        let filter = TagFilter::parse(&req.tag_expression);
        let served = match self.serve(req.offset, req.max_count, &filter) {
            Ok(s) => s,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        if !(served.may_wait() && req.max_wait_ms > 0) {
            return Box::pin(async move { Ok(served.body) });
        }
        let (reply, rx) = oneshot::channel();
        let deadline = self.now_ms() + u64::from(req.max_wait_ms);
        self.polls.park(
            served.next_offset,
            deadline,
            Waiter {
                max_count: req.max_count,
                filter,
                reply,
                gone,
            },
        );
        self.arm_timer(ctx);
        self.parked_changed(ctx);
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                Err(BrokerError::new(
                    ErrorKind::Unavailable,
                    "queue actor restarted; pull again",
                ))
            })
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
        let end = self
            .store
            .queues
            .get(&self.topic, self.queue_id)
            .map_or(0, |q| q.max_offset())
            .max(msg.max_offset);
        self.deliveries.add_expiries(&msg.expiring);
        self.serve_parked(ctx);
        if !msg.expiring.is_empty() {
            self.arm_delivery_timer(ctx);
        }
        // Pulls of closed connections are dropped, not served.
        self.polls.take_matching(|p| p.waiter.is_gone());
        let ready = self.polls.take_ready(end);
        if ready.is_empty() {
            self.parked_changed(ctx);
            return;
        }
        for p in ready {
            match self.serve(p.offset, p.waiter.max_count, &p.waiter.filter) {
                // Only filtered-out messages arrived: keep waiting further on.
                Ok(s) if s.may_wait() => self.polls.park(s.next_offset, p.deadline, p.waiter),
                Ok(s) => {
                    let _ = p.waiter.reply.send(Ok(s.body));
                }
                Err(e) => {
                    let _ = p.waiter.reply.send(Err(e));
                }
            }
        }
        self.arm_timer(ctx);
        self.parked_changed(ctx);
    }
}

impl Handler<Retire> for QueueActor {
    type Result = ();

    fn handle(&mut self, _: Retire, ctx: &mut Context<Self>) {
        let _timer = self.stats.handling();
        for p in self.polls.take_all() {
            let _ = p.waiter.reply.send(Err(BrokerError::new(
                ErrorKind::TopicNotExist,
                format!("topic {} was deleted", self.topic),
            )));
        }
        self.drop_deliveries(Some(BrokerError::new(
            ErrorKind::TopicNotExist,
            format!("topic {} was deleted", self.topic),
        )));
        self.parked_changed(ctx);
        ctx.stop();
    }
}

crate::observe::failable!(QueueActor);
#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{append, entry, small_config};

    fn pull_req(offset: u64, wait: u32) -> PullRequest {
        PullRequest {
            topic: "t".into(),
            queue_id: 0,
            offset,
            max_count: 8,
            max_wait_ms: wait,
            tag_expression: String::new(),
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

    fn status(reply: PullReply) -> PullStatus {
        PullResponse::decode(reply.unwrap().to_bytes()).unwrap().status
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
        let resp = PullResponse::decode(woken.unwrap().to_bytes()).unwrap();
        assert_eq!((resp.status, resp.count, resp.next_offset), (PullStatus::Found, 2, 3));
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
        assert_eq!(status(woken), PullStatus::Found);

        // A short wait with nothing new ends at its deadline.
        let started = Instant::now();
        assert_eq!(
            status(addr.send(Pull(pull_req(2, 100), not_gone())).await.unwrap()),
            PullStatus::NoNewMessage
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
            PullStatus::Found
        );
    }
}
