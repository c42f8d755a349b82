//! Where a slave starts following: the master compares the slave's newest
//! records with its own log and answers "follow from here" or "cut your
//! log there first" (a former master, or a slave whose log ran past its
//! master's, must drop what the master does not have).

/// The slave's log as it describes itself in its handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlaveLog {
    /// Start of its log.
    pub start: u64,
    /// End of its log.
    pub end: u64,
    /// Its `store.segment_bytes`.
    pub segment_bytes: u64,
    /// Its newest records as (offset, CRC), newest first.
    pub last_records: Vec<(u64, u32)>,
}

/// What the master can say about its own log.
pub trait MasterLog {
    /// Start of the log (retention may have deleted what lies below).
    fn start(&self) -> u64;
    /// End of the log (published records only).
    fn end(&self) -> u64;
    /// The master's `store.segment_bytes`.
    fn segment_bytes(&self) -> u64;
    /// (CRC, size) of the whole record starting at `offset`, if one does.
    fn record(&self, offset: u64) -> Option<(u32, u32)>;
}

/// The master's answer when the slave can follow it ([`decide`]'s error
/// is why it cannot: another segment size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The logs agree below `from`: fetch from there.
    Follow {
        /// First offset to fetch.
        from: u64,
    },
    /// Cut the slave's log at `to` and shake hands again.
    Truncate {
        /// Where to cut (a record boundary of the slave's log).
        to: u64,
        /// Why, for the logs.
        reason: String,
    },
}

/// Decides where `slave` starts following `master`; `Err` says why it
/// cannot follow it at all.
pub fn decide(slave: &SlaveLog, master: &impl MasterLog) -> Result<Decision, String> {
    if slave.segment_bytes != master.segment_bytes() {
        return Err(format!(
            "the slave's store.segment_bytes is {} but the master's is {}: a slave's log is a byte copy of \
             its master's, so both must use the same segment size",
            slave.segment_bytes,
            master.segment_bytes()
        ));
    }
    if slave.last_records.is_empty() {
        return Ok(empty_slave(slave, master));
    }
    for (i, &(offset, crc)) in slave.last_records.iter().enumerate() {
        let Some((master_crc, size)) = master.record(offset) else {
            continue;
        };
        if master_crc != crc {
            continue;
        }
        let common_end = offset + u64::from(size);
        // Following from the slave's end is safe only when nothing of the
        // slave's lies past the shared record (a filler the master may not
        // have written there counts).
        if i == 0 && slave.end == common_end && slave.end <= master.end() {
            return Ok(Decision::Follow { from: slave.end });
        }
        return Ok(Decision::Truncate {
            to: common_end,
            reason: format!(
                "the slave's log runs past the last record it shares with the master (at {offset}): \
                 {} bytes the master does not have",
                slave.end.saturating_sub(common_end)
            ),
        });
    }
    // No listed record is the master's: cut below the oldest listed and
    // compare further back (or empty the log when that was all of it).
    let oldest = slave.last_records.last().map_or(slave.start, |&(o, _)| o);
    Ok(Decision::Truncate {
        to: oldest,
        reason: format!(
            "none of the slave's newest {} records is the master's",
            slave.last_records.len()
        ),
    })
}

