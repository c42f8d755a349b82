//! Seeded random operations checked against a model: every message ends
//! delivered (and acknowledged) or dead-lettered, never both; nothing is
//! redelivered after its ack; the committed offset never passes an
//! unsettled message; in-flight stays within `max_unsettled`; an orderly
//! queue hands out one message at a time, in order.

use super::*;

/// xorshift64*: a small deterministic PRNG.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What each message went through, as the consumer side saw it.
#[derive(Default)]
struct Model {
    seed: u64,
    orderly: bool,
    /// Delivered and not yet settled by this consumer.
    in_hands: BTreeSet<u64>,
    acked: BTreeSet<u64>,
    /// Dead letters stored.
    dead: BTreeSet<u64>,
    last_delivery: HashMap<u64, u32>,
    committed_seen: u64,
}

impl Model {
    /// Checks a receive's answer against what happened before it.
    fn delivered(&mut self, b: &ReceivedBatch, pending_dead: &BTreeSet<u64>) {
        let seed = self.seed;
        let got = got(b);
        if self.orderly {
            assert!(got.len() <= 1, "seed {seed}: an orderly queue hands out one at a time");
        }
        for (offset, delivery) in got {
            assert!(
                !self.acked.contains(&offset),
                "seed {seed}: {offset} redelivered after its ack"
            );
            assert!(
                !self.dead.contains(&offset),
                "seed {seed}: {offset} delivered after dead-lettering"
            );
            let prev = self.last_delivery.insert(offset, delivery).unwrap_or(0);
            assert_eq!(delivery, prev + 1, "seed {seed}: delivery numbers count up");
            if self.orderly {
                assert!(
                    (0..offset).all(|o| self.acked.contains(&o) || self.dead.contains(&o) || pending_dead.contains(&o)),
                    "seed {seed}: orderly delivery of {offset} passes an unsettled message"
                );
            }
            self.in_hands.insert(offset);
        }
        assert!(
            b.committed >= self.committed_seen,
            "seed {seed}: committed offset went back"
        );
        self.committed_seen = b.committed;
    }

    /// Reports the rig's pending dead letters stored and records them.
    fn store_dead_letters(&mut self, r: &mut Rig) {
        for a in r.store_dead_letters() {
            for l in a.letters {
                let o = l.offset;
                assert!(
                    !self.acked.contains(&o),
                    "seed {}: {o} acked and dead-lettered",
                    self.seed
                );
                assert!(self.dead.insert(o), "seed {}: {o} dead-lettered twice", self.seed);
                self.in_hands.remove(&o);
            }
        }
    }

    fn receive(&mut self, r: &mut Rig, max: u32) -> Vec<(u64, u32)> {
        let pending: BTreeSet<u64> = r
            .dead_letters
            .iter()
            .flat_map(|a| a.letters.iter().map(|l| l.offset))
            .collect();
        let mut q = Rig::query("g", max, 0, self.orderly);
        q.ack_timeout_ms = 200;
        let (id, _) = r.send_receive(q);
        let b = r.answer(id).expect("answered at once");
        self.delivered(&b, &pending);
        got(&b)
    }
}

/// Random operations against a [`Model`], checking the invariants after
/// every step and that everything ends delivered or dead-lettered.
fn random_run(seed: u64, orderly: bool) {
    let mut rng = Rng(seed.max(1));
    let max_unsettled = 8;
    let mut r = Rig::new(RetryPolicy {
        backoff_ms: vec![30, 60],
        max_retries: 2,
        max_unsettled,
    });
    let mut m = Model {
        seed,
        orderly,
        ..Model::default()
    };
    for _ in 0..400 {
        match rng.below(10) {
            0 | 1 => {
                let ttl = (rng.below(8) == 0).then(|| 1 + rng.below(300));
                r.append(None, ttl);
            }
            2..=4 => {
                m.receive(&mut r, 1 + rng.below(5) as u32);
            }
            5 | 6 if !m.in_hands.is_empty() => {
                let pick = *m
                    .in_hands
                    .iter()
                    .nth(rng.below(m.in_hands.len() as u64) as usize)
                    .unwrap();
                m.in_hands.remove(&pick);
                if rng.below(3) == 0 {
                    let requeue = rng.below(4) != 0;
                    r.settle("g", &[pick], Verdict::Nack { requeue });
                } else if r.settle("g", &[pick], Verdict::Ack) == 1 {
                    m.acked.insert(pick);
                }
            }
            7 => m.store_dead_letters(&mut r),
            _ => r.advance(1 + rng.below(150)),
        }
        assert!(
            r.in_flight("g") as u64 <= max_unsettled,
            "seed {seed}: too much in flight"
        );
        let commits: Vec<(String, u64)> = r.commits.drain(..).collect();
        for (_, offset) in &commits {
            assert!(
                (0..*offset).all(|o| m.acked.contains(&o) || m.dead.contains(&o)),
                "seed {seed}: commit {offset} passes an unsettled message"
            );
        }
        if !commits.is_empty() {
            r.m.commit_done(r.now, &commits, true);
        }
    }
    // Drain: ack whatever is handed out until everything is settled.
    for _ in 0..2_000 {
        r.advance(250);
        m.store_dead_letters(&mut r);
        for (offset, _) in m.receive(&mut r, 5) {
            assert_eq!(r.settle("g", &[offset], Verdict::Ack), 1);
            m.acked.insert(offset);
        }
        if (m.acked.len() + m.dead.len()) as u64 == r.log.end() {
            break;
        }
    }
    let all: BTreeSet<u64> = (0..r.log.end()).collect();
    assert_eq!(
        m.acked.union(&m.dead).copied().collect::<BTreeSet<u64>>(),
        all,
        "seed {seed}: every message is delivered or dead-lettered"
    );
    assert!(m.acked.is_disjoint(&m.dead), "seed {seed}: never both");
    assert!(
        m.last_delivery.values().any(|d| *d > 1) && !m.dead.is_empty(),
        "seed {seed}: the run exercised redeliveries and dead letters"
    );
}

#[test]
fn random_operations_keep_the_delivery_invariants() {
    for i in 1..=40u64 {
        random_run(i.wrapping_mul(0x9E37_79B9_7F4A_7C15), i % 2 == 0);
    }
}
