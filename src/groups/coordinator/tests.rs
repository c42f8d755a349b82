//! Coordinator tests, with a fake clock (plain `now` values).

use super::*;
use crate::groups::assignment::Strategy;

const SESSION: u64 = 1_000;
const REBALANCE: u64 = 300;

fn config(strategy: Strategy) -> GroupConfig {
    GroupConfig {
        strategy,
        rebalance_timeout_ms: REBALANCE,
        min_session_timeout_ms: 1,
        ..GroupConfig::default()
    }
}

fn queues(topic: &str, n: u32) -> Vec<MessageQueue> {
    (0..n).map(|i| MessageQueue::new(topic, "b", i)).collect()
}

/// A group knowing topic "t" with 8 queues.
fn group_with(config: GroupConfig) -> GroupState {
    let mut g = GroupState::new("g", config);
    assert!(g.set_topic_queues("t", queues("t", 8), 0).is_empty());
    g
}

fn group(strategy: Strategy) -> GroupState {
    group_with(config(strategy))
}

fn req(member: Option<&str>, client: &str, topics: &[&str], request_id: u64) -> JoinRequest {
    JoinRequest {
        member_id: member.map(str::to_string),
        client_id: client.to_string(),
        topics: topics.iter().map(|t| t.to_string()).collect(),
        session_timeout_ms: SESSION,
        request_id,
    }
}

/// A new member joining topic "t".
fn join_new(g: &mut GroupState, client: &str, request_id: u64, now: u64) -> Vec<Effect> {
    g.join(req(None, client, &["t"], request_id), now).unwrap()
}

/// A known member rejoining topic "t".
fn rejoin(g: &mut GroupState, member: &str, request_id: u64, now: u64) -> Vec<Effect> {
    g.join(req(Some(member), "x", &["t"], request_id), now).unwrap()
}

/// Join replies by request id: (member, generation, queue ids).
fn replies(effects: &[Effect]) -> BTreeMap<u64, (String, u64, Vec<u32>)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::JoinReply {
                request_id,
                member_id,
                generation,
                assignment,
            } => Some((
                *request_id,
                (
                    member_id.clone(),
                    *generation,
                    assignment.iter().map(|q| q.queue_id).collect(),
                ),
            )),
            _ => None,
        })
        .collect()
}

fn notified(effects: &[Effect]) -> Vec<&str> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::NotifyRebalance { member_id } => Some(member_id.as_str()),
            _ => None,
        })
        .collect()
}

fn removed(effects: &[Effect]) -> Vec<(&str, RemovalReason)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::MemberRemoved { member_id, reason, .. } => Some((member_id.as_str(), *reason)),
            _ => None,
        })
        .collect()
}

fn queue_ids(g: &GroupState, member: &str) -> Vec<u32> {
    g.assignment()[member].iter().map(|q| q.queue_id).collect()
}

/// A stable range group with members a-1, b-2, c-3 (3/3/2) at generation 3.
fn stable_three(strategy: Strategy) -> GroupState {
    let mut g = group(strategy);
    join_new(&mut g, "a", 1, 0);
    join_new(&mut g, "b", 2, 0);
    rejoin(&mut g, "a-1", 3, 0);
    join_new(&mut g, "c", 4, 0);
    rejoin(&mut g, "a-1", 5, 0);
    let effects = rejoin(&mut g, "b-2", 6, 0);
    assert_eq!(replies(&effects).len(), 3);
    assert_eq!((g.phase(), g.generation()), (GroupPhase::Stable, 3));
    g
}

#[test]
fn first_member_join_gets_generation_1_with_all_queues() {
    let mut g = group(Strategy::Range);
    assert_eq!(
        (g.phase(), g.generation(), g.next_deadline()),
        (GroupPhase::Empty, 0, None)
    );
    let effects = join_new(&mut g, "a", 7, 10);
    assert_eq!(replies(&effects), [(7, ("a-1".into(), 1, (0..8).collect()))].into());
    assert!(matches!(effects.last(), Some(Effect::Rebalanced { generation: 1, .. })));
    assert_eq!(g.phase(), GroupPhase::Stable);
    assert_eq!(g.sync("a-1", 1).unwrap().len(), 8);
    assert_eq!(g.heartbeat("a-1", 1, 20), Ok(HeartbeatOutcome::Stable));
}

