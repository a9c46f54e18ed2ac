//! Back-pressure from subscriber queues to the publishers that feed them.
//!
//! A queue that feeds a subscriber (an MQTT session's queue, a shared
//! subscription's) gets [`FlowLimits`]. It is *congested* while it holds
//! more than `high` ready messages, has a consumer, and is not *slow*. A
//! publish that reaches a congested queue says so
//! ([`crate::PublishOutcome::congested`]); the publisher's connection then
//! stops reading ([`Backpressure::hold`]) until every such queue is down
//! to `low`, so a publisher runs at the pace of its subscribers instead of
//! filling their queues until something is dropped. This is RabbitMQ's
//! credit flow in the small (a queue that falls behind holds the
//! connections publishing to it), and what a single-threaded Mosquitto
//! does by not reading a publisher faster than it writes.
//!
//! A publisher is held by a queue for at most `max_hold` at a time, so a
//! subscriber that stopped reading, or one far slower than the others a
//! publisher feeds, cannot stall the rest for longer. A queue that held a
//! publisher that long is marked *slow*: it stops holding publishers until
//! it has drained to `low`, and meanwhile keeps at most `max_len` ready
//! messages (as does a queue with no consumer: an offline session); what
//! is beyond is dropped as `overflow` says, counted in
//! [`crate::Metrics::messages_dropped`] and logged (at most once per
//! [`DROP_LOG_EVERY`] per queue, naming the queue's owner).

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use smallvec::SmallVec;

use crate::outbox::Wake;
use crate::queue::Queue;

/// Ready messages above which a subscriber queue holds its publishers
/// (unless its own length limit is lower: then half of that). Enough to
/// keep a subscriber's connection busy while its publishers wake again.
pub const DEFAULT_FLOW_HIGH: u32 = 4096;

/// How often a queue that drops messages says so in the log, at most.
pub const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

/// What a full subscriber queue drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// The new message (Mosquitto's behaviour at `max_queued_messages`).
    #[default]
    DropNew,
    /// The oldest ready message.
    DropOldest,
}

impl std::str::FromStr for Overflow {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "drop-new" => Ok(Self::DropNew),
            "drop-oldest" => Ok(Self::DropOldest),
            other => Err(format!(
                "unknown overflow policy '{other}': use drop-new or drop-oldest"
            )),
        }
    }
}

/// How a subscriber queue pushes back on publishers, and what it drops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowLimits {
    /// Ready messages above which publishers are held.
    pub high: u32,
    /// Held publishers go on once the queue is down to this.
    pub low: u32,
    /// Ready messages kept at most (offline, or slow).
    pub max_len: u32,
    /// What goes beyond `max_len`.
    pub overflow: Overflow,
    /// How long the queue may hold a publisher at a time before it is
    /// treated as slow.
    pub max_hold: Duration,
    /// Whom the queue serves, for the log (an MQTT client id).
    pub owner: Arc<str>,
}

impl FlowLimits {
    /// Limits for a queue keeping at most `max_len` messages: held
    /// publishers above [`DEFAULT_FLOW_HIGH`] (or half of `max_len` if
    /// that is less), released at half of that.
    pub fn new(owner: Arc<str>, max_len: u32, overflow: Overflow, max_hold: Duration) -> Self {
        let high = DEFAULT_FLOW_HIGH.min(max_len / 2).max(1);
        Self {
            high,
            low: high / 2,
            max_len,
            overflow,
            max_hold,
            owner,
        }
    }
}

/// A queue's side of the flow: its limits and who waits for it to drain.
#[derive(Debug)]
pub(crate) struct FlowState {
    pub(crate) limits: FlowLimits,
    /// Over `high` with a consumer: publishers that reach it are held.
    pub(crate) congested: bool,
    /// It held a publisher for `max_hold`: it holds none until it drains.
    pub(crate) slow: bool,
    /// Held publishers, woken once the queue drains (or goes slow).
    waiters: Vec<Weak<dyn Wake>>,
    /// Counts the times the queue stopped being congested, so that a
    /// held publisher sees it congested *again* (and waits anew) rather
    /// than still.
    pub(crate) epoch: u64,
    /// Drops not yet reported in the log.
    pub(crate) unlogged_drops: u64,
    /// When drops were last reported.
    pub(crate) last_drop_log: Option<Instant>,
}

