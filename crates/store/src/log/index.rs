//! What the log knows in memory about what is on disk: which messages are
//! still live (and for which queues), where each lives (segment and byte
//! offset of its record, so that `MessageLog::read` goes straight to it),
//! and which segments may be deleted.
//!
//! The same index is rebuilt by recovery and then kept by the writer, so
//! the rules are applied identically in both places.
//!
//! # The reclamation rule
//!
//! A segment may be deleted when
//! 1. it is not the active segment,
//! 2. none of its messages is live (every queue of every message acked),
//! 3. every segment that one of its ack records refers to (a segment
//!    holding a message it acknowledges) is already deleted.
//!
//! Rule 3 keeps an ack record on disk for as long as the message it
//! acknowledges is: deleting it earlier would bring that message back on
//! the next recovery. References always point to older segments, so a pass
//! in ascending order deletes whole chains at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One segment as the index sees it.
#[derive(Debug, Default)]
pub(crate) struct SegmentInfo {
    /// Messages of this segment with at least one queue yet to ack.
    pub(crate) live: u64,
    /// Older segments holding messages acknowledged by this segment's ack
    /// records.
    pub(crate) refs: BTreeSet<u64>,
    /// Bytes on disk.
    pub(crate) size: u64,
}

/// The queues that still have to acknowledge a message. One queue is by far
/// the common case, and costs no allocation. (A boxed slice rather than a
/// `Vec`: 16 bytes instead of 24, which pays for the record offset in
/// [`Live`]; removing one of several queues reallocates, which is rare.)
#[derive(Debug)]
enum Remaining {
    One(u32),
    Many(Box<[u32]>),
}

impl Remaining {
    /// The common single queue allocates nothing (recovery builds one of
    /// these per message record).
    fn new(queues: impl IntoIterator<Item = u32>) -> Option<Self> {
        let mut it = queues.into_iter();
        let first = it.next()?;
        let Some(second) = it.next() else {
            return Some(Self::One(first));
        };
        let mut queues = vec![first, second];
        queues.extend(it);
        queues.sort_unstable();
        queues.dedup();
        match queues.as_slice() {
            [] => None,
            [q] => Some(Self::One(*q)),
            _ => Some(Self::Many(queues.into_boxed_slice())),
        }
    }

    fn contains(&self, queue: u32) -> bool {
        match self {
            Self::One(q) => *q == queue,
            Self::Many(qs) => qs.contains(&queue),
        }
    }

    /// Removes `queue`; `Some(now_empty)` if it was there.
    fn remove(&mut self, queue: u32) -> Option<bool> {
        match self {
            Self::One(q) => (*q == queue).then_some(true),
            Self::Many(qs) => {
                let pos = qs.iter().position(|q| *q == queue)?;
                let rest: Vec<u32> = qs
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != pos)
                    .map(|(_, q)| *q)
                    .collect();
                // A Many always holds two or more queues.
                *self = match rest.as_slice() {
                    [q] => Self::One(*q),
                    _ => Self::Many(rest.into_boxed_slice()),
                };
                Some(false)
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        let (one, many) = match self {
            Self::One(q) => (Some(*q), &[][..]),
            Self::Many(qs) => (None, &qs[..]),
        };
        one.into_iter().chain(many.iter().copied())
    }
}

#[derive(Debug)]
struct Live {
    segment: u64,
    /// Byte offset of the message record in its segment.
    offset: u64,
    queues: Remaining,
}

/// One entry of [`Index::live_in_order`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct LiveMessage<'a> {
    pub(crate) id: u64,
    live: &'a Live,
}

impl LiveMessage<'_> {
    /// Where its record is: (segment, byte offset).
    pub(crate) fn location(&self) -> (u64, u64) {
        (self.live.segment, self.live.offset)
    }

    /// The queues still to acknowledge it.
    pub(crate) fn queues(&self) -> impl Iterator<Item = u32> + '_ {
        self.live.queues.iter()
    }
}

/// What one applied acknowledgement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Acked {
    /// The segment holding the message.
    pub(crate) segment: u64,
    /// Whether that was the message's last queue.
    pub(crate) died: bool,
}

/// Below this many slots the live table is never shrunk.
const KEPT_LIVE: usize = 1024;

/// Live messages and segments.
#[derive(Debug, Default)]
pub(crate) struct Index {
    pub(crate) segments: BTreeMap<u64, SegmentInfo>,
    /// Keyed by message id. The ids are the log's own, not a client's, so
    /// a fast hasher is safe; SipHash made inserts the largest item of a
    /// 10M-message recovery after page zeroing.
    live: HashMap<u64, Live, foldhash::fast::FixedState>,
}