#[test]
fn three_members_in_the_initial_window_get_3_3_2() {
    let mut g = group_with(GroupConfig {
        initial_rebalance_delay_ms: 50,
        ..config(Strategy::Range)
    });
    assert!(join_new(&mut g, "a", 1, 0).is_empty());
    assert_eq!(g.phase(), GroupPhase::PreparingRebalance);
    assert!(join_new(&mut g, "b", 2, 10).is_empty());
    assert!(join_new(&mut g, "c", 3, 20).is_empty());
    // Everyone is in; the window still waits for the initial delay.
    assert_eq!(g.next_deadline(), Some(50));
    assert!(g.tick(49).is_empty());
    let r = replies(&g.tick(50));
    assert_eq!(r[&1], ("a-1".into(), 1, vec![0, 1, 2]));
    assert_eq!(r[&2], ("b-2".into(), 1, vec![3, 4, 5]));
    assert_eq!(r[&3], ("c-3".into(), 1, vec![6, 7]));
    assert_eq!(g.phase(), GroupPhase::Stable);
}

#[test]
fn three_members_gathered_by_one_rebalance_get_3_3_2() {
    let mut g = group(Strategy::RoundRobin);
    join_new(&mut g, "a", 1, 0);
    let effects = join_new(&mut g, "b", 2, 5);
    assert_eq!(notified(&effects), ["a-1"]);
    assert!(
        join_new(&mut g, "c", 3, 6).is_empty(),
        "no second notice while the window is open"
    );
    let r = replies(&rejoin(&mut g, "a-1", 4, 7));
    assert_eq!(r[&4], ("a-1".into(), 2, vec![0, 3, 6]));
    assert_eq!(r[&2], ("b-2".into(), 2, vec![1, 4, 7]));
    assert_eq!(r[&3], ("c-3".into(), 2, vec![2, 5]));
}

#[test]
fn fourth_member_joining_a_stable_group_notifies_the_others() {
    let mut g = stable_three(Strategy::Range);
    let effects = join_new(&mut g, "d", 10, 100);
    assert_eq!(notified(&effects), ["a-1", "b-2", "c-3"]);
    assert!(replies(&effects).is_empty());
    assert_eq!(g.phase(), GroupPhase::PreparingRebalance);
    assert_eq!(g.heartbeat("b-2", 3, 101), Ok(HeartbeatOutcome::RebalanceInProgress));
    assert_eq!(g.sync("b-2", 3), Err(GroupError::RebalanceInProgress));
    assert!(replies(&rejoin(&mut g, "a-1", 11, 102)).is_empty());
    assert!(replies(&rejoin(&mut g, "b-2", 12, 103)).is_empty());
    let effects = rejoin(&mut g, "c-3", 13, 104);
    let r = replies(&effects);
    assert_eq!(r.len(), 4);
    assert!(r.values().all(|(_, generation, qs)| *generation == 4 && qs.len() == 2));
    assert_eq!(r[&10].0, "d-4");
    assert_eq!(g.phase(), GroupPhase::Stable);
    assert!(matches!(effects.last(), Some(Effect::Rebalanced { generation: 4, assignment }) if assignment.len() == 4));
}

#[test]
fn member_death_via_tick_rebalances_the_survivors() {
    let mut g = stable_three(Strategy::Range);
    g.heartbeat("a-1", 3, 600).unwrap();
    g.heartbeat("b-2", 3, 700).unwrap();
    // c-3 last heard of at 0 (its join reply).
    assert_eq!(g.next_deadline(), Some(SESSION));
    assert!(g.tick(SESSION - 1).is_empty());
    let effects = g.tick(SESSION);
    assert_eq!(removed(&effects), [("c-3", RemovalReason::SessionExpired)]);
    assert_eq!(notified(&effects), ["a-1", "b-2"]);
    assert_eq!(g.heartbeat("c-3", 3, SESSION), Err(GroupError::UnknownMember));
    rejoin(&mut g, "a-1", 20, SESSION + 1);
    let r = replies(&rejoin(&mut g, "b-2", 21, SESSION + 2));
    assert_eq!(r[&20], ("a-1".into(), 4, vec![0, 1, 2, 3]));
    assert_eq!(r[&21], ("b-2".into(), 4, vec![4, 5, 6, 7]));
}