impl FlowState {
    pub(crate) fn new(limits: FlowLimits) -> Self {
        Self {
            limits,
            congested: false,
            slow: false,
            waiters: Vec::new(),
            epoch: 0,
            unlogged_drops: 0,
            last_drop_log: None,
        }
    }

    /// Hold `waker` until the queue drains.
    pub(crate) fn add_waiter(&mut self, waker: &Arc<dyn Wake>) {
        if self.waiters.len() >= 64 && self.waiters.len().is_power_of_two() {
            self.waiters.retain(|w| w.strong_count() > 0);
        }
        self.waiters.push(Arc::downgrade(waker));
    }

    /// No longer congested: wake every held publisher.
    pub(crate) fn uncongest(&mut self) {
        self.congested = false;
        self.epoch += 1;
        for w in std::mem::take(&mut self.waiters)
            .iter()
            .filter_map(Weak::upgrade)
        {
            w.wake();
        }
    }

    /// A message was dropped at `now`: whether to log now, and how many
    /// drops that report covers.
    pub(crate) fn dropped(&mut self, now: Instant) -> Option<u64> {
        self.unlogged_drops += 1;
        self.due_drop_report(now)
    }

    /// Drops to report now, if the last report is old enough.
    pub(crate) fn due_drop_report(&mut self, now: Instant) -> Option<u64> {
        if self.unlogged_drops == 0
            || self
                .last_drop_log
                .is_some_and(|t| now.saturating_duration_since(t) < DROP_LOG_EVERY)
        {
            return None;
        }
        self.last_drop_log = Some(now);
        Some(std::mem::take(&mut self.unlogged_drops))
    }
}

/// A publishing connection's side of the flow: the congested queues it
/// waits for, while it does not read.
#[derive(Debug, Default)]
pub struct Backpressure {
    held: Option<Box<Held>>,
}

#[derive(Debug)]
struct Held {
    /// Each with the epoch it was waited for in (see `FlowState::epoch`).
    queues: SmallVec<[(Weak<Queue>, u64); 2]>,
    until: Instant,
}

impl Backpressure {
    /// Whether the connection is held (it must not read).
    pub fn is_held(&self) -> bool {
        self.held.is_some()
    }

    /// The moment the hold ends at the latest.
    pub fn deadline(&self) -> Option<Instant> {
        self.held.as_ref().map(|h| h.until)
    }

    /// A publish reached `congested` queues at `now`: stop reading until
    /// they drain (`waker` is woken then), or until the shortest
    /// `max_hold` among them has passed. Queues the connection consumes
    /// from itself are to be left out by the caller: it could not drain
    /// them while it does not read their acknowledgements.
    pub fn hold(&mut self, congested: &[Arc<Queue>], waker: &Arc<dyn Wake>, now: Instant) {
        for q in congested {
            if let Some(held) = &self.held {
                if held
                    .queues
                    .iter()
                    .any(|(w, _)| w.as_ptr() == Arc::as_ptr(q))
                {
                    continue;
                }
            }
            let Some((epoch, max_hold)) = q.flow_wait(waker, None) else {
                continue; // drained meanwhile
            };
            let until = now + max_hold;
            let held = self.held.get_or_insert_with(|| {
                Box::new(Held {
                    queues: SmallVec::new(),
                    until,
                })
            });
            held.until = held.until.min(until);
            held.queues.push((Arc::downgrade(q), epoch));
        }
    }