impl Index {
    pub(crate) fn add_segment(&mut self, number: u64, size: u64) {
        self.segments.insert(
            number,
            SegmentInfo {
                size,
                ..SegmentInfo::default()
            },
        );
    }

    pub(crate) fn set_size(&mut self, number: u64, size: u64) {
        if let Some(s) = self.segments.get_mut(&number) {
            s.size = size;
        }
    }

    /// Records a message whose record is at `offset` of `segment`. False
    /// (and nothing recorded) for an id already known or an empty queue
    /// list.
    pub(crate) fn add_message(
        &mut self,
        segment: u64,
        offset: u64,
        id: u64,
        queues: impl IntoIterator<Item = u32>,
    ) -> bool {
        let Some(queues) = Remaining::new(queues) else {
            return false;
        };
        // One probe of the table, not two: recovery inserts millions of
        // entries, each probe a likely cache miss.
        match self.live.entry(id) {
            std::collections::hash_map::Entry::Occupied(_) => return false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Live {
                    segment,
                    offset,
                    queues,
                });
            }
        }
        if let Some(s) = self.segments.get_mut(&segment) {
            s.live += 1;
        }
        true
    }

    /// Applies one acknowledgement; `None` if the pair is not live (an
    /// unknown or reclaimed message, a queue it was not routed to, or a
    /// repeated ack), which is then to be ignored.
    pub(crate) fn ack(&mut self, queue: u32, id: u64) -> Option<Acked> {
        let live = self.live.get_mut(&id)?;
        let died = live.queues.remove(queue)?;
        let segment = live.segment;
        if died {
            self.live.remove(&id);
            if let Some(s) = self.segments.get_mut(&segment) {
                s.live = s.live.saturating_sub(1);
            }
            self.give_back();
        }
        Some(Acked { segment, died })
    }

    /// Returns memory once a large backlog is gone: a table using less than
    /// a quarter of its capacity is rebuilt at twice its length. The next
    /// shrink needs the length to halve again, so the O(len) rebuild is
    /// amortised O(1) per ack (and never happens below [`KEPT_LIVE`]).
    fn give_back(&mut self) {
        let cap = self.live.capacity();
        if cap > KEPT_LIVE && self.live.len() < cap / 4 {
            self.live.shrink_to((self.live.len() * 2).max(KEPT_LIVE));
        }
    }

    /// Slots the live table has room for (memory held, in entries).
    #[cfg(test)]
    pub(crate) fn live_capacity(&self) -> usize {
        self.live.capacity()
    }

    /// Notes that an ack record in `from` acknowledges a message in `to`.
    pub(crate) fn add_ref(&mut self, from: u64, to: u64) {
        if from != to {
            if let Some(s) = self.segments.get_mut(&from) {
                s.refs.insert(to);
            }
        }
    }

    /// Where the record of live message `id` is: (segment, byte offset).
    pub(crate) fn location(&self, id: u64) -> Option<(u64, u64)> {
        self.live.get(&id).map(|l| (l.segment, l.offset))
    }

    /// The bytes of segment `number` on disk (written, not necessarily
    /// synced), if the segment exists.
    pub(crate) fn segment_size(&self, number: u64) -> Option<u64> {
        self.segments.get(&number).map(|s| s.size)
    }

    /// Every live message id, ascending.
    #[cfg(test)]
    pub(crate) fn live_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.live.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Every live message in id order, with where its record is and its
    /// queues: one pass over the table instead of a lookup per id (recovery
    /// of millions of messages).
    pub(crate) fn live_in_order(&self) -> Vec<LiveMessage<'_>> {
        let mut out: Vec<LiveMessage<'_>> = self
            .live
            .iter()
            .map(|(id, live)| LiveMessage { id: *id, live })
            .collect();
        out.sort_unstable_by_key(|m| m.id);
        out
    }

    /// The queues still to acknowledge message `id`.
    #[cfg(test)]
    pub(crate) fn queues_of(&self, id: u64) -> impl Iterator<Item = u32> + '_ {
        self.live.get(&id).into_iter().flat_map(|l| l.queues.iter())
    }

    /// Every live pair of one queue, in message id order.
    pub(crate) fn pairs_of_queue(&self, queue: u32) -> Vec<(u32, u64)> {
        let mut ids: Vec<u64> = self
            .live
            .iter()
            .filter(|(_, l)| l.queues.contains(queue))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids.into_iter().map(|id| (queue, id)).collect()
    }

    /// The segments that may be deleted now, in the order to delete them
    /// (ascending; see the module docs for the rule).
    pub(crate) fn reclaimable(&self, active: u64) -> Vec<u64> {
        let mut out: Vec<u64> = Vec::new();
        for (number, s) in &self.segments {
            if *number == active || s.live > 0 {
                continue;
            }
            let pinned = s
                .refs
                .iter()
                .any(|r| self.segments.contains_key(r) && out.binary_search(r).is_err());
            if !pinned {
                out.push(*number);
            }
        }
        out
    }

    pub(crate) fn remove_segment(&mut self, number: u64) {
        self.segments.remove(&number);
    }

    pub(crate) fn live_messages(&self) -> u64 {
        self.live.len() as u64
    }

    pub(crate) fn disk_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.size).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_queue_message_dies_with_its_last_queue() {
        let mut ix = Index::default();
        ix.add_segment(1, 0);
        assert!(ix.add_message(1, 32, 10, vec![2, 1, 2]));
        assert_eq!(ix.location(10), Some((1, 32)));
        assert_eq!(ix.queues_of(10).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(ix.ack(3, 10), None, "not routed to queue 3");
        assert_eq!(
            ix.ack(1, 10),
            Some(Acked {
                segment: 1,
                died: false
            })
        );
        assert_eq!(ix.ack(1, 10), None, "repeated ack is ignored");
        assert_eq!(ix.segments[&1].live, 1);
        assert_eq!(
            ix.ack(2, 10),
            Some(Acked {
                segment: 1,
                died: true
            })
        );
        assert_eq!(ix.segments[&1].live, 0);
        assert_eq!(ix.live_messages(), 0);
        assert_eq!(ix.location(10), None);
    }

    #[test]
    fn memory_is_given_back_after_a_backlog_drains() {
        let mut ix = Index::default();
        ix.add_segment(1, 0);
        for id in 1..=200_000 {
            ix.add_message(1, id * 40, id, vec![1]);
        }
        let full = ix.live_capacity();
        assert!(full >= 200_000);
        for id in 1..=199_990 {
            assert!(ix.ack(1, id).is_some());
        }
        assert_eq!(ix.live_messages(), 10);
        assert!(
            ix.live_capacity() <= 2 * KEPT_LIVE,
            "{} slots kept for 10 messages",
            ix.live_capacity()
        );
        // What is left is intact.
        for id in 199_991..=200_000 {
            assert_eq!(ix.location(id), Some((1, id * 40)));
        }
    }

    #[test]
    fn live_messages_in_id_order_with_location_and_queues() {
        let mut ix = Index::default();
        ix.add_segment(1, 0);
        ix.add_segment(2, 0);
        for id in [9u64, 3, 7, 1] {
            assert!(ix.add_message(id % 2 + 1, id * 10, id, [5, 2, 5]));
        }
        assert!(!ix.add_message(1, 0, 7, [1]), "a repeated id is refused");
        assert!(!ix.add_message(1, 0, 11, []), "no queue, no message");
        ix.ack(5, 3);
        let got: Vec<(u64, (u64, u64), Vec<u32>)> = ix
            .live_in_order()
            .iter()
            .map(|m| (m.id, m.location(), m.queues().collect()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, (2, 10), vec![2, 5]),
                (3, (2, 30), vec![2]),
                (7, (2, 70), vec![2, 5]),
                (9, (2, 90), vec![2, 5]),
            ]
        );
    }

    #[test]
    fn three_queues_shrink_to_one_then_die() {
        let mut ix = Index::default();
        ix.add_segment(1, 0);
        ix.add_message(1, 32, 7, vec![3, 1, 2]);
        assert_eq!(ix.ack(2, 7).map(|a| a.died), Some(false));
        assert_eq!(ix.queues_of(7).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(ix.ack(1, 7).map(|a| a.died), Some(false));
        assert_eq!(ix.queues_of(7).collect::<Vec<_>>(), vec![3]);
        assert_eq!(ix.ack(1, 7), None);
        assert_eq!(ix.ack(3, 7).map(|a| a.died), Some(true));
        assert_eq!(ix.live_ids(), Vec::<u64>::new());
    }

    /// Every live message costs one entry: keeping the record's offset in
    /// it must not make it bigger than it was without.
    #[test]
    fn live_entry_stays_small() {
        assert!(std::mem::size_of::<Live>() <= 32);
    }

    #[test]
    fn acks_pin_their_segment_until_the_acked_segment_is_gone() {
        let mut ix = Index::default();
        for n in 1..=3 {
            ix.add_segment(n, 100);
        }
        ix.add_message(1, 32, 1, vec![1]); // stays live
        ix.add_message(1, 64, 2, vec![1]);
        ix.ack(1, 2);
        ix.add_ref(2, 1); // segment 2 holds the ack of message 2
        assert_eq!(ix.reclaimable(3), Vec::<u64>::new());
        ix.ack(1, 1);
        ix.add_ref(3, 1);
        // 1 then 2 in one pass; 3 is active.
        assert_eq!(ix.reclaimable(3), vec![1, 2]);
    }
}