#[test]
fn death_during_a_rebalance_closes_the_window_early() {
    let mut g = group_with(GroupConfig {
        rebalance_timeout_ms: 5_000,
        ..config(Strategy::Range)
    });
    join_new(&mut g, "a", 1, 0);
    let effects = join_new(&mut g, "b", 2, 500);
    assert_eq!(notified(&effects), ["a-1"]);
    // a-1 never rejoins; its session ends long before the window's deadline.
    assert_eq!(g.next_deadline(), Some(SESSION));
    let effects = g.tick(SESSION);
    assert_eq!(removed(&effects), [("a-1", RemovalReason::SessionExpired)]);
    assert_eq!(replies(&effects), [(2, ("b-2".into(), 2, (0..8).collect()))].into());
    assert_eq!(g.phase(), GroupPhase::Stable);
}

#[test]
fn graceful_leave_rebalances_at_once() {
    let mut g = stable_three(Strategy::Range);
    let effects = g.leave("b-2", 50).unwrap();
    assert_eq!(removed(&effects), [("b-2", RemovalReason::Left)]);
    assert_eq!(notified(&effects), ["a-1", "c-3"]);
    rejoin(&mut g, "a-1", 30, 51);
    let r = replies(&rejoin(&mut g, "c-3", 31, 51));
    assert_eq!(r[&30], ("a-1".into(), 4, vec![0, 1, 2, 3]));
    assert_eq!(r[&31], ("c-3".into(), 4, vec![4, 5, 6, 7]));
    assert_eq!(g.leave("b-2", 52), Err(GroupError::UnknownMember));
}

#[test]
fn last_member_leaving_empties_the_group() {
    let mut g = group(Strategy::Range);
    join_new(&mut g, "a", 1, 0);
    let effects = g.leave("a-1", 10).unwrap();
    assert_eq!(g.phase(), GroupPhase::Empty);
    assert!(matches!(effects.last(), Some(Effect::Rebalanced { generation: 2, assignment }) if assignment.is_empty()));
    assert_eq!(g.next_deadline(), None);
    assert!(g.is_empty());
}

#[test]
fn leaving_with_a_parked_join_fails_that_join() {
    let mut g = stable_three(Strategy::Range);
    join_new(&mut g, "d", 40, 10);
    rejoin(&mut g, "a-1", 41, 11);
    let effects = g.leave("a-1", 12).unwrap();
    assert!(effects.contains(&Effect::JoinFailed {
        request_id: 41,
        member_id: "a-1".into(),
        error: GroupError::UnknownMember,
    }));
    assert!(notified(&effects).is_empty(), "the window is already open");
    rejoin(&mut g, "b-2", 42, 13);
    let r = replies(&rejoin(&mut g, "c-3", 43, 13));
    assert_eq!(r.keys().copied().collect::<Vec<_>>(), [40, 42, 43]);
}

#[test]
fn stale_generation_and_unknown_member_are_refused() {
    let mut g = stable_three(Strategy::Range);
    assert_eq!(
        g.heartbeat("a-1", 2, 5),
        Err(GroupError::IllegalGeneration { current: 3 })
    );
    assert_eq!(g.sync("a-1", 2), Err(GroupError::IllegalGeneration { current: 3 }));
    assert_eq!(g.heartbeat("zz-9", 3, 5), Err(GroupError::UnknownMember));
    assert_eq!(g.sync("zz-9", 3), Err(GroupError::UnknownMember));
    assert_eq!(
        g.join(req(Some("zz-9"), "zz", &["t"], 1), 5),
        Err(GroupError::UnknownMember)
    );
    assert_eq!(g.sync("a-1", 3).unwrap().len(), 3);
    // A refused heartbeat does not keep a stale member alive.
    g.heartbeat("b-2", 3, 500).unwrap();
    g.heartbeat("c-3", 3, 500).unwrap();
    let effects = g.tick(SESSION);
    assert_eq!(removed(&effects), [("a-1", RemovalReason::SessionExpired)]);
    assert!(GroupError::IllegalGeneration { current: 3 }
        .to_string()
        .contains("generation 3"));
}

