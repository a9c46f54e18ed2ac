//! What consumers record: which messages arrived (loss and duplicate
//! accounting), end-to-end latency (HDR histogram) and a per-second
//! timeline for the rate and latency curves.
//!
//! A consumer owns its [`Recorder`] (no locks on the message path); the
//! recorders are merged once the run is over.

use hdrhistogram::Histogram;

use crate::pace::NS;
use crate::payload::{Stamp, MAX_SEQ};

/// The set of sequence numbers seen from one producer: a growable bitmap,
/// one bit per message (12.5 MB per 100 M messages).
#[derive(Debug, Clone, Default)]
pub struct SeqSet {
    words: Vec<u64>,
    len: u64,
}

impl SeqSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `seq`; false when it was there already (a duplicate).
    pub fn insert(&mut self, seq: u64) -> bool {
        let Ok(word) = usize::try_from(seq / 64) else {
            return false;
        };
        if word >= self.words.len() {
            // Grow geometrically: sequence numbers arrive roughly in order.
            let want = (word + 1).max(self.words.len() * 2).max(16);
            self.words.resize(want, 0);
        }
        let bit = 1u64 << (seq % 64);
        let w = &mut self.words[word];
        if *w & bit != 0 {
            return false;
        }
        *w |= bit;
        self.len += 1;
        true
    }

    /// Whether `seq` is in the set.
    pub fn contains(&self, seq: u64) -> bool {
        usize::try_from(seq / 64)
            .ok()
            .and_then(|w| self.words.get(w))
            .is_some_and(|w| w & (1 << (seq % 64)) != 0)
    }

    /// Number of distinct sequence numbers.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Distinct members below `limit`.
    pub fn count_below(&self, limit: u64) -> u64 {
        if limit >= self.words.len() as u64 * 64 {
            return self.len;
        }
        let full = (limit / 64) as usize;
        let mut n: u64 = self.words[..full]
            .iter()
            .map(|w| u64::from(w.count_ones()))
            .sum();
        let rest = limit % 64;
        if rest > 0 {
            n += u64::from((self.words[full] & ((1u64 << rest) - 1)).count_ones());
        }
        n
    }

    /// Adds every member of `other`; returns how many were already here
    /// (messages two consumers of the same group both received).
    pub fn merge(&mut self, other: &SeqSet) -> u64 {
        if other.words.len() > self.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        let mut overlap = 0u64;
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            overlap += u64::from((*a & *b).count_ones());
            *a |= *b;
        }
        self.len = self.len + other.len - overlap;
        overlap
    }
}

/// A small log-bucketed histogram (about 6 % resolution, 3 KB) for the
/// per-second latency curve; the run's overall percentiles come from the
/// HDR histogram.
#[derive(Debug, Clone)]
pub struct LogHist {
    counts: Box<[u32; LOG_BUCKETS]>,
    total: u64,
}

const SUB_BITS: usize = 4;
const SUB: usize = 1 << SUB_BITS;
const LOG_BUCKETS: usize = 2 * SUB + SUB * 44;

impl Default for LogHist {
    fn default() -> Self {
        Self {
            counts: Box::new([0; LOG_BUCKETS]),
            total: 0,
        }
    }
}

impl LogHist {
    fn bucket(v: u64) -> usize {
        if v < 2 * SUB as u64 {
            return v as usize;
        }
        let lz = 63 - v.leading_zeros() as usize; // floor(log2 v) > SUB_BITS
        let sub = ((v >> (lz - SUB_BITS)) & (SUB as u64 - 1)) as usize;
        (2 * SUB + (lz - SUB_BITS - 1) * SUB + sub).min(LOG_BUCKETS - 1)
    }

    /// Upper edge of bucket `i`.
    fn upper(i: usize) -> u64 {
        if i < 2 * SUB {
            return i as u64;
        }
        let lz = (i - 2 * SUB) / SUB + SUB_BITS + 1;
        let sub = ((i - 2 * SUB) % SUB) as u64;
        ((SUB as u64 + sub + 1) << (lz - SUB_BITS)) - 1
    }

    /// Records one value.
    pub fn record(&mut self, v: u64) {
        let b = Self::bucket(v);
        self.counts[b] = self.counts[b].saturating_add(1);
        self.total += 1;
    }

    /// Values recorded.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The value at quantile `q` (0..=1), as its bucket's upper edge; 0
    /// when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return Self::upper(i);
            }
        }
        Self::upper(LOG_BUCKETS - 1)
    }

    /// Adds `other`'s counts.
    pub fn merge(&mut self, other: &LogHist) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a = a.saturating_add(*b);
        }
        self.total += other.total;
    }
}

