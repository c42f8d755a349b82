//! Queue-assignment strategies: which member of a consumer group consumes
//! which queue.
//!
//! Pure, deterministic functions: members and queues are sorted (and
//! deduplicated) first, so the result depends only on the sets given, never
//! on their order. Every member appears in the result (possibly with no
//! queue) and, when there is at least one member, every queue is assigned to
//! exactly one member. Each member's list is sorted.
//!
//! Mappings for 8 queues `q0..q7` and 3 members `m0 < m1 < m2`:
//!
//! | strategy | m0 | m1 | m2 |
//! |---|---|---|---|
//! | [`Strategy::Range`] | q0 q1 q2 | q3 q4 q5 | q6 q7 |
//! | [`Strategy::RoundRobin`] | q0 q3 q6 | q1 q4 q7 | q2 q5 |
//! | [`Strategy::Sticky`], no history | q0 q1 q2 | q3 q4 q5 | q6 q7 |

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use serde::Serialize;

/// A group member's id (assigned by the coordinator).
pub type MemberId = String;

/// Queues per member: the output of every strategy.
pub type Assignment = BTreeMap<MemberId, Vec<MessageQueue>>;

/// One queue of a topic on one broker group.
///
/// Ordered by topic, then broker name, then queue id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct MessageQueue {
    /// Topic the queue belongs to.
    pub topic: String,
    /// Broker group serving the queue.
    pub broker_name: String,
    /// Queue id within the topic on that broker.
    pub queue_id: u32,
}

impl MessageQueue {
    /// A queue of `topic` on `broker_name`.
    pub fn new(topic: impl Into<String>, broker_name: impl Into<String>, queue_id: u32) -> MessageQueue {
        MessageQueue {
            topic: topic.into(),
            broker_name: broker_name.into(),
            queue_id,
        }
    }
}

impl fmt::Display for MessageQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.topic, self.broker_name, self.queue_id)
    }
}

/// How queues are spread over the members of a group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// RocketMQ "average": with `q` queues and `n` members (both sorted),
    /// member `i` gets a contiguous block; the first `q % n` members get
    /// `q / n + 1` queues, the others `q / n`. 8 queues, 3 members:
    /// m0 = q0..q2, m1 = q3..q5, m2 = q6..q7.
    #[default]
    Range,
    /// RocketMQ "circle": queue `i` (sorted) goes to member `i % n`.
    /// 8 queues, 3 members: m0 = q0 q3 q6, m1 = q1 q4 q7, m2 = q2 q5.
    RoundRobin,
    /// Balanced like [`Strategy::Range`] (each member gets `q / n` or
    /// `q / n + 1`, exactly `q % n` members get the larger share), then as
    /// few queues as possible move relative to the previous assignment.
    /// Without history it equals [`Strategy::Range`].
    Sticky,
}

impl Strategy {
    /// The strategy's name as parsed and displayed.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Range => "range",
            Strategy::RoundRobin => "round-robin",
            Strategy::Sticky => "sticky",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A strategy name that is none of "range", "round-robin" or "sticky".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown assignment strategy {0:?} (expected range, round-robin or sticky)")]
pub struct UnknownStrategy(pub String);

impl FromStr for Strategy {
    type Err = UnknownStrategy;