#[test]
fn join_requests_are_validated() {
    let mut g = group(Strategy::Range);
    let mut bad = req(None, "a", &["t"], 1);
    bad.session_timeout_ms = 0;
    assert!(matches!(g.join(bad, 0), Err(GroupError::InvalidRequest(m)) if m.contains("session timeout 0 ms")));
    assert!(matches!(
        g.join(req(None, "", &["t"], 1), 0),
        Err(GroupError::InvalidRequest(_))
    ));
    assert!(g.is_empty());
}

#[test]
fn broadcasting_gives_every_member_all_queues() {
    let mut g = group_with(GroupConfig {
        mode: ConsumeMode::Broadcasting,
        ..config(Strategy::Range)
    });
    g.set_topic_queues("u", queues("u", 2), 0);
    join_new(&mut g, "a", 1, 0);
    join_new(&mut g, "b", 2, 0);
    let effects = g.join(req(Some("a-1"), "a", &["t", "u"], 3), 0).unwrap();
    let r = replies(&effects);
    assert_eq!(r[&3].2.len(), 10, "t and u");
    assert_eq!(r[&2].2, (0..8).collect::<Vec<_>>());
}

#[test]
fn sticky_coordinator_keeps_untouched_members_queues_on_leave() {
    let mut g = stable_three(Strategy::Sticky);
    let before = g.assignment().clone();
    g.leave("b-2", 10).unwrap();
    rejoin(&mut g, "a-1", 50, 11);
    rejoin(&mut g, "c-3", 51, 11);
    for m in ["a-1", "c-3"] {
        assert!(
            before[m].iter().all(|q| g.assignment()[m].contains(q)),
            "{m} kept its queues"
        );
    }
    // Three generations of sticky history: a-1 had q0..q2, b-2 q4..q6, c-3 q3 q7.
    assert_eq!(before["b-2"].iter().map(|q| q.queue_id).collect::<Vec<_>>(), [4, 5, 6]);
    assert_eq!(queue_ids(&g, "a-1"), [0, 1, 2, 4]);
    assert_eq!(queue_ids(&g, "c-3"), [3, 5, 6, 7]);
}

#[test]
fn join_window_timeout_removes_a_member_that_never_rejoined() {
    let mut g = stable_three(Strategy::Range);
    join_new(&mut g, "d", 60, 100);
    rejoin(&mut g, "a-1", 61, 110);
    rejoin(&mut g, "b-2", 62, 120);
    // c-3 keeps heartbeating but never rejoins.
    assert_eq!(g.heartbeat("c-3", 3, 200), Ok(HeartbeatOutcome::RebalanceInProgress));
    assert_eq!(g.next_deadline(), Some(100 + REBALANCE));
    assert!(g.tick(100 + REBALANCE - 1).is_empty());
    let effects = g.tick(100 + REBALANCE);
    assert_eq!(removed(&effects), [("c-3", RemovalReason::MissedRebalance)]);
    let r = replies(&effects);
    assert_eq!(r.keys().copied().collect::<Vec<_>>(), [60, 61, 62]);
    assert_eq!(r[&61], ("a-1".into(), 4, vec![0, 1, 2]));
    assert_eq!(r[&60], ("d-4".into(), 4, vec![6, 7]));
}

