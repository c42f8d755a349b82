//! The cursor's rules, driven by a fake clock (plain millisecond numbers).

use super::*;

fn policy() -> RetryPolicy {
    RetryPolicy {
        backoff_ms: vec![100, 200, 400],
        max_retries: 3,
        max_unsettled: 1_000,
    }
}

fn offsets(claims: &[Claim]) -> Vec<u64> {
    claims.iter().map(|c| c.offset).collect()
}

#[test]
fn committed_offset_never_passes_an_unsettled_message() {
    let p = policy();
    let mut c = Cursor::new(10);
    let got = c.claim(0, 5, 100, 1_000, false, &p);
    assert_eq!(offsets(&got), [10, 11, 12, 13, 14]);
    assert!(got.iter().all(|g| g.delivery == 1));
    assert!(c.ack(12) && c.ack(14));
    assert_eq!(c.committed(), 10, "10 and 11 are still in flight");
    assert!(c.ack(10));
    assert_eq!(c.committed(), 11);
    assert!(c.ack(11));
    assert_eq!(c.committed(), 13);
    assert!(!c.ack(11), "a second ack changes nothing");
    assert!(!c.ack(50), "never delivered");
    assert!(c.ack(13));
    assert_eq!(c.committed(), 15);
    assert_eq!(c.stats().in_flight, 0);
}

#[test]
fn nack_with_requeue_redelivers_after_the_backoff_with_its_count() {
    let p = policy();
    let mut c = Cursor::new(0);
    c.claim(0, 1, 10, 1_000, false, &p);
    assert_eq!(c.nack(0, true, 50, &p), Some(Ok(())));
    assert_eq!(c.nack(0, true, 50, &p), None, "no longer in flight");
    // Not before 50 + 100; the next new message goes meanwhile.
    assert_eq!(offsets(&c.claim(149, 1, 10, 1_000, false, &p)), [1]);
    assert_eq!(
        c.next_wakeup(149),
        Some(150),
        "the retry comes before the ack deadline of 1"
    );
    let again = c.claim(150, 1, 10, 1_000, false, &p);
    assert_eq!(again, [Claim { offset: 0, delivery: 2 }]);
    // Second failure waits 200, third 400.
    c.nack(0, true, 200, &p);
    assert!(c.claim(399, 8, 2, 1_000, false, &p).is_empty());
    assert_eq!(c.claim(400, 8, 2, 1_000, false, &p), [Claim { offset: 0, delivery: 3 }]);
    assert_eq!(c.committed(), 0);
}

#[test]
fn retries_run_out_into_the_dead_letter_topic() {
    let p = policy();
    let mut c = Cursor::new(0);
    let mut now = 0;
    for delivery in 1..=4 {
        let got = c.claim(now, 1, 1, 1_000, false, &p);
        assert_eq!(got, [Claim { offset: 0, delivery }]);
        let r = c.nack(0, true, now, &p).unwrap();
        if delivery <= 3 {
            assert_eq!(r, Ok(()));
        } else {
            assert_eq!(
                r,
                Err(DeadLetter {
                    offset: 0,
                    deliveries: 4,
                    reason: DeadLetterReason::MaxDeliveries
                })
            );
        }
        now += 10_000;
    }
    assert!(c.claim(now, 1, 1, 1_000, false, &p).is_empty(), "being dead-lettered");
    assert_eq!(c.committed(), 0, "not settled until the copy is stored");
    assert_eq!(c.dead_lettering(), [(0, 4)]);
    c.dead_lettered(0);
    assert_eq!(c.committed(), 1);
}

#[test]
fn nack_without_requeue_dead_letters_at_once() {
    let p = policy();
    let mut c = Cursor::new(0);
    c.claim(0, 2, 2, 1_000, false, &p);
    let dl = c.nack(1, false, 5, &p).unwrap().unwrap_err();
    assert_eq!(dl.reason, DeadLetterReason::Rejected);
    assert_eq!(dl.deliveries, 1);
    c.dead_lettered(1);
    assert!(c.ack(0));
    assert_eq!(c.committed(), 2);
}