/// One second of the run as a consumer saw it.
#[derive(Debug, Clone, Default)]
pub struct Second {
    /// Messages delivered in this second.
    pub delivered: u64,
    /// Their latencies, µs.
    pub latency: LogHist,
}

/// A new latency histogram: µs from 1 to an hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// What one consumer recorded.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// The receiver group (see [`Accounting`]) the consumer belongs to.
    pub group: usize,
    /// Per producer, the sequence numbers received.
    pub seqs: Vec<SeqSet>,
    /// Messages received, duplicates included.
    pub received: u64,
    /// Messages received twice by this consumer.
    pub duplicates: u64,
    /// Messages without a stamp of this run (too short, or from an
    /// unknown producer).
    pub foreign: u64,
    /// End-to-end latency, µs.
    pub latency: Histogram<u64>,
    /// Per second since the run's start.
    pub timeline: Vec<Second>,
    /// First and last delivery, ns since the run's start.
    pub first_ns: Option<u64>,
    /// See `first_ns`.
    pub last_ns: u64,
    /// Per producer, deliveries not yet reported to the producer's
    /// in-flight window.
    pub unreported: Vec<u64>,
}

impl Recorder {
    /// A recorder for a consumer of `group` in a run with `producers`
    /// producers.
    pub fn new(group: usize, producers: usize) -> Self {
        Self {
            group,
            seqs: vec![SeqSet::new(); producers],
            received: 0,
            duplicates: 0,
            foreign: 0,
            latency: new_histogram(),
            timeline: Vec::new(),
            first_ns: None,
            last_ns: 0,
            unreported: vec![0; producers],
        }
    }

    /// Records a message received at `now_ns` with `stamp` (`None`: not a
    /// benchmark message).
    pub fn record(&mut self, stamp: Option<Stamp>, now_ns: u64) {
        self.received += 1;
        self.first_ns.get_or_insert(now_ns);
        self.last_ns = now_ns;
        let Some(s) = stamp else {
            self.foreign += 1;
            return;
        };
        let Some(set) = self.seqs.get_mut(s.producer as usize) else {
            self.foreign += 1;
            return;
        };
        if s.seq > MAX_SEQ || !set.insert(s.seq) {
            self.duplicates += 1;
        }
        self.unreported[s.producer as usize] += 1;
        let us = now_ns.saturating_sub(s.sent_ns) / 1000;
        self.latency.saturating_record(us);
        let sec = (now_ns / NS) as usize;
        if sec >= self.timeline.len() {
            self.timeline.resize_with(sec + 1, Second::default);
        }
        let slot = &mut self.timeline[sec];
        slot.delivered += 1;
        slot.latency.record(us);
    }
}

/// Loss and duplicate accounting over the whole run.
///
/// Consumers form receiver groups: the consumers of one AMQP queue share
/// its messages (a message should reach exactly one of them), while every
/// MQTT subscriber is a group of its own (each should get every message of
/// its topic). A group expects every message of every producer that feeds
/// it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accounting {
    /// Deliveries expected: sum over groups of the messages sent by the
    /// producers feeding them.
    pub expected: u64,
    /// Deliveries received, duplicates included.
    pub received: u64,
    /// Distinct messages received (per group).
    pub unique: u64,
    /// Expected and never received.
    pub lost: u64,
    /// Received more than once within a group.
    pub duplicates: u64,
    /// Not messages of this run.
    pub foreign: u64,
}