    /// Go on if every queue the connection waits for has drained, or if
    /// the hold has lasted until its deadline (the queues still congested
    /// are then marked slow). Returns whether the hold ended now.
    pub fn poll_release(&mut self, waker: &Arc<dyn Wake>, now: Instant) -> bool {
        let Some(held) = &mut self.held else {
            return false;
        };
        held.queues.retain(|(w, epoch)| {
            let Some(q) = w.upgrade() else {
                return false;
            };
            // Congested again since it woke us: wait for it anew.
            match q.flow_wait(waker, Some(*epoch)) {
                Some((e, _)) => {
                    *epoch = e;
                    true
                }
                None => false,
            }
        });
        if !held.queues.is_empty() && now < held.until {
            return false;
        }
        for q in held.queues.iter().filter_map(|(w, _)| w.upgrade()) {
            q.flow_mark_slow();
        }
        self.held = None;
        true
    }

    /// The connection is closing: read again.
    pub fn release(&mut self) {
        self.held = None;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

    use bytes::Bytes;
    use liebre_amqp_codec::{BasicProperties, ShortStr};
    use parking_lot::Mutex;

    use super::*;
    use crate::message::{Clock, ManualClock, Message};
    use crate::queue::{Consumer, ConsumerSink, QueueOptions};
    use crate::{Delivery, Metrics, VHost};

    /// A consumer that takes `credit` deliveries and keeps them until
    /// told to acknowledge.
    #[derive(Default)]
    struct Sink {
        credit: AtomicU32,
        got: Mutex<Vec<Delivery>>,
    }

    impl ConsumerSink for Sink {
        fn try_reserve(&self) -> bool {
            self.credit
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| c.checked_sub(1))
                .is_ok()
        }
        fn deliver(&self, d: Delivery) {
            self.got.lock().push(d);
        }
        fn cancelled(&self, _tag: &ShortStr) {}
    }

    impl Sink {
        /// Acknowledge what it holds and take `credit` more (as a
        /// protocol sink kicks its queue when credit returns).
        fn settle(&self, q: &Arc<Queue>, credit: u32) -> usize {
            let got: Vec<Delivery> = self.got.lock().drain(..).collect();
            for d in &got {
                d.ack();
            }
            self.credit.fetch_add(credit, Ordering::SeqCst);
            q.kick();
            got.len()
        }
    }

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn msg(body: &str) -> Arc<Message> {
        Arc::new(Message::with_properties(
            ShortStr::from(""),
            ShortStr::from("sub"),
            BasicProperties::default(),
            Bytes::copy_from_slice(body.as_bytes()),
        ))
    }

    struct Env {
        clock: Arc<ManualClock>,
        metrics: Arc<Metrics>,
        vhost: Arc<VHost>,
        queue: Arc<Queue>,
    }

    /// A subscriber queue keeping at most 20 messages (high 10, low 5),
    /// holding publishers for at most 5 s.
    fn env(overflow: Overflow) -> Env {
        let clock = Arc::new(ManualClock::default());
        let metrics = Arc::new(Metrics::default());
        let vhost = VHost::new("/", clock.clone(), metrics.clone());
        let queue = vhost
            .declare_queue("sub", QueueOptions::default(), false, 0)
            .expect("declare");
        queue.set_flow(Some(FlowLimits::new(
            "client-1".into(),
            20,
            overflow,
            Duration::from_secs(5),
        )));
        Env {
            clock,
            metrics,
            vhost,
            queue,
        }
    }

    fn attach(q: &Arc<Queue>, credit: u32) -> Arc<Sink> {
        let sink = Arc::new(Sink::default());
        sink.credit.store(credit, Ordering::SeqCst);
        q.add_consumer(Consumer {
            id: 1,
            tag: ShortStr::from("c1"),
            no_ack: false,
            exclusive: false,
            priority: 0,
            sink: sink.clone(),
        })
        .expect("consume");
        sink
    }