#[test]
fn an_expired_ack_deadline_redelivers_at_once_and_counts() {
    let p = policy();
    let mut c = Cursor::new(0);
    c.claim(0, 3, 3, 1_000, false, &p);
    c.ack(1);
    assert_eq!(c.next_wakeup(0), Some(1_000));
    assert!(c.expire_deadlines(999, &p).is_empty());
    assert!(c.claim(999, 8, 3, 1_000, false, &p).is_empty());
    assert!(c.expire_deadlines(1_000, &p).is_empty());
    let again = c.claim(1_000, 8, 3, 1_000, false, &p);
    assert_eq!(
        again,
        [Claim { offset: 0, delivery: 2 }, Claim { offset: 2, delivery: 2 }]
    );
    // A late ack of a redelivered message still settles it.
    assert!(c.ack(0) && c.ack(2));
    assert_eq!(c.committed(), 3);
}

#[test]
fn timeouts_also_run_out_of_retries() {
    let p = policy();
    let mut c = Cursor::new(0);
    let mut now = 0;
    let mut dead = Vec::new();
    while dead.is_empty() {
        c.claim(now, 1, 1, 100, false, &p);
        now += 100;
        dead = c.expire_deadlines(now, &p);
    }
    assert_eq!(dead[0].reason, DeadLetterReason::MaxDeliveries);
    assert_eq!(dead[0].deliveries, 4);
}

#[test]
fn orderly_mode_delivers_one_at_a_time_and_retries_in_place() {
    let p = policy();
    let mut c = Cursor::new(0);
    assert_eq!(offsets(&c.claim(0, 8, 5, 1_000, true, &p)), [0]);
    assert!(c.claim(0, 8, 5, 1_000, true, &p).is_empty(), "0 is unsettled");
    assert!(!c.has_ready(0, 5, true, &p));
    c.ack(0);
    assert!(c.has_ready(0, 5, true, &p));
    assert_eq!(offsets(&c.claim(0, 8, 5, 1_000, true, &p)), [1]);
    c.nack(1, true, 10, &p);
    assert!(
        c.claim(109, 8, 5, 1_000, true, &p).is_empty(),
        "1 waits its backoff; 2 may not overtake it"
    );
    assert_eq!(c.claim(110, 8, 5, 1_000, true, &p), [Claim { offset: 1, delivery: 2 }]);
    // A consumer dies holding 1: it comes back after the ack timeout, first.
    c.expire_deadlines(1_110, &p);
    assert_eq!(
        c.claim(1_110, 8, 5, 1_000, true, &p),
        [Claim { offset: 1, delivery: 3 }]
    );
    c.ack(1);
    assert_eq!(offsets(&c.claim(1_111, 8, 5, 1_000, true, &p)), [2]);
}

#[test]
fn ttl_expiry_dead_letters_waiting_and_undelivered_messages_only() {
    let p = policy();
    let mut c = Cursor::new(0);
    c.claim(0, 2, 10, 1_000, false, &p);
    c.nack(1, true, 0, &p);
    assert_eq!(c.expire(0), None, "in a consumer's hands");
    assert_eq!(c.expire(1).map(|d| d.reason), Some(DeadLetterReason::Expired));
    // Ahead of the cursor: never delivered.
    let ahead = c.expire(5).unwrap();
    assert_eq!((ahead.offset, ahead.deliveries), (5, 0));
    c.dead_lettered(5);
    let got = c.claim(0, 10, 10, 1_000, false, &p);
    assert_eq!(offsets(&got), [2, 3, 4, 6, 7, 8, 9]);
    c.dead_lettered(1);
    for o in [0, 2, 3, 4, 6, 7, 8, 9] {
        c.ack(o);
    }
    assert_eq!(c.committed(), 10);
    assert_eq!(c.expire(3), None, "already settled");
}