#[test]
fn next_deadline_tracks_sessions_and_the_window() {
    let mut g = group(Strategy::Range);
    join_new(&mut g, "a", 1, 0);
    assert_eq!(g.next_deadline(), Some(SESSION));
    g.heartbeat("a-1", 1, 400).unwrap();
    assert_eq!(g.next_deadline(), Some(400 + SESSION));
    // The window closes before a-1's session ends.
    join_new(&mut g, "b", 2, 900);
    assert_eq!(g.next_deadline(), Some(900 + REBALANCE));
    // Parked members do not expire; the window is all that is left.
    rejoin(&mut g, "a-1", 3, 1_000);
    assert_eq!(g.phase(), GroupPhase::Stable);
    assert_eq!(g.next_deadline(), Some(1_000 + SESSION));
    let mut g = group_with(GroupConfig {
        rebalance_timeout_ms: 5_000,
        ..config(Strategy::Range)
    });
    join_new(&mut g, "a", 1, 0);
    join_new(&mut g, "b", 2, 100);
    assert_eq!(g.next_deadline(), Some(SESSION), "a-1's session ends first");
    assert!(g.tick(SESSION - 1).is_empty());
}

#[test]
fn parked_members_do_not_expire() {
    let mut g = group_with(GroupConfig {
        rebalance_timeout_ms: 5_000,
        ..config(Strategy::Range)
    });
    join_new(&mut g, "a", 1, 0);
    join_new(&mut g, "b", 2, 0);
    // b-2 is parked from 0 and silent; only a-1, which did not rejoin, expires.
    let effects = g.tick(SESSION + 500);
    assert_eq!(removed(&effects), [("a-1", RemovalReason::SessionExpired)]);
    assert_eq!(replies(&effects)[&2], ("b-2".into(), 2, (0..8).collect()));
}

#[test]
fn topic_queue_changes_trigger_a_rebalance() {
    let mut g = stable_three(Strategy::Range);
    assert!(g.set_topic_queues("t", queues("t", 8), 10).is_empty(), "unchanged");
    assert!(
        g.set_topic_queues("other", queues("other", 4), 10).is_empty(),
        "nobody subscribes"
    );
    let effects = g.set_topic_queues("t", queues("t", 9), 20);
    assert_eq!(notified(&effects), ["a-1", "b-2", "c-3"]);
    rejoin(&mut g, "a-1", 70, 21);
    rejoin(&mut g, "b-2", 71, 21);
    let r = replies(&rejoin(&mut g, "c-3", 72, 21));
    assert!(r.values().all(|(_, generation, qs)| *generation == 4 && qs.len() == 3));
    // Forgetting the topic takes every queue away.
    let effects = g.set_topic_queues("t", Vec::new(), 30);
    assert_eq!(notified(&effects).len(), 3);
}

#[test]
fn rejoin_of_a_stable_member_with_the_same_topics_is_answered_at_once() {
    let mut g = stable_three(Strategy::Range);
    let effects = rejoin(&mut g, "b-2", 80, 10);
    assert_eq!(replies(&effects), [(80, ("b-2".into(), 3, vec![3, 4, 5]))].into());
    assert_eq!(g.phase(), GroupPhase::Stable);
    // Changed topics rebalance.
    let effects = g.join(req(Some("b-2"), "b", &["t", "u"], 81), 11).unwrap();
    assert_eq!(notified(&effects), ["a-1", "c-3"]);
    assert_eq!(g.subscribed_topics().len(), 2);
}

#[test]
fn a_retried_join_supersedes_the_parked_one() {
    let mut g = stable_three(Strategy::Range);
    join_new(&mut g, "d", 90, 0);
    rejoin(&mut g, "a-1", 91, 1);
    let effects = rejoin(&mut g, "a-1", 92, 2);
    assert!(matches!(
        &effects[..],
        [Effect::JoinFailed {
            request_id: 91,
            error: GroupError::InvalidRequest(_),
            ..
        }]
    ));
    rejoin(&mut g, "b-2", 93, 3);
    let r = replies(&rejoin(&mut g, "c-3", 94, 3));
    assert_eq!(r.keys().copied().collect::<Vec<_>>(), [90, 92, 93, 94]);
}