    /// Parses "range", "round-robin" or "sticky", ignoring ASCII case.
    fn from_str(s: &str) -> Result<Strategy, UnknownStrategy> {
        [Strategy::Range, Strategy::RoundRobin, Strategy::Sticky]
            .into_iter()
            .find(|strategy| strategy.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownStrategy(s.to_string()))
    }
}

/// Assigns `queues` to `members` with `strategy`.
///
/// `previous` (the last assignment; only [`Strategy::Sticky`] reads it) may
/// name members and queues that no longer exist: they are ignored. With no
/// member the result is empty.
pub fn assign(strategy: Strategy, members: &[MemberId], queues: &[MessageQueue], previous: &Assignment) -> Assignment {
    let members: Vec<&MemberId> = members.iter().collect::<BTreeSet<_>>().into_iter().collect();
    let queues: Vec<&MessageQueue> = queues.iter().collect::<BTreeSet<_>>().into_iter().collect();
    assign_sorted(strategy, &members, &queues, previous, &BTreeMap::new())
}

/// Assigns each topic's queues among the members subscribed to it, one
/// topic at a time (topics in name order), with `strategy`.
///
/// Every member of `subscriptions` appears in the result. Queues of a topic
/// nobody subscribes to stay unassigned. Per-topic application means Range
/// and RoundRobin favour the lowest member ids when many topics have fewer
/// queues than subscribers; Sticky instead gives a topic's extra queues
/// (after stickiness) to the members holding the fewest queues so far, which
/// keeps the totals balanced across topics too.
pub fn assign_by_subscription(
    strategy: Strategy,
    subscriptions: &BTreeMap<MemberId, BTreeSet<String>>,
    queues_by_topic: &BTreeMap<String, Vec<MessageQueue>>,
    previous: &Assignment,
) -> Assignment {
    let mut out: Assignment = subscriptions.keys().map(|m| (m.clone(), Vec::new())).collect();
    for (topic, queues) in queues_by_topic {
        let subscribers: Vec<&MemberId> = subscriptions
            .iter()
            .filter(|(_, topics)| topics.contains(topic))
            .map(|(member, _)| member)
            .collect();
        if subscribers.is_empty() {
            continue;
        }
        let queues: Vec<&MessageQueue> = queues.iter().collect::<BTreeSet<_>>().into_iter().collect();
        let load: BTreeMap<&MemberId, usize> = out.iter().map(|(m, qs)| (m, qs.len())).collect();
        let topic_assignment = assign_sorted(strategy, &subscribers, &queues, previous, &load);
        for (member, qs) in topic_assignment {
            out.entry(member).or_default().extend(qs);
        }
    }
    for qs in out.values_mut() {
        qs.sort();
    }
    out
}

/// [`assign`] over sorted, deduplicated inputs. `load` (queues members hold
/// already, from other topics) only breaks Sticky's ties.
fn assign_sorted(
    strategy: Strategy,
    members: &[&MemberId],
    queues: &[&MessageQueue],
    previous: &Assignment,
    load: &BTreeMap<&MemberId, usize>,
) -> Assignment {
    if members.is_empty() {
        return Assignment::new();
    }
    let lists: Vec<Vec<&MessageQueue>> = match strategy {
        Strategy::Range => (0..members.len())
            .map(|i| queues[range_block(i, members.len(), queues.len())].to_vec())
            .collect(),
        Strategy::RoundRobin => {
            let mut lists = vec![Vec::new(); members.len()];
            for (i, queue) in queues.iter().enumerate() {
                lists[i % members.len()].push(*queue);
            }
            lists
        }
        Strategy::Sticky => sticky(members, queues, previous, load),
    };
    members
        .iter()
        .zip(lists)
        .map(|(member, list)| ((*member).clone(), list.into_iter().cloned().collect()))
        .collect()
}

/// Indexes of the queues member `index` of `members` gets under Range.
fn range_block(index: usize, members: usize, queues: usize) -> Range<usize> {
    let base = queues / members;
    let extra = queues % members;
    let start = index * base + index.min(extra);
    start..start + base + usize::from(index < extra)
}

/// Sticky lists, one per member (same order as `members`, non-empty).
fn sticky<'q>(
    members: &[&MemberId],
    queues: &[&'q MessageQueue],
    previous: &Assignment,
    load: &BTreeMap<&MemberId, usize>,
) -> Vec<Vec<&'q MessageQueue>> {
    let n = members.len();
    let existing: BTreeSet<&'q MessageQueue> = queues.iter().copied().collect();
    // What each member could keep: its previous queues that still exist. A
    // queue listed under two members (only with an inconsistent `previous`)
    // stays with the first.
    let mut claimed = BTreeSet::new();
    let mut kept: Vec<Vec<&'q MessageQueue>> = members
        .iter()
        .map(|member| {
            let mut mine: Vec<&'q MessageQueue> = previous
                .get(*member)
                .into_iter()
                .flatten()
                .filter_map(|q| existing.get(q).copied())
                .collect();
            mine.sort();
            mine.dedup();
            mine.retain(|q| claimed.insert(*q));
            mine
        })
        .collect();