/// A slave holding no record: it continues where its (empty) log ends when
/// that lies within the master's log, else it restarts its log where the
/// master's starts (a new slave, or one left behind by retention).
fn empty_slave(slave: &SlaveLog, master: &impl MasterLog) -> Decision {
    if slave.end != 0 && (master.start()..=master.end()).contains(&slave.end) {
        return Decision::Follow { from: slave.end };
    }
    Decision::Follow { from: master.start() }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    struct Log {
        start: u64,
        end: u64,
        records: BTreeMap<u64, (u32, u32)>,
    }

    impl MasterLog for Log {
        fn start(&self) -> u64 {
            self.start
        }
        fn end(&self) -> u64 {
            self.end
        }
        fn segment_bytes(&self) -> u64 {
            1024
        }
        fn record(&self, offset: u64) -> Option<(u32, u32)> {
            self.records.get(&offset).copied()
        }
    }

    /// A master with records of 10 bytes at 0, 10, 20, … below `end`; CRC
    /// = offset + `salt`.
    fn master(end: u64, salt: u32) -> Log {
        Log {
            start: 0,
            end,
            records: (0..end / 10).map(|i| (i * 10, (i as u32 * 10 + salt, 10))).collect(),
        }
    }

    fn slave(end: u64, records: &[(u64, u32)]) -> SlaveLog {
        SlaveLog {
            start: 0,
            end,
            segment_bytes: 1024,
            last_records: records.to_vec(),
        }
    }

    #[test]
    fn a_slave_behind_follows_from_its_end() {
        let m = master(100, 0);
        assert_eq!(
            decide(&slave(50, &[(40, 40), (30, 30)]), &m).unwrap(),
            Decision::Follow { from: 50 }
        );
        assert_eq!(
            decide(&slave(100, &[(90, 90)]), &m).unwrap(),
            Decision::Follow { from: 100 }
        );
    }

    #[test]
    fn a_new_slave_starts_where_the_master_does() {
        let mut m = master(100, 0);
        assert_eq!(decide(&slave(0, &[]), &m).unwrap(), Decision::Follow { from: 0 });
        m.start = 40;
        assert_eq!(decide(&slave(0, &[]), &m).unwrap(), Decision::Follow { from: 40 });
        // An empty log that starts inside the master's continues there;
        // outside, it restarts where the master's starts.
        assert_eq!(decide(&slave(60, &[]), &m).unwrap(), Decision::Follow { from: 60 });
        assert_eq!(decide(&slave(200, &[]), &m).unwrap(), Decision::Follow { from: 40 });
    }

    #[test]
    fn a_slave_past_its_master_is_cut_back_to_the_shared_records() {
        let m = master(50, 0);
        // The slave (a former master) has 60..80 the master never got; its
        // records up to 40 are the master's.
        let s = slave(80, &[(70, 70), (60, 60), (50, 50), (40, 40)]);
        match decide(&s, &m).unwrap() {
            Decision::Truncate { to, .. } => assert_eq!(to, 50),
            other => panic!("expected a cut, got {other:?}"),
        }
    }

    #[test]
    fn a_slave_ending_past_its_newest_shared_record_is_cut_there() {
        // The slave's log ends with a filler after its newest record (end
        // 40 > 30 + 5): the master may have records there instead.
        let m = master(100, 0);
        let s = SlaveLog {
            start: 0,
            end: 40,
            segment_bytes: 1024,
            last_records: vec![(20, 20)],
        };
        assert!(matches!(decide(&s, &m).unwrap(), Decision::Truncate { to: 30, .. }));
    }

    #[test]
    fn records_that_differ_at_the_same_offsets_are_cut() {
        // Both logs reach 100, but the slave's 60..100 differ (written by a
        // former master after the new one took over).
        let mut m = master(100, 0);
        for o in [60u64, 70, 80, 90] {
            m.records.insert(o, (o as u32 + 5, 10));
        }
        let s = slave(100, &[(90, 90), (80, 80), (70, 70), (60, 60), (50, 50)]);
        assert!(matches!(decide(&s, &m).unwrap(), Decision::Truncate { to: 60, .. }));
        // After the cut, the slave follows from there.
        assert_eq!(
            decide(&slave(60, &[(50, 50)]), &m).unwrap(),
            Decision::Follow { from: 60 }
        );
    }

    #[test]
    fn nothing_in_common_among_the_listed_records_cuts_further_back() {
        let m = master(100, 7);
        let s = slave(100, &[(90, 90), (80, 80)]);
        assert!(matches!(decide(&s, &m).unwrap(), Decision::Truncate { to: 80, .. }));
    }

    #[test]
    fn a_segment_size_mismatch_is_refused() {
        let m = master(100, 0);
        let mut s = slave(0, &[]);
        s.segment_bytes = 2048;
        assert!(decide(&s, &m).unwrap_err().contains("segment_bytes"));
    }
}