#[test]
fn describe_reports_members_and_serialises() {
    let mut g = stable_three(Strategy::Sticky);
    g.heartbeat("a-1", 3, 40).unwrap();
    join_new(&mut g, "d", 1, 50);
    let d = g.describe(100);
    assert_eq!(
        (d.state, d.generation, d.rebalance_deadline_ms),
        (GroupPhase::PreparingRebalance, 3, Some(50 + REBALANCE))
    );
    assert_eq!(d.members.len(), 4);
    assert_eq!(d.members[0].last_heartbeat_age_ms, 60);
    assert_eq!(d.members[0].assignment.len(), 3);
    assert!(d.members[3].rejoined && d.members[3].assignment.is_empty());
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(json["strategy"], "sticky");
    assert_eq!(json["mode"], "clustering");
    assert_eq!(json["state"], "PreparingRebalance");
    assert_eq!(json["members"][0]["assignment"][0]["queue_id"], 0);
}

/// Checks that every parked join is answered exactly once.
fn settle(outstanding: &mut BTreeSet<u64>, effects: &[Effect]) {
    for e in effects {
        if let Effect::JoinReply { request_id, .. } | Effect::JoinFailed { request_id, .. } = e {
            assert!(
                outstanding.remove(request_id),
                "request {request_id} answered twice or never parked"
            );
        }
    }
}

#[test]
fn random_inputs_keep_the_invariants() {
    for strategy in [Strategy::Range, Strategy::RoundRobin, Strategy::Sticky] {
        let mut g = group(strategy);
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let (mut now, mut request_id) = (0u64, 0u64);
        let mut outstanding = BTreeSet::new();
        for _ in 0..3_000 {
            now += next(150);
            request_id += 1;
            let members: Vec<MemberId> = g.describe(now).members.into_iter().map(|m| m.member_id).collect();
            let pick = |i: u64| members.get(i as usize % members.len().max(1)).cloned();
            let effects = match next(7) {
                0 if members.len() < 6 => {
                    let topics: &[&str] = if next(2) == 0 { &["t"] } else { &["t", "u"] };
                    let effects = g.join(req(None, "c", topics, request_id), now).unwrap();
                    outstanding.insert(request_id);
                    effects
                }
                1 | 2 => match pick(next(8)) {
                    Some(m) => {
                        let effects = g.join(req(Some(&m), "c", &["t"], request_id), now).unwrap();
                        outstanding.insert(request_id);
                        effects
                    }
                    None => Vec::new(),
                },
                3 => {
                    if let Some(m) = pick(next(8)) {
                        let _ = g.heartbeat(&m, g.generation(), now);
                    }
                    Vec::new()
                }
                4 if next(4) == 0 => pick(next(8)).map(|m| g.leave(&m, now).unwrap()).unwrap_or_default(),
                5 if next(8) == 0 => {
                    let topic = if next(2) == 0 { "t" } else { "u" };
                    g.set_topic_queues(topic, queues(topic, next(10) as u32), now)
                }
                _ => Vec::new(),
            };
            settle(&mut outstanding, &effects);
            // Nothing is due before the announced deadline.
            if let Some(deadline) = g.next_deadline() {
                if deadline > now + 1 {
                    assert!(g.tick(deadline - 1).is_empty());
                }
            }
            settle(&mut outstanding, &g.tick(now));
            if g.phase() == GroupPhase::Stable {
                assert!(outstanding.is_empty(), "parked joins left in a stable group");
                let a = g.assignment();
                assert_eq!(a.len(), g.describe(now).members.len());
                let mut all: Vec<&MessageQueue> = a.values().flatten().collect();
                let n = all.len();
                all.sort();
                all.dedup();
                assert_eq!(all.len(), n, "a queue assigned twice");
            }
        }
        // Left alone, every window closes and every join is answered.
        while g.phase() == GroupPhase::PreparingRebalance {
            let deadline = g.next_deadline().unwrap();
            now = now.max(deadline);
            settle(&mut outstanding, &g.tick(now));
        }
        assert!(outstanding.is_empty());
        assert!(
            g.generation() > 100,
            "the run went through many rebalances: {}",
            g.generation()
        );
    }
}