    // The `q % n` larger shares go to the members that can keep the most,
    // which maximises the queues kept; ties go to the least loaded, then to
    // the lowest id.
    let base = queues.len() / n;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| {
        let load = load.get(members[i]).copied().unwrap_or(0);
        (std::cmp::Reverse(kept[i].len()), load, i)
    });
    let mut quota = vec![base; n];
    for &i in order.iter().take(queues.len() % n) {
        quota[i] += 1;
    }

    for (list, &quota) in kept.iter_mut().zip(&quota) {
        list.truncate(quota);
    }
    let taken: BTreeSet<&MessageQueue> = kept.iter().flatten().copied().collect();
    // Quotas sum to the queue count, so the free queues exactly fill the
    // members below quota.
    let mut free = queues.iter().copied().filter(|q| !taken.contains(q));
    for (list, &quota) in kept.iter_mut().zip(&quota) {
        while list.len() < quota {
            match free.next() {
                Some(q) => list.push(q),
                None => break,
            }
        }
        list.sort();
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Strategy; 3] = [Strategy::Range, Strategy::RoundRobin, Strategy::Sticky];

    fn queues(n: u32) -> Vec<MessageQueue> {
        (0..n).map(|i| MessageQueue::new("t", "b", i)).collect()
    }

    fn members(n: usize) -> Vec<MemberId> {
        (0..n).map(|i| format!("m{i}")).collect()
    }

    fn ids(assignment: &Assignment, member: &str) -> Vec<u32> {
        assignment[member].iter().map(|q| q.queue_id).collect()
    }

    /// Checks completeness, exclusivity and balance.
    fn check_balanced(a: &Assignment, members: &[MemberId], queues: &[MessageQueue]) {
        let keys: Vec<&MemberId> = a.keys().collect();
        let expected: Vec<&MemberId> = members.iter().collect::<BTreeSet<_>>().into_iter().collect();
        assert_eq!(keys, expected);
        let mut all: Vec<&MessageQueue> = a.values().flatten().collect();
        all.sort();
        let expected: Vec<&MessageQueue> = queues.iter().collect();
        assert_eq!(all, expected, "every queue exactly once");
        let n = members.len();
        let (lo, hi) = (queues.len() / n, queues.len().div_ceil(n));
        let mut larger = 0;
        for qs in a.values() {
            assert!(qs.len() == lo || qs.len() == hi, "{} not in {lo}..={hi}", qs.len());
            assert!(qs.windows(2).all(|w| w[0] < w[1]), "sorted");
            larger += usize::from(qs.len() == hi && hi > lo);
        }
        if hi > lo {
            assert_eq!(larger, queues.len() % n);
        }
    }

    /// Queues whose owner differs between two assignments (queues new in
    /// `after` count as moved).
    fn moved(before: &Assignment, after: &Assignment) -> usize {
        let owner: BTreeMap<&MessageQueue, &MemberId> = before
            .iter()
            .flat_map(|(m, qs)| qs.iter().map(move |q| (q, m)))
            .collect();
        after
            .iter()
            .flat_map(|(m, qs)| qs.iter().map(move |q| (q, m)))
            .filter(|(q, m)| owner.get(q) != Some(m))
            .count()
    }

    #[test]
    fn strategy_names_round_trip() {
        for s in ALL {
            assert_eq!(s.to_string().parse::<Strategy>(), Ok(s));
        }
        assert_eq!("Round-Robin".parse::<Strategy>(), Ok(Strategy::RoundRobin));
        assert_eq!(Strategy::RoundRobin.to_string(), "round-robin");
        let err = "average".parse::<Strategy>().unwrap_err();
        assert_eq!(err, UnknownStrategy("average".into()));
        assert!(err.to_string().contains("expected range, round-robin or sticky"));
        assert_eq!(serde_json::to_string(&Strategy::RoundRobin).unwrap(), "\"round-robin\"");
    }

    #[test]
    fn message_queue_orders_by_topic_broker_id() {
        let mut qs = [
            MessageQueue::new("b", "a", 0),
            MessageQueue::new("a", "b", 0),
            MessageQueue::new("a", "a", 10),
            MessageQueue::new("a", "a", 2),
        ];
        qs.sort();
        let shown: Vec<String> = qs.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["a/a/2", "a/a/10", "a/b/0", "b/a/0"]);
    }

    #[test]
    fn range_maps_8_queues_to_3_members_as_3_3_2() {
        let a = assign(Strategy::Range, &members(3), &queues(8), &Assignment::new());
        assert_eq!(ids(&a, "m0"), [0, 1, 2]);
        assert_eq!(ids(&a, "m1"), [3, 4, 5]);
        assert_eq!(ids(&a, "m2"), [6, 7]);
    }

    #[test]
    fn round_robin_maps_8_queues_to_3_members_circularly() {
        let a = assign(Strategy::RoundRobin, &members(3), &queues(8), &Assignment::new());
        assert_eq!(ids(&a, "m0"), [0, 3, 6]);
        assert_eq!(ids(&a, "m1"), [1, 4, 7]);
        assert_eq!(ids(&a, "m2"), [2, 5]);
    }

    #[test]
    fn sticky_without_history_equals_range() {
        for q in 0..=20 {
            for n in 1..=8 {
                let (m, qs) = (members(n), queues(q));
                let none = Assignment::new();
                assert_eq!(
                    assign(Strategy::Sticky, &m, &qs, &none),
                    assign(Strategy::Range, &m, &qs, &none)
                );
            }
        }
    }

    #[test]
    fn every_strategy_is_balanced_for_0_to_20_queues_and_1_to_8_members() {
        for s in ALL {
            for q in 0..=20 {
                for n in 1..=8 {
                    let (m, qs) = (members(n), queues(q));
                    check_balanced(&assign(s, &m, &qs, &Assignment::new()), &m, &qs);
                    // Sticky from a lopsided history: still balanced.
                    let lopsided: Assignment = [("m0".to_string(), qs.clone())].into();
                    check_balanced(&assign(s, &m, &qs, &lopsided), &m, &qs);
                }
            }
        }
    }

    #[test]
    fn input_order_and_duplicates_do_not_matter() {
        let m = vec!["c".to_string(), "a".to_string(), "b".to_string(), "a".to_string()];
        let mut qs = queues(7);
        qs.reverse();
        qs.push(MessageQueue::new("t", "b", 3));
        let sorted_m: Vec<MemberId> = vec!["a".into(), "b".into(), "c".into()];
        for s in ALL {
            let a = assign(s, &m, &qs, &Assignment::new());
            assert_eq!(a, assign(s, &sorted_m, &queues(7), &Assignment::new()));
            assert_eq!(a, assign(s, &m, &qs, &Assignment::new()), "deterministic");
            check_balanced(&a, &sorted_m, &queues(7));
        }
    }

    #[test]
    fn empty_members_or_queues() {
        for s in ALL {
            assert!(assign(s, &[], &queues(5), &Assignment::new()).is_empty());
            let a = assign(s, &members(3), &[], &Assignment::new());
            assert_eq!(a.len(), 3);
            assert!(a.values().all(Vec::is_empty));
            // More members than queues: the extra members get nothing.
            let a = assign(s, &members(4), &queues(2), &Assignment::new());
            assert_eq!(a.values().filter(|qs| qs.is_empty()).count(), 2);
        }
    }

    #[test]
    fn sticky_leave_keeps_survivors_queues_and_splits_the_leavers() {
        let before = assign(Strategy::Sticky, &members(3), &queues(8), &Assignment::new());
        let survivors = vec!["m0".to_string(), "m2".to_string()];
        let after = assign(Strategy::Sticky, &survivors, &queues(8), &before);
        // m0 had q0..q2, m2 q6 q7; m1's q3..q5 are split 1 + 2 for 4/4.
        assert_eq!(ids(&after, "m0"), [0, 1, 2, 3]);
        assert_eq!(ids(&after, "m2"), [4, 5, 6, 7]);
    }

    #[test]
    fn sticky_leave_never_moves_a_survivors_queue() {
        for q in 0..=20 {
            for n in 2..=8 {
                let before = assign(Strategy::Sticky, &members(n), &queues(q), &Assignment::new());
                for leaver in 0..n {
                    let mut survivors = members(n);
                    survivors.remove(leaver);
                    let after = assign(Strategy::Sticky, &survivors, &queues(q), &before);
                    check_balanced(&after, &survivors, &queues(q));
                    for m in &survivors {
                        assert!(before[m].iter().all(|qu| after[m].contains(qu)), "q={q} n={n} {m}");
                    }
                    assert_eq!(moved(&before, &after), before[&members(n)[leaver]].len());
                }
            }
        }
    }

    #[test]
    fn sticky_join_moves_only_the_newcomers_share() {
        for q in 0..=20 {
            for n in 1..=7 {
                let before = assign(Strategy::Sticky, &members(n), &queues(q), &Assignment::new());
                let grown = members(n + 1);
                let after = assign(Strategy::Sticky, &grown, &queues(q), &before);
                check_balanced(&after, &grown, &queues(q));
                // The newcomer must get at least q / (n + 1); nothing else moves.
                assert_eq!(moved(&before, &after), q as usize / (n + 1), "q={q} n={n}");
                assert_eq!(after[&grown[n]].len(), q as usize / (n + 1));
            }
        }
    }

    #[test]
    fn sticky_join_of_a_fourth_member_to_3_3_2() {
        let before = assign(Strategy::Sticky, &members(3), &queues(8), &Assignment::new());
        let after = assign(Strategy::Sticky, &members(4), &queues(8), &before);
        assert_eq!(ids(&after, "m0"), [0, 1]);
        assert_eq!(ids(&after, "m1"), [3, 4]);
        assert_eq!(ids(&after, "m2"), [6, 7]);
        assert_eq!(ids(&after, "m3"), [2, 5]);
    }

    #[test]
    fn sticky_is_idempotent_and_handles_changed_queues() {
        let before = assign(Strategy::Sticky, &members(3), &queues(8), &Assignment::new());
        let shuffled = assign(Strategy::Sticky, &members(3), &queues(8), &before);
        assert_eq!(shuffled, before);
        // Two queues vanish, four appear: surviving owners keep theirs.
        let mut changed: Vec<MessageQueue> = queues(12);
        changed.retain(|q| q.queue_id != 0 && q.queue_id != 3);
        let after = assign(Strategy::Sticky, &members(3), &changed, &before);
        check_balanced(&after, &members(3), &changed);
        assert_eq!(ids(&after, "m0"), [1, 2, 8, 9]);
        assert_eq!(ids(&after, "m1"), [4, 5, 10]);
        assert_eq!(ids(&after, "m2"), [6, 7, 11]);
    }

    #[test]
    fn sticky_resolves_a_queue_claimed_twice() {
        let qs = queues(2);
        let previous: Assignment = [("m0".to_string(), qs.clone()), ("m1".to_string(), qs.clone())].into();
        let a = assign(Strategy::Sticky, &members(2), &qs, &previous);
        check_balanced(&a, &members(2), &qs);
    }

    fn subscriptions(entries: &[(&str, &[&str])]) -> BTreeMap<MemberId, BTreeSet<String>> {
        entries
            .iter()
            .map(|(m, ts)| (m.to_string(), ts.iter().map(|t| t.to_string()).collect()))
            .collect()
    }

    fn topic_queues(entries: &[(&str, u32)]) -> BTreeMap<String, Vec<MessageQueue>> {
        entries
            .iter()
            .map(|(t, n)| (t.to_string(), (0..*n).map(|i| MessageQueue::new(*t, "b", i)).collect()))
            .collect()
    }

    #[test]
    fn subscription_assigns_each_topic_among_its_subscribers() {
        let subs = subscriptions(&[("a", &["x", "y"]), ("b", &["x"]), ("c", &["z"]), ("d", &[])]);
        let tq = topic_queues(&[("x", 4), ("y", 3), ("w", 2)]);
        for s in ALL {
            let a = assign_by_subscription(s, &subs, &tq, &Assignment::new());
            assert_eq!(a.keys().collect::<Vec<_>>(), ["a", "b", "c", "d"]);
            assert!(a["a"].iter().filter(|q| q.topic == "x").count() == 2);
            assert!(a["a"].iter().filter(|q| q.topic == "y").count() == 3);
            assert!(a["b"].iter().all(|q| q.topic == "x") && a["b"].len() == 2);
            assert!(
                a["c"].is_empty() && a["d"].is_empty(),
                "no queues for z, no topics for d"
            );
            assert!(a.values().flatten().all(|q| q.topic != "w"), "nobody subscribes to w");
        }
    }

    #[test]
    fn sticky_subscription_balances_totals_across_topics() {
        let subs = subscriptions(&[
            ("a", &["x", "y", "z"]),
            ("b", &["x", "y", "z"]),
            ("c", &["x", "y", "z"]),
        ]);
        let tq = topic_queues(&[("x", 1), ("y", 1), ("z", 1)]);
        let a = assign_by_subscription(Strategy::Sticky, &subs, &tq, &Assignment::new());
        assert!(a.values().all(|qs| qs.len() == 1), "{a:?}");
        // Range, per topic, gives everything to the first member.
        let r = assign_by_subscription(Strategy::Range, &subs, &tq, &Assignment::new());
        assert_eq!(r["a"].len(), 3);
        // Stable when recomputed; a leaver's queue moves, nothing else does.
        assert_eq!(assign_by_subscription(Strategy::Sticky, &subs, &tq, &a), a);
        let mut fewer = subs.clone();
        fewer.remove("b");
        let after = assign_by_subscription(Strategy::Sticky, &fewer, &tq, &a);
        assert_eq!(moved(&a, &after), 1);
    }
}