/// Merges the consumers' sets per group and counts. `sent[p]` is what
/// producer `p` sent (the sequence numbers `0..sent[p]`); `feeds[g]` lists
/// the producers feeding group `g`.
pub fn account(recorders: &[Recorder], sent: &[u64], feeds: &[Vec<usize>]) -> Accounting {
    let mut acc = Accounting::default();
    let mut groups: Vec<Option<Vec<SeqSet>>> = vec![None; feeds.len()];
    for r in recorders {
        acc.received += r.received;
        acc.duplicates += r.duplicates;
        acc.foreign += r.foreign;
        let Some(slot) = groups.get_mut(r.group) else {
            continue;
        };
        match slot {
            None => *slot = Some(r.seqs.clone()),
            Some(sets) => {
                for (a, b) in sets.iter_mut().zip(&r.seqs) {
                    acc.duplicates += a.merge(b);
                }
            }
        }
    }
    for (g, producers) in feeds.iter().enumerate() {
        let sets = groups.get(g).and_then(|s| s.as_ref());
        for &p in producers {
            let want = sent.get(p).copied().unwrap_or(0);
            acc.expected += want;
            let got = sets
                .and_then(|s| s.get(p))
                .map_or(0, |s| s.count_below(want));
            acc.unique += got;
            acc.lost += want - got;
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(producer: u32, seq: u64) -> Option<Stamp> {
        Some(Stamp {
            producer,
            seq,
            sent_ns: 0,
        })
    }

    #[test]
    fn seqset_counts_and_dups() {
        let mut s = SeqSet::new();
        assert!(s.insert(0));
        assert!(s.insert(1000));
        assert!(!s.insert(1000));
        assert!(s.contains(1000) && !s.contains(999));
        assert_eq!(s.len(), 2);
        assert_eq!(s.count_below(1000), 1);
        assert_eq!(s.count_below(1001), 2);
        assert_eq!(s.count_below(1 << 30), 2);
        let mut t = SeqSet::new();
        t.insert(1000);
        t.insert(5);
        assert_eq!(s.merge(&t), 1);
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn competing_consumers_lose_and_duplicate() {
        // One queue (group 0), two producers, two consumers sharing it.
        let mut a = Recorder::new(0, 2);
        let mut b = Recorder::new(0, 2);
        for seq in 0..50 {
            a.record(stamp(0, seq), 1);
        }
        for seq in 50..99 {
            b.record(stamp(0, seq), 1); // seq 99 of producer 0 lost
        }
        b.record(stamp(0, 10), 1); // delivered to both consumers: duplicate
        for seq in 0..100 {
            a.record(stamp(1, seq), 1);
        }
        a.record(stamp(1, 3), 1); // duplicate within one consumer
        a.record(None, 1);
        let acc = account(&[a, b], &[100, 100], &[vec![0, 1]]);
        assert_eq!(
            acc,
            Accounting {
                expected: 200,
                received: 50 + 49 + 1 + 100 + 1 + 1,
                unique: 199,
                lost: 1,
                duplicates: 2,
                foreign: 1,
            }
        );
    }

    #[test]
    fn fan_out_groups_each_expect_everything() {
        // Two MQTT subscribers on one topic: each is its own group.
        let mut a = Recorder::new(0, 1);
        let mut b = Recorder::new(1, 1);
        for seq in 0..10 {
            a.record(stamp(0, seq), 1);
            if seq != 4 {
                b.record(stamp(0, seq), 1);
            }
        }
        let acc = account(&[a, b], &[10], &[vec![0], vec![0]]);
        assert_eq!(
            (acc.expected, acc.unique, acc.lost, acc.duplicates),
            (20, 19, 1, 0)
        );
        // A group nobody consumed from loses everything it was fed.
        let acc = account(&[], &[10], &[vec![0]]);
        assert_eq!((acc.expected, acc.lost), (10, 10));
    }

    #[test]
    fn recorder_timeline_and_latency() {
        let mut r = Recorder::new(0, 1);
        let s = |seq, sent_ns| {
            Some(Stamp {
                producer: 0,
                seq,
                sent_ns,
            })
        };
        r.record(s(0, 0), 1_000_000); // 1 ms
        r.record(s(1, NS), NS + 2_000_000); // 2 ms, second 1
        r.record(s(2, NS), NS + 3_000_000);
        assert_eq!(r.timeline.len(), 2);
        assert_eq!(r.timeline[0].delivered, 1);
        assert_eq!(r.timeline[1].delivered, 2);
        assert_eq!(r.latency.len(), 3);
        assert_eq!(r.latency.max(), r.latency.highest_equivalent(3000));
        assert_eq!(r.unreported, vec![3]);
    }

    #[test]
    fn log_hist_quantiles() {
        let mut h = LogHist::default();
        assert_eq!(h.quantile(0.99), 0);
        for v in 1..=1000u64 {
            h.record(v);
        }
        let p50 = h.quantile(0.5);
        let p99 = h.quantile(0.99);
        assert!((500..=535).contains(&p50), "{p50}");
        assert!((990..=1060).contains(&p99), "{p99}");
        assert_eq!(h.quantile(0.0), 1);
        let mut g = LogHist::default();
        g.record(5);
        g.merge(&h);
        assert_eq!(g.len(), 1001);
        // Bucket edges are consistent: every value lies at or below its
        // bucket's upper edge and above the previous one's.
        for v in [0u64, 15, 16, 17, 31, 32, 33, 100, 1 << 20, u64::MAX / 4] {
            let b = LogHist::bucket(v);
            assert!(v <= LogHist::upper(b) || b == LOG_BUCKETS - 1, "{v}");
            if b > 0 && b < LOG_BUCKETS - 1 {
                assert!(v > LogHist::upper(b - 1), "{v}");
            }
        }
    }
}