    fn publish(e: &Env, body: &str) -> crate::PublishOutcome {
        e.vhost.publish("", msg(body)).expect("publish")
    }

    #[test]
    fn limits_follow_the_queue_bound() {
        let l = FlowLimits::new(
            "c".into(),
            100_000,
            Overflow::DropNew,
            Duration::from_secs(5),
        );
        assert_eq!((l.high, l.low), (DEFAULT_FLOW_HIGH, DEFAULT_FLOW_HIGH / 2));
        let l = FlowLimits::new("c".into(), 20, Overflow::DropNew, Duration::from_secs(5));
        assert_eq!((l.high, l.low), (10, 5));
        let l = FlowLimits::new("c".into(), 1, Overflow::DropNew, Duration::from_secs(5));
        assert_eq!((l.high, l.low), (1, 0));
    }

    #[test]
    fn a_reading_subscriber_holds_its_publisher_and_nothing_is_dropped() {
        let e = env(Overflow::DropNew);
        let sink = attach(&e.queue, 2);
        let waker = Arc::new(Count::default());
        let w: Arc<dyn Wake> = waker.clone();
        let mut bp = Backpressure::default();
        let now = e.clock.now();
        // 2 delivered, 10 ready: not yet over `high`.
        for i in 0..12 {
            let o = publish(&e, &i.to_string());
            assert!(o.congested.0.is_empty(), "message {i}");
        }
        let o = publish(&e, "12");
        assert_eq!(o.congested.0.len(), 1, "11 ready is over high (10)");
        bp.hold(&o.congested.0, &w, now);
        assert!(bp.is_held());
        assert_eq!(bp.deadline(), Some(now + Duration::from_secs(5)));
        assert!(!bp.poll_release(&w, now), "still congested");
        // The subscriber acknowledges and reads more: down to 6, still held.
        assert_eq!(sink.settle(&e.queue, 5), 2);
        assert_eq!(e.queue.stats().messages_ready, 6);
        assert_eq!(waker.0.load(Ordering::SeqCst), 0);
        assert!(!bp.poll_release(&w, now));
        // Down to `low`: the publisher is woken and goes on.
        sink.settle(&e.queue, 1);
        assert_eq!(e.queue.stats().messages_ready, 5);
        assert_eq!(waker.0.load(Ordering::SeqCst), 1);
        assert!(bp.poll_release(&w, now));
        assert!(!bp.is_held());
        assert_eq!(e.queue.stats().dropped, 0);
        assert_eq!(Metrics::get(&e.metrics.messages_dropped), 0);
    }