#[test]
fn claimed_messages_can_be_skipped_or_turned_into_dead_letters() {
    let p = policy();
    let mut c = Cursor::new(0);
    c.claim(0, 3, 3, 1_000, false, &p);
    c.skip(0);
    let dl = c.reject_claim(1, DeadLetterReason::Expired).unwrap();
    assert_eq!(dl.deliveries, 0, "it was never really delivered");
    assert_eq!(c.committed(), 1);
    c.dead_lettered(1);
    c.ack(2);
    assert_eq!(c.committed(), 3);
}

#[test]
fn the_unsettled_window_bounds_what_is_claimed() {
    let p = RetryPolicy {
        max_unsettled: 4,
        ..policy()
    };
    let mut c = Cursor::new(0);
    assert_eq!(c.claim(0, 100, 100, 1_000, false, &p).len(), 4);
    assert!(!c.has_ready(0, 100, false, &p));
    c.ack(1);
    assert!(
        c.claim(0, 100, 100, 1_000, false, &p).is_empty(),
        "0 still holds the window"
    );
    c.ack(0);
    assert_eq!(offsets(&c.claim(0, 100, 100, 1_000, false, &p)), [4, 5]);
}

/// Random acks, nacks, timeouts and expiries never lose a message: each
/// offset ends acknowledged or dead-lettered exactly once, and the committed
/// offset reaches the end.
#[test]
fn random_runs_settle_every_message_exactly_once() {
    let p = policy();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for _ in 0..50 {
        let max = 200;
        let mut c = Cursor::new(0);
        let mut now = 0;
        let mut held: Vec<u64> = Vec::new();
        let mut done = vec![0u32; max as usize];
        for _ in 0..20_000 {
            now += rand(50);
            for dl in c.expire_deadlines(now, &p) {
                c.dead_lettered(dl.offset);
                done[dl.offset as usize] += 1;
            }
            for claim in c.claim(now, rand(4) as usize, max, 300, rand(5) == 0, &p) {
                held.push(claim.offset);
            }
            if !held.is_empty() {
                let o = held.swap_remove(rand(held.len() as u64) as usize);
                match rand(10) {
                    0..=5 if c.ack(o) => done[o as usize] += 1,
                    0..=5 => {}
                    6 | 7 => {
                        if let Some(Err(dl)) = c.nack(o, rand(4) != 0, now, &p) {
                            c.dead_lettered(dl.offset);
                            done[dl.offset as usize] += 1;
                        }
                    }
                    _ => {} // dropped: the ack deadline will fire
                }
            }
            if rand(50) == 0 {
                if let Some(dl) = c.expire(rand(max)) {
                    c.dead_lettered(dl.offset);
                    done[dl.offset as usize] += 1;
                }
            }
            if c.committed() == max {
                break;
            }
        }
        assert_eq!(c.committed(), max, "stats: {:?}", c.stats());
        assert!(done.iter().all(|&d| d == 1), "settled counts: {done:?}");
    }
}

#[test]
fn skip_below_forgets_what_retention_deleted_and_continues_from_the_min() {
    let p = policy();
    let mut c = Cursor::new(0);
    let got = c.claim(0, 5, 100, 1_000, false, &p);
    assert_eq!(offsets(&got), [0, 1, 2, 3, 4]);
    assert!(c.ack(3));
    assert_eq!(c.skip_below(8), 3, "5, 6 and 7 were never delivered");
    assert_eq!(c.committed(), 8);
    assert_eq!(c.stats().in_flight, 0);
    assert!(!c.ack(1), "forgotten");
    assert_eq!(offsets(&c.claim(0, 2, 100, 1_000, false, &p)), [8, 9]);
    assert_eq!(c.skip_below(8), 0, "nothing below any more");
    assert_eq!(c.skip_below(5), 0);
}