    #[test]
    fn a_publisher_woken_late_waits_again_if_the_queue_congested_anew() {
        let e = env(Overflow::DropNew);
        let sink = attach(&e.queue, 0);
        let w1: Arc<dyn Wake> = Arc::new(Count::default());
        let c2 = Arc::new(Count::default());
        let w2: Arc<dyn Wake> = c2.clone();
        let now = e.clock.now();
        let mut first = Backpressure::default();
        let mut o = publish(&e, "0");
        for i in 1..=10 {
            o = publish(&e, &i.to_string());
        }
        first.hold(&o.congested.0, &w1, now);
        // Drained to low, then congested again by another publisher before
        // the first one looked.
        sink.settle(&e.queue, 6);
        assert!(!e.queue.flow_congested());
        let mut o2 = publish(&e, "a");
        while o2.congested.0.is_empty() {
            o2 = publish(&e, "b");
        }
        let mut second = Backpressure::default();
        second.hold(&o2.congested.0, &w2, now);
        assert!(!first.poll_release(&w1, now), "congested anew: wait again");
        sink.settle(&e.queue, 100);
        assert!(first.poll_release(&w1, now));
        assert!(second.poll_release(&w2, now));
        assert_eq!(c2.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_subscriber_that_stops_reading_is_slow_after_max_hold_then_drops_new() {
        let e = env(Overflow::DropNew);
        let sink = attach(&e.queue, 0);
        let w: Arc<dyn Wake> = Arc::new(Count::default());
        let mut bp = Backpressure::default();
        let start = e.clock.now();
        let mut o = publish(&e, "0");
        let mut n = 1;
        while o.congested.0.is_empty() {
            o = publish(&e, &n.to_string());
            n += 1;
        }
        bp.hold(&o.congested.0, &w, start);
        e.clock.advance(Duration::from_secs(4));
        assert!(!bp.poll_release(&w, e.clock.now()));
        e.clock.advance(Duration::from_secs(1));
        assert!(bp.poll_release(&w, e.clock.now()), "released at max_hold");
        assert!(e.queue.flow_slow());
        // Slow: publishers are not held, the queue keeps 20, then drops new.
        for i in n..40 {
            let o = publish(&e, &i.to_string());
            assert!(o.congested.0.is_empty());
            assert!(!o.rejected, "a drop is not the publisher's refusal");
        }
        let stats = e.queue.stats();
        assert_eq!(stats.messages_ready, 20);
        assert_eq!(stats.dropped, 40 - 20);
        assert_eq!(Metrics::get(&e.metrics.messages_dropped), 20);
        // Drop-new keeps the oldest.
        sink.settle(&e.queue, 1);
        let first = sink.got.lock()[0].message.body.clone();
        assert_eq!(&first[..], b"0");
        // Once drained to low it holds publishers again.
        sink.settle(&e.queue, 100);
        assert!(!e.queue.flow_slow());
    }

    #[test]
    fn drop_oldest_keeps_the_newest() {
        let e = env(Overflow::DropOldest);
        for i in 0..30 {
            publish(&e, &i.to_string());
        }
        assert_eq!(e.queue.stats().messages_ready, 20);
        assert_eq!(e.queue.stats().dropped, 10);
        let sink = attach(&e.queue, 1);
        let first = sink.got.lock()[0].message.body.clone();
        assert_eq!(&first[..], b"10");
    }

    #[test]
    fn an_offline_subscriber_holds_no_publisher() {
        let e = env(Overflow::DropNew);
        for i in 0..25 {
            assert!(publish(&e, &i.to_string()).congested.0.is_empty());
        }
        assert_eq!(e.queue.stats().messages_ready, 20);
        assert_eq!(Metrics::get(&e.metrics.messages_dropped), 5);
    }

    #[test]
    fn the_last_consumer_leaving_or_the_queue_going_releases_publishers() {
        for delete in [false, true] {
            let e = env(Overflow::DropNew);
            attach(&e.queue, 0);
            let count = Arc::new(Count::default());
            let w: Arc<dyn Wake> = count.clone();
            let mut o = publish(&e, "x");
            while o.congested.0.is_empty() {
                o = publish(&e, "x");
            }
            let mut bp = Backpressure::default();
            bp.hold(&o.congested.0, &w, e.clock.now());
            if delete {
                e.vhost.delete_queue_unchecked("sub");
            } else {
                e.queue.remove_consumer(1);
            }
            assert_eq!(count.0.load(Ordering::SeqCst), 1, "delete={delete}");
            assert!(bp.poll_release(&w, e.clock.now()));
        }
    }

    #[test]
    fn drops_are_logged_at_most_every_ten_seconds() {
        let mut f = FlowState::new(FlowLimits::new(
            "c".into(),
            10,
            Overflow::DropNew,
            Duration::from_secs(5),
        ));
        let t0 = Instant::now();
        assert_eq!(f.dropped(t0), Some(1));
        assert_eq!(f.dropped(t0 + Duration::from_secs(1)), None);
        assert_eq!(f.dropped(t0 + Duration::from_secs(2)), None);
        assert_eq!(f.due_drop_report(t0 + Duration::from_secs(9)), None);
        assert_eq!(f.due_drop_report(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(f.due_drop_report(t0 + Duration::from_secs(30)), None);
    }
}
